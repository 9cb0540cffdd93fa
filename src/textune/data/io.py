"""Read a data file into a DataFrame, with one clear error for every way a file can be unusable."""

from __future__ import annotations

import codecs
import contextlib
import contextvars
import csv
import io
import logging
import re
import string
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from textune._atomic import sha256_file  # noqa: F401 (re-exported: data files are hashed here)
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
# What to check when a file of each format cannot be parsed.
_PARSE_ADVICE = {
    "csv": "check quoting and delimiters",
    "tsv": "check quoting and that columns are separated by tabs",
    "jsonl": "write one JSON object per line",
    "parquet": "is the file corrupted or not Parquet?",
}
# pandas' C parser on a row with more fields than the header ("line" counts a quoted multi-line cell as one line)
_TOO_MANY_FIELDS = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")
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


def row_ref(index: int, *, file_line: int | None = None) -> str:
    """How every message names a row: ``"data row 3 (file line 4)"``.

    Args:
        index: 0-based position in the DataFrame (as :func:`read_table` returns it, in file order).
        file_line: the 1-based line of the file where the row starts, when known. Default ``index + 2``: one line
            per row after one header line, which is exact unless a quoted cell spans lines or blank lines were
            skipped.

    Returns:
        The 1-based data row (1 = the first row after the header) and the line an editor shows.
    """
    return f"data row {index + 1} (file line {index + 2 if file_line is None else file_line})"


def rows_ref(indices, limit: int = 5) -> str:
    """Several rows named the way :func:`row_ref` names one: ``"data rows 3, 7 (file lines 4, 8)"``, the first
    ``limit`` of them, then ``...``."""
    shown = [int(i) for i in list(indices)[:limit]]
    more = " ..." if len(list(indices)) > limit else ""
    if len(shown) == 1 and not more:
        return row_ref(shown[0])
    data = ", ".join(str(i + 1) for i in shown)
    lines = ", ".join(str(i + 2) for i in shown)
    return f"data rows {data}{more} (file lines {lines}{more})"


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


# How every CSV/TSV is read, whole or in chunks. keep_default_na=False: an empty cell stays "" (an empty text is
# allowed); only a truly missing value becomes NaN, which matters for labels. The C engine has no field-size limit,
# so a multi-megabyte cell is read whole (and cut later, before tokenization).
_CSV_OPTIONS = {"dtype": str, "keep_default_na": False, "na_values": [""], "quoting": csv.QUOTE_MINIMAL, "engine": "c"}


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
        raise TextuneError(
            f"{path}: file not found; check the path (paths in a recipe are relative to its folder, on the "
            f"command line to the working directory)"
        )
    if path.stat().st_size == 0:
        raise TextuneError(f"{path}: file is empty; it needs a header row and at least one data row")
    fmt = "pickle" if suffix in PICKLE_SUFFIXES else FORMATS.get(suffix)
    text = ""  # the decoded text of a text format, for the header and error checks below
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
                df = pd.read_csv(io.StringIO(text), sep="\t" if fmt == "tsv" else ",", **_CSV_OPTIONS)
    except TextuneError:
        raise
    except (pd.errors.ParserError, ValueError, OSError, csv.Error) as exc:
        if fmt in ("csv", "tsv"):
            _raise_for_ragged_row(path, text, fmt, str(exc))
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        advice = _PARSE_ADVICE.get(fmt, "is the file corrupted?")
        raise TextuneError(f"{path}: cannot be parsed as {fmt} ({first}); {advice}") from None
    except Exception as exc:  # pyarrow and friends raise their own types for corrupt files
        raise TextuneError(f"{path}: cannot be read as {fmt} ({type(exc).__name__}); is the file corrupted?") from None
    if len(df.columns) == 0:
        raise TextuneError(f"{path}: no columns found; the first row must be a header")
    if len(df) == 0:
        raise TextuneError(f"{path}: has a header but no data rows")
    columns = [str(c).strip() for c in df.columns]
    # pandas renames a repeated CSV header name ('a', 'a.1'), so the header is also checked as written. Empty
    # names are left out: pandas names them 'Unnamed: N', which never repeat.
    written = [c for c in _csv_header(text, fmt) if c] if fmt in ("csv", "tsv") else []
    for names in (written, columns):
        seen: set[str] = set()
        for col in names:
            if col in seen:
                raise TextuneError(f"{path}: column name '{col}' appears twice in the header; rename one of them")
            seen.add(col)
    df.columns = columns
    return df.reset_index(drop=True)


@contextlib.contextmanager
def _no_field_limit() -> Iterator[None]:
    """The csv module refuses cells over 128 KiB by default; pandas reads any size, so the re-reads here must too."""
    old = csv.field_size_limit()
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    try:
        yield
    finally:
        csv.field_size_limit(old)


def _lines(text: str) -> Iterator[str]:
    """The lines of ``text`` with their endings, one at a time: the header is read without copying a large file."""
    start, end = 0, len(text)
    while start < end:
        stop = text.find("\n", start)
        if stop < 0:
            yield text[start:]
            return
        yield text[start : stop + 1]
        start = stop + 1


def _records(text: str, fmt: str) -> Iterator[tuple[int, list[str]]]:
    """Each non-blank record of a CSV/TSV text with the 1-based file line it starts on (quoted cells may span
    lines, which is why the line is counted here rather than derived from the record's position)."""
    reader = csv.reader(_lines(text), delimiter="\t" if fmt == "tsv" else ",", quoting=csv.QUOTE_MINIMAL)
    start = 1
    with _no_field_limit():
        for record in reader:
            if record:  # blank lines: pandas skips them too
                yield start, record
            start = reader.line_num + 1


