"""Per-version TensorRT rules (edgekd.trt.compat): pure, so they run everywhere."""

from __future__ import annotations

import json

import pytest

from edgekd.errors import ConfigError
from edgekd.targets import available, load_target
from edgekd.trt import compat

# version -> (network flags, fp16 builder flags, int8 builder flags, fp16 ONNX variant, max opset)
# with the default typing of that version (weak on 8/10, strong on 11).
DEFAULT_TABLE = {
    "8.5": (("EXPLICIT_BATCH",), ("FP16",), ("INT8",), "fp32", 17),
    "8.6": (("EXPLICIT_BATCH",), ("FP16",), ("INT8",), "fp32", 17),
    "10.0": ((), ("FP16",), ("INT8",), "fp32", 20),
    "10.3.0.30": ((), ("FP16",), ("INT8",), "fp32", 20),
    "10.12": ((), ("FP16",), ("INT8",), "fp32", 20),
    "11.0": ((), (), (), "fp16", 25),
    "11.4.1": ((), (), (), "fp16", 25),
}


@pytest.mark.parametrize("version", list(DEFAULT_TABLE))
def test_default_plan_per_version(version):
    net, fp16_flags, int8_flags, fp16_variant, opset = DEFAULT_TABLE[version]
    fp16 = compat.plan_build(version, "fp16")
    int8 = compat.plan_build(version, "int8")
    assert fp16.network_flags == net and int8.network_flags == net
    assert fp16.builder_flags == fp16_flags
    assert int8.builder_flags == int8_flags
    assert fp16.onnx_variant == fp16_variant
    assert int8.onnx_variant == "qdq"  # explicit quantization on every version
    assert fp16.max_opset == opset
    assert fp16.strongly_typed == version.startswith("11")


@pytest.mark.parametrize("version", ["10.0", "10.3", "10.12"])
def test_strongly_typed_is_an_option_on_10(version):
    plan = compat.plan_build(version, "fp16", strongly_typed=True)
    assert plan.network_flags == ("STRONGLY_TYPED",)
    assert plan.builder_flags == ()  # precision comes from the fp16 ONNX, not a flag
    assert plan.onnx_variant == "fp16"


def test_strongly_typed_does_not_exist_on_8():
    with pytest.raises(ConfigError, match="TensorRT 10 or newer"):
        compat.plan_build("8.5", "fp16", strongly_typed=True)


def test_weak_typing_is_gone_on_11():
    with pytest.raises(ConfigError, match="removed weakly typed"):
        compat.plan_build("11.0", "fp16", strongly_typed=False)


@pytest.mark.parametrize(
    "version,expected",
    [("8.5", (8, 5, 0)), ("10.3.0.30", (10, 3, 0)), ((8, 6), (8, 6, 0)), ("11", (11, 0, 0))],
)
def test_parse_version(version, expected):
    assert compat.parse_version(version) == expected


@pytest.mark.parametrize("version", ["7.1", "8.4", "12.0"])
def test_unsupported_versions_are_refused(version):
    with pytest.raises(ConfigError, match="8.5 through 11"):
        compat.plan_build(version, "fp16")


def test_garbage_version_is_a_config_error():
    with pytest.raises(ConfigError, match="Cannot read a TensorRT version"):
        compat.parse_version("latest")


@pytest.mark.parametrize("version,ok,too_high", [("8.5", 17, 18), ("10.3", 20, 21), ("11.0", 25, 26)])
def test_opset_ceiling(version, ok, too_high):
    v = compat.parse_version(version)
    compat.check_opset(v, ok)
    with pytest.raises(ConfigError, match=f"opset {too_high}.*takes opset {ok} at most"):
        compat.check_opset(v, too_high)


def test_fp32_needs_no_flags_and_fp32_onnx():
    plan = compat.plan_build("10.3", "fp32")
    assert plan.builder_flags == () and plan.onnx_variant == "fp32"


