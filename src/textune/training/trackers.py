"""Experiment trackers (``train.report_to``): TensorBoard, MLflow and W&B, through Accelerate's tracker API.

Each tracker is given what the run directory is given: every metrics.jsonl record (keyed ``<split>/<name>``, at
its step), the resolved recipe flattened to dotted keys as hyperparameters, and at the end the summary's numbers
(``summary/...``) with summary.json, the recipe, the report and the plots. Offline unless the user says otherwise:
TensorBoard event files in the run directory, MLflow in a SQLite store beside the run directories (or the
``MLFLOW_TRACKING_URI`` the user set), W&B in offline mode (unless ``WANDB_MODE`` or ``WANDB_API_KEY`` is set).

Accelerate runs each tracker call on the main process only. The tracker packages are imported only when a recipe
asks for them, so ``textune.training`` imports without any of them installed.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from textune import _atomic
from textune.errors import TextuneError
from textune.recipe import Recipe
from textune.run import layout

log = logging.getLogger(__name__)

# Names in the run directory (kept here, beside the only code that writes them)
TENSORBOARD_DIR = "tensorboard"  # event files: <run>/tensorboard/<experiment>/
STATE = "trackers.json"  # the experiment name: a resumed run (whose recipe has no file name) logs to the same one
MLRUNS = "mlruns"  # the default MLflow store, beside the run directories: mlflow.db and artifacts/

_INSTALL = {
    "tensorboard": "pip install tensorboard",
    "mlflow": "pip install mlflow-skinny",
    "wandb": "pip install wandb",
}
_ARTIFACTS = (layout.SUMMARY, layout.RECIPE, layout.REPORT)


@dataclass
class TrackingInfo:
    """How a run is named in the trackers; ``textune tune`` sets one per trial.

    Attributes:
        experiment: MLflow experiment and W&B project; default the recipe file's stem.
        run_name: default the run directory's name.
        config: hyperparameters logged beside the flattened recipe (a trial's number and parameters).
        mlflow_dir: the default MLflow store's folder; default ``mlruns`` beside the run directory.
        stopped_by: exceptions that stop a run without it failing (a pruned trial): MLflow marks it KILLED.
    """

    experiment: str | None = None
    run_name: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    mlflow_dir: Path | None = None
    stopped_by: tuple[type[BaseException], ...] = ()


def flatten(raw: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys with scalar values (what TensorBoard's hparams and MLflow's params take); lists and empty
    mappings become their JSON text."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        elif isinstance(value, (list, tuple, dict)):
            out[f"{prefix}{key}"] = json.dumps(value)
        else:
            out[f"{prefix}{key}"] = value
    return out


def hyperparameters(recipe: Recipe, info: TrackingInfo) -> dict[str, Any]:
    return {**flatten(recipe.to_dict()), **info.config}


def record_values(record: dict[str, Any]) -> dict[str, float | int]:
    """A metrics.jsonl record as tracker values: ``train/loss``, ``validation/accuracy``... (numbers only)."""
    split = record.get("split", "train")
    return {
        f"{split}/{key}": value
        for key, value in record.items()
        if key not in ("step", "split") and isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def summary_values(summary: dict[str, Any], prefix: str = "summary/") -> dict[str, float | int]:
    """The numbers of summary.json (final validation and test metrics, timings, parameter counts)."""
    out: dict[str, float | int] = {}
    for key, value in summary.items():
        if isinstance(value, dict):
            out.update(summary_values(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = value
    return out


def resolve(recipe: Recipe, info: TrackingInfo | None, resumed: Path | None) -> TrackingInfo | None:
    """Checks that the recipe's trackers are installed and names the run, before anything is written.

    Args:
        recipe: the run's recipe (``train.report_to``).
        info: names given by the caller (``textune tune``), else the recipe's.
        resumed: the run directory when resuming: its experiment is the one it started in.

    Returns:
        None when the recipe asks for no tracker.
    """
    names = recipe.train.report_to
    if not names:
        return None
    from accelerate.tracking import get_available_trackers

    available = {str(t) for t in get_available_trackers()}
    for name in names:
        if name not in available:
            raise TextuneError(
                f"train.report_to: {name} is not installed; {_INSTALL[name]} (or pip install 'textune[track]' for "
                f"tensorboard and mlflow), or remove {name} from train.report_to"
            )
    info = replace(info) if info is not None else TrackingInfo()
    saved = resumed / STATE if resumed is not None else None
    if info.experiment is None and saved is not None and saved.is_file():
        info.experiment = layout.read_json(saved, STATE).get("experiment")
    info.experiment = info.experiment or recipe._stem
    # TensorBoard writes into <run>/tensorboard/<experiment>: the name must stay one folder inside the run
    if "tensorboard" in names and (info.experiment in (".", "..") or any(c in info.experiment for c in "/\\")):
        raise TextuneError(
            f"train.report_to tensorboard: the experiment name {info.experiment!r} is not a folder name; "
            "give a name without '/' (--study NAME)"
        )
    return info


def accelerator_kwargs(report_to: list[str], run_dir: Path | None) -> dict[str, Any]:
    """What the Accelerator needs to log to ``report_to``; nothing when the recipe asks for no tracker."""
    if not report_to:
        return {}
    from accelerate.utils import ProjectConfiguration

    if run_dir is None:
        raise TextuneError("train.report_to: the trackers need the run directory (internal error)")
    config = ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / TENSORBOARD_DIR))
    return {"log_with": list(report_to), "project_config": config}


class Trackers:
    """The run's trackers. Every method does nothing when the recipe asks for none, and the tracker calls run on
    the main process only (Accelerate's tracker classes check it; the rest is checked here)."""

    def __init__(self, accelerator: Accelerator, info: TrackingInfo | None, run_dir: Path):
        self.accelerator, self.info, self.run_dir = accelerator, info, Path(run_dir)
        self._set_uri = False  # whether MLFLOW_TRACKING_URI was set here, to be taken back at the end

    @property
    def _main(self) -> bool:
        return self.info is not None and self.accelerator.is_main_process

    def start(self, recipe: Recipe, step: int, resuming: bool) -> None:
        """Starts one run per tracker. A resumed run goes on where its checkpoint was: TensorBoard in the same
        folder, its events past the checkpoint purged; MLflow and W&B in a new run given the history so far."""
        if self.info is None:
            return
        names = recipe.train.report_to
        init_kwargs: dict[str, dict[str, Any]] = {}
        if "tensorboard" in names and resuming:
            # steps after the checkpoint were logged by the stopped process and are logged again from here
            init_kwargs["tensorboard"] = {"purge_step": step + 1}
        if "mlflow" in names:
            init_kwargs["mlflow"] = self._mlflow_kwargs()
        if "wandb" in names:
            init_kwargs["wandb"] = self._wandb_kwargs()
        if self._main:
            _atomic.write_json(self.run_dir / STATE, {"experiment": self.info.experiment})
        try:
            self.accelerator.init_trackers(
                self.info.experiment, config=hyperparameters(recipe, self.info), init_kwargs=init_kwargs
            )
        except Exception as exc:  # a store that refuses (a URL that cannot be reached, a bad file store)
            self.abort(exc, stopped=False)
            first = (str(exc).strip().splitlines() or [""])[0]
            raise TextuneError(
                f"train.report_to [{', '.join(names)}]: a tracker could not start ({type(exc).__name__}: {first}); "
                f"fix its settings and continue with --resume {self.run_dir}, or remove it from train.report_to"
            ) from None
        if resuming and self._main:
            self._replay(layout.read_history(self.run_dir))

    def _mlflow_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "run_name": self.info.run_name or self.run_dir.name,
            "description": f"textune run {self.run_dir.resolve()}",
        }
        if os.environ.get("MLFLOW_TRACKING_URI"):
            return kwargs  # the user's store decides where artifacts go
        store = (self.info.mlflow_dir or self.run_dir.parent / MLRUNS).resolve()
        if self._main:
            store.mkdir(parents=True, exist_ok=True)
            # SQLite, not MLflow's ./mlruns file store: recent MLflow refuses that store unless opted in
            os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store / 'mlflow.db'}"
            self._set_uri = True
        # where a new experiment keeps its runs' artifacts (without it: ./mlruns of the working directory)
        kwargs["logging_dir"] = str(store / "artifacts")
        return kwargs

    def _wandb_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"name": self.info.run_name or self.run_dir.name, "dir": str(self.run_dir)}
        if not (os.environ.get("WANDB_MODE") or os.environ.get("WANDB_API_KEY")):
            kwargs["mode"] = "offline"  # nothing leaves the machine unless the user set W&B up; `wandb sync` later
        return kwargs

    def _replay(self, history: list[dict[str, Any]]) -> None:
        """A resumed run's new MLflow / W&B run gets the records up to the checkpoint, so it holds the whole
        history; TensorBoard kept them in its folder."""
        for tracker in self.accelerator.trackers:
            if tracker.name == "tensorboard":
                continue
            for record in history:
                tracker.log(record_values(record), step=record["step"])

    def log(self, record: dict[str, Any]) -> None:
        """One metrics.jsonl record, at its step."""
        if self._main:
            self.accelerator.log(record_values(record), step=record["step"])

    def end_processes(self) -> None:
        """Leaves the process group (Accelerate's ``end_training``) while keeping the trackers open: the main
        process writes the outputs, which go to the trackers, after the other processes have left."""
        held, self.accelerator.trackers = self.accelerator.trackers, []
        try:
            self.accelerator.end_training()
        finally:
            self.accelerator.trackers = held

    def close(self) -> None:
        """The final summary (as numbers) and the output files (as artifacts, TensorBoard: the plots as images),
        then ends every tracker's run."""
        if not self._main:
            return
        try:
            summary = layout.read_summary(self.run_dir)
            step = int(summary.get("steps") or 0)
            self.accelerator.log(summary_values(summary), step=step)
            files = [self.run_dir / name for name in _ARTIFACTS if (self.run_dir / name).is_file()]
            plots = sorted((self.run_dir / layout.PLOTS).glob("*.png"))
            for tracker in self.accelerator.trackers:
                _send_outputs(tracker, self.run_dir, files, plots, step)
            self.accelerator.end_training()
        finally:
            self._restore_uri()

    def abort(self, exc: BaseException, stopped: bool) -> None:
        """Ends the trackers' runs after an error (MLflow: FAILED) or a stop (Ctrl-C, a pruned trial: KILLED),
        so that a next run in this process (a study's next trial) starts clean. Never raises."""
        if not self._main:
            return
        stopped = stopped or isinstance(exc, self.info.stopped_by)
        for tracker in self.accelerator.trackers:
            try:
                _end_run(tracker, exc, stopped)
            except Exception as err:  # a tracker that never started, or its store is gone: the run's error wins
                log.warning("train.report_to: could not end the %s run: %s", tracker.name, err)
        self.accelerator.trackers = []
        self._restore_uri()

    def _restore_uri(self) -> None:
        if self._set_uri:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
            self._set_uri = False


