"""Hyperparameter search on Optuna: every trial is an ordinary textune run inside the study directory.

The study lives in an Optuna RDB storage (a SQLite file in the study directory by default, or a PostgreSQL URL
shared by workers on several machines), so running ``textune tune`` again continues the same study.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from textune import _atomic
from textune.data import tokenize as tokenize_mod
from textune.errors import TextuneError
from textune.recipe import Recipe, apply_overrides, dump_recipe, load_recipe, parse_duration, recipe_from_dict
from textune.training.loop import Callback, TrainingInterrupted, train
from textune.training.trackers import MLRUNS, TrackingInfo
from textune.training.trackers import resolve as resolve_tracking
from textune.tune.space import Grid, check_space, grid_values, suggest, with_params
from textune.tune.study import STUDY_DB, Heartbeat, ask_trial, open_storage, shown_url

log = logging.getLogger(__name__)

PLOTS = ("optimization_history", "intermediate_values", "param_importances", "parallel_coordinate", "slice")


class _StudyError(TextuneError):
    """A mistake that every trial would repeat (e.g. an unknown metric): stops the study instead of failing a trial."""


@dataclass
class TuneResult:
    """What a ``tune`` session did and where it wrote it."""

    study_dir: Path
    study_name: str
    storage: str
    metric: str
    direction: str
    counts: dict[str, int]
    best_value: float | None = None
    best_params: dict[str, Any] = field(default_factory=dict)
    best_recipe: Path | None = None
    plots: list[Path] = field(default_factory=list)
    retrained: Path | None = None
    tokenizations: int = 0


class _Report(Callback):
    """Reports each validation score to the trial and raises ``TrialPruned`` when the pruner says so."""

    def __init__(self, trial: optuna.Trial, metric: str, direction: str):
        self.trial, self.metric, self.direction = trial, metric, direction
        self.best: float | None = None

    def on_evaluate(self, step: int, metrics: dict[str, float]) -> None:
        if self.metric not in metrics:
            raise _StudyError(
                f"tune.metric: the task reports no '{self.metric}'; choose one of {', '.join(sorted(metrics))}"
            )
        value = float(metrics[self.metric])
        if self.best is None or (value > self.best if self.direction == "maximize" else value < self.best):
            self.best = value
        self.trial.report(value, step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"{self.metric} {value:.4f} at step {step}")


def _metric_and_direction(recipe: Recipe) -> tuple[str, str]:
    """The metric the study optimises and its direction, as the task declares it (``tune.direction`` overrides)."""
    from textune.tasks import get_task

    task_cls = get_task(recipe.task)
    cfg = recipe.tune
    metric = cfg.metric or recipe.train.early_stopping.metric or task_cls.main_metric
    if cfg.direction:
        return metric, cfg.direction
    return metric, "maximize" if task_cls.direction(metric, "tune.metric") == "max" else "minimize"


def _prepare_data(recipe: Recipe) -> int:
    """Reads, checks and tokenizes the data once before any trial; trials then load the token cache.

    Returns:
        How many tokenizations actually ran (cache misses).
    """
    from textune.prepare import prepare

    before = tokenize_mod.MISSES
    prepare(recipe, features=False)  # the same encoding (pairs, windows, shares) a trial will ask for
    return tokenize_mod.MISSES - before


def _trim(run_dir: Path, keep_model: bool) -> None:
    """Drops what only resuming a trial would need (optimizer state: about twice the model), and a pruned
    trial's weights: a study of many trials would otherwise fill the disk. Recipe, metrics and plots stay."""
    for name in ("checkpoints",) if keep_model else ("checkpoints", "model"):
        shutil.rmtree(run_dir / name, ignore_errors=True)


def _tracking(
    recipe: Recipe,
    study: optuna.Study,
    study_dir: Path,
    number: int,
    params: dict[str, Any],
    run_name: str | None = None,
) -> dict[str, Any]:
    """With ``train.report_to``, ``train``'s ``tracking`` argument: each trial is a run (``trial-0003``, its
    parameters as ``trial.*`` beside the recipe's) of one experiment named after the study, in the store beside the
    study directory. Without trackers nothing is passed: ``train(recipe, out, callbacks)`` is all a trial needs."""
    if not recipe.train.report_to:
        return {}
    info = TrackingInfo(
        experiment=study.study_name,
        run_name=run_name or f"trial-{number:04d}",
        config={"trial.number": number, **{f"trial.{k}": v for k, v in params.items()}},
        mlflow_dir=study_dir.parent / MLRUNS,
        stopped_by=(optuna.TrialPruned,),
    )
    return {"tracking": info}


