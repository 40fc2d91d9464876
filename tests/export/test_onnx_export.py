"""export_onnx: exporter choice, checks, metadata, sidecar, and nothing published on failure."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
onnx = pytest.importorskip("onnx")

from edgekd.artifacts import sha256_file, sidecar_path  # noqa: E402
from edgekd.errors import ConfigError, GateError, ModelError  # noqa: E402
from edgekd.export import export_onnx, plan_exporters, read_metadata  # noqa: E402
from edgekd.runtime.ort import make_session, predict  # noqa: E402

nn = torch.nn


def _tiny_resnet(in_chans: int = 1) -> nn.Module:
    model = timm.create_model("resnet18", layers=[1, 1, 1, 1], channels=(8, 16, 16, 16), num_classes=10, in_chans=in_chans)
    return model.eval()


class _SignBranch(nn.Module):
    """Data-dependent control flow: torch.export refuses it, the TorchScript tracer bakes in one branch."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = x.flatten(1)[:, :16]
        if x.sum() > 0:
            return self.fc(x)
        return -self.fc(x)


class _FeatureMap(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 10, 3)

    def forward(self, x):
        return self.conv(x)  # (N, 10, H, W): not logits


def _traced_sign() -> float:
    """The sign of `_SignBranch`'s test on export_onnx's example input (seeded, batch 1)."""
    example = torch.randn((1, 1, 32, 32), generator=torch.Generator().manual_seed(0))
    return float(np.sign(float(example.flatten(1)[:, :16].sum())))


def _x(n: int, c: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, c, 32, 32), dtype=np.float32)


def test_resnet_export_is_checked_folded_and_self_describing(tmp_path):
    path = tmp_path / "student.onnx"
    metadata = {
        "preprocessing": {"input_size": [1, 32, 32], "mean": [0.5], "std": [0.25], "interpolation": "bilinear", "crop": 1.0},
        "classes": [f"c{i}" for i in range(10)],
        "note": "plain string",
    }
    result = export_onnx(_tiny_resnet(), path, input_shape=(1, 1, 32, 32), opset=18, metadata=metadata, verify_with=_x(8))

    proto = onnx.load(str(path))
    ops = {node.op_type for node in proto.graph.node}
    assert "BatchNormalization" not in ops and "Conv" in ops
    assert [i.name for i in proto.graph.input] == ["input"] and [o.name for o in proto.graph.output] == ["logits"]
    assert result.exporter == "dynamo" and result.exporter_reason == "default exporter" and result.fallback_error is None
    assert result.opset == 18 and next(o.version for o in proto.opset_import if o.domain == "") == 18
    assert result.simplified and result.parity["passed"] and result.parity["max_abs_diff"] <= 1e-4

    meta = read_metadata(path)  # every value is JSON
    assert meta["preprocessing"] == metadata["preprocessing"] and meta["classes"][3] == "c3"
    assert meta["note"] == "plain string" and meta["edgekd.opset"] == 18 and meta["edgekd.exporter"] == "dynamo"

    sidecar = json.loads(sidecar_path(path).read_text())
    assert sidecar["sha256"] == sha256_file(path) == result.sha256
    assert sidecar["exporter"] == "dynamo" and sidecar["simplified"] is True
    assert {"torch", "onnx", "onnxruntime", "edgekd"} <= set(sidecar["versions"])
    assert not list(tmp_path.glob("*.partial"))


@pytest.mark.parametrize(
    "exporter, opset, expected",
    [
        ("auto", 17, ["torchscript"]),  # dynamo cannot emit < 18 (TensorRT 8.5/8.6 need 17)
        ("auto", 18, ["dynamo", "torchscript"]),
        ("auto", 20, ["dynamo", "torchscript"]),
        ("auto", 21, ["dynamo"]),  # the TorchScript exporter stops at 20
        ("torchscript", 13, ["torchscript"]),
        ("dynamo", 21, ["dynamo"]),
    ],
)
def test_exporter_plan(exporter, opset, expected):
    assert [name for name, _ in plan_exporters(exporter, opset)] == expected


@pytest.mark.parametrize("exporter, opset", [("dynamo", 17), ("torchscript", 21), ("auto", 9), ("onnx2", 18)])
def test_impossible_exporter_requests_are_config_errors(exporter, opset):
    with pytest.raises(ConfigError):
        plan_exporters(exporter, opset)


def test_opset_17_goes_to_torchscript_and_says_why(tmp_path):
    path = tmp_path / "trt85.onnx"
    result = export_onnx(_tiny_resnet(), path, input_shape=(1, 1, 32, 32), opset=17, verify_with=_x(4))
    assert result.exporter == "torchscript" and "lowest the dynamo exporter emits" in result.exporter_reason
    assert next(o.version for o in onnx.load(str(path)).opset_import if o.domain == "") == 17
    assert any("DeprecationWarning" in w for w in result.warnings)  # torch 2.15 deprecates the tracer


def test_auto_falls_back_to_torchscript_and_records_why(tmp_path):
    model = _SignBranch().eval()
    x = np.abs(_x(4)) * _traced_sign()  # inputs that take the branch the tracer saw
    path = tmp_path / "fallback.onnx"
    result = export_onnx(model, path, input_shape=(1, 1, 32, 32), opset=18, verify_with=x)
    assert result.exporter == "torchscript"
    assert result.exporter_reason.startswith("fallback") and "TorchExportError" in result.fallback_error
    assert json.loads(sidecar_path(path).read_text())["fallback_error"] == result.fallback_error

    with pytest.raises(ModelError, match="No exporter"):
        export_onnx(model, tmp_path / "dynamo_only.onnx", input_shape=(1, 1, 32, 32), opset=18, exporter="dynamo")
    assert not (tmp_path / "dynamo_only.onnx").exists()


def test_parity_failure_publishes_nothing(tmp_path):
    # The tracer baked in one branch; samples that take the other one expose it: no file.
    path = tmp_path / "wrong.onnx"
    x = -np.abs(_x(4)) * _traced_sign()
    with pytest.raises(GateError, match=r"max \|logit difference\| .* \(tolerance 0\.0001\), top-1 agreement"):
        export_onnx(_SignBranch().eval(), path, input_shape=(1, 1, 32, 32), opset=18, verify_with=x)
    assert list(tmp_path.iterdir()) == []


def test_failed_check_never_reaches_the_final_name(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"previous good export")
    with pytest.raises(ModelError, match="2-D"):
        export_onnx(_FeatureMap().eval(), path, input_shape=(1, 1, 32, 32), opset=18)
    assert path.read_bytes() == b"previous good export"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no partial, no sidecar

    with pytest.raises(ConfigError, match="JSON"):
        export_onnx(_tiny_resnet(), tmp_path / "meta.onnx", input_shape=(1, 1, 32, 32), opset=18,
                    metadata={"mean": np.float32(0.5)})
    assert not (tmp_path / "meta.onnx").exists()


def test_dynamic_batch(tmp_path):
    model = _tiny_resnet(in_chans=3)
    path = tmp_path / "dyn.onnx"
    result = export_onnx(model, path, input_shape=(1, 3, 32, 32), opset=18, dynamic_batch=True)
    session = make_session(path)
    assert session.get_inputs()[0].shape[0] == "batch" and result.dynamic_batch
    x = _x(5, c=3)
    out = session.run(None, {"input": x})[0]  # one call with batch 5
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert out.shape == (5, 10) and np.abs(out - ref).max() <= 1e-4
    assert np.allclose(predict(session, x, batch_size=2), out, atol=1e-5)