def _send_outputs(tracker: Any, run_dir: Path, files: list[Path], plots: list[Path], step: int) -> None:
    if tracker.name == "mlflow":
        for path in files:
            tracker.log_artifact(str(path))
        if plots:
            tracker.log_artifacts(str(plots[0].parent), artifact_path=layout.PLOTS)
    elif tracker.name == "wandb":
        run = tracker.tracker
        for path in [*files, *plots]:
            run.save(str(path), base_path=str(run_dir), policy="now")
    elif tracker.name == "tensorboard" and plots:
        import matplotlib.image

        # RGB without the alpha channel, one image per plot: (1, H, W, 3)
        images = {f"plots/{p.stem}": matplotlib.image.imread(p)[None, :, :, :3] for p in plots}
        tracker.log_images(images, step=step, dataformats="NHWC")


def _end_run(tracker: Any, exc: BaseException, stopped: bool) -> None:
    if tracker.name == "mlflow":
        import mlflow

        if mlflow.active_run() is not None:
            mlflow.set_tag("textune.stopped_by", f"{type(exc).__name__}: {exc}"[:500])
            mlflow.end_run(status="KILLED" if stopped else "FAILED")
    elif tracker.name == "wandb":
        tracker.tracker.finish(exit_code=0 if stopped else 1)
    else:
        tracker.finish()
