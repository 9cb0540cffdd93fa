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

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from textune import _atomic
from textune.data.batching import collate, inference_batches, to_device
from textune.data.io import read_table, render_texts, require_columns
from textune.data.tokenize import tokenize
from textune.errors import TextuneError
from textune.predict import autocast_for, pad_id_of

# The E5 family was trained with these markers; leaving them out costs several points of retrieval quality.
E5_PREFIXES = {"query": "query: ", "passage": "passage: "}
POOLINGS = ("mean", "cls")
FORMATS = (".parquet", ".npy")
# Used when neither a run's recipe nor the caller gives a length: the window all-MiniLM-L6-v2 was tuned for.
DEFAULT_MAX_LENGTH = 256


@dataclass
class Encoder:
    """A frozen base encoder and its tokenizer, plus the defaults a run directory carries."""

    model: torch.nn.Module
    tokenizer: Any
    name: str
    device: torch.device
    max_length: int | None = None
    text: str | None = None
    id: str | None = None

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def is_run_dir(path: str | Path) -> bool:
    """True for a textune run directory (a saved recipe beside a ``model/`` folder)."""
    p = Path(path)
    return (p / "recipe.yaml").is_file() and (p / "model").is_dir()


def resolve_prefix(prefix: str | None) -> str:
    """``query``/``passage`` become the E5 markers ``"query: "``/``"passage: "``; any other string is used as is."""
    if not prefix:
        return ""
    return E5_PREFIXES.get(prefix, prefix)


def load_encoder(
    name: str | Path,
    *,
    device: str | None = None,
    allow_network: bool = False,
    trust_remote_code: bool = False,
) -> Encoder:
    """Loads the base encoder of ``name``: ``bundled:minilm``, a local model directory, a cached hub id, or a
    run directory (its fine-tuned encoder; ``AutoModel`` drops the classification head).

    Raises:
        TextuneError: unknown bundled name, missing directory, model not in the local cache, altered run.
    """
    import yaml
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from textune.models.backbone import _load, load_tokenizer, resolve_model_path
    from textune.recipe import recipe_from_dict
    from textune.rundir import verify_run_dir

    defaults: dict[str, Any] = {}
    if is_run_dir(name):
        run = Path(name)
        verify_run_dir(run)
        recipe = recipe_from_dict(yaml.safe_load((run / "recipe.yaml").read_text()), str(run / "recipe.yaml"))
        path, allow_network = str(run / "model"), False
        trust_remote_code = recipe.model.trust_remote_code
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        defaults = {"max_length": recipe.data.max_length, "text": recipe.data.text, "id": recipe.data.id}
    else:
        path = resolve_model_path(str(name))
        tokenizer = load_tokenizer(str(name), allow_network, trust_remote_code)
    # Loading a classifier directory as a bare encoder reports its head weights as unused: expected here.
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = _load(AutoModel.from_pretrained, path, allow_network, "model", trust_remote_code=trust_remote_code)
    finally:
        hf_logging.set_verbosity(level)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(dev).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return Encoder(model, tokenizer, str(name), dev, **defaults)


def _window(encoder: Encoder, max_length: int | None) -> int:
    n = max_length or encoder.max_length or DEFAULT_MAX_LENGTH
    cap = getattr(encoder.tokenizer, "model_max_length", None)
    # Tokenizers without a limit report a huge sentinel (1e30); only a real limit caps the window.
    if isinstance(cap, int) and 0 < cap < 100_000:
        n = min(n, cap)
    return n


@torch.inference_mode()
def embed_texts(
    encoder: Encoder,
    texts: list[str],
    *,
    pooling: str = "mean",
    normalize: bool = False,
    prefix: str | None = None,
    max_length: int | None = None,
    batch_size: int = 64,
    precision: str = "no",
    progress: bool = False,
) -> np.ndarray:
    """One embedding per text, in input order.

    Args:
        encoder: from :func:`load_encoder`.
        texts: the texts.
        pooling: ``mean`` (average of the last hidden states over real tokens, padding masked out) or ``cls``
            (the first token's hidden state).
        normalize: scale each embedding to unit L2 norm (cosine similarity becomes a dot product).
        prefix: prepended to every text; ``query``/``passage`` give the E5 markers (see :func:`resolve_prefix`).
        max_length: tokens per text (default: the run's ``data.max_length``, else 256), capped by the tokenizer.
        batch_size: texts per forward pass.
        precision: ``no`` (fp32), ``bf16`` or ``fp16`` autocast.
        progress: show a progress bar (rows).

    Returns:
        float32 array ``(len(texts), hidden_size)``.
    """
    if pooling not in POOLINGS:
        raise TextuneError(f"--pooling: unknown pooling '{pooling}'; choose one of {', '.join(POOLINGS)}")
    marker = resolve_prefix(prefix)
    if marker:
        texts = [marker + t for t in texts]
    encoded, _ = tokenize(encoder.tokenizer, list(texts), _window(encoder, max_length))
    out = np.zeros((len(encoded), encoder.dim), dtype=np.float32)
    pad_id = pad_id_of(encoder.tokenizer)
    bar = tqdm(total=len(encoded), disable=not progress, desc="embed", unit="text", dynamic_ncols=True)
    for idx in inference_batches(encoded.lengths, batch_size):
        batch = to_device(collate(encoded, idx, pad_id), encoder.device)
        with autocast_for(encoder.device, precision):
            hidden = encoder.model(**batch).last_hidden_state
        hidden = hidden.float()  # pool in fp32 whatever the autocast: sums over 512 tokens lose bits in bf16
        if pooling == "cls":
            vec = hidden[:, 0]
        else:
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            vec = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        if normalize:
            vec = F.normalize(vec, p=2, dim=-1)
        out[idx] = vec.cpu().numpy()  # scatter back: batches ran longest first
        bar.update(len(idx))
    bar.close()
    return out


def _ids(df: pd.DataFrame, id_col: str | None, source: str | Path) -> pd.Series | None:
    if id_col is None:
        return None
    ids = df[id_col].reset_index(drop=True)
    dup = ids.duplicated()
    if dup.any():
        first = ids[dup].iloc[0]
        raise TextuneError(
            f"{source}: column '{id_col}' has {int(dup.sum())} duplicate id(s) (first: {first!r} at file line "
            f"{int(np.flatnonzero(dup.to_numpy())[0]) + 2}); ids must be unique to key embeddings"
        )
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
