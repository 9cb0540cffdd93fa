"""The CPU dropout: the Bernoulli mask it draws, its scaling and gradient, and the attention function that applies it
to attention probabilities (equal to SDPA where nothing is dropped, eager dropout attention where something is)."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForSequenceClassification
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from textune.models.dropout import FastDropout, _attention, fast_dropout, keep_mask, use_fast_dropout


@pytest.mark.parametrize("p", [0.1, 0.5, 0.02])
def test_mask_keeps_one_minus_p_and_lanes_are_independent(p):
    torch.manual_seed(0)
    mask = keep_mask(torch.Size([1000, 1003]), p, torch.device("cpu"))  # odd size: the last draw is partly used
    assert mask.shape == (1000, 1003) and mask.dtype == torch.bool
    assert abs(mask.float().mean().item() - (1 - p)) < 0.002  # 1M draws: 4 standard deviations at p = 0.5
    # the four 16-bit lanes of one 64-bit draw: neighbours must not be correlated
    lanes = mask.flatten()[: 1000 * 1000].view(-1, 4).float()
    corr = torch.corrcoef(lanes.T)
    assert (corr - torch.eye(4)).abs().max().item() < 0.01


def test_mask_follows_the_seed():
    torch.manual_seed(3)
    a = keep_mask(torch.Size([64, 65]), 0.3, torch.device("cpu"))
    torch.manual_seed(3)
    b = keep_mask(torch.Size([64, 65]), 0.3, torch.device("cpu"))
    c = keep_mask(torch.Size([64, 65]), 0.3, torch.device("cpu"))
    assert torch.equal(a, b) and not torch.equal(b, c)


def test_fast_dropout_scales_survivors_and_its_gradient_is_the_mask():
    x = (torch.rand(200, 300) + 1.0).requires_grad_()  # no zeros of its own
    torch.manual_seed(1)
    y = fast_dropout(x, 0.25)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.75) < 0.01
    torch.testing.assert_close(y[kept], x[kept] / 0.75)
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / 0.75)
    assert fast_dropout(x, 0.25, training=False) is x
    assert torch.equal(fast_dropout(x, 1.0), torch.zeros_like(x))


@pytest.mark.parametrize("bool_mask", [True, False])
def test_attention_equals_sdpa_when_nothing_is_dropped(bool_mask):
    """A drop probability below 1/65536 keeps every element: then the eager path must be SDPA's attention
    (same masking convention, same scaling), for boolean and additive masks alike."""
    module = torch.nn.Module()
    module.is_causal = False
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 8) for _ in range(3))
    keep = torch.ones(2, 1, 7, 7, dtype=torch.bool)
    keep[0, ..., 4:] = False  # the first row's last 3 tokens are padding
    mask = keep if bool_mask else torch.zeros(keep.shape).masked_fill(~keep, torch.finfo(torch.float32).min)
    expected, _ = sdpa_attention_forward(module, q, k, v, mask, 0.0, None)
    got, _ = _attention(module, q, k, v, mask, 1e-9, None)
    torch.testing.assert_close(got, expected)


def test_attention_drops_probabilities_like_eager_dropout():
    module = torch.nn.Module()
    module.is_causal = False
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 8) for _ in range(3))
    torch.manual_seed(5)
    got, _ = _attention(module, q, k, v, None, 0.3, 0.5)
    torch.manual_seed(5)
    probs = torch.softmax(q @ k.transpose(2, 3) * 0.5, dim=-1)
    kept = 1 - round(0.3 * 65536) / 65536  # survivors are scaled by the keep rate the mask really has
    expected = (probs * keep_mask(probs.shape, 0.3, probs.device) / kept) @ v
    torch.testing.assert_close(got, expected.transpose(1, 2))


def test_attention_under_bf16_autocast_has_flash_attention_numerics():
    """bf16 inputs: scores and softmax in fp32, the probabilities rounded to bf16 only as the weights of v, as in
    SDPA's flash kernel (which has no dropout on CPU, so it is compared where nothing is dropped). Sharp attention
    (queries x3): there the bf16 scores and softmax of a plain eager attention were 0.061 off at worst."""
    module = torch.nn.Module()
    module.is_causal = False
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 64, 32) for _ in range(3))
    q, k, v = (3 * q).to(torch.bfloat16), k.to(torch.bfloat16), v.to(torch.bfloat16)
    reference = torch.softmax(q.float() @ k.float().transpose(2, 3) / 32**0.5, dim=-1) @ v.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, _ = _attention(module, q, k, v, None, 1e-9, None)
    assert got.dtype == torch.bfloat16
    error = (got.float() - reference.transpose(1, 2)).abs().max().item()
    assert error < 0.02, error
    flash = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).float()
    assert ((got.float() - flash).norm() / flash.norm()).item() < 0.005  # bf16 rounding: 2^-9 relative


def _eager_reference(q, k, v, keep, p, mask):
    scores = (q @ k.transpose(2, 3)) * q.size(-1) ** -0.5
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    kept = 1 - round(p * 65536) / 65536
    return ((torch.softmax(scores, dim=-1) * keep / kept) @ v).transpose(1, 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_gradients_equal_autograd_of_eager_attention(dtype):
    """The hand-written backward against autograd through an fp64 eager attention with the same dropout mask: equal
    to fp32 precision for fp32 inputs, to bf16 rounding (< 1% relative) for bf16 inputs."""
    module = torch.nn.Module()
    module.is_causal = False
    g = torch.Generator().manual_seed(0)
    base = [torch.randn(3, 2, 9, 8, generator=g) * 2 for _ in range(3)]
    mask = torch.ones(3, 1, 9, 9, dtype=torch.bool)
    mask[1, ..., 5:] = False
    grad_out = torch.randn(3, 9, 2, 8, generator=g)
    ours = [t.to(dtype).clone().requires_grad_() for t in base]
    torch.manual_seed(4)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        out, _ = _attention(module, *ours, mask, 0.2, None)
        (out.float() * grad_out).sum().backward()  # inside autocast, as textune's loop calls it
    torch.manual_seed(4)
    keep = keep_mask(torch.Size([3, 2, 9, 9]), 0.2, torch.device("cpu"))
    ref_in = [t.to(dtype).double().detach().requires_grad_() for t in base]
    ref = _eager_reference(*ref_in, keep, 0.2, mask)
    (ref * grad_out.double()).sum().backward()
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    for name, a, b in zip("qkv", ours, ref_in, strict=True):
        rel = ((a.grad.double() - b.grad).norm() / b.grad.norm()).item()
        assert rel < tol, (name, rel)
    assert ((out.double() - ref).norm() / ref.norm()).item() < tol


def test_swapped_model_predicts_the_same_and_trains_with_the_attention_function(tiny_model, monkeypatch):
    import textune.models.dropout as dropout

    drawn = []
    real = dropout.keep_mask
    monkeypatch.setattr(
        dropout, "keep_mask", lambda shape, p, device: drawn.append(tuple(shape)) or real(shape, p, device)
    )
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=3).eval()
    reference = copy.deepcopy(model)
    swapped = use_fast_dropout(model)
    assert swapped == sum(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in reference.modules())
    assert swapped and all(type(m) is not torch.nn.Dropout for m in model.modules() if getattr(m, "p", 0) > 0)
    assert model.config._attn_implementation == "textune_sdpa"
    ids = torch.randint(5, 100, (3, 11))
    attention = torch.ones(3, 11, dtype=torch.long)
    attention[1, 6:] = 0
    with torch.no_grad():
        torch.testing.assert_close(model(ids, attention).logits, reference(ids, attention).logits)
    model.train()
    torch.manual_seed(0)
    a = model(ids, attention).logits
    torch.manual_seed(0)
    b = model(ids, attention).logits
    c = model(ids, attention).logits
    assert torch.equal(a, b) and not torch.equal(b, c)  # dropout is on, and follows the seed
    a.sum().backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "pooler" not in n)
    assert isinstance(model.bert.embeddings.dropout, FastDropout)
    heads = model.config.num_attention_heads
    assert (3, heads, 11, 11) in drawn  # the attention probabilities took the eager path, not SDPA's own dropout
    assert (3, 11, model.config.hidden_size) in drawn
