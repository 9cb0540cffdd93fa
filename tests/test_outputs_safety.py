"""Output safety: no command overwrites one of its inputs, writes into a run directory it does not own, or trips
over a path of the wrong kind (a directory where a file goes, a file where a directory goes). Each refusal is the
bad-input contract: exit code 2, one ``error:`` line, and nothing written."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _cli import fails, train_small_run
from conftest import make_news

from textune.cli import main
from textune.errors import TextuneError
from textune.safe_paths import check_output_dir, check_output_file, enclosing_run_dir


def snapshot(*roots: Path) -> dict[str, str]:
    """Every file under ``roots`` with a digest of its bytes: equal snapshots mean nothing was written."""
    seen = {}
    for root in roots:
        for p in sorted(Path(root).rglob("*")):
            if p.is_file() or p.is_symlink():
                seen[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else "dangling"
            else:
                seen[str(p)] = "dir"
    return seen


def fake_run(path: Path, marker: str = "manifest.json", companion: str = "model") -> Path:
    """A directory that looks like a textune run: a marker file beside a companion (a folder or a file)."""
    path.mkdir(parents=True)
    (path / marker).write_text("{}")
    if "." in companion:
        (path / companion).write_text("{}")
    else:
        (path / companion).mkdir()
    return path


# ------------------------------------------------------------------------------------------------- helper


def test_file_output_equal_to_an_input_is_refused(tmp_path):
    data = tmp_path / "data.csv"
    data.write_text("id,text\n1,a\n")
    (tmp_path / "sub").mkdir()
    link = tmp_path / "link.csv"
    link.symlink_to(data)
    hard = tmp_path / "hard.csv"
    os.link(data, hard)
    for out in (data, tmp_path / "sub" / ".." / "data.csv", link, hard):
        with pytest.raises(TextuneError, match="is the same file as the input") as exc:
            check_output_file(out, inputs=[data], what="--output")
        assert str(out) in str(exc.value) and "--output" in str(exc.value)
    # and the other way round: the input is the link, the output the file it points to
    with pytest.raises(TextuneError, match="is the same file as the input"):
        check_output_file(data, inputs=[link])
    assert check_output_file(tmp_path / "other.csv", inputs=[data]) == tmp_path / "other.csv"


def test_file_output_that_is_a_directory_or_under_a_file_is_refused(tmp_path):
    (tmp_path / "d.csv").mkdir()
    with pytest.raises(TextuneError, match="is a directory"):
        check_output_file(tmp_path / "d.csv", what="--output")
    (tmp_path / "f").write_text("x")
    with pytest.raises(TextuneError, match="is a file, not a directory"):
        check_output_file(tmp_path / "f" / "out.csv")
    with pytest.raises(TextuneError, match="is a file, not a directory"):
        check_output_dir(tmp_path / "f" / "deeper" / "run")


@pytest.mark.parametrize(
    ("marker", "companion"),
    [
        ("manifest.json", "model"),  # a finished run
        ("manifest.json", "summary.json"),
        ("recipe.yaml", "summary.json"),  # a baseline directory
        ("recipe.yaml", "metrics.jsonl"),  # a run still training, or interrupted (no model/ yet)
    ],
)
def test_output_inside_a_run_directory_is_refused(tmp_path, marker, companion):
    run = fake_run(tmp_path / "runs" / "r1", marker, companion)
    assert enclosing_run_dir(run / "predictions" / "x" / "y.csv") == run.resolve()
    for out in (run / "task.json", run / "predictions" / "deep" / "x.csv"):
        with pytest.raises(TextuneError, match="inside the textune run directory") as exc:
            check_output_file(out, what="--output")
        assert str(run) in str(exc.value)
    with pytest.raises(TextuneError, match="inside the textune run directory"):
        check_output_dir(run / "exported", what="--out")
    # through a symlinked folder too
    (tmp_path / "alias").symlink_to(run)
    with pytest.raises(TextuneError, match="inside the textune run directory"):
        check_output_file(tmp_path / "alias" / "x.csv")
    # the folder holding runs is not a run
    assert check_output_file(tmp_path / "runs" / "x.csv") == tmp_path / "runs" / "x.csv"


def test_half_a_run_marker_is_not_a_run(tmp_path):
    only_recipe = tmp_path / "a"
    only_recipe.mkdir()
    (only_recipe / "recipe.yaml").write_text("task: classification\n")
    only_model = tmp_path / "b"
    (only_model / "model").mkdir(parents=True)
    # a project folder: its recipe beside a local base model and the data
    project = fake_run(tmp_path / "c", "recipe.yaml", "model")
    (project / "train.csv").write_text("id,text\n1,a\n")
    for d in (only_recipe, only_model, project):
        assert enclosing_run_dir(d / "x.csv") is None
        check_output_file(d / "x.csv")
        check_output_dir(d / "run")


def test_owned_folder_of_a_run_is_allowed(tmp_path):
    run = fake_run(tmp_path / "run")
    out = run / "evaluations" / "valid.json"
    assert check_output_file(out, inputs=[run], owned=[run / "evaluations"]) == out
    with pytest.raises(TextuneError, match="inside the textune run directory"):
        check_output_file(run / "summary.json", inputs=[run], owned=[run / "evaluations"])


def test_directory_output_checks(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(TextuneError, match="is an existing file, not a directory") as exc:
        check_output_dir(tmp_path / "file", what="--out")
    assert "--out" in str(exc.value)
    src = tmp_path / "src"
    src.mkdir()
    for out in (src, src / "inner"):
        with pytest.raises(TextuneError, match="the input"):
            check_output_dir(out, inputs=[src], what="--out")
    assert check_output_dir(tmp_path / "new", inputs=[src]) == tmp_path / "new"


# ---------------------------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model) -> dict[str, Path]:
    """One short run shared by the tests below (they copy it where they could damage it)."""
    return train_small_run(tmp_path_factory.mktemp("outputs_run"), tiny_model)


@pytest.fixture
def work(trained, tmp_path) -> dict[str, Path]:
    """A private copy of the run and the input file, in this test's folder."""
    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    shutil.copy(trained["input"], tmp_path / "input.csv")
    (tmp_path / "folder.csv").mkdir()
    (tmp_path / "link.csv").symlink_to(tmp_path / "input.csv")
    return {"run": run, "input": tmp_path / "input.csv", "base": tmp_path}


