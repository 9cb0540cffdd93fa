"""Read a data file into a DataFrame, with one clear error for every way a file can be unusable."""

from __future__ import annotations

import codecs
import contextlib
import contextvars
import csv
import hashlib
import io
import logging
import string
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from textune.errors import TextuneError, did_you_mean

log = logging.getLogger(__name__)

FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".txt": "csv",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
}
PICKLE_SUFFIXES = (".pkl", ".pickle")
# Tried in order after UTF-8. cp1252 covers most Windows exports and is a superset of latin-1's printable
# characters; latin-1 itself is not tried because it decodes any byte, so a binary file would "succeed".
FALLBACK_ENCODINGS = ("cp1252",)
# Byte-order marks of the UTF-16/32 files Excel's "Unicode text" export writes (checked longest first).
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
# Whether .pkl inputs may be read: off unless the user passed --allow-pickle (the CLI sets it per command).
_ALLOW_PICKLE: contextvars.ContextVar[bool] = contextvars.ContextVar("textune_allow_pickle", default=False)


@contextlib.contextmanager
def pickle_allowed(allow: bool = True) -> Iterator[None]:
    """Within this block, :func:`read_table` reads pickle files (``--allow-pickle``); they can run code."""
    token = _ALLOW_PICKLE.set(bool(allow))
    try:
        yield
    finally:
        _ALLOW_PICKLE.reset(token)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _decode(path: Path, raw: bytes) -> str:
    """Text of a data file: UTF-8 (with or without BOM), UTF-16/32 with BOM, else cp1252 with a warning."""
    for bom, enc in _BOMS:
        if raw.startswith(bom):
            try:
                return raw.decode(enc)
            except UnicodeDecodeError as exc:
                raise TextuneError(
                    f"{path}: starts with a {enc.upper()} byte-order mark but byte offset {exc.start} is not "
                    f"{enc.upper()}; re-save the file as UTF-8"
                ) from None
    if raw.startswith(b"PK\x03\x04"):
        raise TextuneError(f"{path}: is a zip archive (an Excel .xlsx workbook?); save or export it as CSV (UTF-8)")
    nul = raw.find(b"\x00")
    if nul >= 0:
        # Text files never hold NUL bytes; decoding one as cp1252 would hand pandas garbage.
        raise TextuneError(
            f"{path}: binary content (NUL byte at offset {nul}); this is not a text file, export it as CSV (UTF-8)"
        )
    try:
        return raw.decode("utf-8-sig")  # -sig strips a byte-order mark
    except UnicodeDecodeError as exc:
        first_bad = exc.start
    for enc in FALLBACK_ENCODINGS:
        try:
            text = raw.decode(enc)
        except UnicodeDecodeError:
            continue
        log.warning("%s: not UTF-8 (byte offset %d); read as %s", path, first_bad, enc)
        return text
    raise TextuneError(
        f"{path}: not UTF-8 (first bad byte at offset {first_bad}) nor {'/'.join(FALLBACK_ENCODINGS)}; "
        f"re-save the file as UTF-8"
    )


def _read_pickle(path: Path, allow: bool) -> pd.DataFrame:
    if not allow:
        raise TextuneError(
            f"{path}: pickle files can run arbitrary code when loaded, so textune does not read them; convert it "
            f"to CSV or Parquet, or pass --allow-pickle if you trust whoever wrote it"
        )
    log.warning("%s: reading a pickle file (--allow-pickle): this runs any code it contains", path)
    try:
        df = pd.read_pickle(path)
    except Exception as exc:  # unpickling raises whatever the pickled objects raise
        raise TextuneError(f"{path}: cannot be unpickled ({type(exc).__name__}); is the file corrupted?") from None
    if not isinstance(df, pd.DataFrame):
        raise TextuneError(f"{path}: holds a {type(df).__name__}, not a pandas DataFrame; save a DataFrame")
    return df


