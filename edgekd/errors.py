"""Project exceptions. Each says what went wrong and what to do instead.

The CLI maps each class to a documented exit code (see `EXIT_CODES` and the
README); nothing else in the package catches broad exceptions.
"""

from __future__ import annotations


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


EXIT_CODES = {
    0: "success",
    1: "internal error (a bug: re-run with --debug and report it)",
    ConfigError.exit_code: "config or target profile invalid",
    DataError.exit_code: "dataset missing or unreadable",
    ModelError.exit_code: "model or checkpoint cannot be built",
    GateError.exit_code: "a quality gate failed (parity, INT8 accuracy)",
    RuntimeBackendError.exit_code: "runtime missing or refused the artifact",
    VerifyError.exit_code: "bundle verification failed",
    130: "interrupted (finished stages and epoch checkpoints are kept)",
}
