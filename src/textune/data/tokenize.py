"""Tokenize once: batched fast tokenization, cached on disk by texts + tokenizer + max_length."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from textune import _atomic

# Far longer than any window: a multi-megabyte cell is cut before tokenization so memory stays bounded.
CHARS_PER_TOKEN_CAP = 32
# Tokenizations actually run in this process (cache misses): `textune tune` reports them, tests assert them.
MISSES = 0


def cache_dir() -> Path:
    """``$TEXTUNE_CACHE``, else ``~/.cache/textune``."""
    return Path(os.environ.get("TEXTUNE_CACHE") or Path.home() / ".cache" / "textune")


def tokenizer_fingerprint(tokenizer) -> str:
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        # transformers sets truncation/padding on the backend while it tokenizes: that is call state, not the
        # tokenizer's identity, and keeping it made the key change after the first call (a miss per split per run).
        state.pop("truncation", None)
        state.pop("padding", None)
        h.update(json.dumps(state, sort_keys=True).encode())
    else:
        h.update(repr(tokenizer.get_vocab()).encode())
    h.update(repr(sorted(map(str, tokenizer.all_special_tokens))).encode())
    return h.hexdigest()[:16]


class Encoded:
    """Token ids of many texts, stored flat (ids + offsets) so the cache is one small .npz."""

    def __init__(self, ids: np.ndarray, offsets: np.ndarray, type_ids: np.ndarray | None = None):
        self.ids, self.offsets, self.type_ids = ids, offsets, type_ids

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def row(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i] : self.offsets[i + 1]]

    def type_row(self, i: int) -> np.ndarray | None:
        return None if self.type_ids is None else self.type_ids[self.offsets[i] : self.offsets[i + 1]]

    def save(self, path: Path) -> None:
        arrays = {"ids": self.ids, "offsets": self.offsets}
        if self.type_ids is not None:
            arrays["type_ids"] = self.type_ids
        _atomic.write_with(path, lambda p: np.savez(open(p, "wb"), **arrays))

    @classmethod
    def load(cls, path: Path) -> Encoded:
        with np.load(path, allow_pickle=False) as z:
            return cls(z["ids"], z["offsets"], z["type_ids"] if "type_ids" in z else None)


def _tokenize(tokenizer, texts: list[str], max_length: int, batch: int = 2048) -> Encoded:
    cap = max_length * CHARS_PER_TOKEN_CAP
    ids_parts, type_parts, lengths = [], [], []
    for start in range(0, len(texts), batch):
        chunk = [t[:cap] for t in texts[start : start + batch]]
        enc = tokenizer(chunk, truncation=True, max_length=max_length, padding=False)
        for seq in enc["input_ids"]:
            ids_parts.append(np.asarray(seq, dtype=np.int32))
            lengths.append(len(seq))
        if "token_type_ids" in enc:
            type_parts.extend(np.asarray(t, dtype=np.int8) for t in enc["token_type_ids"])
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = np.concatenate(ids_parts) if ids_parts else np.zeros(0, dtype=np.int32)
    type_ids = np.concatenate(type_parts) if type_parts else None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # The call leaves its truncation on the Rust tokenizer and save_pretrained writes it to tokenizer.json:
        # reset it, so a run's saved tokenizer is the same bytes whether or not the token cache was hit.
        backend.no_truncation()
        backend.no_padding()
    return Encoded(ids, offsets, type_ids)


def tokenize(tokenizer, texts: list[str], max_length: int, use_cache: bool = True) -> tuple[Encoded, bool]:
    """Tokenizes ``texts`` (truncating at ``max_length``), reusing the disk cache when the same texts were seen.

    Returns:
        ``(encoded, from_cache)``.
    """
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    key = f"{h.hexdigest()[:24]}-{tokenizer_fingerprint(tokenizer)}-{max_length}"
    path = cache_dir() / "tokens" / f"{key}.npz"
    if use_cache and path.is_file():
        try:
            return Encoded.load(path), True
        except (OSError, ValueError, KeyError):
            path.unlink(missing_ok=True)  # a corrupt cache entry is rebuilt, never trusted
    global MISSES
    MISSES += 1
    encoded = _tokenize(tokenizer, texts, max_length)
    if use_cache:
        try:
            encoded.save(path)
        except OSError:
            pass  # an unwritable cache only costs time
    return encoded, False
