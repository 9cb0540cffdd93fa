"""``textune params``: parameter counts of the model ``textune train`` would build for a recipe, without its weights.

The head is sized as training sizes it: the task's number of outputs (regression 1, ordinal CORAL levels - 1,
preference 3, one per label otherwise) and, with ``features:``, the fusion head, whose input width comes from the
featurizer fitted on the training data. Under a LoRA budget the rank is solved on exactly that model, so it is the
rank training picks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textune.errors import TextuneError
from textune.models.build import build_from_config, fusion_spec
from textune.recipe import Recipe

DEFAULT_LABELS = 2


def _readable(path: str | None) -> bool:
    return bool(path) and Path(path).is_file()


def _sized_task(recipe: Recipe, num_labels: int | None) -> tuple[Any, Any, list[str]]:
    """The task (labels known) and the fitted featurizer (or None), as training would have them; and notes.

    Raises:
        TextuneError: the recipe has features but its training data is not readable (the fusion head's input
            width depends on the fitted featurizer: no number would be right), or the data itself is unusable.
    """
    from textune.tasks import get_task

    d = recipe.data
    notes: list[str] = []
    if recipe.features.enabled:
        if not _readable(d.train):
            raise TextuneError(
                f"params: the fusion head could not be sized: its input width (numeric features, category counts) "
                f"comes from the featurizer fitted on data.train, and {d.train or 'data.train (not set)'} is not "
                f"readable; run params where the training data is, or without features: for the encoder alone"
            )
        return _prepared(recipe, num_labels, notes)
    task = get_task(recipe.task)(recipe)
    # fixed outputs (min_labels None), or data.labels / label_columns given
    if task.min_labels is None or task.labels:
        return task, None, notes
    if num_labels is not None:
        if num_labels < task.min_labels:
            raise TextuneError(f"--num-labels: {num_labels} is too few labels for {recipe.task}")
        task.labels = [f"label_{i}" for i in range(num_labels)]  # only their number matters here
        return task, None, notes
    if _readable(d.train):
        return _prepared(recipe, num_labels, notes)
    task.labels = [f"label_{i}" for i in range(DEFAULT_LABELS)]
    notes.append(
        f"assumed {DEFAULT_LABELS} labels: the recipe lists no data.labels and data.train is not readable; "
        f"give --num-labels"
    )
    return task, None, notes


def _prepared(recipe: Recipe, num_labels: int | None, notes: list[str]) -> tuple[Any, Any, list[str]]:
    """The task and featurizer fitted on the training data exactly as ``textune train`` fits them (same split)."""
    from textune.prepare import prepare

    data = prepare(recipe, tokens=False, features=True)
    task = data.task
    labels = getattr(task, "labels", None)
    if num_labels is not None and labels and len(labels) != num_labels and not recipe.data.labels:
        notes.append(f"--num-labels {num_labels} ignored: training reads {len(labels)} labels from data.train")
    return task, data.featurizer, notes


def parameter_report(recipe: Recipe, num_labels: int | None = None) -> dict:
    """Total and trainable parameters, a per-module table and the PEFT decisions (rank chosen under a budget).

    Args:
        recipe: the recipe. Labels come from ``data.labels`` (or ``data.label_columns``), else ``num_labels``,
            else the training file; with ``features:`` the training file is always read, to fit the featurizer.
        num_labels: number of labels (levels for ordinal) when the recipe lists none.

    Raises:
        TextuneError: with ``features:`` and no readable training data (the fusion head cannot be sized).
    """
    from textune.models.peft import count_total, count_trainable, parameter_table

    task, featurizer, notes = _sized_task(recipe, num_labels)
    fusion = fusion_spec(recipe, task, featurizer)
    model, report = build_from_config(recipe, task.model_kwargs(), fusion)
    total = count_total(model)
    trainable = count_trainable(model)
    labels = getattr(task, "labels", None)
    return {
        "model": recipe.model.name,
        "task": recipe.task,
        "num_outputs": task.num_outputs,
        "num_labels": len(labels) if labels else None,
        "fusion": None
        if fusion is None
        else {k: fusion[k] for k in ("numeric_dim", "cardinalities", "widths", "num_outputs")},
        "total": total,
        "trainable": trainable,
        "trainable_percent": round(100 * trainable / total, 4),
        "modules": parameter_table(model),
        "peft": report.as_dict(),
        "notes": notes,
    }


def format_parameter_report(rep: dict) -> str:
    outputs = f"{rep['num_outputs']} output{'s' if rep['num_outputs'] != 1 else ''}"
    if rep["num_labels"] and rep["num_labels"] != rep["num_outputs"]:
        outputs += f" for {rep['num_labels']} levels"
    elif rep["num_labels"]:
        outputs = f"{rep['num_labels']} labels"
    lines = [
        f"model {rep['model']} ({rep['task']}, {outputs})",
        f"total parameters:     {rep['total']:>14,}",
        f"trainable parameters: {rep['trainable']:>14,}  ({rep['trainable_percent']:.3f}%)",
    ]
    fusion = rep.get("fusion")
    if fusion:
        lines.append(
            f"fusion head: {fusion['numeric_dim']} numeric inputs, {len(fusion['cardinalities'])} categorical "
            f"({', '.join(map(str, fusion['cardinalities'])) or 'none'} values), hidden {fusion['widths']}, "
            f"sized on data.train"
        )
    peft = rep["peft"]
    if peft["method"] != "none":
        lines.append(
            f"LoRA r={peft['r']} alpha={peft['alpha']:g} on {', '.join(peft['target_modules'])}; "
            f"head trained in full: {', '.join(peft['head_modules']) or 'none'}"
        )
    lines.append(f"{'module':<18}{'trainable':>14}{'total':>16}")
    for row in rep["modules"]:
        lines.append(f"{row['module']:<18}{row['trainable']:>14,}{row['total']:>16,}")
    lines += [f"note: {n}" for n in rep.get("notes", []) + peft["notes"]]
    return "\n".join(lines)
