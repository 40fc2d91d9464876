"""Build a TensorRT engine from an edgekd ONNX artifact, on the device (torch-free).

`build_engine` is the whole stage: check the request against the installed
TensorRT (`compat`), parse, add a batch optimization profile, set precision
flags, reuse the timing cache, then write a plain serialized plan (nothing
prepended) atomically, with a sidecar `<engine>.json` describing how it was
made. tensorrt and cuda-python are imported inside the functions that need
them, so this module imports with numpy alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from edgekd import __version__
from edgekd.artifacts import sha256_file, sidecar_path
from edgekd.errors import ConfigError, ModelError, RuntimeBackendError
from edgekd.trt import compat

if TYPE_CHECKING:  # pragma: no cover
    from edgekd.targets import TargetProfile

SIDECAR_FORMAT = "edgekd.trt-engine/1"


def import_tensorrt():
    try:
        import tensorrt
    except ImportError:
        raise RuntimeBackendError(
            "tensorrt is not installed, so TensorRT engines cannot be built or run here.",
            "Run this on the Jetson: JetPack ships TensorRT for its system Python (package "
            "python3-libnvinfer); use that Python, or a venv made with --system-site-packages, "
            'then pip install "edgekd[trt]".',
        ) from None
    return tensorrt


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    *,
    precision: str,
    target: "TargetProfile | None" = None,
    min_batch: int = 1,
    opt_batch: int = 1,
    max_batch: int = 1,
    workspace_mb: int = 1024,
    timing_cache: str | Path | None = None,
    dla_core: int | None = None,
    strongly_typed: bool | None = None,
) -> dict:
    """Build `engine_path` from `onnx_path`; return the sidecar dict (also written next to it)."""
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if dla_core is None and target is not None and target.tensorrt is not None:
        dla_core = target.tensorrt.dla_core  # the profile may pin a DLA core
    check_request(onnx_path, precision, min_batch, opt_batch, max_batch, workspace_mb)
    opset = onnx_opset(onnx_path)
    if target is not None:  # fail on impossible requests before touching TensorRT or the GPU
        declared = compat.plan_for_target(target, precision, dla_core=dla_core, strongly_typed=strongly_typed)
        compat.check_opset(compat.parse_version(declared.tensorrt), opset)

    trt = import_tensorrt()
    from edgekd.trt import _cuda

    gpu = _cuda.device_info()
    plan = _device_plan(trt, target, precision, gpu, dla_core, strongly_typed)
    compat.check_opset(compat.parse_version(trt.__version__), opset)

    started = time.perf_counter()
    logger = CapturingLogger.create(trt)
    builder = trt.Builder(logger)
    network, parser = _parse(trt, builder, logger, onnx_path, plan)  # parser must outlive the build
    config = _configure(trt, builder, plan, workspace_mb, dla_core)
    inputs = _add_batch_profile(builder, config, network, min_batch, opt_batch, max_batch)
    cache_path = Path(timing_cache) if timing_cache else default_timing_cache(engine_path, trt.__version__)
    cache_state = _load_timing_cache(config, cache_path)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeBackendError(
            f"TensorRT could not build an engine from {onnx_path.name}: "
            + "; ".join(logger.errors or ["see log"]),
            "Try a larger --workspace-mb, another precision, or drop --dla-core.",
        )
    engine_bytes = bytes(memoryview(serialized))
    atomic_write(cache_path, bytes(memoryview(config.get_timing_cache().serialize())))
    atomic_write(engine_path, engine_bytes)  # a plain plan: runtime.deserialize_cuda_engine reads it as is

    sidecar = {
        "format": SIDECAR_FORMAT,
        "engine": {
            "file": engine_path.name,
            "bytes": len(engine_bytes),
            "sha256": sha256_bytes(engine_bytes),
        },
        "onnx": {"file": onnx_path.name, "sha256": sha256_file(onnx_path), "opset": opset},
        "tensorrt": {"version": trt.__version__},
        "gpu": gpu,
        "target": target.name if target is not None else None,
        "precision": precision,
        "plan": plan.as_dict(),
        "inputs": inputs,
        "build_options": {
            "min_batch": min_batch,
            "opt_batch": opt_batch,
            "max_batch": max_batch,
            "workspace_mb": workspace_mb,
            "dla_core": dla_core,
            "strongly_typed": plan.strongly_typed,
            "timing_cache": {"file": str(cache_path), "state": cache_state},
        },
        "build_seconds": round(time.perf_counter() - started, 3),
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "warnings": logger.warnings[-20:],  # the last few, e.g. layers that fell back to the GPU
        "edgekd_version": __version__,
    }
    atomic_write(sidecar_path(engine_path), (json.dumps(sidecar, indent=2) + "\n").encode())
    return sidecar


def _parse(trt, builder, logger, onnx_path: Path, plan: compat.BuildPlan):
    """Parse the ONNX into a network created with the plan's flags; check its precision."""
    network = builder.create_network(_flag_bits(trt.NetworkDefinitionCreationFlag, plan.network_flags))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise RuntimeBackendError(
            f"TensorRT {trt.__version__} could not parse {onnx_path.name}:\n  "
            + "\n  ".join(parser_errors(parser)),
            "Each line names the ONNX node; re-export with a supported op or opset for this target.",
        )
    check_network_precision(plan.precision, plan.strongly_typed, **network_summary(trt, network))
    return network, parser


