"""A run directory's housekeeping (torch-free): one command at a time, scratch space, no half files.

    with hold(run_dir, "edgekd compress"):   # or BusyError naming the holder's PID
        clean(run_dir)                        # scratch and .partial files of a killed earlier command
        ...

The lock is `fcntl.flock` on `<run_dir>/.edgekd/lock`: the operating system
releases it whenever the holder exits, kill -9 included, so a stale lock cannot
exist; the file itself only says who holds it (pid, command, since). Taking it
writes nothing else: a second command on a busy directory stops before touching
anything.

Temporary work (INT8 gate searches, export and bundle staging) goes under
`<run_dir>/.edgekd/tmp/` (`scratch(folder)`), never /tmp: a killed command's
leftovers are where the next command on that directory finds and removes them,
under the lock. Files are written as `<name>.partial` and renamed when complete
(edgekd.artifacts.atomic_path); one still there after a failure is a half file and
is removed too.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from edgekd.errors import BusyError

RECORDS = ".edgekd"  # stage records (edgekd.pipeline.engine), the lock and scratch space
LOCK = f"{RECORDS}/lock"
SCRATCH = f"{RECORDS}/tmp"
PARTIAL = ".partial"


@contextmanager
def hold(run_dir: Path, command: str) -> Iterator[None]:
    """Hold the run directory's lock for the block (created if needed); BusyError when another holds it."""
    path = Path(run_dir) / LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _busy(Path(run_dir), _holder(fd)) from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        yield
    finally:
        os.close(fd)  # releases the lock; so does the OS on any exit


def _holder(fd: int) -> dict:
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _busy(run_dir: Path, holder: dict) -> BusyError:
    who = f"PID {holder['pid']}" if "pid" in holder else "another process (PID not yet recorded)"
    what = f" ({holder.get('command')}, since {holder.get('since')}, host {holder.get('host')})" if holder else ""
    return BusyError(f"{run_dir} is in use by {who}{what}: one edgekd command at a time per run directory.",
                     "Wait for it to finish (or stop it), or use another --out. The lock goes away by itself "
                     "when that process exits.")


def scratch_dir(folder: Path) -> Path:
    """`<folder>/.edgekd/tmp`, created: where temporary work for files in `folder` goes."""
    path = Path(folder) / SCRATCH
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def scratch(folder: Path, prefix: str) -> Iterator[Path]:
    """A fresh temporary folder under `<folder>/.edgekd/tmp` for the block, removed after it; so are the
    `.edgekd/tmp` and `.edgekd` folders when that leaves them empty (outside a run directory)."""
    root = scratch_dir(folder)
    try:
        with tempfile.TemporaryDirectory(dir=root, prefix=prefix) as tmp:
            yield Path(tmp)
    finally:
        for empty in (root, root.parent):
            try:
                empty.rmdir()
            except OSError:  # not empty: a run directory's records, or another command's scratch
                break


def clean(run_dir: Path) -> list[str]:
    """Remove scratch space and `.partial` files (call with the lock held); the removed paths, relative."""
    run_dir = Path(run_dir)
    removed = []
    if (run_dir / SCRATCH).is_dir():
        shutil.rmtree(run_dir / SCRATCH, ignore_errors=True)
        removed.append(SCRATCH)
    for folder, _dirs, files in os.walk(run_dir):
        for name in files:
            if name.endswith(PARTIAL) or f"{PARTIAL}." in name:  # x.partial, x.partial.npy: half written
                path = Path(folder) / name
                path.unlink(missing_ok=True)
                removed.append(str(path.relative_to(run_dir)))
    return removed
