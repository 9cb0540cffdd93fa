"""What Kaggle solutions add to a plain fine-tune: pooling choice, multi-sample dropout, re-initialised top layers,
layer-wise learning-rate decay and best-step selection on validation loss."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from textune import Predictor, load_recipe, train
from textune.errors import TextuneError
from textune.models.fusion import FusionHead


def _head(pooling: str = "mean", **kw) -> FusionHead:
    torch.manual_seed(0)
    return FusionHead(8, 0, [], 3, [], 0.0, False, pooling=pooling, **kw)


@pytest.mark.parametrize("pooling", ["mean", "attention", "cls"])
def test_padding_never_changes_the_pooled_vector(pooling):
    head = _head(pooling)
    torch.nn.init.normal_(head.attention.weight) if head.attention is not None else None
    hidden = torch.randn(2, 5, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    noisy = hidden.clone()
    noisy[0, 3:] = 100.0  # padded positions of row 0
    torch.testing.assert_close(head.pool(noisy, mask), head.pool(hidden, mask))
    if pooling == "mean":
        torch.testing.assert_close(head.pool(hidden, mask)[0], hidden[0, :3].mean(0))
    if pooling == "cls":
        torch.testing.assert_close(head.pool(hidden, mask), hidden[:, 0])


def test_attention_pooling_is_a_weighted_mean_that_learns_which_token_counts():
    head = _head("attention")
    hidden = torch.eye(8)[:4].unsqueeze(0) * torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 4, 1)  # orthogonal tokens
    mask = torch.ones(1, 4, dtype=torch.long)
    with torch.no_grad():
        head.attention.weight.zero_()
        head.attention.bias.zero_()
    torch.testing.assert_close(head.pool(hidden, mask), hidden.mean(1))  # equal scores: the plain mean
    with torch.no_grad():
        head.attention.weight.copy_(hidden[0, 2].unsqueeze(0) * 10)  # token 2 scores 30, the others 0
    torch.testing.assert_close(head.pool(hidden, mask), hidden[:, 2], atol=1e-3, rtol=1e-3)


def test_multi_sample_dropout_averages_masks_in_training_and_is_one_clean_pass_in_eval():
    x = torch.randn(64, 8)
    one, many = _head(input_dropout=0.5, samples=1), _head(input_dropout=0.5, samples=8)
    many.load_state_dict(one.state_dict())
    one.eval(), many.eval()
    torch.testing.assert_close(many(x, None, None), one.mlp(x))  # eval: no dropout, one pass
    one.train(), many.train()
    torch.manual_seed(1)
    spread_one = torch.stack([one(x, None, None) for _ in range(20)]).std(0).mean()
    spread_many = torch.stack([many(x, None, None) for _ in range(20)]).std(0).mean()
    assert spread_many < 0.5 * spread_one  # 8 masks averaged: about 1/sqrt(8) of one mask's noise


def _rows(path, n=200):
    from conftest import make_news

    make_news(n, 0).to_csv(path, index=False)
    return path


def test_a_pooling_choice_trains_saves_and_predicts_like_its_own_validation_file(tmp_path, tiny_model):
    from conftest import write_recipe

    recipe = write_recipe(
        tmp_path / "r.yaml",
        tiny_model,
        _rows(tmp_path / "train.csv"),
        model={"pooling": "attention", "multi_sample_dropout": 4},
        train={"epochs": 2},
    )
    run = train(load_recipe(recipe), out=tmp_path / "run")
    spec = json.loads((run / "model" / "fusion.json").read_text())
    assert (spec["pooling"], spec["samples"], spec["widths"], spec["numeric_dim"]) == ("attention", 4, [], 0)
    assert "attention.weight" in load_file(run / "model" / "fusion.safetensors")
    valid = pd.read_csv(run / "predictions" / "validation.csv")
    rows = pd.read_csv(tmp_path / "train.csv").set_index("id").loc[valid["id"]].reset_index()
    assert Predictor.load(run).predict(rows) == valid["pred_label"].tolist()
    assert json.loads((run / "summary.json").read_text())["validation"]["accuracy"] > 0.5  # it learned


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_reinit_replaces_exactly_the_top_layers(recipe_factory):
    from textune.models.build import build_model
    from textune.tasks.classification import label_model_kwargs

    kwargs = label_model_kwargs(["a", "b"])
    before, _ = build_model(load_recipe(recipe_factory()), kwargs)
    after, _ = build_model(load_recipe(recipe_factory("r1.yaml", model={"reinit_layers": 1})), kwargs)
    old, new = _weights(before), _weights(after)
    changed = {k for k in old if not torch.equal(old[k], new[k])}
    top = {k for k in old if ".layer.1." in k and "weight" in k and "LayerNorm" not in k}
    assert top and top <= changed  # every matrix of the top layer (of 2) re-drawn
    assert not {k for k in changed if ".layer.0." in k or "embeddings" in k}  # nothing below it touched
    with pytest.raises(TextuneError, match=r"model\.reinit_layers: 3 exceeds the model's 2 layers"):
        build_model(load_recipe(recipe_factory("r3.yaml", model={"reinit_layers": 3})), kwargs)


def test_layer_wise_decay_gives_each_depth_its_rate(recipe_factory):
    from textune.models.build import build_model
    from textune.tasks.classification import label_model_kwargs
    from textune.training.optim import build_optimizer, build_scheduler

    kwargs = label_model_kwargs(["a", "b"])
    recipe = load_recipe(recipe_factory(train={"layer_lr_decay": 0.5, "lr": 1e-3, "warmup_ratio": 0.0}))
    model, _ = build_model(recipe, kwargs)
    opt = build_optimizer(model, recipe.train, torch.device("cpu"))
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    # 2 layers: head 1e-3, layer 1 5e-4, layer 0 2.5e-4, embeddings 1.25e-4
    expect = {
        "classifier.weight": 1e-3,
        "bert.encoder.layer.1.attention.self.query.weight": 5e-4,
        "bert.encoder.layer.0.output.dense.bias": 2.5e-4,
        "bert.embeddings.word_embeddings.weight": 1.25e-4,
    }
    assert {k: pytest.approx(lr_of[id(named[k])]) for k in expect} == expect
    assert sorted(id(p) for g in opt.param_groups for p in g["params"]) == sorted(
        id(p) for p in model.parameters() if p.requires_grad
    )  # every trainable parameter in exactly one group
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert decay[id(named["bert.encoder.layer.0.output.dense.bias"])] == 0.0
    assert decay[id(named["bert.encoder.layer.0.output.dense.weight"])] == recipe.train.weight_decay
    scheduler = build_scheduler(opt, recipe.train, total_steps=10)
    for _ in range(5):
        opt.step(), scheduler.step()
    ratios = {round(g["lr"] / g["initial_lr"], 6) for g in opt.param_groups}
    assert len(ratios) == 1  # the schedule scales every depth alike


def test_selecting_on_validation_loss_keeps_the_lowest_loss_step_and_reports_the_task_metric(
    recipe_factory, tmp_path, monkeypatch
):
    """Scripted evaluations where the lowest loss and the best accuracy fall on different steps."""
    from textune.training import loop

    script = iter([(0.9, 0.50), (0.4, 0.60), (0.6, 0.80), (0.7, 0.70)])  # (loss, accuracy): loss best at eval 2

    def scripted(run, task, split, batch_size):
        loss, accuracy = next(script, (0.8, 0.75))
        return {"accuracy": accuracy, "loss": loss}

    monkeypatch.setattr(loop, "evaluate", scripted)
    recipe = recipe_factory(train={"max_steps": 12, "eval_every": 3, "early_stopping": {"metric": "loss"}})
    run = train(load_recipe(recipe), out=tmp_path / "run")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_step"] == 6  # the second evaluation (steps 3, 6, 9, 12)
    assert (summary["main_metric"], summary["selected_on"]) == ("accuracy", "loss")
    assert "accuracy" in summary["validation"]


def test_every_trainable_parameter_of_textunes_head_gets_a_gradient(recipe_factory):
    """What DDP needs of a multi-process run: no trainable parameter left out of the graph (BERT's pooler is
    unused under textune's head, so it is frozen)."""
    from textune.models.build import build_model, fusion_spec
    from textune.tasks import get_task

    recipe = load_recipe(recipe_factory(model={"pooling": "attention", "multi_sample_dropout": 2}))
    task = get_task("classification")(recipe)
    task.labels = ["a", "b", "c"]
    model, _ = build_model(recipe, {}, fusion_spec(recipe, task, None))
    model.train()
    ids = torch.randint(5, 100, (4, 9))
    model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.sum().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    assert not any(p.requires_grad for p in model.encoder.pooler.parameters())
