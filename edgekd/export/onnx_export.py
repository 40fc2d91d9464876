"""PyTorch -> ONNX: fuse for inference, export, simplify, check, then publish.

    prepare_for_export(model, input_shape)      eval copy, timm re-param, BN folded
    export_onnx(model, path, input_shape=..., opset=...) -> ExportResult

The exported graph has one input `input` (N, C, H, W float32) and one output
`logits` (N, classes). Two exporters, one table (`EXPORTERS`):

- "dynamo": `torch.export` + onnxscript, the default since torch 2.9. It builds
  the graph at opset 18 and converts upwards; below 18 it cannot deliver (torch
  keeps 18 and only warns), so it is never used for opset <= 17.
- "torchscript": the legacy tracer, deprecated but present in torch 2.15. It
  covers opset <= 20, e.g. 17 for the TensorRT 8.5/8.6 parser on JetPack 5.

"auto" picks dynamo and falls back to torchscript when dynamo fails or cannot
meet the opset; which one ran and why is in the result and the sidecar. The
requested opset is never changed: if no exporter can produce it, ModelError.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgekd import __version__
from edgekd.artifacts import partial_path, remove_quietly, sha256_file, sidecar_path, versions, write_json_atomic
from edgekd.errors import ConfigError, ModelError

try:
    import onnx
    import torch
    from torch import nn
except ImportError as exc:  # the workstation extra is missing
    raise ModelError(
        f"Exporting to ONNX needs {exc.name}, which is not installed.",
        'Install the workstation extra: pip install "edgekd[train]".',
    ) from None

log = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
DYNAMO_MIN_OPSET = 18  # torch's onnxscript library is written against opset 18
TORCHSCRIPT_MAX_OPSET = 20  # torch.onnx._constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET
MIN_OPSET = 11
FOLD_RTOL = 1e-5  # BN folding must not move any logit by more than this x max|logit|


@dataclass
class ExportResult:
    path: str
    sidecar: str
    exporter: str  # the one that produced the file: "dynamo" | "torchscript"
    exporter_reason: str  # why that one (requested, default, fallback, opset)
    fallback_error: str | None  # what the dynamo exporter said when auto fell back
    opset: int
    input_shape: list[int]
    dynamic_batch: bool
    simplified: bool
    simplify_note: str | None  # why the unsimplified graph was kept
    sha256: str
    nodes: int
    export_seconds: float
    warnings: list[str] = field(default_factory=list)
    parity: dict | None = None  # ParityResult as a dict, when `verify_with` was given


# ---------------------------------------------------------------------------
# Preparing the module


def prepare_for_export(model: nn.Module, input_shape: tuple[int, ...], *, fold_bn: bool = True) -> nn.Module:
    """An inference-only copy of `model`: eval mode, re-parameterized, BN folded.

    The caller's model is not modified. RepVGG/MobileOne-style blocks are fused
    by timm's `reparameterize_model`; every BatchNorm fed only by a plain
    convolution is folded into that convolution's weight and bias. The result
    is checked against the original on one random input of `input_shape`:
    folding must not move any logit by more than FOLD_RTOL x max|logit|.
    """
    from timm.utils.model import reparameterize_model

    prepared = copy.deepcopy(model).eval()
    x = _example_input(input_shape)
    with torch.no_grad():
        reference = prepared(x)
        prepared = reparameterize_model(prepared, inplace=True)
        if fold_bn:
            fold_batchnorm(prepared, x)
        diff = float((prepared(x) - reference).abs().max())
    limit = FOLD_RTOL * max(1.0, float(reference.abs().max()))
    if diff > limit:
        raise ModelError(
            f"Re-parameterizing/folding BatchNorm changed the outputs by {diff:.3g} (limit {limit:.3g}).",
            "Export with fold_bn=False (ONNX Runtime and TensorRT fold BatchNorm themselves) and report the model.",
        )
    return prepared


def fold_batchnorm(model: nn.Module, example: torch.Tensor) -> int:
    """Fold each BatchNorm2d that directly follows a Conv2d into it, in place; returns the count.

    Pairs are found by running `example` once with hooks: a BN whose input is
    the very tensor a conv just produced, and which no other module reads. A
    functional consumer of that tensor (e.g. `x + conv(x)` written in forward)
    is invisible to hooks; `prepare_for_export`'s output check catches it.
    """
    pairs = _conv_bn_pairs(model, example)
    modules = dict(model.named_modules())
    for conv_name, bn_name in pairs:
        conv, bn = modules[conv_name], modules[bn_name]
        weight, bias = torch.nn.utils.fusion.fuse_conv_bn_weights(
            conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
        )
        conv.weight, conv.bias = weight, bias
        _replace_module(model, bn_name, _after_bn(bn))
    return len(pairs)


def _foldable_conv(module: nn.Module) -> bool:
    from timm.layers import Conv2dSame

    # exact types: subclasses such as timm's StdConv2d re-normalize their weight in forward
    return type(module) in (nn.Conv2d, Conv2dSame) and module.padding_mode == "zeros"


def _foldable_bn(module: nn.Module) -> bool:
    from timm.layers import BatchNormAct2d

    return type(module) in (nn.BatchNorm2d, BatchNormAct2d) and module.running_var is not None


def _after_bn(bn: nn.Module) -> nn.Module:
    """What remains of a folded BN: nothing, or timm BatchNormAct2d's drop + activation."""
    if hasattr(bn, "act"):
        return nn.Sequential(bn.drop, bn.act)
    return nn.Identity()


