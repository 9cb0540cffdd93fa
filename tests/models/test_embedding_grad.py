"""The kept word-embedding gradient buffer: training with it (its row-wise zeroing and clipping included) gives the
parameters and gradient norms of ordinary dense training, the buffer really is reused and left all zero, and a step
that starts without it still gets a dense gradient."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from textune.models.embedding_grad import keep_embedding_grad, zero_grad


def _train(
    model_dir, keep: bool, max_norm: float = 0.05, tied: bool = False, checkpointing: bool = False, steps: int = 4
):
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=3).train()
    if checkpointing:
        model.gradient_checkpointing_enable()
    for m in model.modules():  # deterministic forward: the comparison is about gradients
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    buffer = keep_embedding_grad(model) if keep else None
    # SGD: Adam would turn the roundoff of gradients that are zero in exact arithmetic (the key biases') into full steps
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1)
    g = torch.Generator().manual_seed(1)
    grads_seen, norms = [], []
    for _ in range(steps):
        ids = torch.randint(5, 100, (6, 9), generator=g)
        ids[:, 0] = 3  # a token repeated in every row: its gradient rows must be summed
        targets = torch.randint(0, 3, (6,), generator=g)
        for half in (slice(0, 3), slice(3, 6)):  # two micro-batches accumulate into one step's gradient
            logits = model(input_ids=ids[half]).logits
            loss = torch.nn.functional.cross_entropy(logits, targets[half]) / 2
            if tied:  # the weight also used outside the lookup (as a tied output layer is): a dense gradient
                loss = loss + model.get_input_embeddings().weight[-1].square().sum()
            loss.backward()
        weight = model.get_input_embeddings().weight
        assert weight.grad.layout == torch.strided
        grads_seen.append(weight.grad)
        if buffer is not None:  # the rows-only path is taken, unless a dense gradient reached the weight
            rows = buffer._touched()
            assert rows is None if tied else 0 < len(rows) < len(weight)
        if buffer is None:
            norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
        else:
            norms.append(buffer.clip_grad_norm_(model.parameters(), max_norm))
        opt.step()
        zero_grad(opt, buffer)
        if buffer is not None:
            assert weight.grad.count_nonzero() == 0  # the rows written were all zeroed
    return model, grads_seen, torch.stack(norms)


@pytest.mark.parametrize(
    ("max_norm", "tied", "checkpointing"),
    [(0.05, False, False), (1e4, False, False), (0.05, True, False), (0.05, False, True)],
    ids=["clipped", "norm-below-max", "dense-gradient-too", "activation-checkpointing"],
)
def test_training_with_the_buffer_equals_dense_training_and_reuses_it(tiny_model, max_norm, tied, checkpointing):
    dense, _, dense_norms = _train(tiny_model, keep=False, max_norm=max_norm, tied=tied, checkpointing=checkpointing)
    kept, grads, kept_norms = _train(tiny_model, keep=True, max_norm=max_norm, tied=tied, checkpointing=checkpointing)
    assert kept.get_input_embeddings().sparse
    assert all(g is grads[0] for g in grads)  # one buffer for every step
    torch.testing.assert_close(kept_norms, dense_norms, rtol=1e-5, atol=0)
    clipped = dense_norms > max_norm
    assert clipped.any() if max_norm < 1 else not clipped.any()  # the cases that clip do, the other never does
    for (name, a), b in zip(dense.named_parameters(), kept.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)
    moved = (
        dense.get_input_embeddings().weight
        - AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=3).get_input_embeddings().weight
    )
    assert moved.abs().max() > 1e-3  # the embedding really trained (the comparison above is not of frozen weights)


def test_a_step_without_the_buffer_still_gets_a_dense_gradient_and_the_next_keeps_it(tiny_model):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=3)
    buffer = keep_embedding_grad(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    weight = model.get_input_embeddings().weight
    weight.grad = None  # e.g. a batch-size probe that set every gradient to None
    model(input_ids=torch.tensor([[3, 7, 7, 9]])).logits.sum().backward()
    assert weight.grad.layout == torch.strided and weight.grad.shape == weight.shape
    assert weight.grad[7].abs().sum() > 0 and weight.grad[8].abs().sum() == 0
    assert buffer._touched() is None  # not the kept buffer: every row is read and zeroed
    densified = weight.grad
    zero_grad(opt, buffer)
    assert weight.grad is densified and densified.count_nonzero() == 0  # adopted as the buffer
    model(input_ids=torch.tensor([[4, 5]])).logits.sum().backward()
    assert buffer._touched().tolist() == [4, 5]  # back on the rows-only path


def test_ids_passed_by_keyword_are_recorded_and_unreadable_calls_fall_back(tiny_model):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=3)
    buffer = keep_embedding_grad(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    embedding = model.get_input_embeddings()
    embedding(input=torch.tensor([[6, 2, 6]])).sum().backward()
    assert buffer._touched().tolist() == [2, 6]
    zero_grad(opt, buffer)
    with torch.no_grad():  # an evaluation forward records nothing
        embedding(torch.tensor([[8]]))
    assert buffer._touched().tolist() == []
    buffer._record_ids(embedding, (), {})  # a call whose ids the hook cannot see
    embedding(torch.tensor([[9]])).sum().backward()
    assert buffer._touched() is None
    zero_grad(opt, buffer)
    assert embedding.weight.grad.count_nonzero() == 0


@pytest.mark.parametrize("case", ["frozen", "lora"])
def test_no_buffer_for_a_frozen_embedding(tiny_model, case):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=3)
    if case == "frozen":
        model.get_input_embeddings().weight.requires_grad_(False)
    else:
        from peft import LoraConfig, TaskType, get_peft_model

        model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=2, target_modules=["query", "value"]))
    assert keep_embedding_grad(model) is None
    assert not model.get_input_embeddings().sparse