def _configure(trt, builder, plan: compat.BuildPlan, workspace_mb: int, dla_core: int | None):
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    for name in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    if dla_core is not None:
        _use_dla(trt, builder, config, dla_core)
    return config


def check_request(
    onnx_path: Path, precision: str, min_batch: int, opt_batch: int, max_batch: int, workspace_mb: int
):
    """Argument checks that need neither TensorRT nor a GPU."""
    if not onnx_path.is_file():
        raise ConfigError(f"ONNX file {str(onnx_path)!r} does not exist.", "Check the path to the artifact.")
    if precision not in compat.PRECISIONS:
        raise ConfigError(f"Unknown precision {precision!r}.", f"Use one of: {', '.join(compat.PRECISIONS)}.")
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise ConfigError(
            "Batch sizes must satisfy 1 <= min <= opt <= max; "
            f"got min={min_batch}, opt={opt_batch}, max={max_batch}.",
            "For a batch-1 latency engine leave all three at 1.",
        )
    if workspace_mb < 1:
        raise ConfigError(
            f"--workspace-mb must be at least 1, got {workspace_mb}.", "1024 is a safe default."
        )


def _device_plan(trt, target, precision, gpu: dict, dla_core, strongly_typed) -> compat.BuildPlan:
    """Plan from the installed TensorRT (the truth), after checking it matches the profile."""
    installed = compat.parse_version(trt.__version__)
    if target is not None and target.tensorrt is not None:
        declared = compat.parse_version(target.tensorrt.version)
        if declared[:2] != installed[:2]:
            raise ConfigError(
                f"Target {target.name!r} declares TensorRT {target.tensorrt.version}, but this device has "
                f"{trt.__version__}; the ONNX variant prepared for the profile may be wrong here.",
                "Use the profile that matches this JetPack, or set its `tensorrt.version` and re-prepare.",
            )
    family = (target.tensorrt.gpu if target is not None and target.tensorrt else None) or compat.gpu_family(
        gpu["name"]
    )
    return compat.plan_build(
        installed, precision, gpu=family, dla_core=dla_core, strongly_typed=strongly_typed
    )


def _flag_bits(enum, names) -> int:
    bits = 0
    for name in names:
        bits |= 1 << int(getattr(enum, name))
    return bits