@pytest.mark.parametrize(
    ("target", "expect"),
    [
        ("input.csv", "is the same file as the input"),
        ("link.csv", "is the same file as the input"),
        ("run/summary.json", "inside the textune run directory"),
        ("run/manifest.json", "inside the textune run directory"),
        ("run/predictions/mine.csv", "inside the textune run directory"),
        ("folder.csv", "is a directory"),
    ],
)
@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_predict_and_evaluate_refuse_unsafe_output(work, capsys, command, target, expect):
    before = snapshot(work["base"])
    out = work["base"] / target
    line = fails(capsys, command, work["run"], "--input", work["input"], "--output", out)
    assert f"--output {out}" in line and expect in line
    assert snapshot(work["base"]) == before


def test_evaluate_may_write_into_its_own_evaluations_folder(work, capsys):
    out = work["run"] / "evaluations" / "custom.json"
    assert main(["evaluate", str(work["run"]), "--input", str(work["input"]), "--output", str(out)]) == 0
    assert json.loads(out.read_text())["rows"] == 12
    assert f"metrics written to {out}" in capsys.readouterr().out


def test_evaluate_keeps_earlier_evaluations_of_files_with_the_same_stem(work, capsys):
    a, b = work["base"] / "a" / "input.csv", work["base"] / "b" / "input.csv"
    for path, seed in ((a, 5), (b, 6)):
        path.parent.mkdir()
        make_news(12 if seed == 5 else 8, seed=seed).to_csv(path, index=False)
    folder = work["run"] / "evaluations"

    def evaluate(path: Path) -> Path:
        assert main(["evaluate", str(work["run"]), "--input", str(path)]) == 0
        line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("metrics written to "))
        return Path(line.removeprefix("metrics written to "))

    assert evaluate(a) == folder / "input.json"
    assert evaluate(b) == folder / "input-2.json"
    assert json.loads((folder / "input.json").read_text())["input"] == str(a.resolve())
    assert json.loads((folder / "input-2.json").read_text())["input"] == str(b.resolve())
    # the same file again, unchanged: its own evaluation is replaced, nothing piles up
    assert evaluate(a) == folder / "input.json"
    # the same file, changed since: the earlier result is kept
    make_news(16, seed=7).to_csv(a, index=False)
    assert evaluate(a) == folder / "input-3.json"
    assert json.loads((folder / "input.json").read_text())["rows"] == 12
    assert sorted(p.name for p in folder.iterdir()) == ["input-2.json", "input-3.json", "input.json"]


