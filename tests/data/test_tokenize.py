"""Tokenization of one to three fields and of windows: exact tokens, work linear in text length, the cache key."""

from __future__ import annotations

import numpy as np
import pytest
import tokenizers
from tokenizers import Encoding, Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from tokenizers.processors import PostProcessor

from textune.data import tokenize as tokenize_mod
from textune.data.tokenize import CHARS_PER_TOKEN_CAP, allocate, encode_fields, tokenize, window_starts
from textune.models.backbone import load_tokenizer

WORDS = "stocks market bank profit football goal coach software chip phone weather sunny the of and".split()


def _text(n: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    return " ".join(WORDS[i] for i in rng.integers(0, len(WORDS), n))


@pytest.fixture(scope="module", params=["bert", "roberta", "deberta-v2"])
def tokenizer(request, tmp_path_factory):
    from _tiny import make_tiny_model_dir

    return load_tokenizer(str(make_tiny_model_dir(tmp_path_factory.mktemp(request.param), request.param)))


@pytest.fixture
def bert(tiny_model):
    return load_tokenizer(str(tiny_model))


# ------------------------------------------------------------------------------------- a straightforward reference


def _reference(tokenizer, fields, max_length, policy):
    """The documented cut, spelled out: each field's ids sliced by hand, then the model's own post-processor run on
    exactly those ids (a word-level tokenizer whose words are the ids, so no Encoding is ever truncated)."""
    real = tokenizer.backend_tokenizer
    post = real.post_processor
    ids_tokenizer = Tokenizer(WordLevel({f"t{i}": i for i in range(real.get_vocab_size())}, unk_token="t0"))
    ids_tokenizer.pre_tokenizer = WhitespaceSplit()
    ids_tokenizer.post_processor = post
    n_fields = len(fields)
    budget = max_length - post.num_special_tokens_to_add(n_fields >= 2) - (1 if n_fields == 3 else 0)
    side, head = policy.get("side", "head"), policy.get("head")
    rows = []
    for texts in zip(*fields, strict=True):
        ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        lens = [len(x) for x in ids]
        strategy = policy.get("pair", "longest_first")
        if n_fields == 2 and strategy in ("only_first", "only_second"):
            other = 1 if strategy == "only_first" else 0
            keep = [0, 0]
            keep[other] = min(lens[other], budget)
            keep[1 - other] = min(lens[1 - other], budget - keep[other])
        else:
            keep = allocate(lens, budget, policy.get("shares") or [1.0] * n_fields)
        cut = []
        for x, n in zip(ids, keep, strict=True):
            h = {"head": n, "tail": 0}.get(side, min(n, n // 4 if head is None else head))
            cut.append(x if len(x) <= n else x[:h] + x[len(x) - (n - h) :])
        if n_fields == 3:
            cut = [cut[0], cut[1] + [tokenizer.sep_token_id] + cut[2]]
        words = [" ".join(f"t{i}" for i in x) for x in cut]
        out = ids_tokenizer.encode(*words, add_special_tokens=True)
        rows.append((out.ids[:max_length], out.type_ids[:max_length]))
    return rows


SHORT = [_text(n, seed) for seed, n in enumerate([3, 17, 40, 9, 25, 0, 12, 31, 6])]


@pytest.mark.parametrize("side", ["head", "tail", "head_tail"])
@pytest.mark.parametrize(
    ("n_fields", "policy"),
    [
        (1, {"head": None}),
        (1, {"head": 3}),
        (2, {"pair": "longest_first"}),
        (2, {"pair": "only_first"}),
        (2, {"pair": "only_second"}),
        (2, {"pair": "share", "shares": [0.3, 0.7]}),
        (3, {"shares": [0.2, 0.4, 0.4]}),
        (3, {"shares": [0.2, 0.4, 0.4], "head": 2}),
    ],
)
def test_short_inputs_give_exactly_the_reference_tokens(tokenizer, side, n_fields, policy):
    # rows shifted per field, so short, long and empty texts meet in every combination
    fields = [SHORT[k:] + SHORT[:k] for k in range(0, 3 * n_fields, 3)]
    policy = {**policy, "side": side}
    enc, _ = encode_fields(tokenizer, fields, 24, policy, use_cache=False)
    expected = _reference(tokenizer, fields, 24, policy)
    assert len(enc) == len(expected)
    for i, (ids, types) in enumerate(expected):
        assert enc.row(i).tolist() == ids, i
        if enc.type_ids is not None:
            assert enc.type_row(i).tolist() == types, i
    if "token_type_ids" in tokenizer.model_input_names and n_fields >= 2:
        assert enc.type_ids.any()  # the segments are really marked


@pytest.mark.parametrize("n_fields", [1, 2, 3])
def test_a_post_processor_without_a_fixed_layout_still_gives_the_reference_tokens(tokenizer, monkeypatch, n_fields):
    monkeypatch.setattr(tokenize_mod, "_template", lambda backend, n_seqs: None)  # as for an unknown post-processor
    fields = [SHORT[k:] + SHORT[:k] for k in range(0, 3 * n_fields, 3)]
    policy = {"side": "head_tail", "head": None, "shares": [0.2, 0.4, 0.4][:n_fields]}
    enc, _ = encode_fields(tokenizer, fields, 24, policy, use_cache=False)
    expected = _reference(tokenizer, fields, 24, policy)
    assert [enc.row(i).tolist() for i in range(len(enc))] == [ids for ids, _ in expected]
    if enc.type_ids is not None:
        assert [enc.type_row(i).tolist() for i in range(len(enc))] == [types for _, types in expected]


def test_windows_are_exact_slices_of_the_text_with_the_special_tokens(tokenizer):
    texts = [_text(n, seed) for seed, n in enumerate([70, 3, 0, 41])]
    enc, _ = encode_fields(tokenizer, [texts], 16, {"side": "chunks", "stride": 5, "max_chunks": None}, use_cache=False)
    single = tokenizer("x")["input_ids"]
    x = tokenizer("x", add_special_tokens=False)["input_ids"]
    prefix, suffix = single[: single.index(x[0])], single[single.index(x[-1]) + 1 :]
    size = 16 - len(prefix) - len(suffix)
    rows = []
    for d, t in enumerate(texts):
        ids = tokenizer(t, add_special_tokens=False)["input_ids"]
        rows += [(d, prefix + ids[s : s + size] + suffix) for s in window_starts(len(ids), size, 5)]
    assert enc.doc.tolist() == [d for d, _ in rows]
    assert [enc.row(i).tolist() for i in range(len(enc))] == [r for _, r in rows]


# ------------------------------------------------------------------------------------------ work bounded by design


class _Recording:
    """Stands in for the private backend tokenizer (and its post-processor): records every Encoding the tokenizers
    library hands back, and fails at once when an Encoding carrying overflow pieces is handed to it (each piece is
    processed again, and merge/process multiply them: the work then explodes with the text's length)."""

    def __init__(self, obj, seen: list):
        self._obj, self._seen = obj, seen

    def __getattr__(self, name):
        value = getattr(self._obj, name)
        if isinstance(value, PostProcessor):
            return _Recording(value, self._seen)
        if not callable(value):
            return value

        def call(*args, **kwargs):
            _no_overflow([*args, *kwargs.values()])
            out = value(*args, **kwargs)
            self._seen.extend(_encodings(out))
            return out

        return call


def _encodings(x):
    if isinstance(x, Encoding):
        yield x
    elif isinstance(x, list | tuple):
        for y in x:
            yield from _encodings(y)


def _no_overflow(x) -> None:
    for e in _encodings(x):
        pieces = len(e.overflowing)
        assert pieces == 0, f"an Encoding with {pieces} overflow pieces was handed to tokenizers"


class _Merge:
    """``tokenizers.Encoding`` whose merge checks its inputs the same way."""

    @staticmethod
    def merge(encodings, growing_offsets=True):
        _no_overflow(encodings)
        return Encoding.merge(encodings, growing_offsets)


def _encodings_created(monkeypatch, tokenizer, fields, policy) -> int:
    seen: list = []
    real = tokenize_mod._backend
    with monkeypatch.context() as m:
        m.setattr(tokenize_mod, "_backend", lambda t: _Recording(real(t), seen))
        m.setattr(tokenizers, "Encoding", _Merge)
        enc, _ = encode_fields(tokenizer, fields, 512, policy, use_cache=False)
    _no_overflow(seen)  # an encoding truncated in place after it was handed back
    assert len(enc) >= len(fields[0])
    return len(seen) + sum(len(e.overflowing) for e in seen)


@pytest.mark.parametrize(
    ("n_fields", "policy"),
    [
        (3, {"side": "head", "shares": [0.2, 0.4, 0.4]}),
        (3, {"side": "tail", "shares": [0.2, 0.4, 0.4]}),
        (3, {"side": "head_tail", "head": None, "shares": [0.2, 0.4, 0.4]}),
        (2, {"side": "head_tail", "head": 40, "pair": "longest_first"}),
        (1, {"side": "head_tail", "head": None}),
        (1, {"side": "chunks", "stride": 64, "max_chunks": None}),
    ],
)
def test_long_fields_create_no_more_encodings_than_short_ones(monkeypatch, bert, n_fields, policy):
    short = [[_text(10, 10 * k + r) for r in range(3)] for k in range(n_fields)]
    long = [[_text(3000, 10 * k + r) for r in range(3)] for k in range(n_fields)]
    assert _encodings_created(monkeypatch, bert, long, policy) == _encodings_created(monkeypatch, bert, short, policy)


# ---------------------------------------------------------------------------------- the tokens of long documents


def _long_document(tokenizer, max_length: int) -> str:
    body = _text(4 * max_length * CHARS_PER_TOKEN_CAP // 6, 7)  # several character caps long
    assert len(body) > 3 * max_length * CHARS_PER_TOKEN_CAP
    return "alpha beta " + body + " zebra giraffe"


@pytest.mark.parametrize("n_fields", [1, 2, 3])
def test_tail_keeps_the_real_end_of_a_long_document(bert, n_fields):
    doc = _long_document(bert, 24)
    fields = [[doc] for _ in range(n_fields)]
    enc, _ = encode_fields(bert, fields, 24, {"side": "tail", "shares": [1.0] * n_fields}, use_cache=False)
    tokens = bert.convert_ids_to_tokens(enc.row(0).tolist())
    assert len(tokens) == 24
    marker = bert.tokenize("zebra giraffe")
    ends = [i for i in range(len(tokens)) if tokens[i : i + len(marker)] == marker]
    assert len(ends) == n_fields, tokens  # every field ends with its real last words
    if n_fields == 1:
        assert tokens[1:-1] == bert.tokenize(doc)[-22:]


def test_head_tail_keeps_the_real_start_and_end_of_a_long_document(bert):
    doc = _long_document(bert, 24)
    enc, _ = encode_fields(bert, [[doc]], 24, {"side": "head_tail", "head": 5}, use_cache=False)
    tokens = bert.convert_ids_to_tokens(enc.row(0).tolist())
    full = bert.tokenize(doc)
    assert tokens[1:-1] == full[:5] + full[-17:]
    marker = bert.tokenize("zebra giraffe")
    assert tokens[1:3] == ["alpha", "beta"] and tokens[-1 - len(marker) : -1] == marker


def test_left_truncation_side_keeps_the_real_end_of_a_long_document(bert):
    doc = _long_document(bert, 16)
    bert.truncation_side = "left"
    enc, _ = tokenize(bert, [doc], 16, use_cache=False)
    assert bert.convert_ids_to_tokens(enc.row(0).tolist())[1:-1] == bert.tokenize(doc)[-14:]


# ---------------------------------------------------------------------------------------------------- cache key


def test_truncation_side_is_part_of_the_cache_key(bert):
    texts = ["truncation side key " + _text(300, 1), "short one"]
    right, hit = tokenize(bert, texts, 16)
    assert not hit
    bert.truncation_side = "left"
    left, hit = tokenize(bert, texts, 16)
    assert not hit and left.row(0).tolist() != right.row(0).tolist()
    assert bert.convert_ids_to_tokens(left.row(0).tolist())[-2] == bert.tokenize(texts[0])[-1]
    assert left.row(1).tolist() == right.row(1).tolist()  # a short text is the same either way
    assert tokenize(bert, texts, 16)[1]  # and each side's entry is reused
    bert.truncation_side = "right"
    again, hit = tokenize(bert, texts, 16)
    assert hit and again.row(0).tolist() == right.row(0).tolist()


def test_cache_entries_of_another_encoding_version_are_not_reused(bert, monkeypatch):
    texts = ["version salt " + _text(30, 2)]
    fields = [texts, ["a second field"]]
    assert not tokenize(bert, texts, 16)[1] and tokenize(bert, texts, 16)[1]
    assert not encode_fields(bert, fields, 16, {"side": "tail"})[1]
    assert encode_fields(bert, fields, 16, {"side": "tail"})[1]
    monkeypatch.setattr(tokenize_mod, "ENCODING_VERSION", tokenize_mod.ENCODING_VERSION + 1)
    misses = tokenize_mod.MISSES
    assert not tokenize(bert, texts, 16)[1]
    assert not encode_fields(bert, fields, 16, {"side": "tail"})[1]
    assert tokenize_mod.MISSES == misses + 2
