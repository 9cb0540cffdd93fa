"""Prediction at scale: a file streamed in chunks gives exactly the table of the whole file predicted at once."""

from __future__ import annotations

import csv

import pandas as pd
import pytest

from textune import Predictor, load_recipe, train
from textune.errors import TextuneError


@pytest.fixture(scope="module")
def predictor(tmp_path_factory, tiny_model):
    from conftest import make_news, write_recipe

    base = tmp_path_factory.mktemp("stream")
    make_news(120, 0).to_csv(base / "train.csv", index=False)
    recipe = write_recipe(base / "recipe.yaml", tiny_model, base / "train.csv", train={"max_steps": 3})
    return Predictor.load(train(load_recipe(recipe), out=base / "run"))


@pytest.fixture
def rows(tmp_path):
    from conftest import make_news

    df = make_news(53, 7)
    df.loc[5, "description"] = "line one\rline two"  # a carriage return inside a cell must survive the chunks
    return df


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
@pytest.mark.parametrize("proba", [False, True])
def test_streamed_file_equals_the_whole_file_predicted_at_once(predictor, rows, tmp_path, suffix, proba):
    path = tmp_path / f"in{suffix}"
    {
        ".csv": lambda: rows.to_csv(path, index=False, quoting=csv.QUOTE_NONNUMERIC),
        ".parquet": lambda: rows.to_parquet(path, index=False),
    }.get(suffix, lambda: rows.to_json(path, orient="records", lines=True))()
    out = tmp_path / "out.csv"
    assert predictor.predict_file(path, out, proba=proba, chunk_rows=7) == len(rows)  # 8 chunks, the last of 4
    whole = predictor.submission(predictor.read_input(path), proba=proba)
    streamed = pd.read_csv(out, keep_default_na=False)
    assert streamed["id"].tolist() == rows["id"].tolist()
    pd.testing.assert_frame_equal(streamed, whole.astype(streamed.dtypes.to_dict()), check_exact=False, atol=1e-7)


def test_an_id_repeated_in_a_later_chunk_is_refused_and_nothing_is_written(predictor, rows, tmp_path):
    rows.loc[40, "id"] = rows.loc[3, "id"]  # chunks of 7: rows 3 and 40 are five chunks apart
    path = tmp_path / "in.csv"
    rows.to_csv(path, index=False, quoting=csv.QUOTE_NONNUMERIC)
    with pytest.raises(TextuneError, match=r"duplicate id\(s\) \(first: 'n00003' at data row 41 \(file line 42\)\)"):
        predictor.predict_file(path, tmp_path / "out.csv", chunk_rows=7)
    assert not (tmp_path / "out.csv").exists()


def test_prediction_writes_no_token_cache_and_fingerprints_the_tokenizer_once(predictor, tmp_path, monkeypatch):
    """A served model encodes every request: no cache file (two fsyncs) per call, and the tokenizer is serialised
    for its cache key once, not per call (45-95 ms each, more than the forward pass of a few texts)."""
    import textune.data.tokenize as tok

    monkeypatch.setenv("TEXTUNE_CACHE", str(tmp_path / "cache"))
    calls = []
    real = tok._fingerprint
    monkeypatch.setattr(tok, "_fingerprint", lambda t: calls.append(1) or real(t))
    tok._FINGERPRINTS.clear()
    for text in ("stocks rally", "the match ended", "new chip"):
        predictor.predict([text])
    assert not (tmp_path / "cache").exists()
    assert tok.tokenizer_fingerprint(predictor.tokenizer) == real(predictor.tokenizer)
    assert len(calls) <= 1


def test_without_an_id_column_row_numbers_continue_across_chunks(predictor, rows, tmp_path, monkeypatch):
    monkeypatch.setattr(predictor.recipe.data, "id", None)  # a run without data.id: rows are keyed by number
    path = tmp_path / "in.csv"
    rows.drop(columns="id").to_csv(path, index=False, quoting=csv.QUOTE_NONNUMERIC)
    predictor.predict_file(path, tmp_path / "out.csv", chunk_rows=7)
    assert pd.read_csv(tmp_path / "out.csv")["id"].tolist() == list(range(len(rows)))