def read_table(path: str | Path, *, allow_pickle: bool | None = None) -> pd.DataFrame:
    """Reads CSV/TSV/JSONL/Parquet as strings-or-numbers, keeping every row in file order.

    Args:
        path: the data file; the format comes from its suffix.
        allow_pickle: read ``.pkl`` files (they can execute code); default: whatever :func:`pickle_allowed` set.

    Raises:
        TextuneError: missing, empty or header-only file; unknown format; undecodable bytes; malformed rows;
            duplicate column names; a pickle file without ``allow_pickle``.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    allow = _ALLOW_PICKLE.get() if allow_pickle is None else allow_pickle
    if suffix in PICKLE_SUFFIXES and not allow:
        _read_pickle(path, allow)  # refuses, before even looking whether the file exists
    if not path.is_file():
        raise TextuneError(f"{path}: file not found; check the path (relative paths are read from the recipe's folder)")
    if path.stat().st_size == 0:
        raise TextuneError(f"{path}: file is empty; it needs a header row and at least one data row")
    fmt = "pickle" if suffix in PICKLE_SUFFIXES else FORMATS.get(suffix)
    if fmt is None:
        excel = " (Excel: File > Save As > CSV UTF-8)" if suffix in (".xlsx", ".xls", ".xlsm", ".ods") else ""
        raise TextuneError(f"{path}: unknown file type '{suffix}'; use .csv, .tsv, .jsonl or .parquet{excel}")
    try:
        if fmt == "pickle":
            df = _read_pickle(path, allow)
        elif fmt == "parquet":
            df = pd.read_parquet(path)
        else:
            text = _decode(path, path.read_bytes())
            if not text.strip():
                raise TextuneError(f"{path}: file is empty; it needs a header row and at least one data row")
            if fmt == "jsonl":
                df = _read_jsonl(path, text)
            else:
                # keep_default_na=False: an empty cell stays "" (an empty text is allowed); only a truly
                # missing value becomes NaN, which matters for labels. The C engine has no field-size limit,
                # so a multi-megabyte cell is read whole (and cut later, before tokenization).
                df = pd.read_csv(
                    io.StringIO(text),
                    sep="\t" if fmt == "tsv" else ",",
                    dtype=str,
                    keep_default_na=False,
                    na_values=[""],
                    quoting=csv.QUOTE_MINIMAL,
                    engine="c",
                )
    except TextuneError:
        raise
    except (pd.errors.ParserError, ValueError, OSError, csv.Error) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TextuneError(f"{path}: cannot be parsed as {fmt} ({first}); check quoting and delimiters") from None
    except Exception as exc:  # pyarrow and friends raise their own types for corrupt files
        raise TextuneError(f"{path}: cannot be read as {fmt} ({type(exc).__name__}); is the file corrupted?") from None
    if len(df.columns) == 0:
        raise TextuneError(f"{path}: no columns found; the first row must be a header")
    if len(df) == 0:
        raise TextuneError(f"{path}: has a header but no data rows")
    columns = [str(c).strip() for c in df.columns]
    seen: set[str] = set()
    for col in columns:
        if col in seen:
            raise TextuneError(f"{path}: column name '{col}' appears twice in the header; rename one of them")
        seen.add(col)
    df.columns = columns
    return df.reset_index(drop=True)


def _read_jsonl(path: Path, text: str) -> pd.DataFrame:
    """One JSON object per line; a line that is valid JSON but not an object is named, not guessed at."""
    import json

    lines = text.splitlines()
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TextuneError(f"{path}: line {n} is not valid JSON ({exc.msg}); one JSON object per line") from None
        if not isinstance(obj, dict):
            raise TextuneError(
                f"{path}: line {n} holds a JSON {type(obj).__name__}, not an object; write one {{...}} per line"
            )
    # dtype=False (pandas 3): no type or date guessing; a 'date' column keeps the strings the file holds
    df = pd.read_json(io.StringIO(text), lines=True, dtype=False)
    # A nested value (list or object) becomes its JSON text: cells are strings or numbers, as from a CSV.
    return df.map(lambda v: json.dumps(v, ensure_ascii=False) if isinstance(v, (list, dict)) else v)


def template_columns(template: str) -> list[str]:
    """Column names used by a text spec: a plain column name, or the ``{fields}`` of a template."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f]
    except ValueError as exc:  # "Single '{' encountered" and friends
        raise TextuneError(
            f"data.text: template {template!r} is malformed ({exc}); use '{{column}}' fields and '{{{{' for a brace"
        ) from None
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
    except (ValueError, IndexError, KeyError, AttributeError, TypeError) as exc:
        raise TextuneError(f"{key}: template {template!r} is malformed ({exc}); use '{{column}}' fields") from None


def sample_rows(df: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    """A seeded random sample of ``n`` rows in file order (``data.max_rows``): the first N rows of a file sorted
    by label would hold a single class."""
    if n is None or n >= len(df):
        return df
    return df.sample(n=n, random_state=seed).sort_index().reset_index(drop=True)