def _use_dla(trt, builder, config, dla_core: int) -> None:
    available = builder.num_DLA_cores
    if dla_core >= available:
        raise ConfigError(
            f"DLA core {dla_core} was requested, but this device has {available} DLA core(s).",
            "Orin Nano has none; AGX Orin and Orin NX have 2 (use 0 or 1). Drop --dla-core to use the GPU.",
        )
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = dla_core


def _add_batch_profile(
    builder, config, network, min_batch: int, opt_batch: int, max_batch: int
) -> list[dict]:
    """One optimization profile over the batch dimension; returns the inputs as plain data."""
    profile = builder.create_optimization_profile()
    inputs, needs_profile = [], False
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = tuple(int(d) for d in tensor.shape)
        shapes = batch_shapes(tensor.name, shape, min_batch, opt_batch, max_batch)
        if shapes is not None:
            profile.set_shape(tensor.name, *shapes)
            needs_profile = True
        inputs.append({"name": tensor.name, "shape": list(shape), "dtype": str(tensor.dtype).split(".")[-1]})
    if needs_profile:
        config.add_optimization_profile(profile)
    return inputs


def batch_shapes(name: str, shape: tuple, min_batch: int, opt_batch: int, max_batch: int):
    """(min, opt, max) shapes for an input whose dim 0 is dynamic; None for a static input."""
    if not shape:
        return None
    if any(d < 0 for d in shape[1:]):
        raise ModelError(
            f"Input {name!r} has shape {list(shape)}: only the batch dimension may be dynamic.",
            "Re-export with fixed image size (edgekd exports dynamic batch only).",
        )
    if shape[0] >= 0:
        if (min_batch, opt_batch, max_batch) != (shape[0],) * 3:
            raise ConfigError(
                f"Input {name!r} has a fixed batch of {shape[0]}, "
                f"but batches {min_batch}/{opt_batch}/{max_batch} "
                "were requested.",
                f"Pass --min/--opt/--max-batch {shape[0]}, or re-export with a dynamic batch dimension.",
            )
        return None
    rest = tuple(shape[1:])
    return (min_batch, *rest), (opt_batch, *rest), (max_batch, *rest)


def parser_errors(parser) -> list[str]:
    """Every error the ONNX parser recorded, with the node it refers to."""
    lines = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        name = err.node_name() if hasattr(err, "node_name") else ""  # node_name/node_operator: TensorRT >= 10
        op = err.node_operator() if hasattr(err, "node_operator") else ""
        lines.append(format_parser_error(str(err.code()), err.desc(), err.node(), name, op))
    return lines or ["(the parser reported failure without an error message)"]


def format_parser_error(code: str, desc: str, node: int, node_name: str = "", node_op: str = "") -> str:
    where = f"node {node}" if node is not None and node >= 0 else "graph"
    if node_name:
        where += f" {node_name!r}"
    if node_op:
        where += f" ({node_op})"
    return f"{where}: {code.split('.')[-1]}: {desc}"


def network_summary(trt, network) -> dict:
    """How many Q/DQ layers and float16 tensors the parsed network holds."""
    qdq = half = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        qdq += layer.type == trt.LayerType.QUANTIZE or layer.type == trt.LayerType.DEQUANTIZE
        half += sum(layer.get_output(j).dtype == trt.DataType.HALF for j in range(layer.num_outputs))
    return {"qdq_layers": qdq, "half_tensors": half}


