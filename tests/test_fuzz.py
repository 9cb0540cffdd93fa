"""Property-based: generated files and recipes fed to ``read_table``, ``check`` and ``predict`` give a result or
exit code 2 with one ``error:`` line; never an uncaught exception, never a half-written output."""

from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path

import pytest
from conftest import make_news, write_recipe
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from textune.cli import main
from textune.data.io import read_table
from textune.errors import TextuneError

FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

COLUMNS = ["id", "title", "description", "label", "text"]
LABELS = ["World", "Sports", "Business", "Sci/Tech"]
NESTED = '{"id": [1], "title": {"a": 1}, "label": "World"}'
cells = st.one_of(
    st.sampled_from(["", " ", "nan", "NaN", '"', '""', ",", "\n", "\r\n", "\t", "{", "}", "é€ü", "a\x00b", *LABELS]),
    st.text(max_size=20),
    st.integers(-5, 10**12).map(str),
)
header_names = st.one_of(st.sampled_from([*COLUMNS, " label", "Label", "", "id.1", "Unnamed: 0"]), st.text(max_size=6))


@st.composite
def tables(draw) -> tuple[list[str], list[list[str]]]:
    """A header and rows: mostly a valid news table with a few damaged cells, else anything at all."""
    if draw(st.booleans()):
        df = make_news(draw(st.integers(1, 30)), seed=draw(st.integers(0, 3)))
        header = list(df.columns)
        rows = df.astype(str).values.tolist()
        for _ in range(draw(st.sampled_from([0, 0, 0, 1, 3]))):
            r, c = draw(st.integers(0, len(rows) - 1)), draw(st.integers(0, len(header) - 1))
            rows[r][c] = draw(cells)
        if not draw(st.integers(0, 4)):
            header[draw(st.integers(0, len(header) - 1))] = draw(header_names)
        if not draw(st.integers(0, 4)):
            rows.append(draw(st.lists(cells, max_size=7)))  # a ragged row
        return header, rows
    header = draw(st.lists(header_names, max_size=6))
    return header, draw(st.lists(st.lists(cells, max_size=7), max_size=10))


@st.composite
def files(draw) -> tuple[str, bytes]:
    """``(suffix, bytes)``: CSV/TSV with random quoting, line ends and encodings, JSON lines, or random bytes."""
    kind = draw(st.sampled_from(["csv", "csv", "csv", "tsv", "jsonl", "bytes"]))
    if kind == "bytes":
        return draw(st.sampled_from([".csv", ".tsv", ".jsonl", ".parquet"])), draw(st.binary(max_size=300))
    header, rows = draw(tables())
    if kind == "jsonl":
        lines = [json.dumps(dict(zip(header, row, strict=False))) for row in rows]
        if not draw(st.integers(0, 3)):
            lines.append(draw(st.sampled_from(["[1, 2]", "{", "3", "null", '{"label": [1, {"a": 2}]}', NESTED, ""])))
        text = "\n".join(lines)
    else:
        sep = "," if kind == "csv" else "\t"
        newline = draw(st.sampled_from(["\n", "\r\n", "\r"]))
        style = draw(st.sampled_from(["minimal", "minimal", "all", "none", "raw"]))
        # "raw": no quoting at all, so separators and newlines inside cells break rows
        text = newline.join(sep.join(r) for r in [header, *rows])
        if style != "raw":
            buf = io.StringIO()
            quoting = {"minimal": csv.QUOTE_MINIMAL, "all": csv.QUOTE_ALL, "none": csv.QUOTE_NONE}[style]
            writer = csv.writer(buf, delimiter=sep, quoting=quoting, escapechar="\\", lineterminator=newline)
            try:
                writer.writerow(header)
                writer.writerows(rows)
                text = buf.getvalue()
            except csv.Error:  # QUOTE_NONE cannot write a lone empty field: keep the raw text
                pass
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-8", "utf-8-sig", "cp1252", "utf-16", "latin-1"]))
    return f".{kind}", text.encode(encoding, errors="replace")