def test_a_short_file_that_is_not_utf8_is_read_as_the_whole_file_reader_reads_it(tmp_path):
    """The fuzz case that crashed CI: b'\\x80' is a whole (tiny) file, not a UTF-8 character cut by the sample."""
    from textune.data.io import iter_table, read_table

    path = tmp_path / "in.csv"
    path.write_bytes("id,text\n1,café €5\n".encode("cp1252"))
    pd.testing.assert_frame_equal(pd.concat(iter_table(path, 7)), read_table(path))
    path.write_bytes(b"\x80")
    with pytest.raises(TextuneError) as whole:
        read_table(path)
    with pytest.raises(TextuneError) as streamed:
        list(iter_table(path, 7))
    assert str(streamed.value) == str(whole.value)


def test_a_bad_byte_deep_in_a_file_is_read_as_the_whole_file_reader_reads_it(tmp_path):
    """Training reads such a file (cp1252 fallback, with a warning): prediction must not refuse it."""
    from textune.data.io import iter_table, read_table

    path = tmp_path / "in.csv"
    path.write_bytes(b"id,text\n" + b"".join(b"%d,plain text\n" % i for i in range(80_000)) + b"9,caf\xe9\n")
    streamed = pd.concat(iter_table(path, 10_000))
    pd.testing.assert_frame_equal(streamed, read_table(path))
    assert streamed["text"].iloc[-1] == "café"


def _predict_cli(*args, cwd):
    import os
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "textune.cli", "predict", *map(str, args)],
        cwd=cwd,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_two_processes_write_the_table_of_one(predictor, rows, tmp_path):
    """--processes 2 (torchrun, gloo): chunks 0, 2, 4... in one process, 1, 3, 5... in the other, joined in file
    order: the table one process writes; no parts folder left behind."""
    path = tmp_path / "in.csv"
    rows.to_csv(path, index=False, quoting=csv.QUOTE_NONNUMERIC)
    one, two = tmp_path / "one.csv", tmp_path / "two.csv"
    predictor.predict_file(path, one, proba=True, chunk_rows=7)
    done = _predict_cli(
        predictor.run_dir,
        "--input",
        path,
        "--output",
        two,
        "--proba",
        "--chunk-rows",
        7,
        "--processes",
        2,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{len(rows)} predictions written" in done.stdout and done.stdout.count("predictions written") == 1
    # the same table; probabilities to float tolerance (torchrun gives each process one thread: other sum orders)
    pd.testing.assert_frame_equal(pd.read_csv(two), pd.read_csv(one), check_exact=False, atol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "one.csv", "two.csv"]


def test_two_processes_refuse_a_repeated_id_and_write_nothing(predictor, rows, tmp_path):
    rows.loc[40, "id"] = rows.loc[3, "id"]
    path = tmp_path / "in.csv"
    rows.to_csv(path, index=False, quoting=csv.QUOTE_NONNUMERIC)
    done = _predict_cli(
        predictor.run_dir,
        "--input",
        path,
        "--output",
        tmp_path / "out.csv",
        "--chunk-rows",
        7,
        "--processes",
        2,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert "duplicate id(s) (first: 'n00003'" in done.stderr and "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]


def test_prediction_without_targets_imports_no_metrics_library(predictor, rows, tmp_path):
    """scikit-learn costs ~0.6 s of every `textune predict` start: loading a run and predicting rows without targets
    must not import it, nor matplotlib (metrics, calibration fits and plots import them where they run). SciPy is
    not checked: transformers' model loading imports it."""
    import subprocess
    import sys
    import textwrap

    rows.drop(columns=["label"]).to_csv(tmp_path / "rows.csv", index=False, quoting=csv.QUOTE_NONNUMERIC)
    code = textwrap.dedent(
        f"""
        import sys
        from textune import Predictor
        Predictor.load({str(predictor.run_dir)!r}).predict_file({str(tmp_path / "rows.csv")!r},
                                                                {str(tmp_path / "out.csv")!r})
        print("loaded:", sorted(m for m in ("sklearn", "matplotlib") if m in sys.modules))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "loaded: []" in out
    assert len(pd.read_csv(tmp_path / "out.csv")) == len(rows)
