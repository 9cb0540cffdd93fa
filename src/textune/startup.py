"""Python's cyclic garbage collector while the ``textune`` command starts.

Importing torch and transformers and loading a model create some 700,000 objects that live as long as the process.
The collector walks every tracked object on each full collection, and the heap's growth during start-up triggers
several of them: on 2 cores they cost ~0.7 s of the 3 s a ``textune predict`` takes to load its model. The executable
(:func:`textune.cli.entry`) therefore pauses the collector for the commands that load a model; once start-up is over
(the imports done, the model loaded, no user data read yet) :func:`resume` freezes what start-up built out of later
collections (``gc.freeze``: they skip it; its objects are still freed by reference counting) and turns the collector
back on. Freezing before any data is read matters: cyclic garbage present at the freeze would never be collected.
A model loaded later in the command (training reads its data first; a run's best model is reloaded at the end) is
loaded inside :func:`loading`: the collector paused again, turned back on after, with no freeze.
A command that hands its work to other processes and waits (``--processes N``, ``serve --workers N``) calls
:func:`hand_over`: the collector on and nothing left frozen while it waits.

A Python-API caller's collector is left alone: :func:`resume` acts only after :func:`pause`.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

_paused = False
_command = False  # this process is the `textune` command: pause() was called


def pause() -> None:
    """Stops the collector until :func:`resume` (the executable's start; left off, not ours, where it already is)."""
    global _paused, _command
    _command = True
    if gc.isenabled():
        gc.disable()
        _paused = True


def resume() -> None:
    """Start-up is over: freezes what it built and turns the collector back on, if :func:`pause` stopped it.

    Call it before the command reads user data, never after."""
    global _paused
    if _paused:
        _paused = False
        gc.freeze()
        gc.enable()


def hand_over() -> None:
    """The command hands its work to other processes and waits (``--processes N``, ``serve --workers N``): the
    collector on, and what start-up froze collectable again (the launcher's own copy of a model, dropped, is freed)."""
    end()
    gc.unfreeze()


def end() -> None:
    """The command is over (or failed before its model was loaded): the collector back on without a freeze."""
    global _paused, _command
    _command = False
    if _paused:
        _paused = False
        gc.enable()


@contextmanager
def loading() -> Iterator[None]:
    """A model load in the ``textune`` command: the collector paused for it and turned back on after (no freeze:
    user data may be in memory by then). Elsewhere, or with the collector already off, it changes nothing."""
    if not (_command and gc.isenabled()):
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
