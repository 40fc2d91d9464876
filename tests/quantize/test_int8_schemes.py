"""INT8 types per target: a pure function of (runtime, arch, CPU features), and the targets' grouping."""

from __future__ import annotations

from pathlib import Path

import pytest

import edgekd

from edgekd.onnxtools.trt_rules import TRT_QUANTIZE_OPTIONS
from edgekd.quantize.schemes import (
    choose_scheme,
    host_cpu_features,
    plan_schemes,
    scheme_for_target,
    target_cpu_features,
)
from edgekd.targets import load_target

SAPPHIRE_RAPIDS = {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8"}
EPYC_ZEN2 = {"avx2", "fma", "sse4_2"}  # AVX2 without VNNI


def test_x86_onnxruntime_gets_u8_activations_and_s8_weights():
    scheme = choose_scheme("onnxruntime", "x86_64", SAPPHIRE_RAPIDS)
    assert (scheme.key, scheme.activations, scheme.weights, scheme.types) == ("x86", "uint8", "int8", "U8S8")
    assert not scheme.activation_symmetric and not scheme.reduce_range and scheme.quantize_bias
    assert scheme.formats == ("qdq", "qoperator")
    assert scheme.extra_options() == {"WeightSymmetric": True}


def test_x86_without_vnni_keeps_the_7_bit_weight_remedy():
    scheme = choose_scheme("onnxruntime", "x86_64", EPYC_ZEN2)
    assert scheme.types == "U8S8" and scheme.reduce_range and "VNNI" in scheme.reason
    assert choose_scheme("onnxruntime", "x86_64", {"avx_vnni"}).reduce_range is False  # AVX-VNNI alone suffices


@pytest.mark.parametrize("features, kernel", [({"asimd", "asimddp"}, "SDOT"), ({"asimd"}, "flips")])
def test_aarch64_onnxruntime_gets_s8s8_with_or_without_dot_product(features, kernel):
    scheme = choose_scheme("onnxruntime", "aarch64", features)
    assert (scheme.key, scheme.types, scheme.reduce_range, scheme.activation_symmetric) == ("arm64", "S8S8", False, False)
    assert kernel in scheme.reason


@pytest.mark.parametrize("arch, features", [("aarch64", set()), ("x86_64", EPYC_ZEN2), ("x86_64", SAPPHIRE_RAPIDS)])
def test_tensorrt_is_always_symmetric_s8_without_cpu_workarounds(arch, features):
    scheme = choose_scheme("tensorrt", arch, features)
    assert (scheme.key, scheme.types, scheme.activation_symmetric) == ("trt", "S8S8", True)
    assert not scheme.reduce_range and not scheme.quantize_bias and scheme.dedicated_qdq
    assert scheme.formats == ("qdq",) and scheme.extra_options() == TRT_QUANTIZE_OPTIONS


BUILTIN_TARGETS = sorted(p.stem for p in (Path(edgekd.__file__).parent / "builtin" / "targets").glob("*.yaml"))


@pytest.mark.parametrize("name", BUILTIN_TARGETS)
def test_every_builtin_target_gets_the_types_of_its_runtime_and_cpu(name):
    # TensorRT boards: symmetric S8 whatever the CPU; ORT on ARM: S8S8; ORT on x86: U8 activations, S8 weights
    target = load_target(name)
    scheme = scheme_for_target(target)
    if target.runtime == "tensorrt":
        assert (scheme.key, scheme.types, scheme.activation_symmetric, scheme.formats) == ("trt", "S8S8", True, ("qdq",))
    elif target.arch == "aarch64":
        assert (scheme.key, scheme.types, scheme.activation_symmetric) == ("arm64", "S8S8", False)
    else:
        assert (scheme.key, scheme.types, scheme.activations) == ("x86", "U8S8", "uint8")
    assert scheme.weights == "int8"


def test_unknown_runtime_or_arch_is_refused():
    with pytest.raises(ValueError):
        choose_scheme("tflite", "aarch64")
    with pytest.raises(ValueError):
        choose_scheme("onnxruntime", "riscv64")


def test_cpu_features_from_cpuinfo_and_from_profiles():
    assert "avx512_vnni" in host_cpu_features("processor : 0\nflags\t\t: fpu avx2 avx512_vnni\n")
    assert host_cpu_features("processor : 0\nFeatures\t: fp asimd asimddp\n") == {"fp", "asimd", "asimddp"}
    assert host_cpu_features("no flags here") == frozenset()
    if target_cpu_features(load_target("rpi4"))[1].startswith("profile"):  # an x86 host: features from the profile
        assert "asimddp" not in target_cpu_features(load_target("rpi4"))[0]  # Cortex-A72: no dot product
        assert "asimddp" in target_cpu_features(load_target("rpi5"))[0]  # Cortex-A76


def test_targets_group_into_one_file_per_scheme():
    targets = [load_target(n) for n in ("host-cpu", "rpi4", "rpi5", "jetson-orin-nano", "jetson-xavier-nx")]
    plan = plan_schemes(targets)
    assert [(s.key, [t.name for t in ts]) for s, ts in plan] == [
        ("x86", ["host-cpu"]), ("arm64", ["rpi4", "rpi5"]), ("trt", ["jetson-orin-nano", "jetson-xavier-nx"])]
    assert plan[0][0] == scheme_for_target(targets[0])  # x86: this host's features decide 7-bit weights
    arm = plan[1][0]
    assert "rpi4" in arm.reason and "rpi5" in arm.reason  # one file, each board's reason kept
    assert plan_schemes([load_target("host-cpu").model_copy(update={"precisions": ["fp32"]})]) == []
