"""textune: fine-tune transformer text encoders on tabular text data from one YAML recipe."""

__version__ = "0.1.0"

from textune.predict import Predictor, classify  # noqa: E402
from textune.recipe import Recipe, load_recipe  # noqa: E402
from textune.training.loop import train  # noqa: E402

__all__ = ["Predictor", "Recipe", "__version__", "classify", "load_recipe", "train"]
