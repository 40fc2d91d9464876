"""edgekd.trt.build without a GPU: argument checks, ONNX reading, precision checks, files.

The real builds are in test_trt_gpu.py (marked `trt`).
"""

from __future__ import annotations

import enum
import importlib.util

import pytest

from edgekd.errors import ConfigError, ModelError, RuntimeBackendError
from edgekd.targets import load_target
from edgekd.trt import build

onnx = pytest.importorskip("onnx")
from edgekd.onnxtools.tiny import tiny_convnet  # noqa: E402

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def save(model, path):
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("opset", [11, 13, 17, 20, 21])
def test_onnx_opset_matches_onnx(tmp_path, opset):
    path = save(tiny_convnet(opset=opset), tmp_path / "m.onnx")
    assert build.onnx_opset(path) == opset == onnx.load(str(path)).opset_import[0].version


def test_onnx_opset_ignores_other_domains(tmp_path):
    model = tiny_convnet(opset=17)
    model.opset_import.insert(0, onnx.helper.make_opsetid("com.microsoft", 1))
    assert build.onnx_opset(save(model, tmp_path / "m.onnx")) == 17


def test_onnx_opset_reads_the_ai_onnx_domain_name(tmp_path):
    model = tiny_convnet(opset=17)
    model.opset_import[0].domain = "ai.onnx"
    assert build.onnx_opset(save(model, tmp_path / "m.onnx")) == 17


@pytest.mark.parametrize("data", [b"\xff\xff\xff", b"not an onnx file at all" * 3, b""])
def test_unreadable_onnx_is_a_model_error(tmp_path, data):
    path = tmp_path / "bad.onnx"
    path.write_bytes(data)
    with pytest.raises(ModelError):
        build.onnx_opset(path)


def test_batch_shapes_for_dynamic_batch():
    shapes = build.batch_shapes("x", (-1, 3, 32, 32), 1, 4, 8)
    assert shapes == ((1, 3, 32, 32), (4, 3, 32, 32), (8, 3, 32, 32))


def test_batch_shapes_static_input_needs_matching_batches():
    assert build.batch_shapes("x", (2, 3, 8, 8), 2, 2, 2) is None
    with pytest.raises(ConfigError, match="fixed batch of 2"):
        build.batch_shapes("x", (2, 3, 8, 8), 1, 1, 1)


def test_batch_shapes_refuse_dynamic_image_size():
    with pytest.raises(ModelError, match="only the batch dimension may be dynamic"):
        build.batch_shapes("x", (-1, 3, -1, -1), 1, 1, 1)


def test_parser_errors_name_the_node():
    line = build.format_parser_error(
        "ErrorCode.UNSUPPORTED_NODE", "No importer registered for op: Foo", 3, "custom_node", "Foo"
    )
    assert line == "node 3 'custom_node' (Foo): UNSUPPORTED_NODE: No importer registered for op: Foo"
    assert build.format_parser_error("INVALID_GRAPH", "bad", -1).startswith("graph: INVALID_GRAPH")


@pytest.mark.parametrize(
    "precision,strong,qdq,half,message",
    [
        ("int8", False, 0, 0, "needs the QDQ ONNX"),
        ("fp16", False, 12, 0, "quantized .12 Q/DQ layers."),
        ("fp32", True, 4, 0, "quantized"),
        ("fp16", True, 0, 0, "strongly typed fp16 build needs the fp16 ONNX"),
        ("fp32", False, 0, 7, "float16 tensors"),
    ],
)
def test_network_precision_mismatch_is_refused(precision, strong, qdq, half, message):
    with pytest.raises(ConfigError, match=message):
        build.check_network_precision(precision, strong, qdq_layers=qdq, half_tensors=half)


@pytest.mark.parametrize(
    "precision,strong,qdq,half",
    [
        ("int8", False, 20, 0),
        ("int8", True, 20, 0),
        ("fp16", True, 0, 9),
        ("fp16", False, 0, 0),
        ("fp16", False, 0, 9),
        ("fp32", True, 0, 0),
    ],
)
def test_network_precision_accepted(precision, strong, qdq, half):
    build.check_network_precision(precision, strong, qdq_layers=qdq, half_tensors=half)


def test_flag_bits_or_the_named_members():
    class Flag(enum.IntEnum):  # stand-in with TensorRT's enum values for STRONGLY_TYPED=1, EXPLICIT_BATCH=0
        EXPLICIT_BATCH = 0
        STRONGLY_TYPED = 1

    assert build._flag_bits(Flag, ()) == 0
    assert build._flag_bits(Flag, ("EXPLICIT_BATCH",)) == 1
    assert build._flag_bits(Flag, ("STRONGLY_TYPED",)) == 2


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "model.engine"
    build.atomic_write(target, b"first")
    build.atomic_write(target, b"second")
    assert target.read_bytes() == b"second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.engine"]


def test_sidecar_and_cache_names(tmp_path):
    engine = tmp_path / "student.jetson-orin-nano.engine"
    assert build.sidecar_path(engine).name == "student.jetson-orin-nano.engine.json"
    assert build.default_timing_cache(engine, "10.3.0.30") == tmp_path / "tensorrt-10.3.0.30.timing-cache"


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"min_batch": 4, "opt_batch": 2, "max_batch": 8}, "min <= opt <= max"),
        ({"min_batch": 0}, "min <= opt <= max"),
        ({"workspace_mb": 0}, "workspace-mb"),
        ({"precision": "bf16"}, "Unknown precision"),
    ],
)
def test_bad_arguments_fail_before_tensorrt(tmp_path, kwargs, message):
    path = save(tiny_convnet(), tmp_path / "m.onnx")
    kwargs = {"precision": "fp16", **kwargs}
    with pytest.raises(ConfigError, match=message):
        build.build_engine(path, tmp_path / "m.engine", **kwargs)


def test_missing_onnx(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        build.build_engine(tmp_path / "nope.onnx", tmp_path / "m.engine", precision="fp16")


def test_target_rules_fail_before_tensorrt(tmp_path):
    path = save(tiny_convnet(opset=21), tmp_path / "m21.onnx")
    orin = load_target("jetson-orin-nano")
    with pytest.raises(ConfigError, match="opset 21.*TensorRT 10.3"):
        build.build_engine(path, tmp_path / "m.engine", precision="fp16", target=orin)
    with pytest.raises(ConfigError, match="does not list precision 'fp32'"):
        build.build_engine(path, tmp_path / "m.engine", precision="fp32", target=orin)
    with pytest.raises(ConfigError, match="FP16 or INT8 only"):
        build.build_engine(
            path,
            tmp_path / "m.engine",
            precision="fp32",
            dla_core=0,
            target=orin.model_copy(update={"precisions": ["fp32", "fp16"]}),
        )


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed here; this checks the message when it is not")
def test_without_tensorrt_the_error_says_how_to_get_it(tmp_path):
    path = save(tiny_convnet(), tmp_path / "m.onnx")
    with pytest.raises(RuntimeBackendError, match="tensorrt is not installed") as info:
        build.build_engine(
            path, tmp_path / "m.engine", precision="fp16", target=load_target("jetson-orin-nano")
        )
    assert "JetPack" in info.value.hint and "edgekd[trt]" in info.value.hint
    assert not (tmp_path / "m.engine").exists()
