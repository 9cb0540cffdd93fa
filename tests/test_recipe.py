"""The recipe loader on its own: numbers, YAML pitfalls, --set typing, path resolution, init templates, and
that a recipe is checked without loading torch."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from textune.errors import TextuneError
from textune.recipe import TASKS, Recipe, init_template, load_recipe, parse_override, recipe_from_dict


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def refused(path: Path, overrides: list[str] | None = None) -> str:
    """Loads a recipe that must be refused; returns the one-line message, which must name the file."""
    with pytest.raises(TextuneError) as info:
        load_recipe(path, overrides)
    msg = str(info.value)
    assert msg.startswith(f"{path}: "), msg
    assert "\n" not in msg
    return msg.removeprefix(f"{path}: ")  # the rest: the path itself may hold any word (it is the test's name)


@pytest.fixture
def recipe_path(tmp_path) -> Path:
    return write(tmp_path / "recipe.yaml", "data:\n  train: train.csv\n")


# ---------------------------------------------------------------------------------------- non-finite numbers


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.lr=inf", "train.lr"),
        ("train.lr=nan", "train.lr"),
        ("train.lr=-inf", "train.lr"),
        ("train.epochs=inf", "train.epochs"),
        ("train.weight_decay=inf", "train.weight_decay"),
        ("train.max_grad_norm=inf", "train.max_grad_norm"),
        ("train.warmup_ratio=nan", "train.warmup_ratio"),
        ("train.class_weights=[1, .inf]", "train.class_weights"),
        ("train.class_weights=[1, .nan]", "train.class_weights"),
        ("regression.huber_delta=inf", "regression.huber_delta"),
        ("regression.clip_min=-inf", "regression.clip_min"),
        ("regression.clip_max=nan", "regression.clip_max"),
        ("regression.gamma=inf", "regression.gamma"),
        ("data.valid_fraction=nan", "data.valid_fraction"),
        ("data.field_shares=[0.5, .nan]", "data.field_shares"),
        ("model.dropout=nan", "model.dropout"),
        ("model.peft.alpha=inf", "model.peft.alpha"),
        ("features.head.dropout=nan", "features.head.dropout"),
        ("multilabel.threshold=nan", "multilabel.threshold"),
        ("tune.timeout=.inf", "tune.timeout"),
    ],
)
def test_non_finite_number_is_refused_naming_the_key(recipe_path, override, key):
    msg = refused(recipe_path, [override])
    assert f"key '{key}': " in msg and "finite" in msg


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", ".NaN", "1.0e400"])
def test_non_finite_number_in_the_file_is_refused(tmp_path, value):
    path = write(tmp_path / "recipe.yaml", f"train:\n  lr: {value}\n")
    assert "key 'train.lr': " in refused(path) and "finite" in refused(path)


def test_non_finite_number_through_the_cli_exits_2(recipe_path, capsys):
    from textune.cli import main

    assert main(["check", str(recipe_path), "--set", "train.epochs=inf"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    assert f"{recipe_path}: key 'train.epochs': " in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("section", "key", "says"),
    [
        ("train:\n  seed: -1\n", "train.seed", "0"),
        ("tune:\n  seed: -5\n", "tune.seed", "0"),
        ("train:\n  seed: 4294967296\n", "train.seed", "4294967295"),  # numpy refuses seeds past 2**32 - 1
        ("features:\n  head:\n    widths: [64, 0]\n", "features.head.widths", "1"),
        ("features:\n  head:\n    widths: [-8]\n", "features.head.widths", "1"),
        ("train:\n  class_weights: [1.0, -2.0]\n", "train.class_weights", "weight"),
        ("train:\n  class_weights: [0, 0, 0]\n", "train.class_weights", "weight"),
        ("train:\n  class_weights: []\n", "train.class_weights", "weight"),
        ("train:\n  class_weights: [1, heavy]\n", "train.class_weights", "weight"),
        ("regression:\n  clip_min: 5\n  clip_max: 1\n", "regression.clip_min", "clip_max"),
        ("data:\n  field_shares: [0.5, -0.5]\n", "data.field_shares", "0"),
    ],
)
def test_out_of_range_number_is_refused_naming_the_key(tmp_path, section, key, says):
    msg = refused(write(tmp_path / "recipe.yaml", section))
    assert msg.startswith(f"key '{key}': ") and says in msg.removeprefix(f"key '{key}': ")


@pytest.mark.parametrize(
    "section",
    [
        "train:\n  seed: 0\n",
        "train:\n  class_weights: [0.5, 2, 1.0e-1]\n",
        "train:\n  class_weights: balanced\n",
        "regression:\n  clip_min: 1\n  clip_max: 1\n",
        "regression:\n  clip_min: -3.5\n",
        "features:\n  head:\n    widths: [1, 512]\n",
        "train:\n  max_grad_norm: null\n",
    ],
)
def test_in_range_numbers_still_load(tmp_path, section):
    load_recipe(write(tmp_path / "recipe.yaml", section))


@pytest.mark.parametrize(
    "spec",
    [
        "{float: [1.0e-5, .inf]}",
        "{float: [-.inf, 1.0]}",
        "{float: [1e-5, 1e400]}",  # YAML 1.1 reads 1e400 as a string; as a number it is inf
        "{float: [.nan, 1.0]}",
        "{float: [0.0, 1.0], step: .inf}",
        "{categorical: [1.0e-4, .nan]}",
    ],
)
def test_tune_space_bounds_must_be_finite(tmp_path, spec):
    path = write(tmp_path / "recipe.yaml", f"tune:\n  space:\n    train.lr: {spec}\n")
    msg = refused(path)
    assert "key 'tune.space'" in msg and "'train.lr'" in msg and "finite" in msg


# ---------------------------------------------------------------------------------------------- YAML pitfalls


@pytest.mark.parametrize(
    ("text", "key", "where"),
    [
        ("train:\n  lr: 1.0e-4\nmodel:\n  name: bundled:minilm\ntrain:\n  epochs: 2\n", "train", "lines 1 and 5"),
        ("train:\n  lr: 1.0e-4\n  epochs: 2\n  lr: 3.0e-4\n", "train.lr", "lines 2 and 4"),
        ("task: regression\ntask: ordinal\n", "task", "lines 1 and 2"),
        ("model:\n  name: bundled:minilm\n  peft: {method: lora, r: 4, r: 8}\n", "model.peft.r", "both on line 3"),
        (
            "tune:\n  space:\n    train.lr: {float: [1, 2]}\n    train.lr: {float: [3, 4]}\n",
            "tune.space.train.lr",
            "lines 3 and 4",
        ),
    ],
    ids=["section", "key", "top-level", "flow", "space"],
)
def test_duplicate_key_is_refused_with_both_lines(tmp_path, text, key, where):
    msg = refused(write(tmp_path / "recipe.yaml", text))
    assert msg.startswith(f"key '{key}'") and f"({where})" in msg


def test_same_key_in_different_sections_is_not_a_duplicate(tmp_path):
    text = "train:\n  seed: 1\n  early_stopping: {metric: f1, mode: max}\ntune:\n  seed: 2\n  metric: f1\n"
    recipe = load_recipe(write(tmp_path / "recipe.yaml", text))
    assert (recipe.train.seed, recipe.tune.seed) == (1, 2)


def test_duplicate_key_through_the_cli_exits_2(tmp_path, capsys):
    from textune.cli import main

    path = write(tmp_path / "recipe.yaml", "train:\n  lr: 1.0e-4\ntrain:\n  lr: 2.0e-4\n")
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {path}: ") and len(err.splitlines()) == 1 and "lines 1 and 3" in err


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("train:\n\tlr: 1.0e-4\n", 2),
        ("train:\n  lr: 1.0e-4\n\tepochs: 2\n", 3),
        ("task: regression\ndata:\n  \ttrain: a.csv\n", 3),
    ],
)
def test_tab_indentation_is_named(tmp_path, text, line):
    msg = refused(write(tmp_path / "recipe.yaml", text))
    assert f"line {line} holds a tab; indent YAML with spaces" in msg


def test_tab_inside_a_quoted_value_is_fine(tmp_path):
    recipe = load_recipe(write(tmp_path / "recipe.yaml", 'data:\n  label_sep: "\t"\n'))
    assert recipe.data.label_sep == "\t"


# ------------------------------------------------------------------------------------------- --set typing


@pytest.mark.parametrize(
    ("item", "value"),
    [
        ("data.text={text}", "{text}"),
        ("data.text={title}. {body}", "{title}. {body}"),
        ("data.text_pair={answer}", "{answer}"),
        ("data.label=1", "1"),
        ("data.id=007", "007"),
        ("data.label_sep=;", ";"),
        ("data.truncation=head_tail", "head_tail"),
        ("model.name=bundled:minilm", "bundled:minilm"),
        ("train.early_stopping.metric=f1_macro", "f1_macro"),
        ("train.time_budget=2h", "2h"),
        ("output.name=3e-5", "3e-5"),
        ('train.scheduler="cosine"', "cosine"),  # a YAML-quoted string (tune passes values JSON-encoded)
        ("data.validation=null", None),  # an optional string key can still be cleared
        ("data.validation=", None),
        ("train.lr=3e-5", 3e-5),
        ("train.lr=1.0e-4", 1e-4),
        ("train.epochs=2", 2),
        ("train.progress=true", True),
        ("train.batch_size=auto", "auto"),
        ("train.batch_size=16", 16),
        ("data.labels=[a, b]", ["a", "b"]),
        ("model.peft.target_modules=[query, value]", ["query", "value"]),
        ("tune.timeout=900", 900),
        ("train.class_weights=[1, 2.5]", [1, 2.5]),
    ],
)
def test_override_value_typing(item, value):
    keys, got = parse_override(item)
    assert keys == item.split("=", 1)[0].split(".")
    assert got == value and type(got) is type(value)


def test_override_template_reaches_the_recipe(recipe_path):
    recipe = load_recipe(recipe_path, ["data.text={title}. {body}", "data.text_pair={x}", "data.label=2"])
    assert (recipe.data.text, recipe.data.text_pair, recipe.data.label) == ("{title}. {body}", "{x}", "2")


def test_override_of_json_encoded_strings_round_trips(recipe_path):
    # what `textune tune` does with a sampled categorical value
    sets = [f"{k}={json.dumps(v)}" for k, v in {"train.scheduler": "cosine", "data.text": "{a} {b}"}.items()]
    recipe = load_recipe(recipe_path, sets)
    assert (recipe.train.scheduler, recipe.data.text) == ("cosine", "{a} {b}")


# ------------------------------------------------------------------------------------------- output.dir


def test_relative_output_dir_is_beside_the_recipe(tmp_path, monkeypatch):
    path = write(tmp_path / "project" / "recipe.yaml", "data:\n  train: train.csv\noutput:\n  dir: runs\n")
    monkeypatch.chdir(tmp_path)
    assert Path(load_recipe(path).output.dir) == tmp_path / "project" / "runs"
    # left unset, runs go under the working directory, as the Trainer's output_dir does
    write(path, "data:\n  train: train.csv\n")
    assert load_recipe(path).output.dir == "runs"


def test_absolute_output_dir_is_kept(tmp_path, monkeypatch):
    out = tmp_path / "elsewhere" / "runs"
    path = write(tmp_path / "project" / "recipe.yaml", f"output:\n  dir: {out}\n")
    monkeypatch.chdir(tmp_path)
    assert Path(load_recipe(path).output.dir) == out


def test_output_dir_without_a_recipe_file_is_left_alone():
    assert recipe_from_dict({"output": {"dir": "runs"}}).output.dir == "runs"


# ------------------------------------------------------------------------------------------ keep_checkpoint


def test_keep_checkpoint_defaults_on_and_can_be_turned_off(tmp_path):
    assert Recipe().train.keep_checkpoint is True
    path = write(tmp_path / "recipe.yaml", "train:\n  keep_checkpoint: false\n")
    assert load_recipe(path).train.keep_checkpoint is False
    assert "key 'train.keep_checkpoint'" in refused(path, ["train.keep_checkpoint=sometimes"])


# -------------------------------------------------------------------------------------------- init templates


def _template(task: str) -> dict:
    raw = yaml.safe_load(init_template(task))
    assert isinstance(raw, dict)
    return raw


@pytest.mark.parametrize("task", TASKS)
def test_template_loads_back_as_its_task(task, tmp_path):
    text = init_template(task)
    raw = yaml.safe_load(text)
    raw["data"]["train"] = "train.csv"
    recipe = recipe_from_dict(raw, source=f"init {task}")
    assert recipe.task == task
    # and as a file, through the same loader the CLI uses
    assert load_recipe(write(tmp_path / "recipe.yaml", text)).task == task


@pytest.mark.parametrize("task", TASKS)
def test_template_header_names_the_main_metric(task):
    from textune.tasks import get_task

    first = init_template(task).splitlines()[0]
    assert first.startswith("#") and task in first
    assert get_task(task).main_metric in first


@pytest.mark.parametrize("task", TASKS)
def test_template_leaves_out_other_task_kinds(task):
    raw = _template(task)
    own = {"regression", "ordinal", "preference", "multilabel"} & {task}
    assert {"regression", "ordinal", "preference", "multilabel"} & set(raw) == own


def test_templates_fit_their_task():
    preference = _template("preference")
    assert {"prompt", "response_a", "response_b", "label_columns"} <= set(preference["data"])
    assert "text" not in preference["data"]
    assert "features" not in preference
    assert len(preference["data"]["label_columns"]) == 3

    regression = _template("regression")
    assert regression["data"]["target"] and "regression" in regression and "labels" not in regression["data"]

    ordinal = _template("ordinal")
    levels = ordinal["data"]["labels"]
    assert isinstance(levels, list) and len(levels) >= 3 and "ordinal" in ordinal

    multilabel = _template("multilabel")
    assert {"label_sep", "label_columns"} <= set(multilabel["data"]) and "multilabel" in multilabel

    classification = _template("classification")
    assert {"text", "label", "labels"} <= set(classification["data"])
    assert not {"prompt", "response_a", "response_b", "target", "label_sep"} & set(classification["data"])


def test_templates_differ_beyond_the_task_line():
    def body(task: str) -> list[str]:
        return [line for line in init_template(task).splitlines() if not line.startswith(("#", "task:"))]

    bodies = {task: body(task) for task in TASKS}
    for a in TASKS:
        for b in TASKS:
            if a < b:
                assert bodies[a] != bodies[b], (a, b)


def test_template_shows_keep_checkpoint():
    assert "keep_checkpoint" in _template("classification")["train"]


# ------------------------------------------------------------------------------------------ light to import


def test_recipe_errors_without_loading_torch(tmp_path):
    path = write(tmp_path / "recipe.yaml", "train:\n  epochz: 2\n")
    code = textwrap.dedent(
        f"""
        import sys
        from textune.errors import TextuneError
        from textune.recipe import load_recipe
        try:
            load_recipe({str(path)!r})
        except TextuneError as exc:
            print(exc)
        heavy = sorted(m for m in ("torch", "transformers", "pandas", "sklearn") if m in sys.modules)
        print("heavy:", heavy)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "unknown key 'train.epochz'" in out
    assert "heavy: []" in out