def _conv_bn_pairs(model: nn.Module, example: torch.Tensor) -> list[tuple[str, str]]:
    produced: dict[int, tuple[torch.Tensor, str]] = {}  # id(conv output) -> (tensor kept alive, conv name)
    readers: dict[str, list[str]] = {}  # conv name -> modules that received its output
    calls: dict[str, int] = {}
    handles = []

    def on_conv(name):
        def hook(module, inputs, output):
            calls[name] = calls.get(name, 0) + 1
            produced[id(output)] = (output, name)

        return hook

    def on_input(name):
        def hook(module, inputs):
            for tensor in inputs:
                hit = produced.get(id(tensor))
                if hit is not None and hit[0] is tensor:
                    readers.setdefault(hit[1], []).append(name)

        return hook

    for name, module in model.named_modules():
        if _foldable_conv(module):
            handles.append(module.register_forward_hook(on_conv(name)))
        # leaves are what consume tensors; timm's BatchNormAct2d is no leaf (it holds drop and act)
        if _foldable_bn(module) or not list(module.children()):
            handles.append(module.register_forward_pre_hook(on_input(name)))
    try:
        model(example)
    finally:
        for handle in handles:
            handle.remove()
    modules = dict(model.named_modules())
    return [
        (conv, names[0])
        for conv, names in readers.items()
        if len(names) == 1 and calls[conv] == 1 and _foldable_bn(modules[names[0]])
    ]


