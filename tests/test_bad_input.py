"""Bad input through the real CLI: exit code 2, one ``error:`` line naming the file/row/column/key and the fix,
no traceback, and nothing written."""

from __future__ import annotations

import json
import logging
import pickle
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest
from _cli import fails, train_small_run
from conftest import make_news, write_recipe

from textune.cli import main
from textune.data.io import read_table
from textune.data.tokenize import CHARS_PER_TOKEN_CAP


def write_csv(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


@pytest.fixture
def small(tmp_path, tiny_model):
    """A recipe over a 40-row train file; ``small(df)`` rewrites train and returns the recipe path."""

    def make(df: pd.DataFrame | None = None, suffix: str = ".csv", **sections) -> Path:
        train = tmp_path / f"train{suffix}"
        if df is not None:
            df.to_csv(train, index=False)
        return write_recipe(tmp_path / "recipe.yaml", tiny_model, train, **sections)

    return make


# ---------------------------------------------------------------------------------------------- data files


@pytest.mark.parametrize(
    ("content", "expect"),
    [
        (None, "file not found"),
        (b"", "file is empty"),
        (b"  \n\r\n", "file is empty"),
        (b"id,title,description,label\n", "has a header but no data rows"),
        (b"id,title,description,label\r\n\r\n", "has a header but no data rows"),
    ],
    ids=["missing", "empty", "blank", "header-only", "header-only-crlf"],
)
def test_unusable_train_file(small, tmp_path, capsys, content, expect):
    recipe = small()
    if content is not None:
        write_csv(tmp_path / "train.csv", content)
    line = fails(capsys, "check", recipe)
    assert f"{tmp_path / 'train.csv'}: {expect}" in line
    # train refuses the same way, before creating its run directory
    run = tmp_path / "run"
    assert expect in fails(capsys, "train", recipe, "--out", run)
    assert not run.exists()


def test_missing_column_suggests_nearest(small, tmp_path, capsys):
    recipe = small(make_news(40), data={"text": "{title}. {descripton}"})
    line = fails(capsys, "check", recipe)
    assert "column 'descripton'" in line and "did you mean 'description'" in line
    assert str(tmp_path / "train.csv") in line
    line = fails(capsys, "check", small(make_news(40), data={"label": "lable"}))
    assert "column 'lable'" in line and "did you mean 'label'" in line


def test_duplicate_column_names(small, tmp_path, capsys):
    write_csv(tmp_path / "train.csv", "title,title ,description,label\na,b,c,World\nd,e,f,Sports\n")
    line = fails(capsys, "check", small())
    assert "column name 'title' appears twice" in line and "rename" in line


@pytest.mark.parametrize("missing", ["", "nan", "NaN"])
def test_empty_or_nan_label_in_train_names_the_line(small, capsys, missing):
    df = make_news(40).astype(object)
    df.loc[5, "label"] = missing
    line = fails(capsys, "check", small(df))
    assert "1 empty label(s) in column 'label' of train" in line
    assert "data row 6 (file line 7)" in line  # row 5 + header + 1-based
    assert "fill them or drop those rows" in line


def test_null_label_in_jsonl(small, tmp_path, capsys):
    df = make_news(40)
    rows = df.to_dict("records")
    rows[3]["label"] = None
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    line = fails(capsys, "check", small(suffix=".jsonl"))
    assert "empty label(s)" in line and "(file line 5)" in line


def test_single_class(small, capsys):
    df = make_news(40)
    df["label"] = "World"
    line = fails(capsys, "check", small(df))
    assert "single class ('World')" in line and "at least two" in line


def test_class_too_small_to_stratify_warns_and_recipe_silences(small, capsys, caplog):
    df = make_news(41)  # 11/10/10/10 rows ...
    df.loc[40, "label"] = "Rare"  # ... and one class with a single row
    with caplog.at_level(logging.WARNING):
        assert main(["check", str(small(df))]) == 0
    warned = [r.getMessage() for r in caplog.records if "not stratified" in r.getMessage()]
    assert len(warned) == 1 and "'Rare'" in warned[0] and "data.warn_unstratified" in warned[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert main(["check", str(small(df, data={"warn_unstratified": False}))]) == 0
    assert not [r for r in caplog.records if "not stratified" in r.getMessage()]
    assert "labels:" in capsys.readouterr().out


def test_train_label_missing_from_data_labels(small, capsys):
    labels = ["World", "Sports", "Business"]  # Sci/Tech is in the file
    line = fails(capsys, "check", small(make_news(40), data={"labels": labels}))
    assert "label(s) ['Sci/Tech'] in column 'label' are not in data.labels; add them to data.labels" in line


@pytest.mark.parametrize("split", ["validation", "test"])
def test_label_unseen_in_train(small, tmp_path, capsys, split):
    other = make_news(20, seed=3)
    other.loc[2, "label"] = "Weather"
    other.to_csv(tmp_path / "other.csv", index=False)
    line = fails(capsys, "check", small(make_news(40), data={split: str(tmp_path / "other.csv")}))
    assert f"{tmp_path / 'other.csv'}: {split} label(s) ['Weather']" in line
    assert "never occur in train" in line and "data.labels" in line


# ------------------------------------------------------------------------------------------------ encodings


def test_cp1252_is_detected_and_read(small, tmp_path, capsys, caplog):
    df = make_news(40)
    df.loc[0, "title"] = "Café prices rise 5€"
    (tmp_path / "train.csv").write_bytes(df.to_csv(index=False).encode("cp1252"))
    with caplog.at_level(logging.WARNING):
        assert main(["check", str(small())]) == 0
    assert any("read as cp1252" in r.getMessage() for r in caplog.records)
    assert read_table(tmp_path / "train.csv").loc[0, "title"] == "Café prices rise 5€"


def test_undecodable_bytes_name_the_offset(small, tmp_path, capsys):
    head = b"id,title,description,label\n1,ok,fine,World\n2,bad"
    # 0x81 is invalid UTF-8 and undefined in cp1252
    write_csv(tmp_path / "train.csv", head + b"\x81\x81,x,Sports\n")
    line = fails(capsys, "check", small())
    assert f"first bad byte at offset {len(head)}" in line and "re-save the file as UTF-8" in line


def test_binary_and_spreadsheet_files_are_named(small, tmp_path, capsys):
    write_csv(tmp_path / "train.csv", b"PK\x03\x04\x14\x00\x06\x00rest of a workbook")
    assert "zip archive" in fails(capsys, "check", small())
    write_csv(tmp_path / "train.csv", b"id,title\n1,\x00\x00\x00")
    assert "NUL byte at offset 11" in fails(capsys, "check", small())
    write_csv(tmp_path / "train.xlsx", b"PK\x03\x04")
    line = fails(capsys, "check", small(suffix=".xlsx"))
    assert "unknown file type '.xlsx'" in line and "CSV UTF-8" in line


def test_bom_crlf_quoted_multiline_and_utf16_just_work(small, tmp_path, capsys):
    df = make_news(40)
    df.loc[1, "description"] = 'line one\r\nline "two", with a comma\nline three'
    csv_text = df.to_csv(index=False, lineterminator="\r\n")
    for raw in (b"\xef\xbb\xbf" + csv_text.encode("utf-8"), csv_text.encode("utf-16")):
        (tmp_path / "train.csv").write_bytes(raw)
        got = read_table(tmp_path / "train.csv")
        assert list(got.columns) == ["id", "title", "description", "label"]  # no BOM glued to 'id'
        assert len(got) == 40
        assert got.loc[1, "description"].splitlines() == ["line one", 'line "two", with a comma', "line three"]
        assert main(["check", str(small())]) == 0
        assert "train: 36 rows" in capsys.readouterr().out


def test_empty_texts_are_allowed_and_counted(small, capsys):
    df = make_news(40).astype(object)
    df.loc[[3, 7], ["title", "description"]] = ""
    assert main(["check", str(small(df))]) == 0
    out = capsys.readouterr().out
    counts = [int(line.split(":")[1]) for line in out.splitlines() if "empty texts" in line]
    assert sum(counts) == 2 and len(counts) == 2  # train + validation


def test_multi_megabyte_cell_is_cut_not_blown_up(small, capsys):
    df = make_news(40)
    df.loc[0, "description"] = "stocks " * 600_000  # 4.2 MB in one cell
    start = time.perf_counter()
    assert main(["check", str(small(df, data={"max_length": 16}))]) == 0
    elapsed = time.perf_counter() - start
    out = capsys.readouterr().out
    # the token count of the huge cell is bounded by the character cap, not by its 600k words
    p100 = max(int(line.split("p100 ")[1].split(";")[0]) for line in out.splitlines() if "p100" in line)
    assert 16 < p100 <= 16 * CHARS_PER_TOKEN_CAP
    assert elapsed < 30, elapsed


# ------------------------------------------------------------------------------------------------- recipes


@pytest.mark.parametrize(
    ("sets", "expect"),
    [
        (["train.lr=fast"], "key 'train.lr': Input should be a valid number"),
        (["train.batch_size=0"], "key 'train.batch_size'"),
        (["data.lable=x"], "unknown key 'data.lable' (did you mean 'label'?)"),
        (["trian.lr=1"], "unknown key 'trian' (did you mean 'train'?)"),
        (["train.lr"], "expected KEY=VALUE"),
        (["data.max_length.x=1"], "'data.max_length' is not a section"),
        (["data.text={title"], "template '{title' is malformed"),
        (["data.warn_unstratified=maybe"], "key 'data.warn_unstratified'"),
    ],
)
def test_bad_override(small, capsys, sets, expect):
    recipe = small(make_news(40))
    argv = ["check", recipe]
    for s in sets:
        argv += ["--set", s]
    assert expect in fails(capsys, *argv)


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("train:\n  epochz: 2\n", "unknown key 'train.epochz' (did you mean 'epochs'?)"),
        ("train:\n  epochs: many\n", "key 'train.epochs'"),
        ("train: [1, 2\n", "not valid YAML at line"),
        ("- a\n- b\n", "a recipe is a mapping"),
        ("model:\n  trust_remote_code: perhaps\n", "key 'model.trust_remote_code'"),
    ],
)
def test_bad_recipe_file(tmp_path, capsys, text, expect):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    line = fails(capsys, "check", path)
    assert f"{path}: " in line and expect in line
    assert "recipe file not found" in fails(capsys, "check", tmp_path / "nope.yaml")


