"""A tiny CNN trained for a few seconds on sklearn digits (8x8 upsampled to 32x32), exported once.

~94% validation accuracy after 8 epochs (~4 s on one thread): enough signal that an INT8
accuracy drop means something.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32)
        self.conv3, self.bn3 = nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        return self.fc(x.mean((2, 3)))  # (N, 10)


def digits32() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32) / 16.0)[:, None]  # (1797, 1, 8, 8)
    x = F.interpolate(x, size=32, mode="bilinear", align_corners=False)
    return ((x - 0.3) / 0.35).numpy(), digits.target.astype(np.int64)


def train(x: np.ndarray, y: np.ndarray, epochs: int = 8) -> TinyNet:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = TinyNet()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    steps = epochs * -(-len(xt) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 1e-2, total_steps=steps)
    try:
        for _ in range(epochs):
            order = torch.randperm(len(xt), generator=generator)
            for i in range(0, len(xt), 64):
                idx = order[i : i + 64]
                loss = F.cross_entropy(model(xt[idx]), yt[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def with_outlier(model: nn.Module, channels=(0, 1, 2, 3), k: float = 100.0) -> nn.Module:
    """The same function with an activation outlier: conv1 channels x k, conv2's inputs from them / k.

    relu(k z) = k relu(z), so FP32 outputs are unchanged (up to rounding), but conv1's output
    now spans k times the range in 4 of 16 channels: one per-tensor int8 scale rounds the
    other 12 channels to ~0. Only keeping conv1 -> relu -> conv2 in float repairs it.
    """
    from edgekd.export import prepare_for_export

    model = prepare_for_export(model, (1, 1, 32, 32))  # BN folded, so conv1 has the whole affine map
    with torch.no_grad():
        for c in channels:
            model.conv1.weight[c] *= k
            model.conv1.bias[c] *= k
            model.conv2.weight[:, c] /= k
    return model


@dataclass
class Digits:
    model: nn.Module
    onnx: Path
    fp32_accuracy: float
    calib_x: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray


@pytest.fixture(scope="session")
def digits(tmp_path_factory) -> Digits:
    from edgekd.export import export_onnx
    from edgekd.runtime.ort import accuracy, make_session, predict

    x, y = digits32()
    model = train(x[:1400], y[:1400])
    path = tmp_path_factory.mktemp("digits") / "tiny.onnx"
    metadata = {"preprocessing": {"input_size": [1, 32, 32], "mean": [0.3], "std": [0.35]}, "classes": list("0123456789")}
    export_onnx(model, path, input_shape=(1, 1, 32, 32), opset=18, metadata=metadata)
    val_x, val_y = x[1400:], y[1400:]
    acc = accuracy(predict(make_session(path), val_x), val_y)
    return Digits(model, path, acc, x[:256], val_x, val_y)


@pytest.fixture(scope="session")
def outlier_model(digits) -> nn.Module:
    return with_outlier(digits.model)


class HardSwishNet(nn.Module):
    """Two plain Conv+Relu layers (INT8 pays for them on x86), then MobileNetV3's costly patterns
    at digits size: a depthwise Conv+HardSwish, squeeze-excite (tiny 1x1 convs, HardSigmoid,
    Mul) and a residual Add. Untrained: only speed is looked at."""

    def __init__(self, width: int = 64):
        super().__init__()
        self.conv_a, self.conv_b = nn.Conv2d(1, width // 2, 3, padding=1), nn.Conv2d(width // 2, width, 3, padding=1)
        self.dw = nn.Conv2d(width, width, 3, padding=1, groups=width)
        self.se_reduce, self.se_expand = nn.Conv2d(width, 4, 1), nn.Conv2d(4, width, 1)
        self.pw = nn.Conv2d(width, width, 1)
        self.fc = nn.Linear(width, 10)

    def forward(self, x):
        x = F.relu(self.conv_b(F.relu(self.conv_a(x))))
        y = F.hardswish(self.dw(x))
        gate = F.hardsigmoid(self.se_expand(F.relu(self.se_reduce(y.mean((2, 3), keepdim=True)))))
        x = x + self.pw(y * gate)
        return self.fc(x.mean((2, 3)))  # (N, 10)


@pytest.fixture(scope="session")
def hardswish_onnx(tmp_path_factory) -> Path:
    from edgekd.export import export_onnx

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = HardSwishNet().eval()
    path = tmp_path_factory.mktemp("hardswish") / "hardswish.onnx"
    export_onnx(model, path, input_shape=(1, 1, 32, 32), opset=18, dynamic_batch=True)
    return path


def assert_tensorrt_form(path) -> None:
    """TensorRT explicit quantization, checked on the ONNX itself (and by trt_rules)."""
    import onnx
    from onnx import numpy_helper

    from edgekd.onnxtools.trt_rules import check_qdq_for_tensorrt

    assert check_qdq_for_tensorrt(path) == []
    graph = onnx.load(str(path)).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    readers = Counter([*(name for node in graph.node for name in node.input), *(o.name for o in graph.output)])
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        assert len(node.input) > 2 and inits[node.input[2]].dtype == np.int8, node.name  # signed int8
        assert not inits[node.input[2]].any(), node.name  # zero point 0
        assert readers[node.output[0]] == 1, node.name  # no Q/DQ pair shared between consumers
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            weight = inits[node.input[0]]
            assert weight.dtype != np.int32, node.name  # bias stays float
            if weight.ndim == 4:
                axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
                assert axis == 0 and inits[node.input[1]].size == weight.shape[0], node.name  # per out-channel
        elif node.op_type == "QuantizeLinear":
            assert inits[node.input[1]].size == 1, node.name  # per-tensor activations
