"""train.report_to: what TensorBoard, MLflow and (a stand-in for) W&B hold after tiny runs, read back from their own
files and stores and compared with the run's metrics.jsonl, recipe and summary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import yaml

from textune import load_recipe, train
from textune.cli import main
from textune.errors import TextuneError
from textune.recipe import recipe_from_dict
from textune.training.loop import Callback
from textune.training.trackers import MLRUNS, STATE, TENSORBOARD_DIR, Trackers, TrackingInfo, flatten

TRACKER_MODULES = ("tensorboard", "torch.utils.tensorboard", "mlflow", "wandb")
SHORT = {"max_steps": 6, "eval_every": 3, "log_every": 2, "num_threads": 1}


def _history(run: Path) -> dict[str, list[tuple[int, float]]]:
    """metrics.jsonl as tracker series: ``train/loss`` -> [(step, value), ...]."""
    series: dict[str, list[tuple[int, float]]] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        for key, value in rec.items():
            if key not in ("step", "split"):
                series.setdefault(f"{rec['split']}/{key}", []).append((rec["step"], value))
    return series


def _flat_recipe(run: Path) -> dict:
    return flatten(yaml.safe_load((run / "recipe.yaml").read_text()))


def _tensorboard(run: Path, experiment: str = "recipe"):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / TENSORBOARD_DIR / experiment), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def _tb_series(acc) -> dict[str, list[tuple[int, float]]]:
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _as_float32(series: dict[str, list[tuple[int, float]]]) -> dict[str, list[tuple[int, float]]]:
    # TensorBoard keeps scalars as float32: the same numbers, rounded once
    return {k: [(s, float(np.float32(v))) for s, v in points] for k, points in series.items()}


def _tb_hparams(run: Path, experiment: str = "recipe") -> dict:
    """The hyperparameters of the run's TensorBoard HParams session (Accelerate writes them in a sub-folder)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    found = {}
    for sub in (run / TENSORBOARD_DIR / experiment).iterdir():
        if sub.is_dir() and any(p.name.startswith("events.") for p in sub.iterdir()):
            acc = EventAccumulator(str(sub))
            acc.Reload()
            content = acc.PluginTagToContent("hparams").get(metadata.SESSION_START_INFO_TAG)
            if content:
                info = metadata.parse_session_start_info_plugin_data(content)
                found = {k: getattr(v, v.WhichOneof("kind")) for k, v in info.hparams.items()}
    return found


def _expected_tb_hparams(flat: dict) -> dict:
    # TensorBoard's hparams hold numbers (bools too, as 1.0/0.0) and strings; nulls are left out
    return {k: (float(v) if isinstance(v, (bool, int, float)) else v) for k, v in flat.items() if v is not None}


