"""A tiny residual ConvNet written directly in ONNX (no torch), for self-checks and tests.

It has what the TensorRT path must handle in a real student: Conv + Relu, a
residual Add (one tensor read by two consumers, the case DedicatedQDQPair is
for), MaxPool, GlobalAveragePool, Flatten and a Gemm head with transB=1.
Shapes: x (N, 3, size, size) float32 -> logits (N, classes) float32.
"""

from __future__ import annotations

import numpy as np


def tiny_convnet(
    *, opset: int = 17, batch: int | str = "N", size: int = 8, width: int = 8, classes: int = 4, seed: int = 0
):
    """The model as an onnx.ModelProto; `batch` is an int for a fixed batch or a name for a dynamic one."""
    from onnx import TensorProto, checker, helper, numpy_helper

    rng = np.random.default_rng(seed)

    def weight(name: str, *shape: int, scale: float = 0.3):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    initializers = [
        weight("conv1.w", width, 3, 3, 3),
        weight("conv1.b", width, scale=0.1),
        weight("conv2.w", width, width, 3, 3, scale=0.15),
        weight("conv2.b", width, scale=0.1),
        weight("fc.w", classes, width),
        weight("fc.b", classes, scale=0.1),
    ]
    pad = {"pads": [1, 1, 1, 1]}
    nodes = [
        helper.make_node("Conv", ["x", "conv1.w", "conv1.b"], ["h1"], name="conv1", **pad),
        helper.make_node("Relu", ["h1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "conv2.w", "conv2.b"], ["h2"], name="conv2", **pad),
        helper.make_node("Add", ["h2", "r1"], ["s"], name="residual"),  # r1 has two consumers
        helper.make_node("Relu", ["s"], ["r2"], name="relu2"),
        helper.make_node("MaxPool", ["r2"], ["p"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
        helper.make_node("GlobalAveragePool", ["p"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["logits"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_convnet",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])],
        initializers,
    )
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="edgekd")
    model.ir_version = helper.find_min_ir_version_for(opsets)  # the oldest IR that readers must accept
    checker.check_model(model)
    return model
