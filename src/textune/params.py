"""``textune params``: parameter counts of a recipe's model, from its config alone (no data, no weights)."""

from __future__ import annotations

from textune.models.build import build_from_config
from textune.recipe import Recipe


def parameter_report(recipe: Recipe, num_labels: int | None = None) -> dict:
    """Total and trainable parameters, a per-module table and the PEFT decisions (rank chosen under a budget).

    Args:
        recipe: the recipe; its ``data.labels`` gives the head size unless ``num_labels`` is given.
        num_labels: head size when the recipe lists no labels (default 2).
    """
    from textune.models.peft import count_total, count_trainable, parameter_table

    k = num_labels or (len(recipe.data.labels) if recipe.data.labels else 2)
    model, report = build_from_config(recipe, {"num_labels": k})
    total = count_total(model)
    trainable = count_trainable(model)
    return {
        "model": recipe.model.name,
        "num_labels": k,
        "total": total,
        "trainable": trainable,
        "trainable_percent": round(100 * trainable / total, 4),
        "modules": parameter_table(model),
        "peft": report.as_dict(),
    }


def format_parameter_report(rep: dict) -> str:
    lines = [
        f"model {rep['model']} ({rep['num_labels']} labels)",
        f"total parameters:     {rep['total']:>14,}",
        f"trainable parameters: {rep['trainable']:>14,}  ({rep['trainable_percent']:.3f}%)",
    ]
    peft = rep["peft"]
    if peft["method"] != "none":
        lines.append(
            f"LoRA r={peft['r']} alpha={peft['alpha']:g} on {', '.join(peft['target_modules'])}; "
            f"head trained in full: {', '.join(peft['head_modules']) or 'none'}"
        )
    lines.append(f"{'module':<18}{'trainable':>14}{'total':>16}")
    for row in rep["modules"]:
        lines.append(f"{row['module']:<18}{row['trainable']:>14,}{row['total']:>16,}")
    lines += [f"note: {n}" for n in peft["notes"]]
    return "\n".join(lines)
