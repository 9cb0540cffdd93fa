"""Tokenize once: batched fast tokenization, cached on disk by texts + tokenizer + max_length."""

from __future__ import annotations

import hashlib
import json
import os
import weakref
from pathlib import Path

import numpy as np

from textune import _atomic

# Far longer than any window: a multi-megabyte cell is cut before tokenization so memory stays bounded. The cut is
# made on the side(s) that truncation keeps (see _capped), so a tail still sees the document's real end.
CHARS_PER_TOKEN_CAP = 32
# Part of every cache key. Bump it whenever a change here changes the tokens produced for some input, so entries
# written by an older textune are never reused. 2: fields cut without overflow encodings; tail/head_tail (and a
# tokenizer truncating on the left) see the real end of a long text; the truncation side is in the key.
ENCODING_VERSION = 2
# Tokenizations actually run in this process (cache misses): `textune tune` reports them, tests assert them.
MISSES = 0


def cache_dir() -> Path:
    """``$TEXTUNE_CACHE``, else ``~/.cache/textune``."""
    return Path(os.environ.get("TEXTUNE_CACHE") or Path.home() / ".cache" / "textune")


# Fingerprints by tokenizer object: serialising a tokenizer to JSON costs 45-95 ms, more than the forward pass of a
# few texts, and a served model encodes every request. The entry is dropped with its tokenizer; the number of
# tokens (added tokens included) is checked too, the one change textune's users make to a loaded tokenizer.
_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def tokenizer_fingerprint(tokenizer) -> str:
    try:
        size, fp = _FINGERPRINTS[tokenizer]
        if size == len(tokenizer):
            return fp
    except (KeyError, TypeError):  # TypeError: an object that takes no weak reference
        pass
    fp = _fingerprint(tokenizer)
    try:
        _FINGERPRINTS[tokenizer] = (len(tokenizer), fp)
    except TypeError:
        pass
    return fp


def _fingerprint(tokenizer) -> str:
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


def _capped(text: str, cap: int, side: str) -> str:
    """``text`` cut to the characters truncation can keep: the first ``cap`` ('head'), the last ``cap`` ('tail'),
    or both ends ('head_tail': the middle is dropped, so the kept head and tail are those of the whole text)."""
    if len(text) <= cap:
        return text
    if side == "head":
        return text[:cap]
    if side == "tail":
        return text[-cap:]
    if len(text) <= 2 * cap:
        return text
    # A space at the seam: the two cut words stay apart. Tokens near the seam are never kept (each end is far
    # longer than max_length tokens), so what happens there does not matter.
    return text[:cap] + " " + text[-cap:]


def _tokenize(tokenizer, texts: list[str], max_length: int, batch: int = 2048) -> Encoded:
    cap = max_length * CHARS_PER_TOKEN_CAP
    # A tokenizer configured to truncate on the left keeps a text's end: cap it from that side too.
    side = "tail" if getattr(tokenizer, "truncation_side", "right") == "left" else "head"
    ids_parts, type_parts, lengths = [], [], []
    for start in range(0, len(texts), batch):
        chunk = [_capped(t, cap, side) for t in texts[start : start + batch]]
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
    # The truncation side is the tokenizer's call-time setting, not in its fingerprint, yet it decides which tokens a
    # long text keeps ('left': the end).
    h = hashlib.sha256(f"v{ENCODING_VERSION}\x00{getattr(tokenizer, 'truncation_side', 'right')}\x00".encode())
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