def test_embed_refuses_unsafe_outputs(work, tiny_model, capsys):
    base = work["base"]
    make_news(6).to_parquet(base / "texts.parquet", index=False)
    shutil.copy(work["input"], base / "vectors.ids.csv")  # the name of vectors.npy's ids file
    (base / "taken.ids.csv").mkdir()
    cases = [
        (["--input", base / "texts.parquet", "--output", base / "texts.parquet"], "is the same file as the input"),
        (["--input", base / "vectors.ids.csv", "--output", base / "vectors.npy"], "ids file"),
        (["--input", base / "vectors.ids.csv", "--output", base / "vectors.NPY"], "ids file"),  # as embed.py: any case
        (["--input", work["input"], "--output", base / "taken.npy"], "is a directory"),
        (["--input", work["input"], "--output", work["run"] / "emb.parquet"], "inside the textune run directory"),
        (["--input", work["input"], "--output", work["input"]], "is the same file as the input"),
    ]
    for args, expect in cases:
        before = snapshot(base)
        line = fails(capsys, "embed", tiny_model, "--text", "title", "--no-progress", *args)
        assert expect in line, line
        assert snapshot(base) == before
    # the control: vectors.ids.npy writes vectors.ids.ids.csv, which is no input
    argv = ["embed", tiny_model, "--text", "title", "--no-progress", "--input", base / "vectors.ids.csv"]
    assert main([str(a) for a in [*argv, "--output", base / "vectors.ids.npy"]]) == 0
    assert (base / "vectors.ids.ids.csv").is_file()


def test_embed_from_a_run_may_not_write_into_it(work, capsys):
    before = snapshot(work["base"])
    line = fails(
        capsys, "embed", work["run"], "--input", work["input"], "--no-progress", "--output", work["run"] / "e.npy"
    )
    assert "inside the textune run directory" in line
    assert snapshot(work["base"]) == before


def test_compare_refuses_out_inside_a_run_or_onto_a_directory(work, capsys):
    before = snapshot(work["base"])
    line = fails(capsys, "compare", work["run"], "--out", work["run"] / "board")
    assert f"--out {work['run'] / 'board.csv'}" in line and "inside the textune run directory" in line
    assert snapshot(work["base"]) == before
    (work["base"] / "lb.png").mkdir()
    before = snapshot(work["base"])
    line = fails(capsys, "compare", work["run"], "--out", work["base"] / "lb.csv")
    assert f"--out {work['base'] / 'lb.png'}" in line and "is a directory" in line
    assert snapshot(work["base"]) == before
    # a compared path is an input and never overwritten, even one that is not a run
    (work["base"] / "notes.csv").write_text("mine\n")
    before = snapshot(work["base"])
    line = fails(capsys, "compare", work["run"], work["base"] / "notes.csv", "--out", work["base"] / "notes")
    assert "is the same file as the input" in line
    assert snapshot(work["base"]) == before


def test_export_refuses_out_inside_the_run_or_onto_a_file(work, capsys):
    before = snapshot(work["base"])
    line = fails(capsys, "export", work["run"], "--out", work["run"] / "exported")
    assert f"--out {work['run'] / 'exported'}" in line and "inside" in line
    line = fails(capsys, "export", work["run"], "--out", work["input"])
    assert "is an existing file, not a directory" in line
    assert snapshot(work["base"]) == before


def test_train_refuses_out_onto_a_file_or_inside_a_run(trained, work, capsys):
    before = snapshot(work["base"])
    line = fails(capsys, "train", trained["recipe"], "--out", work["input"])
    assert f"--out {work['input']}" in line and "is an existing file, not a directory" in line
    line = fails(capsys, "train", trained["recipe"], "--out", work["run"] / "nested")
    assert "inside the textune run directory" in line
    assert snapshot(work["base"]) == before


def test_refusal_comes_before_torch_is_imported(tmp_path):
    # the output checks run in the CLI, before the package (and torch) is loaded: a mistake costs no model load
    data = tmp_path / "in.csv"
    data.write_text("id,title\n1,a\n")
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "textune.cli", "predict", "run", "--input", data, "--output", data],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    errors = [line for line in proc.stderr.splitlines() if not line.startswith("import time:")]
    assert proc.returncode == 2 and len(errors) == 1 and "is the same file as the input" in errors[0], errors
    imported = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import")]
    assert not [n for n in imported if n.split(".")[0] in ("torch", "transformers")]
    assert data.read_text() == "id,title\n1,a\n"


# ------------------------------------------------------------------------------------------------ progress


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_loading_line_only_when_verbose(work, capsys, command):
    out = work["base"] / "out.csv"
    argv = [command, str(work["run"]), "--input", str(work["input"]), "--output", str(out)]
    assert main(argv) == 0
    assert "loading" not in capsys.readouterr().err  # plain (test, pipe) output stays quiet
    assert main(["--verbose", *argv]) == 0
    assert f"loading {work['run']} ..." in capsys.readouterr().err
