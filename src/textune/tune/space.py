"""The search space: suggesting values, applying them to the base recipe, the grid, and checking every bound."""

from __future__ import annotations

import json
from typing import Any

import optuna

from textune.errors import TextuneError
from textune.recipe import Recipe, apply_overrides, recipe_from_dict


class Grid(optuna.samplers.GridSampler):
    """GridSampler calls ``study.stop()`` once the grid is used up, which only works inside ``study.optimize``
    (and fails the ``tell`` here); this loop stops by its budget, which is capped at the grid size."""

    def after_trial(self, study, trial, state, values) -> None:
        return None


def suggest(trial: optuna.Trial, key: str, spec: dict[str, Any]) -> Any:
    if "categorical" in spec:
        return trial.suggest_categorical(key, spec["categorical"])
    if "int" in spec:
        lo, hi = spec["int"]
        return trial.suggest_int(key, lo, hi, step=spec.get("step") or 1, log=bool(spec.get("log")))
    lo, hi = spec["float"]
    return trial.suggest_float(key, float(lo), float(hi), step=spec.get("step"), log=bool(spec.get("log")))


def with_params(base: dict, params: dict[str, Any], source: str) -> Recipe:
    """The base recipe with dotted ``params`` applied, validated like any recipe."""
    raw = apply_overrides(base, [f"{k}={json.dumps(v)}" for k, v in params.items()])
    return recipe_from_dict(raw, source=source)


def grid_values(space: dict[str, dict[str, Any]], source: str) -> dict[str, list[Any]]:
    grid: dict[str, list[Any]] = {}
    for key, spec in space.items():
        if "categorical" in spec:
            grid[key] = list(spec["categorical"])
            continue
        kind = "int" if "int" in spec else "float"
        lo, hi = spec[kind]
        step = spec.get("step") or (1 if kind == "int" else None)
        if step is None or spec.get("log"):
            raise TextuneError(
                f"{source}: tune.space.{key}: the grid sampler needs a finite set of values; give the range a "
                f"step or use categorical"
            )
        n = int(round((hi - lo) / step)) + 1
        grid[key] = [lo + i * step if kind == "int" else round(lo + i * step, 12) for i in range(n)]
    return grid


def check_space(base: dict, space: dict[str, dict[str, Any]], source: str) -> None:
    """Every bound and choice must give a valid recipe: found now, not as a failed trial an hour in."""
    for key, spec in space.items():
        values = spec.get("categorical") or spec.get("int") or spec.get("float")
        for value in values:
            with_params(base, {key: value}, f"{source}: tune.space.{key} = {value!r}")
