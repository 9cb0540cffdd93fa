"""The bad-input contract of the CLI, asserted the same way everywhere."""

from __future__ import annotations

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
