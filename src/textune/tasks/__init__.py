"""One object per task kind: everything that differs between tasks lives here, not in the loop."""

from __future__ import annotations

from textune.tasks.base import Task
from textune.tasks.classification import ClassificationTask

_REGISTRY: dict[str, type[Task]] = {"classification": ClassificationTask}


def get_task(name: str) -> type[Task]:
    return _REGISTRY[name]


__all__ = ["Task", "ClassificationTask", "get_task"]
