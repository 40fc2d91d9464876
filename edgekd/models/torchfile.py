"""Reading `torch.save` files without running code from them.

A `.pt` file is a pickle, and unpickling can call any function the file names
(`os.system` included). Every torch file edgekd reads goes through
`load_weights_only`: PyTorch's weights-only unpickler, which builds tensors,
dicts, lists, tuples, strings and numbers and refuses every other global.

`SAFE_GLOBALS` allow-lists, for this load only (the `safe_globals` context
manager, not the process-wide `add_safe_globals`), the one class real
checkpoints need beyond that: timm's train.py stores its `argparse.Namespace`
of options next to the weights. Rebuilding a Namespace sets attributes and
calls nothing else.

A file that needs more is refused with a ModelError naming the file and the
offending global. `teacher.trust_checkpoint: true` (docs/security.md) is the
user's explicit opt-in to a full unpickle of a teacher checkpoint they trust;
nothing else edgekd reads can opt in.
"""

from __future__ import annotations

import argparse
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from edgekd.artifacts import atomic_path
from edgekd.errors import ModelError

SAFE_GLOBALS = [argparse.Namespace]

_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_OPCODE = re.compile(r"Unsupported operand (\d+)")


SAVE_WEIGHTS = "Save the weights alone (torch.save(model.state_dict(), path), or safetensors) and point to that file"


def load_weights_only(path: str | Path, what: str, fix: str = SAVE_WEIGHTS, trust_hint: str | None = None) -> Any:
    """`torch.load` with the weights-only unpickler; ModelError (exit 4) when it refuses or cannot read.

    what: how the message names the file ("teacher.checkpoint", "epoch checkpoint").
    fix: what to do about a refused file; trust_hint: the opt-in to add, where there is one.
    """
    path = Path(path)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise _refused(path, what, str(exc), fix, trust_hint) from None
    except (RuntimeError, EOFError, ValueError) as exc:  # damaged zip archive, truncated file, not a torch file
        raise ModelError(f"Cannot read {what} {path}: {_first_line(exc)}",
                         "Is it a complete PyTorch (torch.save) or safetensors file?") from None


def load_epoch_checkpoint(path: Path, key: str) -> dict | None:
    """A trainer's `last.pt` when it belongs to this exact training (its `key`), else None.

    Read weights-only (optimizer, scheduler and RNG states are tensors, numbers and
    strings), and its key checked right after, before anything in it is used.
    """
    if not path.is_file():
        return None
    ckpt = load_weights_only(path, "epoch checkpoint",
                             fix=f"edgekd did not write it: delete {path} to start this training from epoch 0")
    return ckpt if isinstance(ckpt, dict) and ckpt.get("key") == key else None


def save_atomic(obj: Any, path: str | Path) -> None:
    """torch.save under a .partial name, renamed when complete and removed on any failure.

    torch's zip writer turns an OSError raised while writing (a full disk) into an opaque
    RuntimeError ("inline_container.cc ... unexpected pos"); writing through `_Recorded` keeps
    the OSError, which is raised instead, naming the file (edgekd.errors: exit 8).
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        out = _Recorded(f)
        try:
            torch.save(obj, out)
        except RuntimeError:
            if out.error is not None:
                raise out.error from None
            raise


class _Recorded:
    """A file object for torch.save that remembers the OSError its write raised."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.f.flush()


def load_trusted(path: str | Path, what: str) -> Any:
    """Full unpickle: only for a file the user declared trusted (`teacher.trust_checkpoint: true`)."""
    try:
        return torch.load(Path(path), map_location="cpu", weights_only=False)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        raise ModelError(f"Cannot read {what} {path}: {_first_line(exc)}",
                         "Is it a complete PyTorch (torch.save) file?") from None


def _refused(path: Path, what: str, message: str, fix: str, trust_hint: str | None) -> ModelError:
    trust = f"; or, only if you trust where this file came from, {trust_hint}" if trust_hint else ""
    found = _GLOBAL.search(message)
    if found:
        return ModelError(f"{what} {path} refers to the Python global {found.group(1)!r}, which edgekd does not "
                          "unpickle: loading it could run code from the file.", f"{fix}{trust}.")
    opcode = _OPCODE.search(message)
    detail = f"pickle opcode {opcode.group(1)}" if opcode else "a pickle the weights-only loader refuses"
    return ModelError(f"Cannot read {what} {path}: it holds {detail}, so it is not a torch.save file edgekd "
                      "can read safely (or it is damaged).", f"{fix}{trust}.")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
