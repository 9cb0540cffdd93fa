"""The study's storage and the coordination of workers: an Optuna RDB storage (SQLite in the study directory, or
PostgreSQL shared by machines), a lock around "count the trials, then ask", heartbeats, and failing the trials of
workers that died."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna

from textune.errors import TextuneError
from textune.run import pid_alive

log = logging.getLogger(__name__)

STUDY_DB = "study.db"
# A trial whose worker stops sending heartbeats for GRACE_S seconds (a machine that died) is marked failed.
HEARTBEAT_S = 60
GRACE_S = 180


def _host() -> str:
    """This machine: host name plus boot id, so two machines that share a host name are not confused."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        boot = ""
    return f"{socket.gethostname()}/{boot}" if boot else socket.gethostname()


def driver_url(url: str) -> str:
    """SQLAlchemy 2.1 reads ``postgresql://`` as psycopg 3; use psycopg2 when only that driver is installed."""
    if url.startswith("postgresql://"):
        import importlib.util

        if importlib.util.find_spec("psycopg") is None:
            if importlib.util.find_spec("psycopg2") is None:
                raise TextuneError(f"--storage {shown_url(url)}: no PostgreSQL driver; pip install 'psycopg[binary]'")
            return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


def shown_url(url: str) -> str:
    """The URL with its password masked, for messages and printed output."""
    from sqlalchemy.engine import make_url

    with contextlib.suppress(Exception):
        return make_url(url).render_as_string(hide_password=True)
    return url


def open_storage(given: str) -> optuna.storages.RDBStorage:
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    url = driver_url(given)
    for attempt in range(4):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                # Heartbeats let any worker fail the trials of a worker (or machine) that died mid-trial.
                return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)
        except (IntegrityError, ProgrammingError):
            # Workers started together on an empty database race to create Optuna's tables; the loser's
            # CREATE fails once the winner's exist, and a second look finds them.
            if attempt == 3:
                raise
            time.sleep(0.5 + attempt)
        except Exception as exc:  # sqlalchemy raises many kinds (driver missing, auth, unreachable host)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TextuneError(
                f"--storage {shown_url(url)}: cannot open the study storage ({first}); check the URL"
            ) from None
    raise AssertionError("unreachable")


@contextlib.contextmanager
def _ask_lock(storage: optuna.storages.RDBStorage, study_name: str) -> Iterator[None]:
    """Serialises "count the trials, then ask for one" across workers, so a study never overshoots its budget."""
    url = storage.url
    if url.startswith("postgresql"):
        from sqlalchemy import text

        key = int.from_bytes(hashlib.sha256(f"textune:{study_name}".encode()).digest()[:8], "big", signed=True)
        with storage.engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
    elif url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        lock_path = Path(url.removeprefix("sqlite:///")).with_suffix(".lock")
        with open(lock_path, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
    else:  # other databases: without a lock, two workers racing at the very end may run one trial too many
        yield


def _fail_dead_trials(study: optuna.Study) -> None:
    """Marks as failed the running trials whose worker is gone: at once for this machine, by heartbeat elsewhere."""
    host = _host()
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        pid = t.user_attrs.get("pid")
        if t.user_attrs.get("host") == host and isinstance(pid, int) and pid != os.getpid() and not pid_alive(pid):
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                study._storage.set_trial_user_attr(t._trial_id, "killed", True)
                study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
                log.info("trial %d: its worker (pid %d) is gone; marked failed", t.number, pid)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _counted(t: optuna.trial.FrozenTrial) -> bool:
    """Trials that use up the budget: finished or running ones, and failures of the trial itself. A trial
    whose worker was killed or interrupted failed for no reason of its own, so its slot is tried again."""
    s = optuna.trial.TrialState
    if t.state == s.FAIL:
        return "error" in t.user_attrs
    return t.state in (s.COMPLETE, s.PRUNED, s.RUNNING)


def ask_trial(study: optuna.Study, storage: optuna.storages.RDBStorage, budget: int) -> optuna.Trial | None:
    with _ask_lock(storage, study.study_name):
        _fail_dead_trials(study)
        if sum(_counted(t) for t in study.get_trials(deepcopy=False)) >= budget:
            return None
        with warnings.catch_warnings():
            # Optuna warns that heartbeats are meant for study.optimize; Heartbeat records them for ask/tell.
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            trial = study.ask()
        # Set while the lock is held, so no other worker can take this trial for a dead one.
        trial.set_user_attr("host", _host())
        trial.set_user_attr("pid", os.getpid())
        return trial


class Heartbeat:
    """Records the running trial's heartbeat from a thread (``study.optimize`` does this; ask/tell must)."""

    def __init__(self, storage: optuna.storages.RDBStorage, trial_id: int):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(storage, trial_id), daemon=True)

    def _run(self, storage: optuna.storages.RDBStorage, trial_id: int) -> None:
        while True:
            with contextlib.suppress(Exception):  # a lost beat only risks a late "stale" verdict
                storage.record_heartbeat(trial_id)
            if self._stop.wait(HEARTBEAT_S):
                return

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
