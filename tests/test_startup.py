"""The garbage collector around a command's start-up: paused while the model loads, frozen and back on before any
data is read, and a Python-API caller's collector left alone."""

from __future__ import annotations

import gc

import pytest

from textune import startup
from textune.cli import entry, main


@pytest.fixture(autouse=True)
def _collector_restored():
    assert gc.isenabled() and gc.get_freeze_count() == 0, "a test before this one left the collector changed"
    yield
    startup._paused = startup._command = False
    gc.unfreeze()
    gc.enable()


def _collector() -> tuple[bool, int]:
    return gc.isenabled(), gc.get_freeze_count()


def test_pause_then_resume_freezes_what_start_up_built_and_turns_the_collector_on():
    startup.pause()
    assert not gc.isenabled()
    kept = [object() for _ in range(10)]  # noqa: F841 (alive at the freeze)
    startup.resume()
    on, frozen = _collector()
    assert on and frozen > 0


def test_end_turns_the_collector_on_and_freezes_nothing():
    startup.pause()
    startup.end()
    assert _collector() == (True, 0)
    with startup.loading():
        assert gc.isenabled()  # the command is over: a later load in this process is the caller's


def test_hand_over_turns_the_collector_on_and_unfreezes_start_up():
    startup.pause()
    startup.resume()
    assert _collector()[1] > 0
    startup.hand_over()
    assert _collector() == (True, 0)


def test_resume_leaves_a_collector_it_did_not_pause_as_it_was():
    startup.resume()
    assert _collector() == (True, 0)
    gc.disable()  # the caller's own choice
    startup.pause()  # already off: not ours to turn back on
    startup.resume()
    assert _collector() == (False, 0)


def test_a_later_model_load_pauses_the_collector_only_in_the_command():
    with startup.loading():
        assert gc.isenabled()  # a Python-API caller's process
    startup.pause()
    startup.resume()
    with startup.loading():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), startup.loading():
        raise RuntimeError("a load that fails")
    assert gc.isenabled()


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, tiny_model):
    from _cli import train_small_run

    return train_small_run(tmp_path_factory.mktemp("startup"), tiny_model)


def _watch(monkeypatch) -> dict[str, tuple[bool, int]]:
    """Records the collector's state when the model is loaded and when the input is first read."""
    import textune.data.io
    import textune.models.build

    seen: dict[str, tuple[bool, int]] = {}
    load, read = textune.models.build.load_model_dir, textune.data.io.iter_table

    def watched_load(*a, **k):
        seen.setdefault("model", _collector())
        return load(*a, **k)

    def watched_read(*a, **k):
        seen.setdefault("data", _collector())
        return read(*a, **k)

    monkeypatch.setattr(textune.models.build, "load_model_dir", watched_load)
    monkeypatch.setattr(textune.data.io, "iter_table", watched_read)
    return seen


def test_the_executable_loads_the_model_paused_and_reads_data_with_the_collector_on(small_run, tmp_path, monkeypatch):
    seen = _watch(monkeypatch)
    out = tmp_path / "out.csv"
    argv = ["-v", "predict", str(small_run["run"]), "--input", str(small_run["input"]), "--output", str(out)]
    assert entry(argv) == 0  # a global option before the command
    assert out.is_file()
    assert seen["model"] == (False, 0)
    on, frozen = seen["data"]
    assert on and frozen > 0
    assert gc.isenabled()


def test_main_leaves_the_callers_collector_alone(small_run, tmp_path, monkeypatch):
    seen = _watch(monkeypatch)
    out = tmp_path / "out.csv"
    assert main(["predict", str(small_run["run"]), "--input", str(small_run["input"]), "--output", str(out)]) == 0
    assert seen == {"model": (True, 0), "data": (True, 0)}


def test_training_reads_its_data_with_the_collector_on_and_loads_its_model_paused(small_run, tmp_path, monkeypatch):
    import textune.models.build
    import textune.training.loop

    seen = {}
    prepare, load = textune.training.loop.prepare, textune.models.build.load_classifier

    def watched_prepare(*a, **k):
        seen["data"] = _collector()
        return prepare(*a, **k)

    def watched_load(*a, **k):
        seen["model"] = _collector()
        return load(*a, **k)

    monkeypatch.setattr(textune.training.loop, "prepare", watched_prepare)
    monkeypatch.setattr(textune.models.build, "load_classifier", watched_load)
    monkeypatch.setenv("TEXTUNE_CACHE", str(tmp_path / "cache"))
    assert entry(["train", str(small_run["recipe"]), "--out", str(tmp_path / "run")]) == 0
    on, frozen = seen["data"]
    assert on and frozen > 0
    on, frozen_at_load = seen["model"]
    assert not on and 0 < frozen_at_load <= frozen  # paused for the load, nothing frozen since (some freed)
    assert gc.isenabled()


def test_cross_validation_reads_its_data_with_the_collector_on(small_run, tmp_path, monkeypatch):
    import textune.cv
    from textune.errors import TextuneError

    seen = {}

    def watched(*a, **k):
        seen["data"] = _collector()
        raise TextuneError("stop here: the folds are not the point")

    monkeypatch.setattr(textune.cv, "load_cv_data", watched)
    assert entry(["train", str(small_run["recipe"]), "--folds", "3", "--out", str(tmp_path / "cv")]) == 2
    on, frozen = seen["data"]
    assert on and frozen > 0


@pytest.mark.parametrize("command", ["train", "predict"])
def test_a_command_handing_its_work_to_other_processes_waits_with_the_collector_on(
    command, small_run, tmp_path, monkeypatch
):
    import textune.training.launch

    seen = {}

    def relaunch(processes, argv):
        seen["launch"] = _collector()
        return 0

    monkeypatch.setattr(textune.training.launch, "relaunch", relaunch)
    if command == "train":
        argv = ["train", str(small_run["recipe"]), "--out", str(tmp_path / "run")]
    else:
        argv = ["predict", str(small_run["run"]), "--input", str(small_run["input"]), "--output", str(tmp_path / "o")]
    assert entry([*argv, "--processes", "2"]) == 0
    assert seen["launch"] == (True, 0)  # on, and what start-up froze (predict's checking model) collectable


def test_a_command_failing_before_its_model_loads_turns_the_collector_back_on_without_a_freeze(tmp_path, capsys):
    code = entry(["predict", str(tmp_path / "no_run"), "--input", str(tmp_path / "x.csv"), "--output", "o.csv"])
    assert code == 2
    assert "no_run" in capsys.readouterr().err
    assert _collector() == (True, 0)


def test_a_command_that_loads_no_model_never_pauses_the_collector(monkeypatch, capsys):
    paused = []
    monkeypatch.setattr(startup, "pause", lambda: paused.append(True))
    assert entry(["-v", "init", "classification"]) == 0
    assert "task: classification" in capsys.readouterr().out
    assert paused == []
