"""fp32 ONNX -> fp16 ONNX with float32 inputs and outputs (TensorRT strongly typed fp16).

On TensorRT 11 (and optionally 10) precision is carried by the tensor types in
the ONNX, so the workstation converts weights and activations to float16 and
keeps the model's inputs/outputs float32 (Cast nodes at the edges): the device
code and the bundle's test.npz stay float32.

The conversion is onnxruntime's own `convert_float_to_float16` (shipped in the
onnxruntime wheel, no extra dependency), with its default op block list, which
keeps ops without float16 support in float32. Weights beyond float16's range
are clamped to +-65504 and non-zero ones below its smallest subnormal are
raised to +-5.96e-8 (the converter's behaviour); `convert` counts both so the
report can say so instead of hiding it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekd.errors import ConfigError, ModelError, RuntimeBackendError

FP16_MAX = 65504.0
FP16_MIN_POSITIVE = 5.96e-08  # smallest subnormal; smaller non-zero magnitudes are raised to it


def convert(src, dst: str | Path | None = None, *, op_block_list: list[str] | None = None):
    """Convert `src` (path or ModelProto) to fp16 with float32 I/O; write `dst` if given.

    Returns (model, stats): stats counts float32 initializers and their values
    clamped to +-65504 or raised to the smallest fp16 subnormal.
    """
    onnx = _import("onnx")
    float16 = _import("onnxruntime.transformers.float16")
    model = _load(onnx, src)
    _refuse_quantized(model)
    stats = range_stats(model)
    converted = float16.convert_float_to_float16(
        model,
        min_positive_val=FP16_MIN_POSITIVE,
        max_finite_val=FP16_MAX,
        keep_io_types=True,  # float32 inputs/outputs; Cast nodes inside the graph
        op_block_list=op_block_list,  # None = onnxruntime's list of ops kept in float32
    )
    # The converter appends the input Casts at the end of the node list; onnx's checker and
    # TensorRT's parser want producers before consumers.
    toposort(converted.graph)
    onnx.checker.check_model(converted)
    if dst is not None:
        onnx.save(converted, str(dst))
    return converted, stats


def range_stats(model) -> dict:
    """How many float32 initializer values fp16 cannot hold: too large (clamped) or too small (raised)."""
    from onnx import TensorProto, numpy_helper

    count = clamped = raised = 0
    peak = 0.0
    for init in model.graph.initializer:
        if init.data_type != TensorProto.FLOAT:
            continue
        values = np.abs(numpy_helper.to_array(init))
        count += 1
        clamped += int((values > FP16_MAX).sum())
        raised += int(((values > 0) & (values < FP16_MIN_POSITIVE)).sum())
        peak = max(peak, float(values.max(initial=0.0)))
    return {"initializers": count, "clamped": clamped, "raised_to_min_subnormal": raised, "max_abs": peak}


def toposort(graph) -> None:
    """Reorder graph.node in place so every node comes after the producers of its inputs (stable)."""
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        waiting = []
        for node in pending:
            if all(name in ready for name in _node_inputs(node)):
                ordered.append(node)
                ready.update(node.output)
            else:
                waiting.append(node)
        if len(waiting) == len(pending):
            names = ", ".join(n.name or n.op_type for n in waiting[:5])
            raise ModelError(
                f"The ONNX graph has a cycle or a missing input at: {names}.", "Re-export the model."
            )
        pending = waiting
    del graph.node[:]
    graph.node.extend(ordered)


def _node_inputs(node) -> list[str]:
    """Inputs of a node, including outer-scope names read by its subgraphs (If/Loop bodies)."""
    names = list(node.input)
    for attr in node.attribute:
        subgraphs = ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)
        for sub in subgraphs:
            local = {i.name for i in sub.input} | {i.name for i in sub.initializer}
            local |= {o for n in sub.node for o in n.output}
            names += [i for n in sub.node for i in _node_inputs(n) if i not in local]
    return names


def _refuse_quantized(model) -> None:
    ops = {n.op_type for n in model.graph.node}
    if ops & {"QuantizeLinear", "DequantizeLinear"}:
        raise ConfigError(
            "This ONNX is already quantized (Q/DQ nodes); fp16 conversion is for the float32 export.",
            "Int8 targets take the QDQ ONNX as is; convert the float32 ONNX for fp16.",
        )
    inputs = [i.type.tensor_type.elem_type for i in model.graph.input]
    if 1 not in inputs:  # TensorProto.FLOAT
        raise ConfigError(
            "The ONNX has no float32 input; it does not look like an fp32 export.",
            "Convert the float32 ONNX written by the export stage.",
        )


def _load(onnx, src):
    if isinstance(src, (str, Path)):
        path = Path(src)
        if not path.is_file():
            raise ModelError(f"ONNX file {str(path)!r} does not exist.", "Check the path.")
        return onnx.load(str(path))
    if isinstance(src, onnx.ModelProto):
        return src
    raise ModelError(
        f"Expected an ONNX path or ModelProto, got {type(src).__name__}.", "Pass the exported ONNX."
    )


def _import(name: str):
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        raise RuntimeBackendError(
            f"{name.split('.')[0]} is not installed; fp16 conversion needs onnx and onnxruntime.",
            'Install them on the workstation: pip install "edgekd[ort]".',
        ) from None
