"""The run directory's names live in run/layout.py; runs written by the previous run format still load."""

from __future__ import annotations

import json
import shutil

import pytest

from textune import Predictor, load_recipe, train
from textune.errors import TextuneError
from textune.run import layout, verify_run_dir


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model):
    from conftest import make_news, write_recipe

    base = tmp_path_factory.mktemp("layout")
    make_news(120, 0).to_csv(base / "train.csv", index=False)
    recipe = write_recipe(base / "recipe.yaml", tiny_model, base / "train.csv", train={"max_steps": 2})
    return train(load_recipe(recipe), out=base / "run")


def _as_format_1(run, dst):
    """The same run as textune 0.1's first run format wrote it: labels.json, no precision in the manifest."""
    shutil.copytree(run, dst)
    (dst / layout.TASK_STATE).rename(dst / layout.LEGACY_TASK_STATE)
    manifest = json.loads((dst / layout.MANIFEST).read_text())
    manifest["format"] = 1
    manifest.pop("precision")
    files = manifest["files_sha256"]
    files[layout.LEGACY_TASK_STATE] = files.pop(layout.TASK_STATE)
    (dst / layout.MANIFEST).write_text(json.dumps(manifest))
    return dst


def test_a_run_of_the_previous_format_loads_and_predicts_the_same(run, tmp_path):
    old = _as_format_1(run, tmp_path / "old")
    texts = ["stocks rally as profits rise", "the match ended in a draw"]
    assert verify_run_dir(old)["format"] == 1
    assert layout.read_task_state(old) == layout.read_task_state(run)
    assert Predictor.load(old).predict_proba(texts).equals(Predictor.load(run).predict_proba(texts))


def test_an_altered_legacy_task_state_is_still_refused(run, tmp_path):
    old = _as_format_1(run, tmp_path / "old")
    state = json.loads((old / layout.LEGACY_TASK_STATE).read_text())
    state["labels"] = list(reversed(state["labels"]))
    (old / layout.LEGACY_TASK_STATE).write_text(json.dumps(state))
    with pytest.raises(TextuneError, match="checksum mismatch for labels.json"):
        Predictor.load(old)


def test_a_run_of_a_newer_format_is_refused_with_the_fix(run, tmp_path):
    new = tmp_path / "new"
    shutil.copytree(run, new)
    manifest = json.loads((new / layout.MANIFEST).read_text())
    manifest["format"] = 99
    (new / layout.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(TextuneError, match="written by a newer textune.*upgrade textune"):
        Predictor.load(new)
