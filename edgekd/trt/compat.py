"""What each TensorRT version accepts, as pure functions (no tensorrt import).

The workstation uses these to decide which ONNX variant to prepare for a
target; the device uses the same functions, fed with the installed version,
to configure the builder. Every fact here is from NVIDIA's documentation and
the TensorRT Python bindings of 8.5/8.6, 10.3 and 11.4 (see DESIGN.md):

- 8.x needs ``NetworkDefinitionCreationFlag.EXPLICIT_BATCH``; 10 ignores it;
  11 removed the member. ``STRONGLY_TYPED`` exists from 10.0 and is always on
  (and ignored as a flag) in 11, so on 11 we pass no flag at all.
- ``BuilderFlag.FP16/INT8`` drive precision in weakly typed networks (8.x,
  10.x); they were deprecated in 10.12 and removed in 11, where precision comes
  from the tensor types in the ONNX (fp16 ONNX, Q/DQ nodes).
- Implicit INT8 calibration was deprecated in 10.1 and removed in 11; edgekd
  only builds explicitly quantized (QDQ) ONNX files, on every version.
- ONNX parser opset ceiling: 8.5/8.6 -> 17, 10.x -> 20, 11 -> 25.
- DLA: Orin and Xavier only (Thor has none), FP16/INT8 only, GPU fallback on.
  TensorRT 10.7 was the last 10.x release with DLA; 11.0-11.4.0 have none on
  Jetson; 11.4.1+ has it on AGX Orin (JetPack 7.2.2+), strongly typed only.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from edgekd.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from edgekd.targets import TargetProfile

Version = tuple[int, int, int]

PRECISIONS = ("fp32", "fp16", "int8")
DLA_GPUS = ("orin", "xavier")  # Jetson/DRIVE families with NVDLA cores; Thor has none
SUPPORTED = "TensorRT 8.5 through 11.x"

# ONNX variants the workstation prepares; the device build takes exactly one.
VARIANT_FP32 = "fp32"  # the exported float32 ONNX
VARIANT_FP16 = "fp16"  # float16 weights/activations, float32 inputs/outputs (onnxtools.fp16)
VARIANT_QDQ = "qdq"  # explicit int8 quantization (QuantizeLinear/DequantizeLinear pairs)


def parse_version(version: str | tuple | list) -> Version:
    """'10.3' / '10.3.0.30' / (8, 5) -> (major, minor, patch)."""
    if isinstance(version, (tuple, list)):
        parts = [int(p) for p in version[:3]]
    else:
        match = re.match(r"^\s*(\d+)(?:\.(\d+))?(?:\.(\d+))?", str(version))
        if match is None:
            raise ConfigError(
                f"Cannot read a TensorRT version from {version!r}.",
                "Write it as major.minor, e.g. '10.3' (the `tensorrt.version` of the target profile).",
            )
        parts = [int(p) for p in match.groups() if p is not None]
    while len(parts) < 3:
        parts.append(0)
    return parts[0], parts[1], parts[2]


def check_supported(version: Version) -> None:
    if version < (8, 5, 0) or version[0] > 11:
        raise ConfigError(
            f"TensorRT {_show(version)} is not supported; edgekd supports {SUPPORTED}.",
            "Use JetPack 5.1.x (TensorRT 8.5), 6.1/6.2 (10.3) or 7.2.2+ (11).",
        )


def max_onnx_opset(version: Version) -> int:
    """Highest ONNX opset the version's ONNX parser takes."""
    check_supported(version)
    return {8: 17, 10: 20, 11: 25}[version[0]]


def check_opset(version: Version, opset: int) -> None:
    ceiling = max_onnx_opset(version)
    if opset > ceiling:
        raise ConfigError(
            f"The ONNX file uses opset {opset}, but the ONNX parser of TensorRT {_show(version)} "
            f"takes opset {ceiling} at most.",
            f"Re-export on the workstation for this target (its profile's max_opset, <= {ceiling}).",
        )


