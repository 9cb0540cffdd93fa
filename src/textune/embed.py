"""Sentence embeddings from a frozen encoder: the bundled model, a local Hugging Face directory or a run.

``textune embed MODEL_OR_RUN --input data.csv --text COLUMN_OR_TEMPLATE --output emb.parquet|emb.npy``.
Texts are tokenized through the shared cache, run in length-sorted batches (little padding) and scattered back
to input order. Output formats:

* ``.parquet``: the id column (or ``row``, the 0-based row number, when the file has no id column) followed by
  one float32 column per dimension, ``emb_0 .. emb_{d-1}``: a table any dataframe tool reads without unpacking.
* ``.npy``: a float32 array ``(rows, dims)`` in input order; when the file has an id column, the ids are written
  beside it as ``<name>.ids.csv`` (one column, same order) so that the rows stay keyed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from textune import _atomic
from textune.data.io import read_table, render_texts, require_columns
from textune.encoder import (  # noqa: F401 (re-exported: the public embedding API)
    E5_PREFIXES,
    POOLINGS,
    Encoder,
    embed_texts,
    is_run_dir,
    load_encoder,
    resolve_prefix,
)
from textune.errors import TextuneError
from textune.prepare import check_unique_ids

FORMATS = (".parquet", ".npy")


def _ids(df: pd.DataFrame, id_col: str | None, source: str | Path) -> pd.Series | None:
    if id_col is None:
        return None
    ids = df[id_col].reset_index(drop=True)
    check_unique_ids(ids, source, id_col)
    return ids


def _save_npy(path: Path, emb: np.ndarray) -> None:
    # through a file object: np.save given a path would append ".npy" to the temporary name
    with open(path, "wb") as f:
        np.save(f, emb.astype(np.float32), allow_pickle=False)


def write_embeddings(path: str | Path, emb: np.ndarray, ids: pd.Series | None, id_col: str | None) -> list[Path]:
    """Writes ``emb`` as ``.parquet`` (key column + ``emb_i`` columns) or ``.npy`` (+ ``.ids.csv``), atomically.

    Returns:
        The files written.
    """
    path = Path(path)
    if path.suffix.lower() == ".npy":
        written = [_atomic.write_with(path, lambda p: _save_npy(p, emb))]
        if ids is not None:
            ids_path = path.with_name(path.name[: -len(path.suffix)] + ".ids.csv")
            frame = pd.DataFrame({id_col: ids})
            written.append(_atomic.write_csv(ids_path, frame))
        return written
    frame = pd.DataFrame(emb.astype(np.float32), columns=[f"emb_{i}" for i in range(emb.shape[1])])
    frame.insert(0, id_col if ids is not None else "row", ids if ids is not None else np.arange(len(emb)))
    return [_atomic.write_with(path, lambda p: frame.to_parquet(p, index=False))]


def embed_file(
    model: str | Path,
    input: str | Path,
    output: str | Path,
    *,
    text: str | None = None,
    id_col: str | None = None,
    pooling: str = "mean",
    normalize: bool = False,
    prefix: str | None = None,
    max_length: int | None = None,
    batch_size: int = 64,
    precision: str = "no",
    device: str | None = None,
    progress: bool = False,
) -> tuple[list[Path], np.ndarray]:
    """Embeds the texts of a data file and writes them keyed by its id column (see the module docstring).

    Args:
        model: ``bundled:minilm``, a model directory, a cached hub id or a run directory.
        input: CSV/TSV/JSONL/Parquet file.
        output: ``.parquet`` or ``.npy`` path.
        text: a column name or a ``{col}`` template; default: the run's ``data.text`` when ``model`` is a run.
        id_col: the key column; default: the run's ``data.id``, else ``id`` when the file has one.
        Other arguments: as in :func:`embed_texts`.

    Returns:
        ``(files written, embeddings)``.

    Raises:
        TextuneError: unknown output format, missing columns, duplicate ids, unloadable model.
    """
    if Path(output).suffix.lower() not in FORMATS:
        raise TextuneError(f"--output {output}: unknown format; use a .parquet or .npy file name")
    if pooling not in POOLINGS:
        raise TextuneError(f"--pooling: unknown pooling '{pooling}'; choose one of {', '.join(POOLINGS)}")
    df = read_table(input)
    if text is None and not is_run_dir(model):
        raise TextuneError("--text: give the text column or a template like '{title}. {body}'")
    if id_col is not None:
        require_columns(df, [id_col], input, "--id")
    encoder = load_encoder(model, device=device)
    template = text or encoder.text
    texts = render_texts(df, template, input, "--text")
    if id_col is None:
        id_col = next((c for c in (encoder.id, "id") if c and c in df.columns), None)
    ids = _ids(df, id_col, input)
    emb = embed_texts(
        encoder,
        texts,
        pooling=pooling,
        normalize=normalize,
        prefix=prefix,
        max_length=max_length,
        batch_size=batch_size,
        precision=precision,
        progress=progress,
    )
    return write_embeddings(output, emb, ids, id_col), emb
