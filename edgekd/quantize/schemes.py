"""Which INT8 types a file gets, decided by the runtime and CPU it is for (torch-free, pure).

    choose_scheme("onnxruntime", "x86_64", host_cpu_features())  -> Int8Scheme("x86", U8 activations, ...)
    plan_schemes(targets)  -> [(Int8Scheme, [target, ...]), ...]   one INT8 file per scheme

What each runtime runs fast, read from ONNX Runtime 1.32's sources and docs (docs/arm.md
cites them) and measured here (benchmarks/results/int8_speed.md):

- x86-64 ONNX Runtime: U8 activations, S8 weights (U8S8), the scheme of ORT's x86 kernels
  (VPMADDUBSW / VNNI VPDPBUSD multiply u8 x s8). ORT keeps int8 QDQ only on ARM
  (`QDQIsInt8Allowed()`); on x86 its QDQS8ToU8Transformer rewrites S8 activations to U8
  only where a QuantizeLinear has one consumer, so residual branches stay unfused float
  islands: S8 activations ran 3x slower than U8 here (224-px ResNet-18 student).
  Without VNNI, VPMADDUBSW's int16 pair sums saturate with 8-bit weights: 7-bit weights
  (reduce_range), ORT's documented remedy, only there.
- aarch64 ONNX Runtime: S8 activations, S8 weights (S8S8). With dot-product instructions
  (asimddp: Cortex-A76, Raspberry Pi 5) S8S8 runs the SDOT kernels and U8S8 the UDOT ones
  (weights flipped to u8 once, when packed): the same cost. Without them (Cortex-A72,
  Raspberry Pi 4) both run MlasGemmX8S8DispatchNeon, but U8S8 first flips every activation
  byte to s8 at run time; S8S8 skips that. ORT fuses int8 QDQ natively on ARM and its
  quantization docs name S8S8 QDQ the first choice.
- TensorRT: symmetric S8 activations and weights (zero point 0), per-channel weights on
  axis 0, per-tensor activations, float biases, one Q/DQ pair per consumer: the only
  explicit-quantization form TensorRT 8.5-11 fuses (DESIGN.md). No CPU workaround ever.
"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:  # pragma: no cover
    from edgekd.targets import TargetProfile

VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
DOT_PRODUCT_FLAGS = frozenset({"asimddp"})  # Linux's name for the ARMv8.2 SDOT/UDOT instructions
X86 = ("x86_64", "amd64")

# aarch64 cores edgekd's profiles name (`cpu:`) -> the /proc/cpuinfo features that decide
# the INT8 kernels. A76 and A78AE have the ARMv8.2 dot product; A72 does not; Carmel
# (Xavier) does, but Jetsons run TensorRT.
ARM_CORE_FEATURES = {
    "cortex-a53": frozenset({"asimd"}),
    "cortex-a72": frozenset({"asimd"}),
    "cortex-a55": frozenset({"asimd", "asimddp"}),
    "cortex-a76": frozenset({"asimd", "asimddp"}),
    "cortex-a78ae": frozenset({"asimd", "asimddp"}),
    "carmel": frozenset({"asimd", "asimddp"}),
}


@dataclass(frozen=True)
class Int8Scheme:
    """The INT8 types and options of one file, and why."""

    key: str  # file suffix: student.int8.<key>.onnx
    runtime: str  # onnxruntime | tensorrt
    arch: str  # x86_64 | aarch64 (tensorrt: the GPU's, not relevant to the types)
    activations: str  # "uint8" | "int8"
    activation_symmetric: bool  # zero point 0 (TensorRT); otherwise from the calibrated range
    weights: str  # always "int8", symmetric (zero point 0), per-channel on the output axis by default
    reduce_range: bool  # 7-bit weights (x86 without VNNI)
    quantize_bias: bool  # int32 bias DequantizeLinear (ORT fuses it into QLinearConv; TensorRT refuses it)
    dedicated_qdq: bool  # one Q/DQ pair per consumer (TensorRT)
    formats: tuple[str, ...]  # forms the runtime runs: ("qdq", "qoperator") or ("qdq",)
    reason: str = field(compare=False)  # schemes with the same types are one scheme, whatever the wording

    @property
    def trt_ready(self) -> bool:
        return self.runtime == "tensorrt"

    @property
    def types(self) -> str:
        """e.g. 'U8S8' (activations, weights)."""
        return ("U8" if self.activations == "uint8" else "S8") + "S8"

    def extra_options(self) -> dict:
        """onnxruntime.quantization extra_options for this scheme (names as in ORT's quantize.py)."""
        if self.trt_ready:
            from edgekd.onnxtools.trt_rules import TRT_QUANTIZE_OPTIONS

            return dict(TRT_QUANTIZE_OPTIONS)
        return {"WeightSymmetric": True}  # zero point 0: ORT's symmetric-weight conv kernels (ConvSym)

    def as_dict(self) -> dict:
        return {**asdict(self), "types": self.types, "formats": list(self.formats)}


def choose_scheme(runtime: str, arch: str, cpu_features: Iterable[str] = ()) -> Int8Scheme:
    """The INT8 scheme for a file run by `runtime` on an `arch` CPU with `cpu_features`
    (/proc/cpuinfo flag names). Pure: the same arguments always give the same scheme."""
    arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(arch.lower(), arch.lower())
    chooser = CHOOSERS.get((runtime, None if runtime == "tensorrt" else arch))
    if chooser is None:
        raise ValueError(f"no INT8 scheme for runtime {runtime!r} on {arch!r}")
    return chooser(arch, frozenset(cpu_features))


def _tensorrt(arch: str, features: frozenset[str]) -> Int8Scheme:
    return Int8Scheme(
        "trt", "tensorrt", arch, "int8", True, "int8", False, False, True, ("qdq",),
        "TensorRT explicit quantization: symmetric S8 activations and weights, per-channel weights on "
        "axis 0, float biases, one Q/DQ pair per consumer (the form TensorRT 8.5-11 fuses); no CPU workaround")


def _onnxruntime_x86(arch: str, features: frozenset[str]) -> Int8Scheme:
    vnni = bool(VNNI_FLAGS & features)
    why = ("ONNX Runtime's x86 int8 kernels multiply u8 activations by s8 weights; S8 activations "
           "leave multi-consumer tensors unfused on x86")
    if not vnni:
        why += ("; no VNNI on this CPU: 7-bit weights (reduce_range), because VPMADDUBSW's int16 sums "
                "saturate with 8-bit weights")
    return Int8Scheme("x86", "onnxruntime", arch, "uint8", False, "int8", not vnni, True, False,
                      ("qdq", "qoperator"), why)


def _onnxruntime_aarch64(arch: str, features: frozenset[str]) -> Int8Scheme:
    if DOT_PRODUCT_FLAGS & features:
        why = ("aarch64 with dot product (asimddp): S8S8 runs ONNX Runtime's SDOT kernels, as fast as "
               "U8S8's UDOT ones; ORT fuses int8 QDQ natively on ARM and documents S8S8 QDQ as the first choice")
    else:
        why = ("aarch64 without dot product: U8S8 and S8S8 share the NEON X8S8 kernel, but U8S8 flips every "
               "activation byte to s8 at run time first; S8S8 does not")
    return Int8Scheme("arm64", "onnxruntime", arch, "int8", False, "int8", False, True, False,
                      ("qdq", "qoperator"), why)


# (runtime, CPU architecture; None: any) -> the function that decides the scheme
CHOOSERS = {
    ("tensorrt", None): _tensorrt,
    ("onnxruntime", "x86_64"): _onnxruntime_x86,
    ("onnxruntime", "aarch64"): _onnxruntime_aarch64,
}


# ---------------------------------------------------------------------------- CPU features


def host_arch() -> str:
    machine = platform.machine().lower()
    return "x86_64" if machine in X86 else "aarch64" if machine in ("aarch64", "arm64") else machine


def host_cpu_features(cpuinfo: str | None = None) -> frozenset[str]:
    """This machine's CPU flags (x86 `flags`, ARM `Features` in /proc/cpuinfo); empty where unknown."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return frozenset()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def target_cpu_features(target: "TargetProfile") -> tuple[frozenset[str], str]:
    """(CPU features, where they came from) for a target profile.

    A target of this host's architecture is taken to be this host (the `host-cpu` profile):
    its /proc/cpuinfo flags. Other aarch64 targets: the features of their `cpu:` core
    (ARM_CORE_FEATURES); an unknown core counts as having no dot product, the slower case.
    """
    if target.arch == host_arch():
        return host_cpu_features(), "this host's /proc/cpuinfo"
    core = (target.cpu or "").lower()
    if core in ARM_CORE_FEATURES:
        return ARM_CORE_FEATURES[core], f"profile cpu {core}"
    return frozenset(), f"profile cpu {target.cpu or '(none)'}: features unknown, none assumed"


def scheme_for_target(target: "TargetProfile") -> Int8Scheme:
    features, _ = target_cpu_features(target)
    return choose_scheme(target.runtime, target.arch, features)


def plan_schemes(targets: Iterable["TargetProfile"]) -> list[tuple[Int8Scheme, list["TargetProfile"]]]:
    """Targets that take INT8 grouped by scheme, in the order first seen: one file per group."""
    groups: dict[Int8Scheme, list] = {}
    reasons: dict[Int8Scheme, dict[str, list[str]]] = {}
    for target in targets:
        if "int8" in target.precisions:
            scheme = scheme_for_target(target)
            groups.setdefault(scheme, []).append(target)
            reasons.setdefault(scheme, {}).setdefault(scheme.reason, []).append(target.name)
    return [(_merged(scheme, reasons[scheme]), members) for scheme, members in groups.items()]


def _merged(scheme: Int8Scheme, reasons: dict[str, list[str]]) -> Int8Scheme:
    """One scheme serving targets with different CPUs (Pi 4 and Pi 5): every target's reason."""
    if len(reasons) == 1:
        return scheme
    return replace(scheme, reason="; ".join(f"{', '.join(names)}: {why}" for why, names in reasons.items()))


def timed_here(scheme: Int8Scheme) -> bool:
    """Whether this machine runs `scheme`'s files the way its targets do, so timing them here means something."""
    return scheme.runtime == "onnxruntime" and scheme.arch == host_arch()
