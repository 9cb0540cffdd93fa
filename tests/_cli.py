"""The bad-input contract of the CLI, asserted the same way everywhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from textune.cli import main


def fails(capsys, *argv) -> str:
    """Runs the CLI, asserts the bad-input contract (exit 2, one ``error:`` line, no traceback) and returns the
    error line."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    return lines[0]


def train_small_run(base: Path, tiny_model: Path) -> dict[str, Path]:
    """A short run (60 rows, 2 steps) and a 12-row input file in ``base``: what the bad-input tests share (they copy
    it before damaging it)."""
    from conftest import make_news, write_recipe

    make_news(60).to_csv(base / "train.csv", index=False)
    make_news(12, seed=5).to_csv(base / "input.csv", index=False)
    recipe = write_recipe(base / "recipe.yaml", tiny_model, base / "train.csv", train={"max_steps": 2})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TEXTUNE_CACHE", str(base / "cache"))
        assert main(["train", str(recipe), "--out", str(base / "run")]) == 0
    return {"run": base / "run", "input": base / "input.csv", "recipe": recipe, "base": base}
