"""The quantize and TensorRT stages' INT8 files: one per target scheme, each following its targets' settings."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from edgekd.config import CompressConfig
from edgekd.errors import GateError
from edgekd.pipeline import deploy_stages, tensorrt_stage
from edgekd.pipeline.context import RunContext
from edgekd.quantize import schemes
from edgekd.schema import parse
from edgekd.targets import available
from edgekd.ui import UI
from tests.quantize.conftest import HardSwishNet, assert_tensorrt_form, digits32

torch = pytest.importorskip("torch")
AVX2_ONLY = frozenset({"avx2", "fma"})
VNNI = frozenset({"avx2", "fma", "avx512f", "avx512_vnni"})


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """student.onnx (untrained HardSwishNet) with data/val.npz labelled by its own FP32 answers."""
    from edgekd.export import export_onnx
    from edgekd.runtime.ort import make_session, predict

    folder = tmp_path_factory.mktemp("run")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = HardSwishNet(width=16).eval()
    export_onnx(model, folder / "student.onnx", input_shape=(1, 1, 32, 32), opset=18, dynamic_batch=True)
    x, _ = digits32()
    (folder / "data").mkdir()
    val_x = x[1400:1600]
    np.savez(folder / "data" / "val.npz", x=val_x, y=predict(make_session(folder / "student.onnx"), val_x).argmax(1))
    np.savez(folder / "data" / "calib.npz", x=x[:64])
    return folder


def _target(tmp_path, name: str, drop: float) -> str:
    """A copy of a shipped profile with its own accuracy bound."""
    data = yaml.safe_load(available()[name].read_text())
    data["budgets"]["max_int8_drop"] = drop
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _ctx(run_dir, targets: list[str], **quantize) -> RunContext:
    config = {"targets": targets, "quantize": {"max_int8_drop": None, **quantize}}
    return RunContext(parse(CompressConfig, config, "test"), run_dir, ui=UI(quiet=True))


def _zero_point_type(path) -> str:
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    return next(inits[n.input[2]].dtype.name for n in graph.node
                if n.op_type == "QuantizeLinear" and n.input[0] not in inits and len(n.input) > 2)


def test_one_int8_file_per_scheme_each_listed_with_its_targets(run_dir, tmp_path):
    targets = [_target(tmp_path, "host-cpu", 0.5), _target(tmp_path, "rpi4", 0.5), _target(tmp_path, "rpi5", 0.4)]
    result = deploy_stages.run_quantize(_ctx(run_dir, targets))
    files = {f["file"]: f for f in result["files"]}
    assert set(files) == {"student.int8.x86.onnx", "student.int8.arm64.onnx"}
    assert result["outputs"] == ["student.int8.x86.onnx", "student.int8.x86.onnx.json",
                                 "student.int8.arm64.onnx", "student.int8.arm64.onnx.json"]
    x86, arm = files["student.int8.x86.onnx"], files["student.int8.arm64.onnx"]
    assert (x86["targets"], arm["targets"]) == (["host-cpu"], ["rpi4", "rpi5"])
    assert (x86["scheme"]["types"], arm["scheme"]["types"]) == ("U8S8", "S8S8")
    assert _zero_point_type(run_dir / x86["file"]) == "uint8" and _zero_point_type(run_dir / arm["file"]) == "int8"
    assert (arm["max_int8_drop"], x86["max_int8_drop"]) == (0.4, 0.5)  # the strictest of the targets each serves
    assert [(a["name"], a["path"], a["targets"]) for a in result["artifacts"]] == [
        ("student-int8-x86", "student.int8.x86.onnx", ["host-cpu"]),
        ("student-int8-arm64", "student.int8.arm64.onnx", ["rpi4", "rpi5"])]
    assert x86["speed"]["timed"] and len(x86["attempts"]) > 1  # timed here: the speed phase ran
    assert not arm["speed"]["timed"] and len(arm["attempts"]) == 1  # an ARM file is not timed on x86
    side = json.loads((run_dir / "student.int8.arm64.onnx.json").read_text())
    assert side["scheme"]["types"] == "S8S8" and "rpi4" in side["scheme"]["reason"]


def test_tensorrt_file_follows_the_jetson_profile_and_quantize_settings(run_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(schemes, "host_cpu_features", lambda cpuinfo=None: AVX2_ONLY)  # a workstation without VNNI
    jetson = _target(tmp_path, "jetson-orin-nano", 0.5)
    variant = tensorrt_stage._ptq_variant(_ctx(run_dir, [jetson]))
    assert variant["max_int8_drop"] == 0.5 and variant["scheme"]["types"] == "S8S8"
    assert not any(a["reduce_range"] for a in variant["attempts"])  # no x86 workaround in a TensorRT file
    assert_tensorrt_form(run_dir / "student.int8.trt.onnx")

    from edgekd.quantize import gate

    seen = {}

    def spy(*args, **kwargs):
        seen.update(kwargs)
        raise GateError("stop here", "")

    monkeypatch.setattr(gate, "quantize_with_gate", spy)
    with pytest.raises(GateError):
        tensorrt_stage._ptq_variant(_ctx(run_dir, [jetson], fallbacks=False, method="percentile", max_int8_drop=0.07))
    assert (seen["fallbacks"], seen["method"], seen["max_accuracy_drop"]) == (False, "percentile", 0.07)
    assert seen["scheme"].key == "trt" and not seen["scheme"].reduce_range


def _key(stage, ctx) -> str:
    from edgekd.pipeline.engine import stage_key

    return stage_key(stage, ctx, inputs={})  # config reads and facts; input files are hashed alike for both


def test_stage_keys_cover_what_decides_each_file(run_dir, tmp_path, monkeypatch):
    jetson = _target(tmp_path, "jetson-orin-nano", 0.02)
    targets = ["host-cpu", jetson]
    # from a VNNI CPU to one without: the key must follow whatever CPU this suite runs on
    monkeypatch.setattr(schemes, "host_cpu_features", lambda cpuinfo=None: VNNI)
    quantize_key = _key(deploy_stages.QUANTIZE, _ctx(run_dir, targets))
    trt_key = _key(tensorrt_stage.TENSORRT, _ctx(run_dir, targets))
    monkeypatch.setattr(schemes, "host_cpu_features", lambda cpuinfo=None: AVX2_ONLY)
    # x86 file: 7-bit weights on this CPU, so its key changes; the TensorRT file's does not
    assert _key(deploy_stages.QUANTIZE, _ctx(run_dir, targets)) != quantize_key
    assert deploy_stages.QUANTIZE.facts(_ctx(run_dir, targets))["schemes"][0]["reduce_range"]
    assert _key(tensorrt_stage.TENSORRT, _ctx(run_dir, targets)) == trt_key
    for setting in ({"fallbacks": False}, {"method": "entropy"}, {"max_int8_drop": 0.07}):
        assert _key(tensorrt_stage.TENSORRT, _ctx(run_dir, targets, **setting)) != trt_key, setting
    (tmp_path / "loose").mkdir()
    looser = _target(tmp_path / "loose", "jetson-orin-nano", 0.1)  # the Jetson profile's own INT8 bound
    assert _key(tensorrt_stage.TENSORRT, _ctx(run_dir, ["host-cpu", looser])) != trt_key
    assert deploy_stages.max_int8_drop(_ctx(run_dir, [looser]), tensorrt_stage.int8_targets(_ctx(run_dir, [looser]))) == 0.1