def _replace_module(model: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _example_input(input_shape: tuple[int, ...]) -> torch.Tensor:
    # a private generator: exporting must not advance the caller's global RNG
    return torch.randn(tuple(input_shape), generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------------------
# Exporters: (module, example, opset, dynamic_batch) -> ModelProto


class _ExporterFailed(RuntimeError):
    """An exporter ran but could not deliver what was asked (e.g. the opset)."""


def _export_dynamo(model: nn.Module, example: torch.Tensor, opset: int, dynamic_batch: bool) -> onnx.ModelProto:
    dynamic_shapes = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
    program = torch.onnx.export(
        model,
        (example,),
        None,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        opset_version=opset,
        dynamo=True,
        dynamic_shapes=dynamic_shapes,
        external_data=False,
        verbose=False,
    )
    proto = program.model_proto
    produced = default_opset(proto)
    if produced != opset:  # torch converts opsets best-effort and keeps its own on failure
        raise _ExporterFailed(f"the dynamo exporter produced opset {produced}, not the requested {opset}")
    return proto


def _export_torchscript(model: nn.Module, example: torch.Tensor, opset: int, dynamic_batch: bool) -> onnx.ModelProto:
    buffer = io.BytesIO()
    dynamic_axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    torch.onnx.export(
        model,
        (example,),
        buffer,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        opset_version=opset,
        dynamo=False,
        do_constant_folding=True,
        dynamic_axes=dynamic_axes,
    )
    return onnx.load_from_string(buffer.getvalue())


EXPORTERS: dict[str, tuple[Callable, range]] = {
    "dynamo": (_export_dynamo, range(DYNAMO_MIN_OPSET, 99)),  # upper end: what onnx knows
    "torchscript": (_export_torchscript, range(MIN_OPSET, TORCHSCRIPT_MAX_OPSET + 1)),
}


def plan_exporters(exporter: str, opset: int) -> list[tuple[str, str]]:
    """The exporters to try in order, each with why; ConfigError when none can meet `opset`."""
    latest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= latest:
        raise ConfigError(
            f"ONNX opset {opset} is outside {MIN_OPSET}..{latest} (onnx {onnx.__version__}).",
            "Set `export.opset` in that range, or leave it to the strictest target's `max_opset`.",
        )
    if exporter not in (*EXPORTERS, "auto"):
        raise ConfigError(f"Unknown exporter {exporter!r}.", f"Use one of: auto, {', '.join(EXPORTERS)}.")
    if exporter != "auto":
        if opset not in EXPORTERS[exporter][1]:
            hint = "Use exporter 'auto' or 'torchscript' for opset <= 17." if exporter == "dynamo" else (
                f"Use exporter 'auto' or 'dynamo' for opset > {TORCHSCRIPT_MAX_OPSET}."
            )
            raise ConfigError(f"The {exporter} exporter cannot produce opset {opset}.", hint)
        return [(exporter, "requested")]
    if opset < DYNAMO_MIN_OPSET:
        return [("torchscript", f"opset {opset} < {DYNAMO_MIN_OPSET}, the lowest the dynamo exporter emits")]
    plan = [("dynamo", "default exporter")]
    if opset <= TORCHSCRIPT_MAX_OPSET:
        plan.append(("torchscript", "fallback after the dynamo exporter failed"))
    return plan


def _run_exporters(model, example, opset, dynamic_batch, plan) -> tuple[onnx.ModelProto, str, str, str | None, list]:
    """Try `plan` in order. Returns (proto, exporter, reason, fallback_error, warning messages)."""
    errors: list[str] = []
    for name, reason in plan:
        export = EXPORTERS[name][0]
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(io.StringIO()) as out:
            warnings.simplefilter("always")
            try:
                proto = export(model, example, opset, dynamic_batch)
            except RuntimeError as exc:  # OnnxExporterError, torch.export and tracer errors all derive from it
                errors.append(f"{name}: {type(exc).__name__}: {_first_line(exc)}")
                log.warning("ONNX export with %s failed: %s", name, errors[-1])
                continue
        if out.getvalue().strip():
            log.debug("%s exporter output:\n%s", name, out.getvalue())
        fallback = "; ".join(errors) or None
        return proto, name, reason, fallback, _unique_messages(caught)
    raise ModelError(
        f"No exporter could export the model at opset {opset}: " + " | ".join(errors),
        "Check that the model runs on an input of `input_shape`; if only one exporter failed, "
        "try the other with `export.exporter`, or change `export.opset`.",
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _unique_messages(caught) -> list[str]:
    seen: dict[str, None] = {}
    for item in caught:
        seen.setdefault(f"{item.category.__name__}: {str(item.message).splitlines()[0][:200]}", None)
    return list(seen)


def default_opset(proto: onnx.ModelProto) -> int:
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


# ---------------------------------------------------------------------------
# Post-export: simplify, check, metadata


_SIMPLIFY_ERRORS = (RuntimeError, ValueError, onnx.checker.ValidationError, onnx.shape_inference.InferenceError)


def simplify_model(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, bool, str | None]:
    """onnxsim, keeping the input model when it fails. Returns (model, simplified, why not)."""
    try:
        import onnxsim
    except ImportError:
        return proto, False, 'onnxsim is not installed (pip install "edgekd[train]")'
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            # check_n: onnxsim compares simplified vs original outputs on random inputs
            simplified, ok = onnxsim.simplify(proto, check_n=2)
    except _SIMPLIFY_ERRORS as exc:
        return proto, False, f"onnxsim failed: {type(exc).__name__}: {_first_line(exc)}"
    if not ok:
        return proto, False, "onnxsim's output check failed (simplified model differs from the original)"
    return simplified, True, None


def set_metadata(proto: onnx.ModelProto, metadata: dict[str, Any]) -> None:
    """Store `metadata` in `metadata_props`, every value JSON-encoded (readers json.loads each)."""
    del proto.metadata_props[:]
    for key, value in sorted(metadata.items()):
        if not isinstance(key, str):
            raise ConfigError(f"Metadata key {key!r} is not a string.", "Use string keys.")
        try:
            encoded = json.dumps(value, sort_keys=True)
        except TypeError:
            raise ConfigError(
                f"Metadata value for {key!r} is not JSON-serialisable ({type(value).__name__}).",
                "Pass str, numbers, lists or dicts of those.",
            ) from None
        proto.metadata_props.add(key=key, value=encoded)


def read_metadata(proto_or_path: onnx.ModelProto | str | Path) -> dict[str, Any]:
    proto = proto_or_path
    if not isinstance(proto, onnx.ModelProto):
        proto = onnx.load(str(proto_or_path), load_external_data=False)
    return {p.key: json.loads(p.value) for p in proto.metadata_props}


def check_graph(proto: onnx.ModelProto, input_shape: tuple[int, ...], dynamic_batch: bool) -> onnx.ModelProto:
    """Full ONNX check + strict shape inference + the I/O contract; returns the shape-inferred model."""
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)
        onnx.checker.check_model(inferred, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ModelError(f"The exported ONNX graph failed the ONNX checker: {_first_line(exc)}",
                         "Try the other exporter (`export.exporter`) or another opset.") from None
    inputs = [i for i in inferred.graph.input if i.name not in {t.name for t in inferred.graph.initializer}]
    outputs = list(inferred.graph.output)
    if [i.name for i in inputs] != [INPUT_NAME] or [o.name for o in outputs] != [OUTPUT_NAME]:
        raise ModelError(
            f"The exported graph has inputs {[i.name for i in inputs]} and outputs {[o.name for o in outputs]}; "
            f"edgekd needs exactly one input {INPUT_NAME!r} and one output {OUTPUT_NAME!r}.",
            "Export a classifier whose forward takes one image batch and returns one logits tensor.",
        )
    expected_in = ["batch" if dynamic_batch else input_shape[0], *input_shape[1:]]
    if _dims(inputs[0]) != expected_in or len(_dims(outputs[0])) != 2:
        raise ModelError(
            f"The exported graph maps input {_dims(inputs[0])} to output {_dims(outputs[0])}; "
            f"expected input {expected_in} and a 2-D (batch, classes) output.",
            "The model must return (N, num_classes) logits; check its head (global pooling, num_classes).",
        )
    return inferred


def _dims(value_info) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def _name_nodes(proto: onnx.ModelProto) -> None:
    """Give every node a unique name: quantization excludes and debug reports refer to nodes by name."""
    seen: set[str] = set()
    for index, node in enumerate(proto.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{index}"
        seen.add(node.name)


# ---------------------------------------------------------------------------
# The stage


def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    input_shape: tuple[int, int, int, int],
    opset: int,
    exporter: str = "auto",
    dynamic_batch: bool = False,
    simplify: bool = True,
    metadata: dict[str, Any] | None = None,
    prepare: bool = True,
    verify_with: np.ndarray | None = None,
) -> ExportResult:
    """Export `model` to `path` (ONNX), checked, with metadata and a sidecar `<path>.json`.

    input_shape: (N, C, H, W) traced with; N is the fixed batch unless `dynamic_batch`.
    metadata: preprocessing (input size, mean, std, interpolation, crop), class labels, ...;
        stored JSON-encoded in `metadata_props`, with edgekd's own `edgekd.*` keys added.
    prepare: run `prepare_for_export` first (eval copy, re-param, BN folded).
    verify_with: real samples (N, C, H, W float32); if given, fp32 parity against ONNX Runtime
        must pass (`check_parity`) before the file is published.
    Nothing reaches `path` unless every check passed.
    """
    path = Path(path)
    if len(input_shape) != 4 or min(input_shape) < 1:
        raise ConfigError(f"input_shape {tuple(input_shape)} is not (N, C, H, W).", "Pass e.g. (1, 3, 224, 224).")
    plan = plan_exporters(exporter, opset)
    start = time.perf_counter()
    source = model
    if prepare:
        model = prepare_for_export(model, input_shape)
    elif model.training:
        raise ModelError("The model is in training mode.", "Call model.eval() or export with prepare=True.")
    proto, used, reason, fallback, caught = _run_exporters(model, _example_input(input_shape), opset, dynamic_batch, plan)
    simplified, note = False, "not requested"
    if simplify:
        proto, simplified, note = simplify_model(proto)
        if note:
            warnings.warn(f"ONNX simplification skipped, keeping the unsimplified graph: {note}", stacklevel=2)
    _name_nodes(proto)
    extra = {"edgekd.version": __version__, "edgekd.opset": opset, "edgekd.exporter": used}
    set_metadata(proto, {**(metadata or {}), **extra})
    proto = check_graph(proto, tuple(input_shape), dynamic_batch)
    result = ExportResult(
        path=str(path), sidecar=str(sidecar_path(path)), exporter=used, exporter_reason=reason,
        fallback_error=fallback, opset=opset, input_shape=list(input_shape), dynamic_batch=dynamic_batch,
        simplified=simplified, simplify_note=note, sha256="", nodes=len(proto.graph.node),
        export_seconds=0.0, warnings=caught,
    )
    _publish(proto, path, result, source, verify_with)
    result.export_seconds = round(time.perf_counter() - start, 3)
    write_json_atomic(sidecar_path(path), {**asdict(result), "metadata": metadata or {}, "versions": versions()})
    return result


def _publish(proto, path: Path, result: ExportResult, source: nn.Module, verify_with) -> None:
    """Write under a temporary name, verify, then rename; the temporary file never survives a failure."""
    tmp = partial_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        onnx.save_model(proto, str(tmp))
        if verify_with is not None:
            from edgekd.export.parity import check_parity

            result.parity = asdict(check_parity(source, tmp, verify_with, precision="fp32"))
        result.sha256 = sha256_file(tmp)
        os.replace(tmp, path)
    finally:
        remove_quietly(tmp)