def _mlflow(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _mlflow_series(client, run_id: str, keys) -> dict[str, list[tuple[int, float]]]:
    return {k: [(m.step, m.value) for m in client.get_metric_history(run_id, k)] for k in keys}


def test_no_tracker_by_default_writes_and_imports_nothing(recipe_factory, tmp_path):
    before = {m for m in TRACKER_MODULES if m in sys.modules}
    run = train(load_recipe(recipe_factory(train=SHORT)), out=tmp_path / "run")
    assert (run / "summary.json").is_file()
    assert not (run / TENSORBOARD_DIR).exists() and not (run / STATE).exists() and not (run / "wandb").exists()
    assert not (tmp_path / MLRUNS).exists()
    # the tracker packages are imported only when a recipe asks for them: not by a run without trackers, nor by
    # importing the loop and the search (in a fresh interpreter: this one has imported this test's modules)
    assert {m for m in TRACKER_MODULES if m in sys.modules} <= before
    code = "import sys, textune.training.loop, textune.tune.search; "
    code += f"print([m for m in {TRACKER_MODULES} if m in sys.modules])"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


def test_report_to_takes_one_name_or_a_list_and_refuses_unknown_ones():
    assert recipe_from_dict({"train": {"report_to": "mlflow"}}).train.report_to == ["mlflow"]
    both = recipe_from_dict({"train": {"report_to": ["tensorboard", "mlflow", "tensorboard"]}})
    assert both.train.report_to == ["tensorboard", "mlflow"]
    assert recipe_from_dict({}).train.report_to == []
    with pytest.raises(TextuneError, match="key 'train.report_to'"):
        recipe_from_dict({"train": {"report_to": ["tensorbord"]}}, "r.yaml")


def test_tensorboard_holds_every_metrics_jsonl_scalar_the_recipe_and_the_summary(recipe_factory, tmp_path):
    recipe = load_recipe(recipe_factory(train={**SHORT, "report_to": "tensorboard"}))
    run = train(recipe, out=tmp_path / "run")
    expected = _as_float32(_history(run))
    assert {"train/loss", "train/lr", "validation/accuracy", "validation/loss"} <= set(expected)
    assert expected["train/loss"][0][0] == 2 and [s for s, _ in expected["validation/accuracy"]] == [3, 6]

    acc = _tensorboard(run)
    logged = _tb_series(acc)
    assert {k: v for k, v in logged.items() if k.split("/")[0] in ("train", "validation")} == expected
    summary = json.loads((run / "summary.json").read_text())
    assert logged["summary/validation/accuracy"] == [(6, float(np.float32(summary["validation"]["accuracy"])))]
    assert logged["summary/parameters/trainable"] == [(6, float(np.float32(summary["parameters"]["trainable"])))]
    assert {"plots/loss", "plots/metrics"} <= set(acc.Tags()["images"])
    hparams = _tb_hparams(run)
    assert hparams == _expected_tb_hparams(_flat_recipe(run))
    assert hparams["train.lr"] == recipe.train.lr and hparams["data.text"] == "{title}. {description}"
    assert json.loads((run / STATE).read_text()) == {"experiment": "recipe"}


def test_mlflow_holds_params_metric_histories_and_artifacts(recipe_factory, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = train(load_recipe(recipe_factory(train={**SHORT, "report_to": ["mlflow"]})), out=tmp_path / "run")
    assert "MLFLOW_TRACKING_URI" not in os.environ  # the default store was set for the run only
    # default store: beside the run directories, so that all runs of a project share it
    store = tmp_path / MLRUNS
    client = _mlflow(f"sqlite:///{store / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("recipe")
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.run_name == "run" and found.info.status == "FINISHED"
    assert found.data.params == {k: str(v) for k, v in _flat_recipe(run).items()}

    expected = _history(run)
    assert _mlflow_series(client, found.info.run_id, expected) == expected
    summary = json.loads((run / "summary.json").read_text())
    assert found.data.metrics["summary/validation/accuracy"] == summary["validation"]["accuracy"]

    artifacts = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert {"summary.json", "recipe.yaml", "report.html", "plots"} <= artifacts
    plots = {a.path for a in client.list_artifacts(found.info.run_id, "plots")}
    assert plots == {f"plots/{p.name}" for p in (run / "plots").glob("*.png")} and "plots/loss.png" in plots
    local = Path(found.info.artifact_uri.removeprefix("file://"))
    assert local.is_relative_to(store) and (local / "summary.json").read_bytes() == (run / "summary.json").read_bytes()


class CrashAt(Callback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, state):
        if state.step == self.step:
            raise RuntimeError("simulated crash")


def test_resumed_run_continues_tensorboard_and_gives_mlflow_the_whole_history(recipe_factory, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # logs at every step, checkpoints at 3, 4 (evaluation) and 6: the crash after step 5 resumes from step 4, and
    # the step-5 record the stopped process logged (samples/s differ) must not stay beside the new one
    cfg = {"max_steps": 8, "eval_every": 4, "checkpoint_every": 3, "log_every": 1, "num_threads": 1}
    recipe = load_recipe(recipe_factory(train={**cfg, "report_to": ["tensorboard", "mlflow"]}))
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(recipe, out=tmp_path / "run", callbacks=[CrashAt(5)])
    run = train(resume=tmp_path / "run")

    expected = _history(run)
    assert [s for s, _ in expected["train/loss"]] == list(range(1, 9))
    logged = _tb_series(_tensorboard(run))
    assert {k: v for k, v in logged.items() if k.split("/")[0] in ("train", "validation")} == _as_float32(expected)

    client = _mlflow(f"sqlite:///{tmp_path / MLRUNS / 'mlflow.db'}")
    # the resumed recipe has no file name: the experiment is the one the run started in
    runs = client.search_runs([client.get_experiment_by_name("recipe").experiment_id])
    assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED"]
    failed = next(r for r in runs if r.info.status == "FAILED")
    assert failed.data.tags["textune.stopped_by"] == "RuntimeError: simulated crash"
    done = next(r for r in runs if r.info.status == "FINISHED")
    assert _mlflow_series(client, done.info.run_id, expected) == expected


class Stop(Exception):
    """A stop that is no failure, as a pruned trial."""


class StopAt(CrashAt):
    def on_step_end(self, state):
        if state.step == self.step:
            raise Stop("pruned")


def test_a_stopped_run_is_killed_not_failed_and_the_next_run_starts_clean(recipe_factory, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    recipe = load_recipe(recipe_factory(train={**SHORT, "report_to": "mlflow"}))
    info = TrackingInfo(experiment="study", run_name="trial-0000", config={"trial.number": 0}, stopped_by=(Stop,))
    with pytest.raises(Stop):
        train(recipe, out=tmp_path / "a", callbacks=[StopAt(2)], tracking=info)
    # the stopped run was ended: a next run in this process starts its own (no "run already active")
    train(recipe, out=tmp_path / "b", tracking=TrackingInfo(experiment="study", run_name="trial-0001"))
    client = _mlflow(f"sqlite:///{tmp_path / MLRUNS / 'mlflow.db'}")
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("study").experiment_id])}
    assert runs["trial-0000"].info.status == "KILLED" and runs["trial-0001"].info.status == "FINISHED"
    assert runs["trial-0000"].data.params["trial.number"] == "0"
    assert runs["trial-0000"].data.tags["textune.stopped_by"] == "Stop: pruned"


def test_tune_logs_each_trial_as_a_run_of_the_study_experiment(recipe_factory, news, tmp_path, monkeypatch):
    from textune.tune.search import tune

    # the user's own store: used as it is
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'own.db'}")
    # MLflow puts the artifacts of a store that names no artifact root in ./mlruns
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    recipe = recipe_factory(
        data={"validation": str(news["valid"])},
        train={"max_steps": 2, "eval_every": 2, "num_threads": 1, "report_to": ["mlflow", "tensorboard"]},
        tune={"space": {"train.lr": {"float": [1e-4, 1e-2], "log": True}}, "pruner": "none", "seed": 0},
    )
    result = tune(recipe, trials=2, study_name="lr_search", out=tmp_path / "study")
    assert result.counts == {"complete": 2}

    client = _mlflow(f"sqlite:///{tmp_path / 'own.db'}")
    assert not (tmp_path / MLRUNS).exists()  # no default store beside the study
    runs = client.search_runs([client.get_experiment_by_name("lr_search").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["trial-0000", "trial-0001"]
    trials = {t.number: t for t in result_trials(tmp_path / "study")}
    for r in runs:
        number = int(r.info.run_name.split("-")[1])
        trial_dir = tmp_path / "study" / "trials" / f"{number:04d}"
        lr = trials[number].params["train.lr"]
        assert r.data.params["trial.number"] == str(number)
        assert r.data.params["trial.train.lr"] == r.data.params["train.lr"] == str(lr)
        expected = _history(trial_dir)
        assert _mlflow_series(client, r.info.run_id, expected) == expected
        assert any((trial_dir / TENSORBOARD_DIR / "lr_search").glob("events.*"))


def result_trials(study_dir: Path):
    import optuna

    return optuna.load_study(study_name="lr_search", storage=f"sqlite:///{study_dir / 'study.db'}").trials


def test_wandb_not_installed_is_one_line_and_writes_nothing(recipe_factory, tmp_path, monkeypatch, capsys):
    import accelerate.tracking as tracking

    monkeypatch.setattr(tracking, "_available_trackers", [t for t in tracking._available_trackers if str(t) != "wandb"])
    recipe = recipe_factory(train={**SHORT, "report_to": ["tensorboard", "wandb"]})
    assert main(["train", str(recipe), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "wandb is not installed" in err and "pip install wandb" in err
    assert not (tmp_path / "run").exists()


def _fake_wandb() -> types.ModuleType:
    """Records what Accelerate's W&B tracker and textune ask of wandb."""
    wandb = types.ModuleType("wandb")
    calls: dict = {"init": [], "config": {}, "log": [], "save": [], "finish": []}

    class Run:
        def log(self, values, step=None, **_):
            calls["log"].append((step, dict(values)))

        def save(self, path, base_path=None, policy="live"):
            calls["save"].append((str(Path(path).relative_to(base_path)), policy))

        def finish(self, exit_code=None):
            calls["finish"].append(exit_code)

    def init(**kwargs):
        calls["init"].append(kwargs)
        return Run()

    wandb.init, wandb.calls = init, calls
    wandb.config = types.SimpleNamespace(update=lambda values, allow_val_change=False: calls["config"].update(values))
    return wandb


def test_wandb_runs_offline_unless_configured(recipe_factory, tmp_path, monkeypatch):
    import accelerate.tracking as tracking
    from accelerate.utils import LoggerType

    monkeypatch.setattr(tracking, "_available_trackers", [*tracking._available_trackers, LoggerType.WANDB])
    wandb = _fake_wandb()
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    for var in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    run = train(load_recipe(recipe_factory(train={**SHORT, "report_to": "wandb"})), out=tmp_path / "run")

    calls = wandb.calls
    assert calls["init"] == [{"project": "recipe", "name": "run", "dir": str(run), "mode": "offline"}]
    assert calls["config"] == _flat_recipe(run)
    logged: dict[str, list] = {}
    for step, values in calls["log"]:
        for key, value in values.items():
            logged.setdefault(key, []).append((step, value))
    assert {k: v for k, v in logged.items() if k.split("/")[0] in ("train", "validation")} == _history(run)
    saved = {path for path, _ in calls["save"]}
    assert {"summary.json", "recipe.yaml", "plots/loss.png"} <= saved and calls["finish"] == [None]

    # a user who set W&B up decides the mode
    monkeypatch.setenv("WANDB_MODE", "online")
    assert "mode" not in Trackers(None, TrackingInfo(), tmp_path / "x")._wandb_kwargs()


def test_two_processes_log_once_from_the_main_process(recipe_factory, tmp_path):
    recipe = recipe_factory(train={"max_steps": 4, "eval_every": 2, "log_every": 1, "num_threads": 1})
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    args = ["train", str(recipe), "--out", str(tmp_path / "run"), "--processes", "2"]
    args += ["--set", "train.report_to=[tensorboard, mlflow]"]
    out = subprocess.run(
        [sys.executable, "-m", "textune.cli", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-4000:]
    run = tmp_path / "run"
    assert json.loads((run / "summary.json").read_text())["processes"] == 2
    expected = _history(run)
    assert [s for s, _ in expected["train/loss"]] == [1, 2, 3, 4]
    # one event file: the other process wrote none
    assert len(list((run / TENSORBOARD_DIR / "recipe").glob("events.*"))) == 1
    logged = _tb_series(_tensorboard(run))
    assert {k: v for k, v in logged.items() if k.split("/")[0] in ("train", "validation")} == _as_float32(expected)
    client = _mlflow(f"sqlite:///{tmp_path / MLRUNS / 'mlflow.db'}")
    (found,) = client.search_runs([client.get_experiment_by_name("recipe").experiment_id])
    assert found.info.status == "FINISHED" and _mlflow_series(client, found.info.run_id, expected) == expected
    assert "summary.json" in {a.path for a in client.list_artifacts(found.info.run_id)}
