"""`textune tune`: a few tiny trials per study, checked through the files and the Optuna storage they leave."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml

from textune.cli import main
from textune.data import tokenize as tokenize_mod
from textune.errors import TextuneError
from textune.recipe import recipe_from_dict
from textune.tune import search as tune_mod
from textune.tune import study as study_mod

PNG = b"\x89PNG\r\n\x1a\n"
SPACE = {
    "train.lr": {"float": ["1e-4", "1e-2"], "log": True},
    "train.weight_decay": {"float": [0.0, 0.1]},
    "train.batch_size": {"categorical": [8, 16]},
}


@pytest.fixture
def tune_recipe(recipe_factory, news):
    def make(eval_every: int = 2, **tune) -> Path:
        return recipe_factory(
            data={"validation": str(news["valid"])},
            train={"max_steps": 2, "eval_every": eval_every, "num_threads": 1},
            tune={"space": SPACE, "pruner": "none", "sampler": "random", "seed": 0, **tune},
        )

    return make


def _study(study_dir: Path, name: str = "recipe") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{study_dir / 'study.db'}")


def _cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "textune.cli", "tune", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_space_keys_and_shapes_are_validated():
    def error(space: dict) -> str:
        with pytest.raises(TextuneError) as exc:
            recipe_from_dict({"tune": {"space": space}}, "r.yaml")
        return str(exc.value)

    assert "unknown recipe key 'train.lrr' (did you mean 'train.lr'?)" in error({"train.lrr": {"float": [1, 2]}})
    assert "exactly one of float, int, categorical" in error({"train.lr": {"flot": [1e-5, 1e-3]}})
    assert "unknown option 'lg' (did you mean 'log'?)" in error({"train.lr": {"float": [1e-5, 1e-3], "lg": True}})
    assert "low <= high" in error({"train.lr": {"float": [1e-3, 1e-5]}})
    assert "log range needs low > 0" in error({"train.weight_decay": {"float": [0, 0.1], "log": True}})
    assert "[low, high]" in error({"train.batch_size": {"int": [8.5, 16]}})
    ok = recipe_from_dict({"tune": {"space": {"train.lr": {"float": ["1e-5", "1e-3"], "log": True}}}})
    assert ok.tune.space["train.lr"]["float"] == [1e-5, 1e-3]  # YAML 1.1 strings read as numbers


def test_invalid_space_value_fails_before_any_trial(tune_recipe, tmp_path, capsys):
    recipe = tune_recipe(space={"train.batch_size": {"categorical": [0, 16]}})
    assert main(["tune", str(recipe), "--out", str(tmp_path / "study")]) == 2
    err = capsys.readouterr().err
    assert "tune.space.train.batch_size = 0" in err and "should be a positive integer or 'auto'" in err
    assert not (tmp_path / "study" / "trials").exists()


def test_study_writes_outputs_tokenizes_once_and_survives_a_failed_trial(tune_recipe, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TEXTUNE_CACHE", str(tmp_path / "cache"))  # fresh: other tests tokenized the same texts
    real_train = tune_mod.train

    def train(recipe, out, callbacks):
        if Path(out).name == "0001":  # what a CUDA out-of-memory error looks like to the study
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_train(recipe, out=out, callbacks=callbacks)

    monkeypatch.setattr(tune_mod, "train", train)
    recipe, study_dir = tune_recipe(trials=3), tmp_path / "study"
    misses = tokenize_mod.MISSES
    assert main(["tune", str(recipe), "--out", str(study_dir)]) == 0
    assert tokenize_mod.MISSES - misses == 2  # train + validation, once for the whole study
    assert len(list((tmp_path / "cache" / "tokens").glob("*.npz"))) == 2
    out = capsys.readouterr().out
    assert "trials: 2 complete, 1 fail" in out

    df = pd.read_csv(study_dir / "trials.csv")
    assert list(df["number"]) == [0, 1, 2]
    assert list(df["state"]) == ["COMPLETE", "FAIL", "COMPLETE"]
    assert "out of memory" in df.loc[1, "error"]
    assert (df["duration_s"] > 0).all()
    for _, row in df[df["state"] == "COMPLETE"].iterrows():
        run = Path(row["run_dir"])
        saved = yaml.safe_load((run / "recipe.yaml").read_text())
        assert saved["train"]["lr"] == pytest.approx(row["params_train.lr"])
        assert saved["train"]["batch_size"] == row["params_train.batch_size"]
        # the trial's value is the run's best validation score, which is the score of the model it kept
        assert row["value"] == pytest.approx(json.loads((run / "summary.json").read_text())["validation"]["accuracy"])
        assert not (run / "checkpoints").exists() and (run / "model" / "config.json").is_file()

    best = df.loc[df["value"].idxmax()]
    best_recipe = study_dir / "best_recipe.yaml"
    loaded = recipe_from_dict(yaml.safe_load(best_recipe.read_text()))
    assert loaded.train.lr == pytest.approx(best["params_train.lr"])
    assert loaded.train.weight_decay == pytest.approx(best["params_train.weight_decay"])
    assert f"trial {best['number']}" in best_recipe.read_text().splitlines()[0]
    for name in ("optimization_history", "param_importances", "parallel_coordinate", "slice"):
        assert (study_dir / "plots" / f"{name}.png").read_bytes().startswith(PNG), name


def test_killed_study_continues_from_its_stored_trials(tune_recipe, tmp_path):
    recipe, study_dir = tune_recipe(trials=3), tmp_path / "study"
    worker = _cli(str(recipe), "--out", str(study_dir))
    deadline, killed = time.monotonic() + 240, None
    while killed is None:
        assert worker.poll() is None, worker.communicate()[0][-2000:]
        assert time.monotonic() < deadline, "the worker never reached its second trial"
        for number in (1, 2):  # kill it inside a trial after the first, while that trial is still running
            run = study_dir / "trials" / f"{number:04d}"
            if run.is_dir() and not (run / "summary.json").exists():
                worker.send_signal(signal.SIGKILL)
                killed = number
                break
        time.sleep(0.1)
    worker.wait()
    before = _study(study_dir).trials
    assert [t.state.name for t in before] == ["COMPLETE"] * killed + ["RUNNING"]

    misses = tokenize_mod.MISSES
    assert main(["tune", str(recipe), "--out", str(study_dir)]) == 0
    assert tokenize_mod.MISSES == misses  # the killed worker's token cache serves the restarted study
    after = _study(study_dir).trials
    assert [t.state.name for t in after] == ["COMPLETE"] * killed + ["FAIL"] + ["COMPLETE"] * (3 - killed)
    assert after[killed].user_attrs["killed"] is True
    # the finished trials are the stored ones, not re-runs; the killed trial's slot went to a new trial
    for old, new in zip(before[:killed], after[:killed], strict=True):
        assert (new.value, new.datetime_start, new.params) == (old.value, old.datetime_start, old.params)
    assert after[-1].user_attrs["pid"] == os.getpid() != after[0].user_attrs["pid"]


def test_pruning_stops_a_bad_trial_and_retrain_best_trains_on_train_plus_validation(tune_recipe, tmp_path, news):
    recipe = tune_recipe(eval_every=1, trials=2, pruner="median", prune_after=1, space={"train.lr": SPACE["train.lr"]})
    study_dir = tmp_path / "study"
    study_dir.mkdir()
    # A finished trial that scored perfectly at every step: any real trial is below its median.
    study = optuna.create_study(
        study_name="recipe", storage=f"sqlite:///{study_dir / 'study.db'}", direction="maximize"
    )
    study.add_trial(
        optuna.trial.create_trial(
            params={"train.lr": 1e-3},
            distributions={"train.lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)},
            value=1.0,
            intermediate_values={1: 1.0, 2: 1.0},
            user_attrs={"best_step": 2, "train_rows": 200, "validation_rows": 60},
        )
    )
    assert main(["tune", str(recipe), "--out", str(study_dir), "--retrain-best"]) == 0
    pruned = _study(study_dir).trials[1]
    assert pruned.state.name == "PRUNED"
    assert list(pruned.intermediate_values) == [1]  # stopped at its first evaluation
    history = [json.loads(line) for line in (study_dir / "trials" / "0001" / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in history) == 1 < 2
    assert not (study_dir / "trials" / "0001" / "model").exists()
    assert pd.read_csv(study_dir / "trials.csv")["state"].tolist() == ["COMPLETE", "PRUNED"]

    # --retrain-best: the best params on train + validation, for the best trial's steps scaled to the larger data
    run = study_dir / "best-0000"
    summary = json.loads((run / "summary.json").read_text())
    rows = len(pd.read_csv(news["train"])) + len(pd.read_csv(news["valid"]))
    assert summary["train_rows"] == rows == len(pd.read_parquet(study_dir / "retrain_data.parquet"))
    assert summary["steps"] == round(2 * (200 + 60) / 200)
    assert yaml.safe_load((run / "recipe.yaml").read_text())["train"]["lr"] == pytest.approx(1e-3)


def _pg_url() -> str:
    url = os.environ.get("TEXTUNE_TEST_PG_URL")
    if not url:
        pytest.skip("TEXTUNE_TEST_PG_URL is not set (.ci/run starts PostgreSQL and sets it)")
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(study_mod.driver_url(url))
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT 1"))
        engine.dispose()
    except Exception as exc:
        pytest.skip(f"no PostgreSQL server at TEXTUNE_TEST_PG_URL: {str(exc).splitlines()[0]}")
    return url


def test_two_workers_share_one_postgresql_study(tune_recipe, tmp_path):
    url = _pg_url()
    name = f"test-{uuid.uuid4().hex[:12]}"
    recipe = tune_recipe(trials=3)
    args = [str(recipe), "--storage", url, "--study", name]
    workers = [_cli(*args, "--out", str(tmp_path / f"worker{i}")) for i in range(2)]
    try:
        outputs = [w.communicate(timeout=400)[0] for w in workers]
        assert [w.returncode for w in workers] == [0, 0], "\n".join(o[-2000:] for o in outputs)
        trials = optuna.load_study(study_name=name, storage=study_mod.driver_url(url)).trials
        assert sorted(t.number for t in trials) == [0, 1, 2]
        assert all(t.state.name == "COMPLETE" for t in trials)
        # every trial ran exactly once, in the worker that asked for it
        ran = sorted(p.name for i in range(2) for p in (tmp_path / f"worker{i}" / "trials").glob("*"))
        assert ran == ["0000", "0001", "0002"]
        for t in trials:
            assert Path(t.user_attrs["run_dir"], "summary.json").is_file()
        printed = [sum(line.startswith("trial ") for line in o.splitlines()) for o in outputs]
        assert sum(printed) == 3
        print(f"trials per worker: {printed}")
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
        optuna.delete_study(study_name=name, storage=study_mod.driver_url(url))


@pytest.mark.parametrize(
    ("task", "metric", "direction"),
    [
        ("regression", "mae", "minimize"),
        ("regression", "rmse", "minimize"),
        ("regression", "rmsle", "minimize"),
        ("regression", "r2", "maximize"),
        ("ordinal", "mean_abs_level_error", "minimize"),
        ("ordinal", "qwk", "maximize"),
        ("classification", "log_loss", "minimize"),
        ("classification", "f1_macro", "maximize"),
        ("preference", "accuracy", "maximize"),
    ],
)
def test_study_direction_is_the_metrics_own(task, metric, direction):
    """The task declares each metric's direction; tune, early stopping and compare read it (tune maximised mae)."""
    from textune.recipe import recipe_from_dict

    recipe = recipe_from_dict({"task": task, "tune": {"metric": metric}})
    assert tune_mod._metric_and_direction(recipe) == (metric, direction)


def test_unknown_tune_metric_is_refused_with_a_suggestion():
    from textune.errors import TextuneError
    from textune.recipe import recipe_from_dict
    from textune.tasks import get_task

    recipe = recipe_from_dict({"task": "regression", "tune": {"metric": "smap"}})
    with pytest.raises(TextuneError, match=r"tune.metric: task regression reports no metric 'smap' \(did you mean"):
        get_task("regression")(recipe)
