"""textune: fine-tune transformer text encoders on tabular text data from one YAML recipe.

The public API is imported lazily, so that ``textune init`` or ``textune --help`` start without loading torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from textune._version import __version__

_API = {
    "Predictor": "textune.predict",
    "classify": "textune.predict",
    "Recipe": "textune.recipe",
    "load_recipe": "textune.recipe",
    "train": "textune.training.loop",
}

__all__ = ["Predictor", "Recipe", "__version__", "classify", "load_recipe", "train"]

if TYPE_CHECKING:
    from textune.predict import Predictor, classify
    from textune.recipe import Recipe, load_recipe
    from textune.training.loop import train


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'textune' has no attribute {name!r}")
