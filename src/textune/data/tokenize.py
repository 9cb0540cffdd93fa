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
        # When rows are not one per input (swapped copies, windows): the input row and the variant of each row.
        self.doc: np.ndarray | None = None
        self.variant: np.ndarray | None = None

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
        if self.doc is not None and self.variant is None:  # windows of texts: which text each window is from
            arrays["doc"] = self.doc
        _atomic.write_with(path, lambda p: np.savez(open(p, "wb"), **arrays))

    @classmethod
    def load(cls, path: Path) -> Encoded:
        with np.load(path, allow_pickle=False) as z:
            out = cls(z["ids"], z["offsets"], z["type_ids"] if "type_ids" in z else None)
            out.doc = z["doc"] if "doc" in z else None
            return out


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
    return _cached(key, lambda: _tokenize(tokenizer, texts, max_length), use_cache)


def _cached(key: str, build, use_cache: bool) -> tuple[Encoded, bool]:
    """The cache entry ``key`` if present and readable, else ``build()`` (counted in MISSES) saved under ``key``."""
    global MISSES
    path = cache_dir() / "tokens" / f"{key}.npz"
    if use_cache and path.is_file():
        try:
            return Encoded.load(path), True
        except (OSError, ValueError, KeyError):
            path.unlink(missing_ok=True)  # a corrupt cache entry is rebuilt, never trusted
    MISSES += 1
    encoded = build()
    if use_cache:
        try:
            encoded.save(path)
        except OSError:
            pass  # an unwritable cache only costs time
    return encoded, False


def concat(parts: list[Encoded]) -> Encoded:
    """Rows of ``parts`` one after another; ``doc``/``variant`` say which input row and which part each came from."""
    ids = np.concatenate([p.ids for p in parts])
    lengths = np.concatenate([p.lengths for p in parts])
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    types = None
    if all(p.type_ids is not None for p in parts):
        types = np.concatenate([p.type_ids for p in parts])
    out = Encoded(ids, offsets, types)
    out.doc = np.concatenate([np.arange(len(p)) if p.doc is None else p.doc for p in parts])
    out.variant = np.concatenate([np.full(len(p), k, dtype=np.int64) for k, p in enumerate(parts)])
    return out


def allocate(lengths: list[int], budget: int, shares: list[float]) -> list[int]:
    """Tokens kept per field: each field gets its share of ``budget``; what a short field leaves unused goes to
    the others by their shares (water-filling). Equal shares give exactly 'longest_first'."""
    keep = [0] * len(lengths)
    open_ = [i for i, n in enumerate(lengths) if n > 0]
    left = max(budget, 0)
    while open_ and left > 0:
        total = sum(shares[i] for i in open_) or 1.0
        exact = {i: left * shares[i] / total for i in open_}
        done = [i for i in open_ if lengths[i] - keep[i] <= exact[i]]
        if not done:
            quota = {i: int(exact[i]) for i in open_}
            # rounding leaves a few tokens: they go to the largest remainders (Hamilton's method)
            spare = left - sum(quota.values())
            for i in sorted(open_, key=lambda i: exact[i] - quota[i], reverse=True)[:spare]:
                quota[i] += 1
            for i in open_:
                keep[i] += quota[i]
            break
        for i in done:
            left -= lengths[i] - keep[i]
            keep[i] = lengths[i]
        open_ = [i for i in open_ if i not in done]
    return keep


