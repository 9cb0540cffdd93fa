"""LoRA: published parameter counts, budget solving, resume, merged export."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from _tiny import make_tiny_model_dir
from safetensors.torch import load_file, save_file
from transformers import AutoModel, DistilBertConfig, RobertaConfig

from textune import Predictor, load_recipe, train
from textune.cli import main
from textune.errors import TextuneError
from textune.models.build import build_model
from textune.models.peft import count_trainable
from textune.params import parameter_report
from textune.recipe import recipe_from_dict
from textune.training.loop import Callback


@pytest.fixture
def roberta_base_dir(tmp_path):
    """A RoBERTa-base-shaped config.json, no weights: enough for `textune params`."""
    path = tmp_path / "roberta-base"
    RobertaConfig(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1).save_pretrained(path)
    return path


def _report(model, **peft):
    recipe = recipe_from_dict({"model": {"name": str(model), "peft": {"method": "lora", **peft}}})
    return parameter_report(recipe, num_labels=4)


def test_known_answer_r10_query_value(roberta_base_dir):
    rep = _report(roberta_base_dir, r=10, alpha=64, target_modules=["query", "value"])
    assert rep["trainable"] == 962_308
    assert rep["peft"]["notes"] == []
    by_module = {row["module"]: row["trainable"] for row in rep["modules"]}
    assert by_module["adapters (LoRA)"] == 12 * 2 * 10 * (768 + 768)
    assert by_module["head"] == 768 * 768 + 768 + 768 * 4 + 4


def test_known_answer_r1_with_head_target_explains_the_missing_1536(roberta_base_dir):
    rep = _report(roberta_base_dir, r=1, alpha=2, target_modules=["query", "value", "classifier.dense"])
    assert rep["trainable"] == 630_532
    assert rep["trainable"] + 1_536 == 632_068  # the published figure
    (note,) = rep["peft"]["notes"]
    assert "classifier.dense" in note and "1,536" in note


def test_known_architecture_name_needs_no_files():
    rep = _report("roberta-base", r=10, alpha=64, target_modules=["query", "value"])
    assert rep["trainable"] == 962_308
    assert rep["total"] > 124_000_000


def test_budget_picks_the_largest_rank_that_fits(roberta_base_dir):
    rep = _report(roberta_base_dir, budget=1_000_000, r=8, alpha=16, target_modules=["query", "value"])
    per_rank = 12 * 2 * (768 + 768)
    head = 768 * 768 + 768 + 768 * 4 + 4
    r = rep["peft"]["r"]
    assert r == (1_000_000 - head) // per_rank
    assert rep["trainable"] == head + r * per_rank <= 1_000_000
    assert head + (r + 1) * per_rank > 1_000_000
    assert rep["peft"]["alpha"] == pytest.approx(2 * r)  # alpha/r kept at 16/8


def test_budget_too_small_says_what_fits(roberta_base_dir):
    with pytest.raises(TextuneError, match=r"even r=1 needs 630,532"):
        _report(roberta_base_dir, budget=100_000, target_modules=["query", "value"])


def test_unknown_target_module_is_a_clear_error(roberta_base_dir):
    with pytest.raises(TextuneError, match=r"no module named 'qeury'.*did you mean 'query'"):
        _report(roberta_base_dir, target_modules=["qeury"])


def test_params_cli(roberta_base_dir, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"model:\n  name: {roberta_base_dir}\n  peft: {{method: lora, r: 10, alpha: 64}}\n"
        "data:\n  labels: [World, Sports, Business, Sci/Tech]\n"
    )
    assert main(["params", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert "962,308" in out and "LoRA r=10" in out


def _lora_recipe(model_dir, **peft):
    return recipe_from_dict(
        {"model": {"name": str(model_dir), "peft": {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0, **peft}}}
    )


def _trainable_modules(model) -> set[str]:
    """Names of the bare model's modules with trainable weights (PEFT's wrapper levels taken out)."""
    out = set()
    for name, p in model.named_parameters():
        if p.requires_grad:
            parts = name.removeprefix("base_model.model.").split(".")
            out.add(".".join(x for x in parts[:-1] if x not in ("modules_to_save", "default")))
    return out


# Tiny encoders (2 layers, width 32) with LoRA r=4 on the query and value projections: 2 layers x 2 projections x
# r x (32 in + 32 out) = 1,024 adapter weights; a 4-label classifier 32 x 4 + 4 = 132; a 32 -> 32 dense 1,056.
LORA_QV, CLASSIFIER_4, DENSE_32 = 2 * 2 * 4 * (32 + 32), 32 * 4 + 4, 32 * 32 + 32


def test_lora_trains_distilberts_fresh_pre_classifier_too(tmp_path):
    path = tmp_path / "distilbert"
    config = DistilBertConfig(vocab_size=100, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=64)
    config.num_labels = 4
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(path)  # the "pretrained" backbone: no head weights
    recipe = _lora_recipe(path)
    model, report = build_model(recipe, {"num_labels": 4})
    assert set(report.head_modules) == {"pre_classifier", "classifier"}
    assert {"pre_classifier", "classifier"} <= _trainable_modules(model)
    assert count_trainable(model) == LORA_QV + DENSE_32 + CLASSIFIER_4
    # `textune params` sizes the same head on the meta device
    assert parameter_report(recipe, num_labels=4)["trainable"] == LORA_QV + DENSE_32 + CLASSIFIER_4


def test_lora_trains_a_pooler_the_checkpoint_lacks(tmp_path):
    """A BERT saved without its pooler (as MLM-only checkpoints are) gets a random one: frozen, it would be noise."""
    path = make_tiny_model_dir(tmp_path / "bert", "bert")
    weights = load_file(path / "model.safetensors")
    assert {"pooler.dense.weight", "pooler.dense.bias"} <= weights.keys()
    save_file(
        {k: v for k, v in weights.items() if not k.startswith("pooler.")},
        path / "model.safetensors",
        metadata={"format": "pt"},
    )
    recipe = _lora_recipe(path)
    model, report = build_model(recipe, {"num_labels": 4})
    assert "bert.pooler.dense" in report.head_modules
    assert {"bert.pooler.dense", "classifier"} <= _trainable_modules(model)
    assert count_trainable(model) == LORA_QV + DENSE_32 + CLASSIFIER_4
    assert parameter_report(recipe, num_labels=4)["trainable"] == LORA_QV + DENSE_32 + CLASSIFIER_4


@pytest.mark.parametrize(
    ("family", "head"),
    [("bert", CLASSIFIER_4), ("roberta", DENSE_32 + CLASSIFIER_4)],  # RoBERTa's head: dense 32 -> 32, out_proj
)
def test_lora_head_of_complete_checkpoints_is_the_classifier_alone(tmp_path, family, head):
    recipe = _lora_recipe(make_tiny_model_dir(tmp_path / family, family))
    model, report = build_model(recipe, {"num_labels": 4})
    assert report.head_modules == ["classifier"]
    assert {m for m in _trainable_modules(model) if "lora_" not in m} == (
        {"classifier"} if family == "bert" else {"classifier.dense", "classifier.out_proj"}
    )
    assert count_trainable(model) == LORA_QV + head
    assert parameter_report(recipe, num_labels=4)["trainable"] == LORA_QV + head


class CrashAt(Callback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, state):
        # the loop hands a TrainState (attributes); it used to hand a dict
        if (state.step if hasattr(state, "step") else state["step"]) == self.step:
            raise RuntimeError("simulated crash")


LORA = {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.1}


def test_lora_train_resume_and_export(recipe_factory, news, tmp_path):
    recipe = load_recipe(
        recipe_factory(model={"peft": LORA}, train={"epochs": 2, "checkpoint_every": 3, "eval_every": 4, "lr": 1e-2})
    )
    full = train(recipe, out=tmp_path / "full")
    summary = json.loads((full / "summary.json").read_text())
    assert summary["parameters"]["peft"]["r"] == 4
    assert summary["parameters"]["trainable"] < summary["parameters"]["total"] / 2
    assert (full / "adapter" / "adapter_config.json").is_file()
    assert (full / "model" / "model.safetensors").is_file()

    with pytest.raises(RuntimeError):
        train(recipe, out=tmp_path / "part", callbacks=[CrashAt(7)])
    resumed = train(resume=tmp_path / "part")
    assert json.loads((resumed / "summary.json").read_text())["validation"] == summary["validation"]
    a = load_file(full / "adapter" / "adapter_model.safetensors")
    b = load_file(resumed / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)

    # merged export predicts like the adapter on the base model
    test = pd.read_csv(news["test"])
    assert main(["export", str(full), "--out", str(tmp_path / "merged")]) == 0
    assert main(["export", str(full), "--no-merge", "--out", str(tmp_path / "adapter")]) == 0
    merged = Predictor.load(tmp_path / "merged").predict_proba(test).to_numpy()
    adapter = Predictor.load(tmp_path / "adapter").predict_proba(test).to_numpy()
    np.testing.assert_allclose(merged, adapter, atol=1e-4)
    run = Predictor.load(full).predict_proba(test).to_numpy()
    np.testing.assert_allclose(merged, run, atol=1e-6)
    # predict works on both exported forms through the CLI
    out = tmp_path / "sub.csv"
    assert main(["predict", str(tmp_path / "adapter"), "--input", str(news["test"]), "--output", str(out)]) == 0
    assert len(pd.read_csv(out)) == len(test)


def test_unmerged_adapter_differs_from_base(recipe_factory, tmp_path):
    """The adapter really changed the model: base + adapter predictions differ from the base alone."""
    recipe = load_recipe(recipe_factory(model={"peft": LORA}, train={"max_steps": 6, "lr": 2e-2}))
    run = train(recipe, out=tmp_path / "run")
    weights = load_file(run / "adapter" / "adapter_model.safetensors")
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert lora_b and any(float(v.abs().max()) > 0 for v in lora_b)  # B starts at zero; training moved it