def resolve_strongly_typed(version: Version, requested: bool | None, *, dla: bool = False) -> bool:
    """Whether the network is strongly typed: required on 11, optional on 10, absent on 8."""
    check_supported(version)
    major = version[0]
    if major == 8:
        if requested:
            raise ConfigError(
                f"Strongly typed networks need TensorRT 10 or newer; this is {_show(version)}.",
                "Build weakly typed (drop --strongly-typed): the fp32 ONNX plus the FP16 builder flag.",
            )
        return False
    if major >= 11:
        if requested is False:
            raise ConfigError(
                f"TensorRT {_show(version)} removed weakly typed networks (BuilderFlag.FP16/INT8).",
                "Build strongly typed: the fp16 ONNX for fp16, the QDQ ONNX for int8.",
            )
        return True
    if dla and requested:
        raise ConfigError(
            "Strongly typed DLA builds need TensorRT 11.4.1 or newer (JetPack 7.2.2+).",
            "On TensorRT 10.x build DLA engines weakly typed (drop --strongly-typed).",
        )
    return bool(requested)


def network_flags(version: Version, strongly_typed: bool) -> tuple[str, ...]:
    """Names of the NetworkDefinitionCreationFlag members to OR into create_network()."""
    check_supported(version)
    if version[0] == 8:
        return ("EXPLICIT_BATCH",)
    if version[0] == 10:
        return ("STRONGLY_TYPED",) if strongly_typed else ()
    return ()  # 11: EXPLICIT_BATCH is gone and strong typing is implied


def builder_flags(
    version: Version, precision: str, strongly_typed: bool, *, dla: bool = False
) -> tuple[str, ...]:
    """Names of the BuilderFlag members to set for `precision`."""
    _check_precision(precision)
    check_supported(version)
    flags: list[str] = []
    if not strongly_typed:  # weak typing: precision is a builder permission, not a tensor type
        flags += {"fp32": [], "fp16": ["FP16"], "int8": ["INT8"]}[precision]
    if dla:
        flags.append("GPU_FALLBACK")  # layers the DLA cannot run go to the GPU instead of failing
    return tuple(flags)


def onnx_variant(precision: str, strongly_typed: bool) -> str:
    """Which ONNX the workstation must ship for this build."""
    _check_precision(precision)
    if precision == "int8":
        return VARIANT_QDQ  # explicit quantization is the one int8 path on every version
    if precision == "fp16" and strongly_typed:
        return VARIANT_FP16  # precision lives in the tensor types
    return VARIANT_FP32  # fp32, or fp16 via BuilderFlag.FP16 on a weakly typed network


def dla_supported_by(version: Version) -> bool:
    """Whether this TensorRT release can build DLA engines on Jetson at all."""
    if version[0] == 8:
        return True
    if version[0] == 10:
        return version[:2] <= (10, 7)  # 10.7 was the last 10.x release with DLA
    return version >= (11, 4, 1)  # restored for AGX Orin on JetPack 7.2.2+


def check_dla(version: Version, precision: str, gpu: str | None, dla_core: int | None) -> None:
    """Raise if running on DLA core `dla_core` cannot work; no-op when dla_core is None."""
    if dla_core is None:
        return
    if dla_core < 0:
        raise ConfigError(f"--dla-core must be 0 or more, got {dla_core}.", "Use 0 or 1.")
    family = (gpu or "").lower()
    if family not in DLA_GPUS:
        raise ConfigError(
            f"DLA was requested, but the GPU {gpu or '(unknown)'!r} has no DLA cores.",
            "DLA exists on Jetson Orin (AGX, NX) and Xavier, not on Thor or discrete GPUs; drop --dla-core.",
        )
    if precision == "fp32":
        raise ConfigError(
            "The DLA runs FP16 or INT8 only, and fp32 was requested.",
            "Use --precision fp16 or int8 with --dla-core, or drop --dla-core for fp32 on the GPU.",
        )
    if not dla_supported_by(version):
        raise ConfigError(
            f"TensorRT {_show(version)} cannot build DLA engines on Jetson.",
            "DLA needs TensorRT 8.5-10.7 (JetPack 5.1/6.x) or 11.4.1+ on AGX Orin; drop --dla-core.",
        )