@pytest.mark.parametrize(
    "version,gpu,precision",
    [
        ("8.5", "xavier", "int8"),
        ("10.3", "orin", "fp16"),
        ("10.7", "orin", "int8"),
        ("11.4.1", "orin", "fp16"),
    ],
)
def test_dla_plans_turn_on_gpu_fallback(version, gpu, precision):
    plan = compat.plan_build(version, precision, gpu=gpu, dla_core=0)
    assert "GPU_FALLBACK" in plan.builder_flags
    assert plan.dla_core == 0
    if version.startswith("11"):
        assert plan.strongly_typed and plan.builder_flags == ("GPU_FALLBACK",)
    else:  # DLA on 8.x/10.x is built weakly typed, precision by builder flag
        assert not plan.strongly_typed and ("FP16" if precision == "fp16" else "INT8") in plan.builder_flags


@pytest.mark.parametrize(
    "version,gpu,precision,kwargs,message",
    [
        ("10.3", "orin", "fp32", {}, "FP16 or INT8 only"),
        ("10.3", "thor", "fp16", {}, "no DLA cores"),
        ("10.3", None, "fp16", {}, "no DLA cores"),
        ("10.8", "orin", "fp16", {}, "cannot build DLA engines"),
        ("11.0", "orin", "fp16", {}, "cannot build DLA engines"),
        ("11.4.0", "orin", "int8", {}, "cannot build DLA engines"),
        ("10.3", "orin", "fp16", {"strongly_typed": True}, "Strongly typed DLA builds need TensorRT 11.4.1"),
    ],
)
def test_impossible_dla_requests(version, gpu, precision, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        compat.plan_build(version, precision, gpu=gpu, dla_core=0, **kwargs)


def test_implicit_calibration_is_refused_with_the_reason():
    with pytest.raises(ConfigError, match="removed in TensorRT 11"):
        compat.plan_build("11.0", "int8", quantization="implicit")
    with pytest.raises(ConfigError, match="explicit quantization only"):
        compat.plan_build("10.3", "int8", quantization="implicit")


def test_unknown_precision():
    with pytest.raises(ConfigError, match="Unknown precision 'bf16'"):
        compat.plan_build("10.3", "bf16")


def test_plan_is_plain_json():
    data = compat.plan_build("10.3", "int8").as_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["onnx_variant"] == "qdq" and data["tensorrt"] == "10.3"


TRT_TARGETS = sorted(n for n in available() if load_target(n).runtime == "tensorrt")


def test_the_repository_ships_jetson_targets():
    assert {"jetson-orin-nano", "jetson-agx-orin", "jetson-xavier-nx"} <= set(TRT_TARGETS)


@pytest.mark.parametrize("name", TRT_TARGETS)
def test_every_tensorrt_target_plans_each_of_its_precisions(name):
    target = load_target(name)
    for precision in target.precisions:
        plan = compat.plan_for_target(target, precision)
        assert plan.max_opset >= target.max_opset
        assert plan.onnx_variant in ("fp32", "fp16", "qdq")


def test_target_precision_must_be_listed():
    with pytest.raises(ConfigError, match="does not list precision 'fp32'"):
        compat.plan_for_target(load_target("jetson-orin-nano"), "fp32")


def test_onnxruntime_target_has_no_tensorrt_plan():
    with pytest.raises(ConfigError, match="not TensorRT"):
        compat.plan_for_target(load_target("host-cpu"), "int8")


def test_target_opset_above_the_parser_is_refused():
    target = load_target("jetson-xavier-nx").model_copy(update={"max_opset": 18})
    with pytest.raises(ConfigError, match="max_opset: 17"):
        compat.plan_for_target(target, "fp16")


@pytest.mark.parametrize(
    "name,family",
    [
        ("Orin", "orin"),
        ("NVIDIA Jetson AGX Xavier", "xavier"),
        ("NVIDIA Thor", "thor"),
        ("NVIDIA H100 80GB HBM3", None),
        (None, None),
    ],
)
def test_gpu_family(name, family):
    assert compat.gpu_family(name) == family
