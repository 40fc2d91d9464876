"""Real TensorRT builds and runs (marked `trt`): need tensorrt, cuda-python and an NVIDIA GPU.

References come from ONNX Runtime on the CPU. Tolerances: fp32 engines may use
TF32 tensor cores (TensorRT's default, 10-bit mantissa) -> 1 % of the logit
scale; fp16 -> 2 %; int8 against ORT's own QDQ execution of the same model
(TensorRT fuses and requantizes differently) -> 5 % and top-1 agreement.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from edgekd.errors import ConfigError, RuntimeBackendError


def _skip_reason() -> str | None:
    for module, what in (
        ("tensorrt", "tensorrt"),
        ("cuda", "cuda-python"),
        ("onnx", "onnx"),
        ("onnxruntime", "onnxruntime (for reference outputs)"),
    ):
        if importlib.util.find_spec(module) is None:
            return f"{what} is not installed"
    from edgekd.trt import _cuda

    try:
        _cuda.device_info()
    except RuntimeBackendError as exc:
        return f"no usable NVIDIA GPU: {exc}"
    return None


SKIP = _skip_reason()
pytestmark = [
    pytest.mark.trt,
    pytest.mark.skipif(SKIP is not None, reason=f"needs TensorRT and a GPU: {SKIP}"),
]

if SKIP is None:
    import onnx
    import onnxruntime as ort
    import tensorrt as trt

    from edgekd.onnxtools import fp16 as fp16_tools
    from edgekd.onnxtools.tiny import tiny_convnet
    from edgekd.onnxtools.trt_rules import TRT_QUANTIZE_OPTIONS, check_qdq_for_tensorrt
    from edgekd.trt import compat
    from edgekd.trt.build import build_engine, sidecar_path
    from edgekd.trt.engine import evaluate, load_runner

    VERSION = compat.parse_version(trt.__version__)


def ort_run(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def images(n, seed=0, size=16):
    return np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)


def assert_close(got, ref, rel):
    np.testing.assert_allclose(got, ref, rtol=rel, atol=rel * np.abs(ref).max())


@pytest.fixture
def fp32_onnx(tmp_path):
    path = tmp_path / "student.onnx"
    onnx.save(tiny_convnet(size=16, width=16, classes=10, opset=17), str(path))
    return path


def test_fp32_engine_with_dynamic_batch_matches_onnxruntime(fp32_onnx, tmp_path):
    engine_path = tmp_path / "fp32.engine"
    sidecar = build_engine(fp32_onnx, engine_path, precision="fp32", min_batch=1, opt_batch=4, max_batch=8)
    assert sidecar["tensorrt"]["version"] == trt.__version__
    assert sidecar["inputs"] == [{"name": "x", "shape": [-1, 3, 16, 16], "dtype": "FLOAT"}]
    assert sidecar["onnx"]["opset"] == 17 and len(sidecar["onnx"]["sha256"]) == 64
    assert json.loads(sidecar_path(engine_path).read_text()) == sidecar
    # A plain plan: TensorRT deserializes the file as is (no bytes prepended).
    assert (
        trt.Runtime(trt.Logger(trt.Logger.ERROR)).deserialize_cuda_engine(engine_path.read_bytes())
        is not None
    )

    x = images(11)  # 8 + 3: two chunks through the profile's max batch
    with load_runner(engine_path) as runner:
        assert (runner.min_batch, runner.max_batch) == (1, 8)
        assert_close(runner.run(x), ort_run(fp32_onnx, x), 1e-2)


def test_fixed_batch_engine_pads_the_last_chunk(tmp_path):
    path = tmp_path / "b2.onnx"
    onnx.save(tiny_convnet(batch=2, size=16), str(path))
    with pytest.raises(ConfigError, match="fixed batch of 2"):
        build_engine(path, tmp_path / "bad.engine", precision="fp32")
    build_engine(path, tmp_path / "b2.engine", precision="fp32", min_batch=2, opt_batch=2, max_batch=2)
    x = images(3)
    ref = np.concatenate([ort_run(path, x[:2]), ort_run(path, np.concatenate([x[2:], x[2:]]))[:1]])
    with load_runner(tmp_path / "b2.engine") as runner:
        assert_close(runner.run(x), ref, 1e-2)


def test_fp16_engine(fp32_onnx, tmp_path):
    x = images(8)
    ref = ort_run(fp32_onnx, x)
    fp16_path = tmp_path / "student.fp16.onnx"
    fp16_tools.convert(fp32_onnx, fp16_path)
    typed = [True] if VERSION[0] >= 11 else ([False, True] if VERSION[0] == 10 else [False])
    for strongly_typed in typed:
        source = fp16_path if strongly_typed else fp32_onnx  # compat.onnx_variant's rule
        assert compat.onnx_variant("fp16", strongly_typed) == ("fp16" if strongly_typed else "fp32")
        engine_path = tmp_path / f"fp16-{strongly_typed}.engine"
        sidecar = build_engine(
            source, engine_path, precision="fp16", max_batch=8, opt_batch=8, strongly_typed=strongly_typed
        )
        assert sidecar["plan"]["strongly_typed"] is strongly_typed
        with load_runner(engine_path) as runner:
            assert_close(runner.run(x), ref, 2e-2)
    if VERSION[0] >= 10:
        with pytest.raises(ConfigError, match="needs the fp16 ONNX"):
            build_engine(fp32_onnx, tmp_path / "wrong.engine", precision="fp16", strongly_typed=True)


def test_int8_engine_from_tensorrt_ready_qdq(fp32_onnx, tmp_path):
    from onnxruntime import quantization as q

    class Batches(q.CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"x": images(8, seed=s)} for s in range(8)])

        def get_next(self):
            return next(self.it, None)

    qdq_path = tmp_path / "student.int8.onnx"
    q.quantize_static(
        str(fp32_onnx),
        str(qdq_path),
        Batches(),
        quant_format=q.QuantFormat.QDQ,
        activation_type=q.QuantType.QInt8,
        weight_type=q.QuantType.QInt8,
        per_channel=True,
        extra_options=TRT_QUANTIZE_OPTIONS,
    )
    assert check_qdq_for_tensorrt(qdq_path) == []
    with pytest.raises(ConfigError, match="needs the QDQ ONNX"):
        build_engine(fp32_onnx, tmp_path / "wrong.engine", precision="int8")
    build_engine(qdq_path, tmp_path / "int8.engine", precision="int8", max_batch=8, opt_batch=8)
    x = images(8, seed=99)
    ref = ort_run(qdq_path, x)
    with load_runner(tmp_path / "int8.engine") as runner:
        got = runner.run(x)
    assert_close(got, ref, 5e-2)
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.75


def test_timing_cache_is_kept_and_reused(fp32_onnx, tmp_path):
    first = build_engine(fp32_onnx, tmp_path / "a.engine", precision="fp32")
    second = build_engine(fp32_onnx, tmp_path / "b.engine", precision="fp32")
    cache = first["build_options"]["timing_cache"]
    assert cache["state"] == "new" and second["build_options"]["timing_cache"]["state"] == "reused"
    assert (tmp_path / f"tensorrt-{trt.__version__}.timing-cache").is_file()


def test_engine_from_another_device_asks_for_a_rebuild(fp32_onnx, tmp_path):
    engine_path = tmp_path / "m.engine"
    sidecar = build_engine(fp32_onnx, engine_path, precision="fp32")
    sidecar["tensorrt"]["version"] = "8.5.2.2"
    sidecar_path(engine_path).write_text(json.dumps(sidecar))
    with pytest.raises(RuntimeBackendError, match="built with TensorRT 8.5.2.2") as info:
        load_runner(engine_path)
    assert "Rebuild on this device" in info.value.hint


def test_undeserializable_engine_asks_for_a_rebuild(fp32_onnx, tmp_path):
    from edgekd.trt.build import sha256_file

    engine_path = tmp_path / "m.engine"
    sidecar = build_engine(fp32_onnx, engine_path, precision="fp32")
    engine_path.write_bytes(b"\0" * 4096)
    sidecar["engine"]["sha256"] = sha256_file(engine_path)
    sidecar_path(engine_path).write_text(json.dumps(sidecar))
    with pytest.raises(RuntimeBackendError, match="could not deserialize"):
        load_runner(engine_path)


def test_parser_failure_lists_the_node(tmp_path):
    from onnx import TensorProto, helper

    node = helper.make_node("MysteryOp", ["x"], ["y"], name="mystery", domain="edgekd.test")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("edgekd.test", 1)]
    )
    path = tmp_path / "bad.onnx"
    onnx.save(model, str(path))
    with pytest.raises(RuntimeBackendError, match="could not parse bad.onnx") as info:
        build_engine(path, tmp_path / "bad.engine", precision="fp32")
    assert "node 0" in info.value.message and "MysteryOp" in info.value.message


def test_benchmark_and_accuracy(fp32_onnx, tmp_path):
    engine_path = tmp_path / "m.engine"
    build_engine(fp32_onnx, engine_path, precision="fp32", max_batch=4, opt_batch=4)
    x = images(20, seed=5)
    val = tmp_path / "val.npz"
    np.savez(val, x=x, y=ort_run(fp32_onnx, x).argmax(1).astype(np.int64))
    with load_runner(engine_path) as runner:
        result = runner.benchmark(batch=4, warmup_s=0.05, duration_s=0.2)
        accuracy = evaluate(runner, val)
    assert result["iterations"] >= 10 and result["batch"] == 4
    for key in ("gpu_compute_ms", "latency_ms"):
        s = result[key]
        assert 0 < s["min"] <= s["p50"] <= s["p90"] <= s["p99"] <= s["max"]
    assert result["latency_ms"]["mean"] >= result["gpu_compute_ms"]["mean"]  # latency adds both copies
    assert result["engine_bytes"] == engine_path.stat().st_size and result["context_device_memory_bytes"] >= 0
    assert result["throughput_per_s"] > 0
    assert accuracy["samples"] == 20 and accuracy["accuracy"] >= 0.95  # labels are ORT's own top-1


def test_cli_build_and_bench(fp32_onnx, tmp_path):
    from click.testing import CliRunner

    from edgekd.trt.cli import bench_engine_command, build_command

    profile = tmp_path / "this-gpu.yaml"
    profile.write_text(
        "runtime: tensorrt\narch: x86_64\nprecisions: [fp32, fp16, int8]\n"
        f"max_opset: {compat.max_onnx_opset(VERSION)}\ntensorrt:\n  version: '{VERSION[0]}.{VERSION[1]}'\n"
    )
    result = CliRunner().invoke(
        build_command,
        [
            str(fp32_onnx),
            "--target",
            str(profile),
            "--precision",
            "fp32",
            "--max-batch",
            "2",
            "--opt-batch",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    engine_path = tmp_path / "student.this-gpu.engine"
    assert engine_path.is_file() and "built" in result.output
    x = images(4)
    np.savez(tmp_path / "val.npz", x=x, y=np.zeros(4, np.int64))
    result = CliRunner().invoke(
        bench_engine_command,
        [
            str(engine_path),
            "--duration",
            "0.1",
            "--warmup-ms",
            "10",
            "--val",
            str(tmp_path / "val.npz"),
            "--json",
            str(tmp_path / "bench.json"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "GPU compute" in result.output
    assert json.loads((tmp_path / "bench.json").read_text())["accuracy"]["samples"] == 4