def _csv_header(text: str, fmt: str) -> list[str]:
    """The header names as written (stripped), or ``[]`` when the csv module reads the text differently."""
    try:
        for _, record in _records(text, fmt):
            return [name.strip() for name in record]
    except csv.Error:
        pass
    return []


def _raise_for_ragged_row(path: Path, text: str, fmt: str, message: str) -> None:
    """Names the first row with more fields than the header, as data row and file line, when pandas stopped there.

    pandas counts a quoted multi-line cell as one line and blank lines as lines, so its "line N" matches neither
    the data row nor the line an editor shows; the file is re-read to name both.
    """
    match = _TOO_MANY_FIELDS.search(message)
    if match is None:
        return
    try:
        records = _records(text, fmt)
        _, header = next(records)
        for index, (line, record) in enumerate(records):
            if len(record) > len(header):
                raise TextuneError(
                    f"{path}: {row_ref(index, file_line=line)} has {len(record)} fields but the header has "
                    f"{len(header)}; {_PARSE_ADVICE[fmt]}"
                ) from None
    except (csv.Error, StopIteration):
        pass  # the csv module disagrees with pandas' reading: fall back to pandas' own message


def iter_table(path: str | Path, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """The rows of a data file in chunks of at most ``chunk_rows``, in file order, read as :func:`read_table` reads
    them: memory stays bounded by the chunk for Parquet and UTF-8 CSV/TSV; other files (JSONL, legacy encodings,
    pickles) are read whole and then cut. Each chunk's index continues the previous one's (the data row number).

    Raises:
        TextuneError: as :func:`read_table`, naming the file.
    """
    path = Path(path)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt == "parquet" and path.is_file():
        yield from _iter_parquet(path, chunk_rows)
        return
    if fmt in ("csv", "tsv") and path.is_file() and _utf8_file(path):
        yield from _iter_csv(path, fmt, chunk_rows)
        return
    df = read_table(path)
    for start in range(0, len(df), chunk_rows):
        yield df.iloc[start : start + chunk_rows]


def _utf8_file(path: Path, block: int = 1 << 20) -> bool:
    """Whether the whole file is UTF-8 text (no BOM of UTF-16/32, no NUL): the files the chunked reader takes as
    :func:`read_table` would. Read once in blocks through an incremental decoder: constant memory."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    with open(path, "rb") as f:
        head = f.read(block)
        if not head or any(head.startswith(bom) for bom, _ in _BOMS):
            return False
        chunk = head
        try:
            while chunk:
                if b"\x00" in chunk:
                    return False
                decoder.decode(chunk)
                chunk = f.read(block)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return False
    return True


def _iter_csv(path: Path, fmt: str, chunk_rows: int) -> Iterator[pd.DataFrame]:
    rows = 0
    try:
        header = _file_header(path, fmt)
        reader = pd.read_csv(
            path, sep="\t" if fmt == "tsv" else ",", encoding="utf-8-sig", chunksize=chunk_rows, **_CSV_OPTIONS
        )
        with reader:
            for chunk in reader:
                chunk.columns = header
                rows += len(chunk)
                yield chunk
    except (pd.errors.ParserError, ValueError, UnicodeDecodeError, csv.Error) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TextuneError(f"{path}: cannot be parsed as {fmt} ({first}); {_PARSE_ADVICE.get(fmt)}") from None
    if rows == 0:
        raise TextuneError(f"{path}: has a header but no data rows")


def _file_header(path: Path, fmt: str) -> list[str]:
    """The header of a CSV/TSV file, checked as :func:`read_table` checks it: present and each name once."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        head = f.readline()  # a header never holds a quoted line break in practice; the check reads the first line
    names = [h.strip() for h in _csv_header(head, fmt)]
    if not names:
        raise TextuneError(f"{path}: no columns found; the first row must be a header")
    seen: set[str] = set()
    for name in names:
        if name and name in seen:
            raise TextuneError(f"{path}: column name '{name}' appears twice in the header; rename one of them")
        seen.add(name)
    return names


def _iter_parquet(path: Path, chunk_rows: int) -> Iterator[pd.DataFrame]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        start = 0
        for batch in parquet.iter_batches(batch_size=chunk_rows):
            chunk = batch.to_pandas()
            chunk.index = range(start, start + len(chunk))
            start += len(chunk)
            yield chunk
    except Exception as exc:  # pyarrow raises its own types for corrupt files
        raise TextuneError(
            f"{path}: cannot be read as parquet ({type(exc).__name__}); {_PARSE_ADVICE['parquet']}"
        ) from None


def _read_jsonl(path: Path, text: str) -> pd.DataFrame:
    """One JSON object per line; a line that is valid JSON but not an object is named, not guessed at."""
    import json

    lines = text.splitlines()
    index = 0  # data row: blank lines are skipped, so it can trail the file line
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = row_ref(index, file_line=n)
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TextuneError(f"{path}: {where} is not valid JSON ({exc.msg}); one JSON object per line") from None
        if not isinstance(obj, dict):
            raise TextuneError(
                f"{path}: {where} holds a JSON {type(obj).__name__}, not an object; write one {{...}} per line"
            )
        index += 1
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
