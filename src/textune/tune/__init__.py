"""Hyperparameter search on Optuna: the study and its workers (study), the search space (space), and the
search itself (search): every trial is an ordinary textune run inside the study directory."""

from textune.tune.search import TuneResult, load_trials, tune

__all__ = ["TuneResult", "load_trials", "tune"]
