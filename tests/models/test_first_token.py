"""The last layer computing the first token's row alone while training: the same loss and gradients as the full layer
(dropout masks included), used only where the head reads nothing else, and never in evaluation."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoModelForSequenceClassification

from tests._tiny import make_tiny_model_dir
from textune.models.build import encoder_layers
from textune.models.dropout import use_fast_dropout
from textune.models.first_token import first_rows_dropout, first_token_last_layer
from textune.models.fusion import FusionModel


def _batch(seed: int = 0, vocab: int = 100):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (4, 9), generator=g)
    mask = torch.ones(4, 9, dtype=torch.long)
    mask[1, 6:] = 0  # padded rows: the first query's mask row must be the one used
    mask[3, 3:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _pair(path, fast_dropout: bool, family_dropout: float = 0.1):
    torch.manual_seed(0)
    full = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=4, hidden_dropout_prob=family_dropout, attention_probs_dropout_prob=family_dropout
    )
    full.config._attn_implementation = "sdpa"
    if fast_dropout:
        use_fast_dropout(full)
    pruned = copy.deepcopy(full)
    assert first_token_last_layer(pruned, encoder_layers(pruned))
    return full, pruned


def _loss_and_grads(model, batch, seed):
    model.train()
    model.zero_grad()
    torch.manual_seed(seed)
    logits = model(**batch).logits
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 3]))
    loss.backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("family", ["bert", "roberta", "electra"])
def test_pruned_last_layer_trains_as_the_full_one_with_the_same_dropout_masks(family, tmp_path):
    full, pruned = _pair(make_tiny_model_dir(tmp_path / family, family), fast_dropout=True)
    batch = _batch()
    for seed in (1, 2):
        logits_a, grads_a = _loss_and_grads(full, batch, seed)
        after_a = torch.randint(0, 2**62, (3,))
        logits_b, grads_b = _loss_and_grads(pruned, batch, seed)
        after_b = torch.randint(0, 2**62, (3,))
        torch.testing.assert_close(logits_b, logits_a, rtol=1e-5, atol=1e-6)
        assert grads_a.keys() == grads_b.keys()
        for name, g in grads_a.items():
            torch.testing.assert_close(grads_b[name], g, rtol=1e-4, atol=1e-6, msg=name)
        assert torch.equal(after_b, after_a)  # the random stream goes on as the full layer's: later steps agree


def test_pruned_layer_does_the_first_row_only_and_evaluation_runs_the_full_layer(tiny_model):
    full, pruned = _pair(tiny_model, fast_dropout=True)
    seen = []
    last = encoder_layers(pruned)[-1]
    last.intermediate.dense.register_forward_hook(lambda m, a, out: seen.append(tuple(a[0].shape)))
    _loss_and_grads(pruned, _batch(), 0)
    assert seen == [(4, 1, 32)]  # the feed-forward saw one token a row
    seen.clear()
    pruned.eval()
    full.eval()
    with torch.no_grad():
        out = pruned(**_batch(), output_hidden_states=True)
        ref = full(**_batch(), output_hidden_states=True)
    assert seen == [(4, 9, 32)]
    torch.testing.assert_close(out.hidden_states[-1], ref.hidden_states[-1])


def test_torch_dropout_and_gpu_attention_keep_the_first_row_arithmetic_without_dropout(tiny_model):
    """Without textune's CPU dropout (GPUs) the masks are drawn for the row alone; with nothing dropped the two
    layers must still agree."""
    full, pruned = _pair(tiny_model, fast_dropout=False, family_dropout=0.0)
    a, ga = _loss_and_grads(full, _batch(), 0)
    b, gb = _loss_and_grads(pruned, _batch(), 0)
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    for name, g in ga.items():
        torch.testing.assert_close(gb[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_heads_reading_every_token_and_other_layer_shapes_are_left_alone(tiny_model, tmp_path):
    encoder = AutoModel.from_pretrained(tiny_model)
    spec = {
        "numeric_dim": 0,
        "cardinalities": [],
        "num_outputs": 3,
        "widths": [],
        "dropout": 0.1,
        "layer_norm": False,
        "input_dropout": 0.1,
        "samples": 1,
    }
    mean = FusionModel(copy.deepcopy(encoder), {**spec, "pooling": "mean"})
    assert not first_token_last_layer(mean, encoder_layers(mean.encoder))
    cls = FusionModel(encoder, {**spec, "pooling": "cls"})
    assert first_token_last_layer(cls, encoder_layers(cls.encoder))
    deberta = AutoModelForSequenceClassification.from_pretrained(
        make_tiny_model_dir(tmp_path / "deberta", "deberta-v2"), num_labels=3
    )
    assert not first_token_last_layer(deberta, encoder_layers(deberta))
    assert type(encoder_layers(deberta)[-1]).__name__.startswith("DebertaV2")


def test_first_rows_dropout_is_the_full_masks_first_rows():
    drop = torch.nn.Dropout(0.3)
    use_fast_dropout(drop)
    x = torch.rand(3, 7, 5) + 1.0
    torch.manual_seed(4)
    whole = drop(x)
    torch.manual_seed(4)
    first = first_rows_dropout(drop, x[:, :1], 7)
    assert torch.equal(first, whole[:, :1])
    assert (whole == 0).any()


def test_logits_inference_computes_the_first_row_alone_and_predicts_the_same(tiny_model):
    from textune.data.tokenize import Encoded
    from textune.models.first_token import first_token_logits
    from textune.models.infer import infer_logits

    full, pruned = _pair(tiny_model, fast_dropout=False)
    batch = _batch()
    lengths = batch["attention_mask"].sum(1).numpy()
    rows = [ids[:n].numpy() for ids, n in zip(batch["input_ids"], lengths, strict=True)]
    encoded = Encoded(np.concatenate(rows), np.concatenate([[0], np.cumsum(lengths)]))
    seen = []
    encoder_layers(pruned)[-1].intermediate.dense.register_forward_hook(lambda m, a, o: seen.append(a[0].shape[1]))
    device = torch.device("cpu")
    got = infer_logits(pruned, encoded, 2, device, 0)
    assert seen and set(seen) == {1}
    want = infer_logits(full, encoded, 2, device, 0)
    torch.testing.assert_close(torch.from_numpy(got), torch.from_numpy(want), rtol=1e-5, atol=1e-6)
    seen.clear()
    with torch.no_grad():
        pruned(**batch)  # evaluation outside the logits path: the full layer
    assert seen == [9]
    with first_token_logits(pruned), torch.no_grad():
        pruned(**batch)
    assert seen == [9, 1]
