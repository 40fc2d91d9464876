"""ONNX Runtime predictions through a static-batch model: the same as through a dynamic one."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekd.bench.runners import OrtRunner
from edgekd.bench.runners import predict as runner_predict
from edgekd.runtime.ort import make_session, predict

SHAPE = (3, 4, 4)


def _linear_classifier(path, batch):
    """x (batch, 3, 4, 4) -> Flatten -> Gemm -> logits (batch, 5); batch an int or a symbolic name."""
    weight = np.random.default_rng(0).standard_normal((5, 48)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["flat"]), helper.make_node("Gemm", ["flat", "w"], ["y"], transB=1)],
        "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, *SHAPE])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 5])], [numpy_helper.from_array(weight, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.fixture
def models(tmp_path):
    return _linear_classifier(tmp_path / "dynamic.onnx", "N"), _linear_classifier(tmp_path / "static4.onnx", 4)


def test_a_fixed_batch_above_one_takes_a_short_last_batch(models):
    dynamic, static4 = models
    x = np.random.default_rng(1).standard_normal((6, *SHAPE)).astype(np.float32)  # 4 + a tail of 2
    expected = predict(make_session(dynamic), x)
    got = predict(make_session(static4), x)  # the tail is padded to 4, the padding's rows dropped
    assert got.shape == expected.shape == (6, 5)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)  # same kernel, same rows
    np.testing.assert_allclose(runner_predict(OrtRunner(static4, None, 1), x), expected, rtol=1e-6, atol=1e-6)