def _run_trial(
    study: optuna.Study,
    storage: optuna.storages.RDBStorage,
    trial: optuna.Trial,
    base: dict,
    recipe: Recipe,
    metric: str,
    direction: str,
    study_dir: Path,
) -> optuna.trial.TrialState:
    state = optuna.trial.TrialState
    params = {key: suggest(trial, key, spec) for key, spec in recipe.tune.space.items()}
    run_dir = study_dir / "trials" / f"{trial.number:04d}"
    trial.set_user_attr("run_dir", str(run_dir.resolve()))
    report = _Report(trial, metric, direction)
    try:
        trial_recipe = with_params(base, params, f"trial {trial.number}")
        with Heartbeat(storage, trial._trial_id):
            train(
                trial_recipe,
                out=run_dir,
                callbacks=[report],
                **_tracking(trial_recipe, study, study_dir, trial.number, params),
            )
    except optuna.TrialPruned as exc:
        log.debug("trial %d pruned: %s", trial.number, exc)
        _trim(run_dir, keep_model=False)
        study.tell(trial, state=state.PRUNED)
        return state.PRUNED
    except (KeyboardInterrupt, TrainingInterrupted, _StudyError) as exc:
        trial.set_user_attr("interrupted", True)
        study.tell(trial, state=state.FAIL)
        _trim(run_dir, keep_model=False)
        if isinstance(exc, _StudyError):
            raise
        # The trial's own checkpoint is not how a study continues: its slot is simply tried again.
        raise TrainingInterrupted(
            f"trial {trial.number} interrupted; run the same 'textune tune' command to continue the study"
        ) from None
    except Exception as exc:  # e.g. out of memory or a diverging loss: this trial fails, the study goes on
        trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:500])
        study.tell(trial, state=state.FAIL)
        log.warning("trial %d failed: %s: %s", trial.number, type(exc).__name__, exc)
        gc.collect()
        with contextlib.suppress(Exception):
            import torch

            torch.cuda.empty_cache()
        return state.FAIL
    if report.best is None:
        trial.set_user_attr("error", "no validation score was reported")
        study.tell(trial, state=state.FAIL)
        return state.FAIL
    _trim(run_dir, keep_model=True)
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("best_step", "steps", "train_rows", "validation_rows"):
        trial.set_user_attr(key, summary.get(key))
    study.tell(trial, report.best)
    return state.COMPLETE


# Most of its length is the documented arguments; the steps are one call each (space, sampler, study, session).
def tune(
    recipe_path: str | Path,
    overrides: list[str] | None = None,
    *,
    trials: int | None = None,
    timeout: str | float | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    out: str | Path | None = None,
    retrain_best: bool = False,
    echo: Callable[[str], None] | None = None,
) -> TuneResult:
    """Runs (or continues) an Optuna study over the recipe's ``tune.space``.

    Args:
        recipe_path: recipe YAML with a ``tune:`` section.
        overrides: dotted ``KEY=VALUE`` strings applied to the recipe first.
        trials: trials in the study over all sessions and workers; default ``tune.trials``.
        timeout: time budget of this session (``'2h'``, ``'30m'``, seconds); default ``tune.timeout``.
        storage: Optuna storage URL (e.g. ``postgresql://user@host/db``); default a SQLite file in the study dir.
        study_name: the study's name in the storage; default the recipe file's stem.
        out: study directory; default ``output.dir/tune-<study>``.
        retrain_best: afterwards, train the best recipe as ``tune.retrain`` says.
        echo: called with one line per finished trial (the CLI prints them).

    Returns:
        A :class:`TuneResult`.

    Raises:
        TextuneError: bad recipe, search space, data or storage (found before any trial runs).
    """
    recipe_path = Path(recipe_path)
    recipe = load_recipe(recipe_path, overrides)
    cfg = recipe.tune
    source = str(recipe_path)
    if not cfg.space:
        raise TextuneError(f"{source}: tune.space is empty; add e.g. 'train.lr: {{float: [1e-5, 1e-3], log: true}}'")
    try:
        limit = timeout if timeout is not None else cfg.timeout
        budget_s = parse_duration(limit) if limit is not None else None
    except ValueError as exc:
        raise TextuneError(f"--timeout: {exc}") from None
    budget = trials if trials is not None else cfg.trials
    if budget < 1:
        raise TextuneError(f"--trials {budget}: give at least 1")
    base = recipe.to_dict()  # data paths already absolute, so trials can run from the study directory
    check_space(base, cfg.space, source)
    metric, direction = _metric_and_direction(recipe)
    if recipe.train.early_stopping.metric is None and (cfg.metric or cfg.direction):
        # Each trial keeps the checkpoint that is best by the metric the study optimises.
        base = apply_overrides(
            base,
            [f"train.early_stopping.metric={metric}", f"train.early_stopping.mode={direction[:3]}"],
        )

    study_name = study_name or recipe_path.stem
    # a tracker that is not installed would fail every trial: the study stops here instead, before any file
    resolve_tracking(recipe, TrackingInfo(experiment=study_name), None)
    study_dir = Path(out) if out else Path(recipe.output.dir) / f"tune-{study_name}"
    study_dir.mkdir(parents=True, exist_ok=True)
    url = storage or f"sqlite:///{(study_dir / STUDY_DB).resolve()}"

    sampler, budget = _sampler(recipe, source, budget)
    pruner = _pruner(recipe)

    tokenizations = _prepare_data(recipe)
    rdb = open_storage(url)
    study = optuna.create_study(
        storage=rdb, study_name=study_name, direction=direction, sampler=sampler, pruner=pruner, load_if_exists=True
    )
    if study.direction.name.lower() != direction or study.user_attrs.get("metric", metric) != metric:
        raise TextuneError(
            f"study '{study_name}' in {shown_url(url)} optimises {study.user_attrs.get('metric')} "
            f"({study.direction.name.lower()}), the recipe asks {metric} ({direction}); use another --study"
        )
    study.set_user_attr("metric", metric)

    try:
        _run_session(study, rdb, budget, budget_s, base, recipe, metric, direction, study_dir, echo)
    finally:
        # Whatever stopped the session (budget, Ctrl-C, a study-wide error), the study dir shows what is stored.
        result_ = _write_outputs(study, base, study_dir, metric, direction, url)
    result_.tokenizations = tokenizations
    if retrain_best:
        result_.retrained = _retrain_best(study, base, recipe, study_dir)
    return result_