def _cut(enc, n: int, side: str, head: int | None):
    """Keeps ``n`` tokens of one field's encoding: the first, the last, or the first H and the last n-H."""
    import copy

    from tokenizers import Encoding

    if len(enc.ids) <= n:
        return enc
    if side == "head":
        enc.truncate(n)
    elif side == "tail":
        enc.truncate(n, direction="left")
    else:
        h = min(n, n // 4 if head is None else head)
        tail = copy.deepcopy(enc)
        enc.truncate(h) if h > 0 else None
        tail.truncate(n - h, direction="left")
        enc = Encoding.merge([enc, tail]) if h > 0 else tail
    return enc


def _backend(tokenizer):
    from textune.errors import TextuneError

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TextuneError(
            "data: text pairs, truncation other than 'head' and preference inputs need a fast tokenizer; "
            "this model has none"
        )
    from tokenizers import Tokenizer

    # A private copy: the model's tokenizer.json may carry padding/truncation settings that must not apply here.
    backend = Tokenizer.from_str(backend.to_str())
    backend.no_truncation()
    backend.no_padding()
    return backend


def _encode_fields(tokenizer, fields: list[list[str]], max_length: int, policy: dict) -> Encoded:
    backend = _backend(tokenizer)
    post = backend.post_processor
    n_fields = len(fields)
    pair = n_fields >= 2
    special = post.num_special_tokens_to_add(pair) if post is not None else 0
    sep_token = getattr(tokenizer, "sep_token", None)
    # A third field (preference's second response) is joined to the second by one separator token.
    extra_sep = n_fields == 3 and sep_token is not None
    budget = max_length - special - (1 if extra_sep else 0)
    cap = max_length * CHARS_PER_TOKEN_CAP
    encoded_fields = [backend.encode_batch([t[:cap] for t in f], add_special_tokens=False) for f in fields]
    strategy = policy.get("pair", "longest_first")
    shares = policy.get("shares") or [1.0] * n_fields
    side, head = policy.get("side", "head"), policy.get("head")
    with_types = "token_type_ids" in getattr(tokenizer, "model_input_names", [])
    ids_parts, type_parts, lengths = [], [], []
    for row in zip(*encoded_fields, strict=True):
        lens = [len(e.ids) for e in row]
        if n_fields == 2 and strategy in ("only_first", "only_second"):
            # Cut only the named field; if the other alone is over budget it is cut too (never an error).
            other = 1 if strategy == "only_first" else 0
            keep = [0, 0]
            keep[other] = min(lens[other], budget)
            keep[1 - other] = min(lens[1 - other], budget - keep[other])
        else:
            keep = allocate(lens, budget, shares)
        row = [_cut(e, k, side, head) for e, k in zip(row, keep, strict=True)]
        if n_fields == 3:
            from tokenizers import Encoding

            parts = [row[1]]
            if extra_sep:
                parts.append(backend.encode(sep_token, add_special_tokens=False))
            parts.append(row[2])
            row = [row[0], Encoding.merge(parts)]
        if post is not None:
            enc = post.process(row[0], row[1] if pair else None, add_special_tokens=True)
            seq, types = enc.ids, enc.type_ids
        else:
            seq = [i for e in row for i in e.ids]
            types = [k for k, e in enumerate(row) for _ in e.ids]
        ids_parts.append(np.asarray(seq[:max_length], dtype=np.int32))
        type_parts.append(np.asarray(types[:max_length], dtype=np.int8))
        lengths.append(min(len(seq), max_length))
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = np.concatenate(ids_parts) if ids_parts else np.zeros(0, dtype=np.int32)
    types = (np.concatenate(type_parts) if type_parts else np.zeros(0, dtype=np.int8)) if with_types else None
    return Encoded(ids, offsets, types)


def window_starts(n: int, size: int, stride: int, max_chunks: int | None = None) -> list[int]:
    """Start offsets of windows of ``size`` tokens over ``n`` tokens, consecutive ones sharing ``stride`` tokens;
    the last window ends at the text's end. With ``max_chunks``, that many windows spread evenly."""
    if n <= size:
        return [0]
    step = max(size - stride, 1)
    starts = list(range(0, n - size, step)) + [n - size]
    if max_chunks is not None and len(starts) > max_chunks:
        pick = np.linspace(0, len(starts) - 1, max_chunks).round().astype(int)
        starts = [starts[i] for i in sorted(set(pick.tolist()))]
    return starts


def _encode_chunks(tokenizer, texts: list[str], max_length: int, policy: dict) -> Encoded:
    import copy

    backend = _backend(tokenizer)
    post = backend.post_processor
    size = max_length - (post.num_special_tokens_to_add(False) if post is not None else 0)
    stride = policy.get("stride")
    stride = size // 4 if stride is None else min(stride, size - 1)
    with_types = "token_type_ids" in getattr(tokenizer, "model_input_names", [])
    # Windows are cut from the whole text; the character cap only guards against absurd cells.
    cap = max(max_length, 512) * CHARS_PER_TOKEN_CAP * max(policy.get("max_chunks") or 64, 1)
    ids_parts, type_parts, lengths, doc = [], [], [], []
    for d, enc in enumerate(backend.encode_batch([t[:cap] for t in texts], add_special_tokens=False)):
        for start in window_starts(len(enc.ids), size, stride, policy.get("max_chunks")):
            window = copy.deepcopy(enc)
            window.truncate(start + size)  # drop what follows the window...
            window.truncate(len(window.ids) - start, direction="left")  # ...then what precedes it
            if post is not None:
                window = post.process(window, None, add_special_tokens=True)
            seq = window.ids
            ids_parts.append(np.asarray(seq, dtype=np.int32))
            type_parts.append(np.zeros(len(seq), dtype=np.int8))
            lengths.append(len(seq))
            doc.append(d)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    out = Encoded(
        np.concatenate(ids_parts) if ids_parts else np.zeros(0, dtype=np.int32),
        offsets,
        (np.concatenate(type_parts) if type_parts else np.zeros(0, dtype=np.int8)) if with_types else None,
    )
    out.doc = np.asarray(doc, dtype=np.int64)
    return out


def encode_fields(
    tokenizer, fields: list[list[str]], max_length: int, policy: dict, use_cache: bool = True
) -> tuple[Encoded, bool]:
    """Encodes one to three text fields per row into one sequence of at most ``max_length`` tokens.

    One field: ``policy['side']`` ('head', 'tail', 'head_tail' with ``policy['head']`` first tokens). Two fields:
    a true sentence pair (token_type_ids where the model has them), cut by ``policy['pair']``
    ('longest_first', 'only_first', 'only_second', 'share'). Three fields (prompt, response a, response b): the
    prompt is the first segment, the responses the second, joined by a separator; each field keeps its
    ``policy['shares']`` of the budget, so no field is cut away while another has room.

    Returns:
        ``(encoded, from_cache)``; the cache key covers every field's texts, the tokenizer, max_length and policy.
    """
    import json as _json

    h = hashlib.sha256(_json.dumps(policy, sort_keys=True).encode())
    for f in fields:
        h.update(b"\x01field")
        for t in f:
            h.update(t.encode("utf-8", "surrogatepass"))
            h.update(b"\x00")
    key = f"f{len(fields)}-{h.hexdigest()[:24]}-{tokenizer_fingerprint(tokenizer)}-{max_length}"
    if policy.get("side") == "chunks":
        return _cached(key, lambda: _encode_chunks(tokenizer, fields[0], max_length, policy), use_cache)
    return _cached(key, lambda: _encode_fields(tokenizer, fields, max_length, policy), use_cache)
