"""The run directory: its file names and readers/writers (layout), the manifest (checksums, verified loading) and
the trainer's lock."""

from textune.run import layout
from textune.run.lock import RunLock, pid_alive
from textune.run.manifest import RUN_FORMAT, checksums, new_run_dir, verify_run_dir, write_manifest

__all__ = [
    "RUN_FORMAT",
    "RunLock",
    "checksums",
    "layout",
    "new_run_dir",
    "pid_alive",
    "verify_run_dir",
    "write_manifest",
]
