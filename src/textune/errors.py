"""The one exception type that means "the user's input is wrong" (exit code 2, one line, no traceback)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class TextuneError(Exception):
    """Bad input: a file, column, row or recipe key that the user can fix.

    The CLI prints ``error: <message>`` and exits with code 2. The message must name the file, row/column or key
    and say how to fix it.
    """

    exit_code = 2

    def __init__(self, message: str = "") -> None:
        # One line, always: a path or a parser message with a newline in it must not split the CLI's error line.
        # (splitlines: also \r, \v, \f, \x1c-\x1e, \x85, \u2028, \u2029, which a file's column names may hold).
        super().__init__(" ".join(str(message).splitlines()))


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Returns a ``" (did you mean 'x'?)"`` hint, or ``""`` when nothing is close."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""
