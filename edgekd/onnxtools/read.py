"""Reading an ONNX file someone handed us (torch-free; needs the onnx package).

A truncated copy or a file that is not ONNX at all is the artifact's problem, not a
bug: RuntimeBackendError (exit 6, "a runtime ... refused the artifact"), naming the file.
"""

from __future__ import annotations

from pathlib import Path

from edgekd.errors import RuntimeBackendError


def load_onnx(path: str | Path, weights: bool = False):
    """The ModelProto of `path`; its external weights only with `weights` (never outside its folder)."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        return onnx.load(str(path), load_external_data=weights)
    except (DecodeError, ValueError, RuntimeError) as exc:  # protobuf's parse errors; onnx's load errors
        raise RuntimeBackendError(
            f"{Path(path).name} is not a readable ONNX model ({type(exc).__name__}: {str(exc)[:200]}): "
            "the file is truncated, damaged or not ONNX.",
            "Copy it again (compare its SHA-256 with the sidecar's), or re-export it.",
        ) from None


def uses_external_data(proto) -> bool:
    """Does any tensor of the model (subgraphs and attributes included) live in an external file?"""
    from onnx.external_data_helper import _get_all_tensors, uses_external_data as external

    return any(external(tensor) for tensor in _get_all_tensors(proto))