def test_corrupted_base_model_leaves_no_run_directory(tmp_path, tiny_model, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a download cut short
    make_news(40).to_csv(tmp_path / "train.csv", index=False)
    recipe = write_recipe(tmp_path / "recipe.yaml", model, tmp_path / "train.csv", train={"max_steps": 1})
    run = tmp_path / "run"
    line = fails(capsys, "train", recipe, "--out", run)
    assert f"model.name: the weights in {model} are unreadable" in line and "download them again" in line
    assert not run.exists()  # the run directory made for the lock is removed again


# -------------------------------------------------------------------------------------------------- pickle


class _Payload:
    """Unpickling this creates a file: proof that loading a pickle runs code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_refused_unless_allowed(small, tmp_path, capsys):
    marker = tmp_path / "pwned"
    (tmp_path / "train.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    line = fails(capsys, "check", small(suffix=".pkl"))
    assert "pickle files can run arbitrary code" in line and "--allow-pickle" in line
    assert not marker.exists()

    make_news(40).to_pickle(tmp_path / "train.pkl")
    assert "--allow-pickle" in fails(capsys, "check", small(suffix=".pkl"))
    assert main(["check", str(small(suffix=".pkl")), "--allow-pickle"]) == 0
    assert "train: 36 rows" in capsys.readouterr().out


def test_trust_remote_code_is_off_by_default_and_warns_when_on(tiny_model):
    from textune.models.backbone import load_classifier
    from textune.recipe import Recipe

    assert Recipe().model.trust_remote_code is False
    with pytest.warns(UserWarning, match="trust_remote_code is on"):
        load_classifier(str(tiny_model), {"num_labels": 2}, trust_remote_code=True)


# ------------------------------------------------------------------------------------- predict and run dirs


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model) -> dict[str, Path]:
    """One short run shared by the predict/run-directory tests (they copy it before damaging it)."""
    return train_small_run(tmp_path_factory.mktemp("bad_input_run"), tiny_model)


def test_predict_duplicate_ids(trained, tmp_path, capsys):
    df = make_news(12, seed=5)
    df.loc[7, "id"] = df.loc[2, "id"]
    df.to_csv(tmp_path / "dup.csv", index=False)
    out = tmp_path / "sub.csv"
    line = fails(capsys, "predict", trained["run"], "--input", tmp_path / "dup.csv", "--output", out)
    assert "column 'id' has 1 duplicate id(s)" in line and "file line 9" in line and "must be unique" in line
    assert not out.exists()


def test_predict_input_lacking_training_columns(trained, tmp_path, capsys):
    make_news(12, seed=5).drop(columns=["description"]).to_csv(tmp_path / "in.csv", index=False)
    out = tmp_path / "sub.csv"
    line = fails(capsys, "predict", trained["run"], "--input", tmp_path / "in.csv", "--output", out)
    assert f"{tmp_path / 'in.csv'}: column 'description' (from the run's data.text) not found" in line
    assert not out.exists()
    assert not list(tmp_path.glob(".sub.csv*"))  # no temporary left behind either


def _damage(run: Path, how: str) -> None:
    if how == "incomplete":
        (run / "manifest.json").unlink()
    elif how == "no-model-config":
        (run / "model" / "config.json").unlink()
    elif how == "newer":
        manifest = json.loads((run / "manifest.json").read_text())
        manifest["format"] = 99
        (run / "manifest.json").write_text(json.dumps(manifest))
    elif how == "corrupted":
        weights = run / "model" / "model.safetensors"
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif how == "labels-edited":
        labels = json.loads((run / "task.json").read_text())
        labels["labels"] = labels["labels"][::-1]
        (run / "task.json").write_text(json.dumps(labels))
    elif how == "planted-pickle":
        (run / "model" / "pytorch_model.bin").write_bytes(pickle.dumps({"x": 1}))
    elif how == "manifest-garbage":
        (run / "manifest.json").write_text("[1, 2")
    elif how == "manifest-list":
        (run / "manifest.json").write_text("[]")


@pytest.mark.parametrize(
    ("how", "expect"),
    [
        ("incomplete", "incomplete run directory (manifest.json missing)"),
        ("no-model-config", "incomplete run directory (model/config.json missing)"),
        ("newer", "written by a newer textune"),
        ("corrupted", "checksum mismatch for model/model.safetensors"),
        ("labels-edited", "checksum mismatch for task.json"),
        ("planted-pickle", "model/pytorch_model.bin is not listed in manifest.json"),
        ("manifest-garbage", "manifest.json: not valid JSON"),
        ("manifest-list", "manifest.json: has no file checksums"),
    ],
)
@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_damaged_run_directory_is_refused(trained, tmp_path, capsys, how, expect, command):
    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    _damage(run, how)
    out = tmp_path / "out.csv"
    line = fails(capsys, command, run, "--input", trained["input"], "--output", out)
    assert str(run) in line and expect in line
    assert not out.exists()


def test_intact_run_directory_predicts(trained, tmp_path, capsys):
    # the control for the damage tests above: the same copy, undamaged, is accepted
    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    out = tmp_path / "out.csv"
    assert main(["predict", str(run), "--input", str(trained["input"]), "--output", str(out)]) == 0
    sub = pd.read_csv(out)
    assert sub["id"].tolist() == make_news(12, seed=5)["id"].tolist()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch notes the protocol before refusing
def test_malicious_checkpoint_is_not_unpickled(trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    marker = tmp_path / "pwned"
    (run / "checkpoints" / "last" / "optimizer.pt").write_bytes(pickle.dumps(_Payload(marker)))
    line = fails(capsys, "train", "--resume", run)
    assert "checkpoints/last: checkpoint is unreadable" in line
    assert not marker.exists()


# ------------------------------------------------------------------------------- headers, formats, row wording


@pytest.mark.parametrize("sep", [",", "\t"])
def test_duplicate_raw_header_name_is_refused(small, tmp_path, capsys, sep):
    # pandas silently renames the second 'title' to 'title.1'; the raw header must be checked
    suffix = ".csv" if sep == "," else ".tsv"
    header = sep.join(["id", "title", "title", "label"])
    write_csv(tmp_path / f"train{suffix}", f"{header}\n1{sep}a{sep}b{sep}World\n2{sep}c{sep}d{sep}Sports\n")
    line = fails(capsys, "check", small(suffix=suffix))
    assert f"{tmp_path / f'train{suffix}'}: column name 'title' appears twice in the header" in line
    assert "rename" in line


def test_header_name_that_looks_mangled_is_accepted(tmp_path):
    # a real column named 'title.1' next to 'title' is no duplicate
    path = write_csv(tmp_path / "t.csv", "title,title.1,,\na,b,c,d\n")
    assert list(read_table(path).columns)[:2] == ["title", "title.1"]


def test_corrupt_parquet_gets_parquet_advice(small, tmp_path, capsys):
    (tmp_path / "train.parquet").write_bytes(b"PAR1" + b"garbage" * 20 + b"PAR1")
    line = fails(capsys, "check", small(suffix=".parquet"))
    assert f"{tmp_path / 'train.parquet'}: cannot be parsed as parquet" in line
    assert "is the file corrupted or not Parquet?" in line and "quoting" not in line


def test_unparseable_jsonl_gets_jsonl_advice(tmp_path, monkeypatch):
    from textune.data import io as data_io
    from textune.errors import TextuneError

    path = write_csv(tmp_path / "t.jsonl", '{"a": 1}\n')

    def broken(*a, **k):
        raise ValueError("Trailing data")

    monkeypatch.setattr(data_io.pd, "read_json", broken)
    with pytest.raises(TextuneError) as exc:
        read_table(path)
    assert "cannot be parsed as jsonl (Trailing data)" in str(exc.value)
    assert "one JSON object per line" in str(exc.value) and "quoting" not in str(exc.value)


def test_row_ref_names_data_row_and_file_line():
    from textune.data.io import row_ref

    assert row_ref(0) == "data row 1 (file line 2)"
    assert row_ref(9) == "data row 10 (file line 11)"
    assert row_ref(4, file_line=9) == "data row 5 (file line 9)"


def test_rows_ref_names_several_rows_the_same_way():
    """Every message names rows one way (tasks said "file lines", others "data rows" for the same rows)."""
    from textune.data.io import rows_ref

    assert rows_ref([2]) == "data row 3 (file line 4)"
    assert rows_ref([2, 6]) == "data rows 3, 7 (file lines 4, 8)"
    assert rows_ref(range(7)) == "data rows 1, 2, 3, 4, 5 ... (file lines 2, 3, 4, 5, 6 ...)"


def test_ragged_csv_row_names_data_row_and_file_line(small, tmp_path, capsys):
    # a quoted cell over three lines and a blank line: the file line is counted, not guessed
    text = 'id,title,description,label\n1,"a\nb\nc",x,World\n\n2,d,e,Sports\n3,f,g,h,Sports\n'
    write_csv(tmp_path / "train.csv", text)
    line = fails(capsys, "check", small())
    assert "data row 3 (file line 7) has 5 fields but the header has 4" in line
    assert "check quoting and delimiters" in line


def test_invalid_jsonl_line_names_data_row_and_file_line(small, tmp_path, capsys):
    write_csv(tmp_path / "train.jsonl", '{"id": 1}\n\n{"id": 2\n')
    line = fails(capsys, "check", small(suffix=".jsonl"))
    assert "data row 2 (file line 3) is not valid JSON" in line and "one JSON object per line" in line


# --------------------------------------------------------------------------------------------- CLI bounds


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["train", "nope.yaml", "--processes", "0"], "--processes"),
        (["train", "nope.yaml", "--processes", "-1"], "--processes"),
        (["train", "nope.yaml", "--processes", "two"], "--processes"),
        (["params", "nope.yaml", "--num-labels", "0"], "--num-labels"),
        (["params", "nope.yaml", "--num-labels", "-3"], "--num-labels"),
        (["embed", "nope", "--input", "nope.csv", "--output", "e.npy", "--batch-size", "0"], "--batch-size"),
        (["embed", "nope", "--input", "nope.csv", "--output", "e.npy", "--max-length", "-5"], "--max-length"),
        (["embed", "nope", "--input", "nope.csv", "--output", "e.npy", "--max-length", "4"], "--max-length"),
    ],
)
def test_numeric_option_bounds(tmp_path, monkeypatch, capsys, argv, option):
    monkeypatch.chdir(tmp_path)  # nothing may be written, and surely not into the repository
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and option in lines[0], err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------- startup time


def _heavy_imports(stderr: str) -> list[str]:
    """Modules named in ``-X importtime`` output that belong to torch or transformers."""
    names = [line.rsplit("|", 1)[-1].strip() for line in stderr.splitlines() if line.startswith("import time:")]
    return [n for n in names if n.split(".")[0] in ("torch", "transformers")]


@pytest.mark.parametrize("command", ["check", "train", "params", "baseline", "tune"])
def test_recipe_typo_is_reported_before_torch_is_imported(tmp_path, command):
    import subprocess
    import sys

    recipe = tmp_path / "bad.yaml"
    recipe.write_text("train:\n  epochz: 2\n")
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "textune.cli", command, str(recipe)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if not line.startswith("import time:")]
    assert errors == [f"error: {recipe}: unknown key 'train.epochz' (did you mean 'epochs'?)"], errors
    assert _heavy_imports(proc.stderr) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]