# Mostly sound choices, so that generated files get past the recipe and reach the data checks.
RECIPE_KEYS = st.fixed_dictionaries(
    {
        "text": st.sampled_from(["{title}. {description}"] * 5 + ["title", "{title} {nope}", "{", "{0}", "{title.x}"]),
        "label": st.sampled_from(["label"] * 5 + ["Label"]),
        "id": st.sampled_from([None, "id", "nope"]),
        "valid_fraction": st.sampled_from([0.1, 0.3, 0.9]),
    }
)
OVERRIDES = st.lists(
    st.sampled_from(
        [
            "data.warn_unstratified=false",
            "data.max_length=8",
            "data.labels=[World, Sports, Business, Sci/Tech]",
            "data.max_rows=3",
            "data.labels=[World, World]",
            "data.labels=[1, 2]",
            "train.lr=abc",
            "data=5",
            "task=regression",
            "unknown.key=1",
            "data.text=",
            "model.name=/nonexistent/model",
        ]
    ),
    max_size=1,
)


def outcome(capsys, argv: list[str]) -> int:
    code = main(argv)
    err = capsys.readouterr().err
    event(f"{argv[0]} exit {code}")
    assert code in (0, 2), (code, err)
    lines = [line for line in err.splitlines() if line.strip()]
    if code == 2:
        assert len(lines) == 1 and lines[0].startswith("error: "), err
    else:
        assert not any(line.startswith("error") for line in lines), err
    assert "Traceback" not in err
    return code


@settings(FUZZ, max_examples=300)
@given(data=files())
def test_read_table_returns_a_table_or_a_textune_error(data):
    suffix, raw = data
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"in{suffix}"
        path.write_bytes(raw)
        try:
            df = read_table(path)
        except TextuneError as exc:
            assert str(path) in str(exc) and "\n" not in str(exc)
            return
        assert len(df) > 0 and len(df.columns) > 0
        assert len(set(df.columns)) == len(df.columns)


@settings(FUZZ, max_examples=40)
@given(train=files(), valid=st.one_of(st.none(), st.none(), files()), keys=RECIPE_KEYS, sets=OVERRIDES)
def test_check_never_crashes(tiny_model, capsys, train, valid, keys, sets):
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        (d / f"train{train[0]}").write_bytes(train[1])
        data = {**keys, "max_length": 16}
        if valid is not None:
            (d / f"valid{valid[0]}").write_bytes(valid[1])
            data["validation"] = str(d / f"valid{valid[0]}")
        recipe = write_recipe(d / "recipe.yaml", tiny_model, d / f"train{train[0]}", data=data)
        argv = ["check", str(recipe)]
        for s in sets:
            argv += ["--set", s]
        outcome(capsys, argv)
        assert sorted(p.name for p in d.iterdir()) == sorted(  # check writes nothing
            ["recipe.yaml", f"train{train[0]}"] + ([f"valid{valid[0]}"] if valid is not None else [])
        )


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model) -> Path:
    base = tmp_path_factory.mktemp("fuzz_run")
    make_news(40).to_csv(base / "train.csv", index=False)
    recipe = write_recipe(base / "recipe.yaml", tiny_model, base / "train.csv", train={"max_steps": 1})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TEXTUNE_CACHE", str(base / "cache"))
        assert main(["train", str(recipe), "--out", str(base / "run")]) == 0
    return base / "run"


@settings(FUZZ, max_examples=30)
@given(data=files(), proba=st.booleans())
@example(data=(".csv", b"\x80"), proba=False)  # found by CI: a one-byte file the streaming reader took for UTF-8
def test_predict_never_crashes(run, capsys, data, proba):
    suffix, raw = data
    with tempfile.TemporaryDirectory() as d:
        src, out = Path(d) / f"input{suffix}", Path(d) / "sub.csv"
        src.write_bytes(raw)
        argv = ["predict", str(run), "--input", str(src), "--output", str(out)] + (["--proba"] if proba else [])
        if outcome(capsys, argv) == 0:
            import pandas as pd

            sub = pd.read_csv(out, keep_default_na=False)
            assert len(sub) == len(read_table(src))
        else:
            assert not out.exists()
        assert sorted(p.name for p in Path(d).iterdir()) == sorted([src.name] + ([out.name] if out.exists() else []))