def _sampler(recipe: Recipe, source: str, budget: int) -> tuple[optuna.samplers.BaseSampler, int]:
    """The recipe's sampler, and the trial budget (a grid caps it at its number of points)."""
    cfg = recipe.tune
    if cfg.sampler == "grid":
        grid = grid_values(cfg.space, source)
        size = 1
        for values in grid.values():
            size *= len(values)
        if size < budget:
            log.info("the grid has %d points; running %d trials, not %d", size, size, budget)
            budget = size
        return Grid(grid, seed=cfg.seed), budget
    if cfg.sampler == "random":
        return optuna.samplers.RandomSampler(seed=cfg.seed), budget
    return optuna.samplers.TPESampler(seed=cfg.seed), budget


def _pruner(recipe: Recipe) -> optuna.pruners.BasePruner:
    cfg = recipe.tune
    return {
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=cfg.prune_after),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(),
        "none": lambda: optuna.pruners.NopPruner(),
    }[cfg.pruner]()


def _run_session(
    study: optuna.Study,
    rdb: optuna.storages.RDBStorage,
    budget: int,
    budget_s: float | None,
    base: dict,
    recipe: Recipe,
    metric: str,
    direction: str,
    study_dir: Path,
    echo: Callable[[str], None] | None,
) -> None:
    """Asks for trials and runs them until the study's trial budget or this session's time budget is used up."""
    start = time.monotonic()
    say = echo or (lambda _line: None)
    while budget_s is None or time.monotonic() - start < budget_s:
        trial = ask_trial(study, rdb, budget)
        if trial is None:
            return
        t0 = time.monotonic()
        result = _run_trial(study, rdb, trial, base, recipe, metric, direction, study_dir)
        frozen = study._storage.get_trial(trial._trial_id)
        value = f" {metric} {frozen.value:.4f}" if frozen.value is not None else ""
        say(
            f"trial {trial.number}: {result.name.lower()}{value} in {time.monotonic() - t0:.1f} s "
            f"({', '.join(f'{k}={v}' for k, v in frozen.params.items())})"
        )
    log.info("time budget of %.0f s used up", budget_s)


def _write_outputs(
    study: optuna.Study, base: dict, study_dir: Path, metric: str, direction: str, url: str
) -> TuneResult:
    trials = study.get_trials(deepcopy=False)
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    result = TuneResult(study_dir, study.study_name, shown_url(url), metric, direction, counts)
    _write_trials_csv(study, study_dir / "trials.csv")
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if complete:
        best = study.best_trial
        result.best_value, result.best_params = best.value, dict(best.params)
        recipe = with_params(base, best.params, f"best trial {best.number}")
        header = (
            f"# Best recipe of study '{study.study_name}': trial {best.number}, {metric} {best.value:.6g}\n"
            f"# ({len(complete)} completed of {len(trials)} trials). Train it with: textune train best_recipe.yaml\n"
        )
        result.best_recipe = _atomic.write_text(study_dir / "best_recipe.yaml", header + dump_recipe(recipe))
    result.plots = _write_plots(study, study_dir / "plots", len(complete), metric)
    return result


