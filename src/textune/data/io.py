"""Read a data file into a DataFrame, with one clear error for every way a file can be unusable."""

from __future__ import annotations

import csv
import hashlib
import io
import string
from pathlib import Path

import pandas as pd

from textune.errors import TextuneError, did_you_mean

FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".txt": "csv",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
}
# Tried in order after UTF-8; cp1252 covers most Windows exports, latin-1 decodes any byte (last resort).
FALLBACK_ENCODINGS = ("cp1252", "latin-1")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _decode(path: Path, raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")  # -sig strips a byte-order mark
    except UnicodeDecodeError as exc:
        first_bad = exc.start
    for enc in FALLBACK_ENCODINGS[:-1]:
        try:
            return raw.decode(enc)
        except UnicodeDecodeError:
            continue
    raise TextuneError(
        f"{path}: not UTF-8 (first bad byte at offset {first_bad}) nor cp1252; re-save the file as UTF-8"
    )


def read_table(path: str | Path, *, allow_pickle: bool = False) -> pd.DataFrame:
    """Reads CSV/TSV/JSONL/Parquet as strings-or-numbers, keeping every row in file order.

    Raises:
        TextuneError: missing, empty or header-only file; unknown format; undecodable bytes; malformed rows.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".pkl", ".pickle"):
        hint = "" if allow_pickle else "; convert it to CSV or Parquet"
        raise TextuneError(
            f"{path}: pickle files can run arbitrary code when loaded, so textune does not read them{hint}"
        )
    if not path.is_file():
        raise TextuneError(f"{path}: file not found; check the path (relative paths are read from the recipe's folder)")
    if path.stat().st_size == 0:
        raise TextuneError(f"{path}: file is empty; it needs a header row and at least one data row")
    fmt = FORMATS.get(suffix)
    if fmt is None:
        raise TextuneError(f"{path}: unknown file type '{suffix}'; use .csv, .tsv, .jsonl or .parquet")
    try:
        if fmt == "parquet":
            df = pd.read_parquet(path)
        else:
            text = _decode(path, path.read_bytes())
            if not text.strip():
                raise TextuneError(f"{path}: file is empty; it needs a header row and at least one data row")
            if fmt == "jsonl":
                df = pd.read_json(io.StringIO(text), lines=True, dtype=False)
            else:
                sep = "\t" if fmt == "tsv" else ","
                # keep_default_na=False: an empty cell stays "" (an empty text is allowed); only a truly
                # missing value becomes NaN, which matters for labels.
                df = pd.read_csv(
                    io.StringIO(text),
                    sep=sep,
                    dtype=str,
                    keep_default_na=False,
                    na_values=[""],
                    quoting=csv.QUOTE_MINIMAL,
                    engine="python" if len(text) > 50_000_000 else "c",
                )
    except TextuneError:
        raise
    except (pd.errors.ParserError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TextuneError(f"{path}: cannot be parsed as {fmt} ({first}); check quoting and delimiters") from None
    except Exception as exc:  # pyarrow and friends raise their own types for corrupt files
        raise TextuneError(f"{path}: cannot be read as {fmt} ({type(exc).__name__}); is the file corrupted?") from None
    if len(df.columns) == 0:
        raise TextuneError(f"{path}: no columns found; the first row must be a header")
    if len(df) == 0:
        raise TextuneError(f"{path}: has a header but no data rows")
    df.columns = [str(c).strip() for c in df.columns]
    return df.reset_index(drop=True)


def template_columns(template: str) -> list[str]:
    """Column names used by a text spec: a plain column name, or the ``{fields}`` of a template."""
    fields = [f for _, f, _, _ in string.Formatter().parse(template) if f]
    return fields or [template]


def require_columns(df: pd.DataFrame, columns: list[str], path: str | Path, key: str) -> None:
    for col in columns:
        if col not in df.columns:
            raise TextuneError(
                f"{path}: column '{col}' (from {key}) not found{did_you_mean(col, df.columns)}; "
                f"columns are: {', '.join(map(str, df.columns))}"
            )


def render_texts(df: pd.DataFrame, template: str, path: str | Path, key: str = "data.text") -> list[str]:
    """Builds one string per row from a column name or a ``{col}`` template; missing cells become ''."""
    cols = template_columns(template)
    require_columns(df, cols, path, key)
    if cols == [template]:
        return df[template].fillna("").astype(str).tolist()
    frame = df[cols].fillna("").astype(str)
    try:
        return [template.format(**row) for row in frame.to_dict("records")]
    except (ValueError, IndexError, KeyError) as exc:
        raise TextuneError(f"{key}: template {template!r} is malformed ({exc}); use '{{column}}' fields") from None