def check_quantization(version: Version, quantization: str) -> None:
    """edgekd quantizes explicitly (QDQ ONNX); implicit calibration is refused with the reason."""
    if quantization == "explicit":
        return
    if quantization != "implicit":
        raise ConfigError(f"Unknown quantization mode {quantization!r}.", "Use 'explicit'.")
    if version[0] >= 11:
        raise ConfigError(
            "Implicit INT8 calibration (IInt8Calibrator) was removed in TensorRT 11; "
            f"this is {_show(version)}.",
            "Build the QDQ ONNX from edgekd's quantize stage (explicit quantization) instead.",
        )
    raise ConfigError(
        "edgekd builds INT8 engines by explicit quantization only (implicit calibration is "
        "deprecated since TensorRT 10.1 and removed in 11).",
        "Build the QDQ ONNX from edgekd's quantize stage instead.",
    )


@dataclass(frozen=True)
class BuildPlan:
    """Everything version-dependent about one engine build, as plain data."""

    tensorrt: str
    precision: str
    strongly_typed: bool
    network_flags: tuple[str, ...]
    builder_flags: tuple[str, ...]
    onnx_variant: str
    max_opset: int
    dla_core: int | None

    def as_dict(self) -> dict:
        data = asdict(self)
        data["network_flags"] = list(self.network_flags)
        data["builder_flags"] = list(self.builder_flags)
        return data


def plan_build(
    version: str | tuple,
    precision: str,
    *,
    gpu: str | None = None,
    dla_core: int | None = None,
    strongly_typed: bool | None = None,
    quantization: str = "explicit",
) -> BuildPlan:
    """Decide flags and ONNX variant for one build, or raise ConfigError if impossible."""
    v = parse_version(version)
    check_supported(v)
    _check_precision(precision)
    check_quantization(v, quantization)
    check_dla(v, precision, gpu, dla_core)
    dla = dla_core is not None
    typed = resolve_strongly_typed(v, strongly_typed, dla=dla)
    return BuildPlan(
        tensorrt=_show(v),
        precision=precision,
        strongly_typed=typed,
        network_flags=network_flags(v, typed),
        builder_flags=builder_flags(v, precision, typed, dla=dla),
        onnx_variant=onnx_variant(precision, typed),
        max_opset=max_onnx_opset(v),
        dla_core=dla_core,
    )


def plan_for_target(
    target: "TargetProfile",
    precision: str,
    *,
    dla_core: int | None = None,
    strongly_typed: bool | None = None,
) -> BuildPlan:
    """The plan for a target profile (workstation side: which ONNX to prepare)."""
    if target.runtime != "tensorrt" or target.tensorrt is None:
        raise ConfigError(
            f"Target {target.name!r} runs {target.runtime}, not TensorRT.",
            "Pick a Jetson target (`edgekd targets` lists them).",
        )
    if precision not in target.precisions:
        raise ConfigError(
            f"Target {target.name!r} does not list precision {precision!r}.",
            f"Use one of: {', '.join(target.precisions)}.",
        )
    core = dla_core if dla_core is not None else target.tensorrt.dla_core
    plan = plan_build(
        target.tensorrt.version,
        precision,
        gpu=target.tensorrt.gpu,
        dla_core=core,
        strongly_typed=strongly_typed,
    )
    if target.max_opset > plan.max_opset:
        raise ConfigError(
            f"Target {target.name!r} allows opset {target.max_opset}, but TensorRT {plan.tensorrt} "
            f"parses opset {plan.max_opset} at most.",
            f"Set `max_opset: {plan.max_opset}` in the profile.",
        )
    return plan


def gpu_family(device_name: str | None) -> str | None:
    """'Orin' / 'NVIDIA Jetson AGX Xavier' / 'NVIDIA Thor' -> 'orin' / 'xavier' / 'thor'; else None."""
    name = (device_name or "").lower()
    for family in ("orin", "xavier", "thor"):
        if family in name:
            return family
    return None


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ConfigError(f"Unknown precision {precision!r}.", f"Use one of: {', '.join(PRECISIONS)}.")


def _show(version: Version) -> str:
    major, minor, patch = version
    return f"{major}.{minor}" + (f".{patch}" if patch else "")
