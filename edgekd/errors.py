"""Project exceptions. Each says what went wrong and what to do instead.

The CLI maps each class to a documented exit code (see `EXIT_CODES` and the
README) through `project_error`, the one place that decides what a failure
means to the user; nothing else in the package catches broad exceptions.
"""

from __future__ import annotations

import errno


class EdgekdError(Exception):
    """Base class: a problem the user can fix. `hint` says how; `details` carries what was computed
    on the way (e.g. every INT8 attempt a failed gate tried), so a caller can still report it."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None, details: list | dict | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details = details

    def __str__(self) -> str:
        return f"{self.message} {self.hint}" if self.hint else self.message


class ConfigError(EdgekdError):
    """model.yaml or a target profile is malformed or inconsistent."""

    exit_code = 2


class DataError(EdgekdError):
    """A dataset is missing, unreadable or does not match what was promised."""

    exit_code = 3


class ModelError(EdgekdError):
    """A model name, checkpoint or derivation cannot be built."""

    exit_code = 4


class GateError(EdgekdError):
    """A quality gate failed: ONNX parity, INT8 accuracy drop, checks."""

    exit_code = 5


class RuntimeBackendError(EdgekdError):
    """A runtime (onnxruntime, tensorrt) is missing or refused the artifact."""

    exit_code = 6


class VerifyError(EdgekdError):
    """A shipped bundle failed verification (hash, load or golden outputs)."""

    exit_code = 7


class FileSystemError(EdgekdError):
    """The file system refused: disk full, read-only, permission denied, a file where a folder is needed."""

    exit_code = 8


class BusyError(EdgekdError):
    """Another edgekd command holds the run directory (edgekd.rundir's lock)."""

    exit_code = 9


# errno -> (what happened to PATH, how to fix it)
_FS_FAULTS = {
    errno.ENOSPC: ("No space left on the device holding {path}.",
                   "Free space there or choose a folder on a larger disk (--out); then re-run: finished stages "
                   "and epoch checkpoints are kept."),
    errno.EROFS: ("{path} is on a read-only file system.", "Choose a writable folder (--out DIR)."),
    errno.EACCES: ("Permission denied: {path}.", "Check the owner and mode of that path and its folder, or choose "
                   "another folder."),
    errno.ENOTDIR: ("{path}: a part of this path is a file where a folder is needed.",
                    "Remove or rename that file, or choose another path."),
    errno.EEXIST: ("{path} already exists.", "Remove it or choose another path."),
    errno.EISDIR: ("{path} is a folder where a file is needed.", "Remove or rename that folder, or choose another path."),
    errno.ENAMETOOLONG: ("{path}: the name is too long for this file system.", "Choose a shorter path."),
}
_FS_FAULTS[errno.EDQUOT] = _FS_FAULTS[errno.ENOSPC]
_FS_FAULTS[errno.EPERM] = _FS_FAULTS[errno.EACCES]


def project_error(exc: BaseException) -> EdgekdError | None:
    """The project error a failure stands for: itself, a FileSystemError for an OSError the file
    system raised (disk full, read-only, permission, not a directory), or None (a bug)."""
    if isinstance(exc, EdgekdError):
        return exc
    if isinstance(exc, OSError) and exc.errno in _FS_FAULTS:
        what, fix = _FS_FAULTS[exc.errno]
        path = exc.filename if exc.filename is not None else "a file edgekd was writing"
        return FileSystemError(what.format(path=path), fix)
    return None


EXIT_CODES = {
    0: "success",
    1: "internal error (a bug: re-run with --debug and report it)",
    ConfigError.exit_code: "config or target profile invalid",
    DataError.exit_code: "dataset missing or unreadable",
    ModelError.exit_code: "model or checkpoint cannot be built",
    GateError.exit_code: "a quality gate failed (parity, INT8 accuracy)",
    RuntimeBackendError.exit_code: "runtime missing or refused the artifact",
    VerifyError.exit_code: "bundle verification failed",
    FileSystemError.exit_code: "the file system refused (disk full, read-only, permission, not a directory)",
    BusyError.exit_code: "the run directory is in use by another edgekd command (the message names its PID)",
    130: "interrupted (finished stages and epoch checkpoints are kept)",
}