def check_network_precision(
    precision: str, strongly_typed: bool, *, qdq_layers: int, half_tensors: int
) -> None:
    """Refuse an ONNX that would silently build at a precision other than the one asked for."""
    if precision == "int8" and qdq_layers == 0:
        raise ConfigError(
            "An int8 engine needs the QDQ ONNX (explicit quantization), but this file has no Q/DQ nodes.",
            "Pass the quantized ONNX from edgekd's quantize stage.",
        )
    if precision != "int8" and qdq_layers:
        raise ConfigError(
            f"This ONNX is quantized ({qdq_layers} Q/DQ layers), but {precision} was requested.",
            "Build it with --precision int8, or pass the unquantized ONNX.",
        )
    if precision == "fp16" and strongly_typed and half_tensors == 0:
        raise ConfigError(
            "A strongly typed fp16 build needs the fp16 ONNX; this file is float32 and would build as fp32.",
            "Pass the fp16 ONNX (edgekd.onnxtools.fp16), or build weakly typed on TensorRT 8.x/10.x.",
        )
    if precision == "fp32" and half_tensors:
        raise ConfigError(
            "This ONNX holds float16 tensors, but fp32 was requested.",
            "Pass the float32 ONNX, or build with --precision fp16.",
        )


def _load_timing_cache(config, path: Path) -> str:
    """Attach the timing cache at `path` (reused if compatible, else started fresh)."""
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    if config.set_timing_cache(cache, ignore_mismatch=False):
        return "reused" if data else "new"
    # Written by another TensorRT version or GPU: start a fresh one rather than fail.
    config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    return "replaced (mismatched device or version)"


def default_timing_cache(engine_path: Path, trt_version: str) -> Path:
    """One cache per TensorRT version, shared by the engines of a directory."""
    return engine_path.parent / f"tensorrt-{trt_version}.timing-cache"


def atomic_write(path: Path, data: bytes) -> None:
    """Write to a temporary name in the same directory, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def onnx_opset(path: str | Path) -> int:
    """The default-domain opset of an ONNX file, read from the protobuf without the onnx package.

    ModelProto field 8 is `opset_import` (OperatorSetIdProto: 1 = domain, 2 = version);
    every other top-level field, the graph included, is skipped unread.
    """
    data = Path(path).read_bytes()
    opsets = {}
    for field, value in _fields(data, str(path)):
        if field == 8:
            entry = dict(_fields(value, str(path)))
            domain = entry.get(1, b"").decode(errors="replace")
            opsets[domain] = int(entry.get(2, 0))
    for domain in ("", "ai.onnx"):
        if domain in opsets:
            return opsets[domain]
    raise ModelError(
        f"{Path(path).name} declares no default-domain opset.", "Re-export the model with edgekd."
    )


def _fields(buf: bytes, where: str):
    """Yield (field number, value) for each top-level protobuf field of `buf`."""
    pos, end = 0, len(buf)
    try:
        while pos < end:
            key, pos = _varint(buf, pos)
            field, wire = key >> 3, key & 7
            if wire == 0:
                value, pos = _varint(buf, pos)
            elif wire == 1:
                value, pos = buf[pos : pos + 8], pos + 8
            elif wire == 2:
                size, pos = _varint(buf, pos)
                value, pos = buf[pos : pos + size], pos + size
            elif wire == 5:
                value, pos = buf[pos : pos + 4], pos + 4
            else:
                raise ValueError(f"wire type {wire}")
            if pos > end:
                raise ValueError("truncated")
            yield field, value
    except (ValueError, IndexError) as exc:
        raise ModelError(
            f"{Path(where).name} is not a readable ONNX file ({exc}).", "Re-export or re-copy it."
        ) from None


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


class CapturingLogger:
    """A tensorrt.ILogger that prints warnings and keeps errors for the exception message."""

    @staticmethod
    def create(trt, min_severity: str = "WARNING"):
        severity = trt.ILogger.Severity
        threshold = getattr(severity, min_severity)

        class _Logger(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)
                self.errors: list[str] = []
                self.warnings: list[str] = []

            def log(self, level, msg):
                if level in (severity.INTERNAL_ERROR, severity.ERROR):
                    self.errors.append(str(msg))
                elif level == severity.WARNING:
                    self.warnings.append(str(msg))
                if int(level) <= int(threshold):  # lower value = more severe
                    print(f"[TensorRT] {str(level).split('.')[-1]}: {msg}", file=sys.stderr)

        return _Logger()
