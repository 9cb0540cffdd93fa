"""One object per task kind: everything that differs between tasks lives here, not in the loop."""

from __future__ import annotations

from textune.tasks.base import Task
from textune.tasks.classification import ClassificationTask
from textune.tasks.multilabel import MultilabelTask
from textune.tasks.ordinal import OrdinalTask
from textune.tasks.preference import PreferenceTask
from textune.tasks.regression import RegressionTask

_REGISTRY: dict[str, type[Task]] = {
    "classification": ClassificationTask,
    "regression": RegressionTask,
    "ordinal": OrdinalTask,
    "preference": PreferenceTask,
    "multilabel": MultilabelTask,
}


TASKS = tuple(_REGISTRY)


def get_task(name: str) -> type[Task]:
    return _REGISTRY[name]


__all__ = [
    "TASKS",
    "Task",
    "ClassificationTask",
    "MultilabelTask",
    "OrdinalTask",
    "PreferenceTask",
    "RegressionTask",
    "get_task",
]
