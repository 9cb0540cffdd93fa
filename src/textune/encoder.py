"""A frozen sentence encoder: the bundled model, a local Hugging Face directory, a cached hub id or a run's
fine-tuned encoder; used by ``textune embed``, the embedding baseline and the embedding features.

Texts are tokenized through the shared cache and run through the one inference path (length-sorted batches,
input order restored). Each encoder carries a fingerprint of its weights, so caches of its outputs are keyed
by what the model computes, not by a name or path that may point at other weights tomorrow.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from textune.data.tokenize import tokenize
from textune.errors import TextuneError
from textune.models.infer import infer_hidden, pad_id_of
from textune.run import layout

# The E5 family was trained with these markers; leaving them out costs several points of retrieval quality.
E5_PREFIXES = {"query": "query: ", "passage": "passage: "}
POOLINGS = ("mean", "cls")
# Used when neither a run's recipe nor the caller gives a length: the window all-MiniLM-L6-v2 was tuned for.
DEFAULT_MAX_LENGTH = 256
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack")


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
    fingerprint: str = ""  # sha256 over the weight files: what a cache of this encoder's outputs is keyed by

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


is_run_dir = layout.has_model  # a run whose fine-tuned encoder can be loaded


def resolve_prefix(prefix: str | None) -> str:
    """``query``/``passage`` become the E5 markers ``"query: "``/``"passage: "``; any other string is used as is."""
    if not prefix:
        return ""
    return E5_PREFIXES.get(prefix, prefix)


_FINGERPRINTS: dict[tuple, str] = {}


def weights_fingerprint(path: str | Path) -> str:
    """sha256 over the weight files of a model directory (their names and bytes); hashed once per process and
    per (path, sizes, mtimes). For a hub id resolved elsewhere, the name stands in (the hub pins the weights)."""
    p = Path(path)
    files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in _WEIGHT_SUFFIXES) if p.is_dir() else []
    if not files:
        return hashlib.sha256(str(path).encode()).hexdigest()[:16]
    key = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    if key not in _FINGERPRINTS:
        h = hashlib.sha256()
        for f in files:
            h.update(f.relative_to(p).as_posix().encode() + b"\x00")
            with open(f, "rb") as fh:
                for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                    h.update(block)
        _FINGERPRINTS[key] = h.hexdigest()[:16]
    return _FINGERPRINTS[key]


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
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from textune.models.backbone import _load, load_tokenizer, resolve_model_path
    from textune.recipe import recipe_from_dict
    from textune.run import verify_run_dir

    defaults: dict[str, Any] = {}
    if is_run_dir(name):
        run = Path(name)
        verify_run_dir(run)
        recipe = recipe_from_dict(layout.read_recipe_raw(run), str(run / layout.RECIPE))
        from textune.models.fusion import is_fusion_dir

        path, allow_network = str(run / layout.MODEL), False
        trust_remote_code = recipe.model.trust_remote_code
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        if is_fusion_dir(path):  # textune's head: its encoder is saved on its own inside the model directory
            path = str(run / layout.MODEL / "encoder")
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
    return Encoder(model, tokenizer, str(name), dev, fingerprint=weights_fingerprint(path), **defaults)


def _window(encoder: Encoder, max_length: int | None) -> int:
    n = max_length or encoder.max_length or DEFAULT_MAX_LENGTH
    cap = getattr(encoder.tokenizer, "model_max_length", None)
    # Tokenizers without a limit report a huge sentinel (1e30); only a real limit caps the window.
    if isinstance(cap, int) and 0 < cap < 100_000:
        n = min(n, cap)
    return n


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
    bar = tqdm(total=len(encoded), disable=not progress, desc="embed", unit="text", dynamic_ncols=True)
    try:
        out = infer_hidden(
            encoder.model, encoded, batch_size, encoder.device, pad_id_of(encoder.tokenizer), precision, pooling, bar
        )
    finally:
        bar.close()
    if len(encoded) == 0:
        return np.zeros((0, encoder.dim), dtype=np.float32)
    if normalize:
        out = F.normalize(torch.from_numpy(out), p=2, dim=-1).numpy()
    return out