def _cut(ids: list[int], n: int, side: str, head: int | None) -> list[int]:
    """Keeps ``n`` tokens of one field's ids: the first, the last, or the first H and the last n-H.

    Plain list slices: ``tokenizers.Encoding.truncate`` would keep every cut piece as an overflowing encoding, which
    ``Encoding.merge`` and the post-processor then multiply (thousands of encodings for one row of long fields)."""
    n = max(n, 0)
    if len(ids) <= n:
        return ids
    if side == "head":
        return ids[:n]
    if side == "tail":
        return ids[len(ids) - n :]
    h = max(min(n, n // 4 if head is None else head), 0)
    return ids[:h] + ids[len(ids) - (n - h) :]


def _template(backend, n_seqs: int) -> list[tuple[int, int, int]] | None:
    """The post-processor's output layout, learned once: items ``(seq, id, type_id)`` where ``seq`` -1 is the special
    token ``id`` and ``seq`` 0/1 stands for all of that sequence's ids, each given ``type_id``.

    Learned from the post-processor's output on a short probe, then checked on a second probe of other lengths;
    None when the output is not such a fixed layout around the sequences."""
    post = backend.post_processor
    probes = [
        [backend.encode(t, add_special_tokens=False) for t in texts[:n_seqs]]
        for texts in (("hello world", "the quick brown fox"), ("a b c d e f g", "yes"))
    ]
    if any(not e.ids for probe in probes for e in probe):
        return None
    out = post.process(*probes[0], add_special_tokens=True)
    content = [(k, i) for k, e in enumerate(probes[0]) for i in e.ids]
    items: list[tuple[int, int, int]] = []
    at = 0
    for tid, typ, special in zip(out.ids, out.type_ids, out.special_tokens_mask, strict=True):
        if special:
            items.append((-1, tid, typ))
            continue
        if at >= len(content) or content[at][1] != tid:
            return None
        seq = content[at][0]
        at += 1
        if items and items[-1][0] == seq:
            if items[-1][2] != typ:
                return None  # type ids vary inside one sequence: not a fixed layout
            continue
        if any(item[0] == seq for item in items):
            return None  # one sequence in two places
        items.append((seq, 0, typ))
    if at != len(content):
        return None
    check = post.process(*probes[1], add_special_tokens=True)
    if _assemble(items, [e.ids for e in probes[1]]) != (check.ids, check.type_ids):
        return None
    return items


def _assemble(template: list[tuple[int, int, int]], seqs: list[list[int]]) -> tuple[list[int], list[int]]:
    ids: list[int] = []
    types: list[int] = []
    for seq, tid, typ in template:
        if seq < 0:
            ids.append(tid)
            types.append(typ)
        else:
            ids.extend(seqs[seq])
            types.extend([typ] * len(seqs[seq]))
    return ids, types


def _layout(backend, n_seqs: int):
    """A function of ``n_seqs`` id lists giving ``(ids, type_ids)`` of the model input: the ids with the special
    tokens the post-processor adds, exactly as ``post_processor.process`` would place them."""
    post = backend.post_processor
    if post is None:  # no special tokens: the sequences one after another, type id = sequence index
        return lambda seqs: _assemble([(k, 0, k) for k in range(n_seqs)], seqs)
    template = _template(backend, n_seqs)
    if template is not None:
        return lambda seqs: _assemble(template, seqs)
    # Not a fixed layout (no known post-processor gets here): run the real post-processor, on encodings of exactly
    # the kept ids from a word-level tokenizer whose words are the ids, so nothing is truncated or overflows.
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit

    size = max(backend.get_vocab(with_added_tokens=True).values(), default=0) + 1
    ids_tokenizer = Tokenizer(WordLevel({f"t{i}": i for i in range(size)}, unk_token="t0"))
    ids_tokenizer.pre_tokenizer = WhitespaceSplit()
    ids_tokenizer.post_processor = post

    def process(seqs):
        enc = ids_tokenizer.encode(*[" ".join(f"t{i}" for i in s) for s in seqs], add_special_tokens=True)
        return enc.ids, enc.type_ids

    return process


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


def _encode_fields(tokenizer, fields: list[list[str]], max_length: int, policy: dict, batch: int = 1024) -> Encoded:
    # Work is linear in the texts' length: each field is tokenized once, cut as plain id lists, and the special
    # tokens are placed by a layout learned once (never an Encoding truncated, merged or post-processed per row).
    backend = _backend(tokenizer)
    post = backend.post_processor
    n_fields = len(fields)
    pair = n_fields >= 2
    special = post.num_special_tokens_to_add(pair) if post is not None else 0
    sep_token = getattr(tokenizer, "sep_token", None)
    # A third field (preference's second response) is joined to the second by one separator token.
    extra_sep = n_fields == 3 and sep_token is not None
    sep_ids = backend.encode(sep_token, add_special_tokens=False).ids if extra_sep else []
    budget = max_length - special - (1 if extra_sep else 0)
    cap = max_length * CHARS_PER_TOKEN_CAP
    strategy = policy.get("pair", "longest_first")
    shares = policy.get("shares") or [1.0] * n_fields
    side, head = policy.get("side", "head"), policy.get("head")
    layout = _layout(backend, 2 if pair else 1)
    with_types = "token_type_ids" in getattr(tokenizer, "model_input_names", [])
    ids_parts, type_parts, lengths = [], [], []
    n_rows = len(fields[0]) if fields else 0
    for start in range(0, n_rows, batch):  # batches: a file's Encodings (tokens, offsets...) are never all alive
        encoded = [
            backend.encode_batch([_capped(t, cap, side) for t in f[start : start + batch]], add_special_tokens=False)
            for f in fields
        ]
        for row in zip(*encoded, strict=True):
            row_ids = [e.ids for e in row]
            lens = [len(ids) for ids in row_ids]
            if n_fields == 2 and strategy in ("only_first", "only_second"):
                # Cut only the named field; if the other alone is over budget it is cut too (never an error).
                other = 1 if strategy == "only_first" else 0
                keep = [0, 0]
                keep[other] = min(lens[other], budget)
                keep[1 - other] = min(lens[1 - other], budget - keep[other])
            else:
                keep = allocate(lens, budget, shares)
            row_ids = [_cut(ids, k, side, head) for ids, k in zip(row_ids, keep, strict=True)]
            if n_fields == 3:
                row_ids = [row_ids[0], row_ids[1] + sep_ids + row_ids[2]]
            seq, types = layout(row_ids)
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


def _encode_chunks(tokenizer, texts: list[str], max_length: int, policy: dict, batch: int = 256) -> Encoded:
    backend = _backend(tokenizer)
    post = backend.post_processor
    size = max_length - (post.num_special_tokens_to_add(False) if post is not None else 0)
    stride = policy.get("stride")
    stride = size // 4 if stride is None else min(stride, size - 1)
    layout = _layout(backend, 1)
    with_types = "token_type_ids" in getattr(tokenizer, "model_input_names", [])
    # Windows are cut from the whole text; the character cap only guards against absurd cells.
    cap = max(max_length, 512) * CHARS_PER_TOKEN_CAP * max(policy.get("max_chunks") or 64, 1)
    ids_parts, type_parts, lengths, doc = [], [], [], []
    for start in range(0, len(texts), batch):
        chunk = backend.encode_batch([t[:cap] for t in texts[start : start + batch]], add_special_tokens=False)
        for d, enc in enumerate(chunk, start):
            # Each window is a slice of the text's ids: linear in the text's length (a truncated copy of the whole
            # Encoding per window would be quadratic, and keep the rest as overflow pieces besides).
            ids = enc.ids
            for s in window_starts(len(ids), size, stride, policy.get("max_chunks")):
                seq, _ = layout([ids[s : s + size]])
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

    # Not the tokenizer's truncation side: fields are cut here, by ``policy``, on a private copy of the backend.
    h = hashlib.sha256(f"v{ENCODING_VERSION}\x00".encode() + _json.dumps(policy, sort_keys=True).encode())
    for f in fields:
        h.update(b"\x01field")
        for t in f:
            h.update(t.encode("utf-8", "surrogatepass"))
            h.update(b"\x00")
    key = f"f{len(fields)}-{h.hexdigest()[:24]}-{tokenizer_fingerprint(tokenizer)}-{max_length}"
    if policy.get("side") == "chunks":
        return _cached(key, lambda: _encode_chunks(tokenizer, fields[0], max_length, policy), use_cache)
    return _cached(key, lambda: _encode_fields(tokenizer, fields, max_length, policy), use_cache)
