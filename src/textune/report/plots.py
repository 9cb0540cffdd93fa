"""PNG plots of a run: loss and metric curves from metrics.jsonl, confusion matrix. Written atomically."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers; set before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from textune import _atomic  # noqa: E402


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    _atomic.write_with(path, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)
    return path


def plot_loss(history: list[dict], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    train = [r for r in history if r.get("split") == "train" and "loss" in r]
    valid = [r for r in history if r.get("split") == "validation" and "loss" in r]
    if train:
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train", alpha=0.8)
    if valid:
        ax.plot([r["step"] for r in valid], [r["loss"] for r in valid], "o-", label="validation")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title("Loss")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_metrics(history: list[dict], names: list[str], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    valid = [r for r in history if r.get("split") == "validation"]
    for name in names:
        pts = [(r["step"], r[name]) for r in valid if name in r]
        if pts:
            ax.plot(*zip(*pts, strict=True), "o-", label=name)
    ax.set_xlabel("optimizer step")
    ax.set_title("Validation metrics")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_confusion(cm: np.ndarray, labels: list[str], path: Path) -> Path:
    k = len(labels)
    fig, ax = plt.subplots(figsize=(max(4, 0.6 * k + 2), max(3.5, 0.6 * k + 1.5)))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(k), labels, rotation=45, ha="right")
    ax.set_yticks(range(k), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = cm.max() if cm.size else 0
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                str(cm[i, j]),
                ha="center",
                va="center",
                color="white" if cm[i, j] > top / 2 else "black",
            )
    ax.set_title("Confusion matrix (validation)")
    return _save(fig, path)


def plot_regression(pred: np.ndarray, true: np.ndarray, out_dir: Path) -> list[Path]:
    """Predicted vs true (log axes when all values are positive) and the residuals' histogram."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(true, pred, s=6, alpha=0.4)
    lo, hi = float(min(true.min(), pred.min())), float(max(true.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    if lo > 0:
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    ax.set_title("Predicted vs true (validation)")
    scatter = _save(fig, out_dir / "pred_vs_true.png")
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(pred - true, bins=min(50, max(10, len(pred) // 5)))  # 50 bins over a few dozen rows reads as noise
    ax.set_xlabel("predicted - true")
    ax.set_title("Residuals (validation)")
    return [scatter, _save(fig, out_dir / "residuals.png")]