def _write_trials_csv(study: optuna.Study, path: Path) -> None:
    df = study.trials_dataframe(
        attrs=("number", "state", "value", "duration", "datetime_start", "params", "user_attrs")
    )
    if df.empty:
        df = pd.DataFrame(columns=["number", "state", "value", "duration_s"])
    elif "duration" in df:
        df.insert(3, "duration_s", df.pop("duration").dt.total_seconds().round(3))
    df = df.rename(columns=lambda c: c.removeprefix("user_attrs_"))
    _atomic.write_with(path, lambda p: df.to_csv(p, index=False))


def _write_plots(study: optuna.Study, out_dir: Path, n_complete: int, metric: str) -> list[Path]:
    """Optuna's matplotlib plots; one that the study cannot draw yet is skipped with a logged note."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from optuna.visualization import matplotlib as ovm

    need = {"param_importances": 2, "parallel_coordinate": 2}  # importances/coordinates need a spread of trials
    written: list[Path] = []
    skipped: list[str] = []
    for name in PLOTS:
        if n_complete < need.get(name, 1):
            skipped.append(f"{name} (needs {need.get(name, 1)} completed trials, the study has {n_complete})")
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the matplotlib backend is "experimental" in Optuna
                kwargs = {} if name == "intermediate_values" else {"target_name": metric}
                axes = getattr(ovm, f"plot_{name}")(study, **kwargs)
            fig = np.ravel(axes)[0].figure
            fig.set_size_inches(max(fig.get_size_inches()[0], 7), max(fig.get_size_inches()[1], 4.5))
            path = out_dir / f"{name}.png"
            _atomic.write_with(path, lambda p, fig=fig: fig.savefig(p, format="png", dpi=100, bbox_inches="tight"))
            written.append(path)
        except Exception as exc:  # Optuna raises ValueError/RuntimeError for studies it cannot plot
            skipped.append(f"{name} ({exc})")
        finally:
            plt.close("all")
    if skipped:
        log.info("plots skipped: %s", "; ".join(skipped))
    return written


def _retrain_best(study: optuna.Study, base: dict, recipe: Recipe, study_dir: Path) -> Path | None:
    """Trains the best recipe again: on train + validation (a fixed number of steps) or exactly as configured."""
    from textune.data.io import read_table, sample_rows

    if not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        log.warning("--retrain-best: no completed trial yet; nothing to retrain")
        return None
    best = study.best_trial
    out = study_dir / f"best-{best.number:04d}"
    if out.exists():
        raise TextuneError(f"{out}: already exists; remove it to retrain, or continue it with textune train --resume")
    raw = apply_overrides(base, [f"{k}={json.dumps(v)}" for k, v in best.params.items()])
    if recipe.tune.retrain == "train+validation":
        data = raw["data"]
        if data.get("validation"):
            train_df = read_table(data["train"])
            train_df = sample_rows(train_df, data.get("max_rows"), recipe.train.seed)
            merged = pd.concat([train_df, read_table(data["validation"])], ignore_index=True)
            path = study_dir / "retrain_data.parquet"  # parquet keeps column types exactly
            _atomic.write_with(path, lambda p: merged.to_parquet(p, index=False))
            data.update(train=str(path.resolve()), max_rows=None)
        else:
            # The held-out split came from train: the whole file is train + validation.
            data["validation"] = data["train"]
        steps, rows, valid_rows = (best.user_attrs.get(k) for k in ("best_step", "train_rows", "validation_rows"))
        if steps and rows and valid_rows:
            # Same number of epochs as the best trial's best checkpoint, on the larger data.
            max_steps = max(1, round(steps * (rows + valid_rows) / rows))
            raw["train"].update(max_steps=max_steps, eval_every=max_steps, checkpoint_every=None)
            raw["train"]["early_stopping"]["patience"] = None
        log.warning("--retrain-best: training on train + validation; the validation scores of %s are not held out", out)
    final = recipe_from_dict(raw, source=f"best trial {best.number}")
    return train(final, out=out, **_tracking(final, study, study_dir, best.number, {}, out.name))


def load_trials(study_dir: str | Path) -> pd.DataFrame:
    """``trials.csv`` of a study directory as a DataFrame (for notebooks and reports)."""
    path = Path(study_dir) / "trials.csv"
    if not path.is_file():
        raise TextuneError(f"{study_dir}: no trials.csv; run 'textune tune recipe.yaml --out {study_dir}' first")
    return pd.read_csv(path)


__all__ = ["TuneResult", "load_trials", "tune"]
