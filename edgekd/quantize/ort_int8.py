"""Post-training INT8 quantization with ONNX Runtime: QDQ format, signed int8 (torch-free).

    quantize_int8(fp32_onnx, out_path, calib_x, method=..., per_channel=..., trt_ready=...)

Steps: `quant_pre_process` (shape inference + ORT basic fusions, which quantization
needs to place Q/DQ well), then `quantize_static` in QDQ format with int8 weights
and activations, calibrated on `calib_x`. The QDQ file runs on ONNX Runtime CPU and,
with `trt_ready=True`, is TensorRT's explicit-quantization form (see TRT_OPTIONS).

onnx / onnxruntime are the `[ort]` extra and are imported inside the functions.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekd.artifacts import sha256_file, sidecar_path, versions, write_json_atomic
from edgekd.onnxtools.trt_rules import check_qdq_for_tensorrt
from edgekd.errors import ConfigError, DataError, ModelError
from edgekd.rundir import scratch
from edgekd.runtime.ort import import_ort, make_session

log = logging.getLogger(__name__)

# edgekd name -> (onnxruntime CalibrationMethod member, calibrator options).
# Calibration runs here rather than inside quantize_static because quantize_static cannot
# pass histogram sizes: its entropy calibrator keeps num_bins = num_quantized_bins = 128,
# which leaves one candidate threshold, the full range, i.e. exactly minmax (seen with
# onnxruntime 1.32). 512 bins let the KL search clip down to a quarter of the range.
# NVIDIA's 2048 moved thresholds by up to ~20% but took 7x as long (27 s vs 3.8 s for a
# 36-tensor ResNet-10 on this CPU): the search is quadratic in the bin count.
METHODS = {
    "minmax": ("MinMax", {}),
    "entropy": ("Entropy", {"num_bins": 512, "num_quantized_bins": 128}),
    "percentile": ("Percentile", {"percentile": 99.999}),  # ORT's default: clip the top 0.001%
}

# TensorRT explicit quantization (option names as in onnxruntime/quantization/quantize.py):
# zero point 0 everywhere (TRT's int8 is symmetric), bias kept float (TRT quantizes and fuses
# bias itself; no int32 bias DequantizeLinear), one Q/DQ pair per consumer (so each DQ can be
# fused into its own consumer). `edgekd.onnxtools.trt_rules.check_qdq_for_tensorrt` checks the result; see DESIGN.md.
TRT_OPTIONS = {
    "ActivationSymmetric": True,
    "WeightSymmetric": True,
    "QuantizeBias": False,
    "DedicatedQDQPair": True,
}


# x86 CPUs without VNNI multiply u8 x s8 with VPMADDUBSW, whose int16 pair sums saturate when
# weights use all 8 bits; ONNX Runtime's CPU kernels then return wrong INT8 results. Seen with
# onnxruntime 1.32 on an AVX2-only AMD EPYC: a 0.945-accurate CNN fell to 0.378 in INT8 (with
# graph optimizations off, or reduce_range, 0.942). ORT's documented remedy is reduce_range:
# 7-bit weights, which cannot saturate. ARM and VNNI CPUs have exact int8 dot products.
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
SATURATION_NOTE = ("weights quantized to 7 bits (reduce_range): this x86 CPU has no VNNI, and ONNX Runtime's "
                   "u8 x s8 kernels saturate with 8-bit weights here")


def u8s8_saturates_here() -> bool:
    """True on an x86 CPU without VNNI (see VNNI_FLAGS); False on ARM or where unknown."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return False
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), None)
    return flags is not None and not VNNI_FLAGS & set(flags)


@dataclass(frozen=True)
class QuantSettings:
    method: str = "minmax"
    per_channel: bool = True
    trt_ready: bool = False
    exclude_nodes: tuple[str, ...] = ()
    reduce_range: bool = False  # 7-bit weights; see u8s8_saturates_here

    def extra_options(self) -> dict[str, Any]:
        return dict(TRT_OPTIONS) if self.trt_ready else {}


@dataclass
class QuantResult:
    path: str
    sidecar: str
    source: str  # the FP32 ONNX it came from (left untouched)
    method: str
    per_channel: bool
    trt_ready: bool
    excluded_nodes: list[str]
    reduce_range: bool
    calibration_samples: int
    calibration_batch_size: int
    extra_options: dict[str, Any]
    qdq_nodes: int  # QuantizeLinear + DequantizeLinear count
    sha256: str
    seconds: float
    notes: list[str] = field(default_factory=list)


class ArrayReader:
    """A CalibrationDataReader over an in-memory array (ORT accepts any object with get_next)."""

    def __init__(self, input_name: str, x: np.ndarray, batch_size: int):
        self.input_name = input_name
        self.x = np.ascontiguousarray(x, dtype=np.float32)
        self.batch_size = batch_size
        self.set_range(0, len(self.x))

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._pos >= self._end:
            return None
        batch = self.x[self._pos : min(self._pos + self.batch_size, self._end)]
        self._pos += self.batch_size
        return {self.input_name: batch}

    def set_range(self, start_index: int, end_index: int) -> None:
        self._pos, self._end = start_index, min(end_index, len(self.x))

    def rewind(self) -> None:
        self.set_range(0, len(self.x))

    def __iter__(self):
        return self

    def __next__(self):
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch_size)


# ---------------------------------------------------------------------------
# Building blocks (the gate reuses them)


def validate_settings(settings: QuantSettings) -> None:
    if settings.method not in METHODS:
        raise ConfigError(
            f"Unknown calibration method {settings.method!r}.", f"Use one of: {', '.join(METHODS)}."
        )
    if settings.trt_ready and not settings.per_channel:
        raise ConfigError(
            "trt_ready INT8 needs per-channel weights (TensorRT's explicit-quantization form).",
            "Set per_channel: true, or trt_ready: false for ONNX Runtime-only targets.",
        )


def check_samples(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 4 or len(x) == 0:
        raise DataError(f"{what} has shape {x.shape}.", f"Pass {what} as a non-empty (N, C, H, W) float32 array.")
    if not np.isfinite(x).all():
        raise DataError(f"{what} contains NaN or inf.", "Check the data pipeline's normalisation.")
    return np.ascontiguousarray(x, dtype=np.float32)


def preprocess(fp32_onnx: str | Path, out: str | Path) -> Path:
    """ORT's quantization pre-processing: symbolic + ONNX shape inference, basic fusions."""
    import_ort()
    from onnxruntime.quantization import quant_pre_process

    source = Path(fp32_onnx)
    if not source.is_file():
        raise ModelError(f"FP32 ONNX file {str(source)!r} does not exist.", "Run the export stage first.")
    quant_pre_process(str(source), str(out))
    return Path(out)


def model_input(path: str | Path) -> tuple[str, int | None]:
    """(input name, fixed batch size or None when the batch dimension is dynamic)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    initializers = {t.name for t in proto.graph.initializer}
    graph_input = next(i for i in proto.graph.input if i.name not in initializers)
    first = graph_input.type.tensor_type.shape.dim[0]
    return graph_input.name, (first.dim_value or None) if first.HasField("dim_value") else None


def node_names(path: str | Path) -> list[str]:
    import onnx

    return [n.name for n in onnx.load(str(path), load_external_data=False).graph.node]


def check_excludes(pre_onnx: Path, exclude: tuple[str, ...]) -> None:
    known = set(node_names(pre_onnx))
    missing = [n for n in exclude if n not in known]
    if missing:
        import difflib

        close = {n: difflib.get_close_matches(n, known, n=1) for n in missing}
        hints = ", ".join(f"{n!r} -> {c[0]!r}" for n, c in close.items() if c)
        raise ConfigError(
            f"Nodes to keep in float are not in the (pre-processed) graph: {missing}.",
            (f"Did you mean {hints}? " if hints else "")
            + "Names refer to the graph after quant_pre_process; the gate's sidecar lists them.",
        )


def calibrate(pre_onnx: Path, calib_x: np.ndarray, method: str, batch_size: int, cache: Path) -> dict:
    """Activation ranges for `method`, saved where quantize_static reads them (calibration_cache_path).

    The ranges depend on the method only, so the gate calibrates once per method and reuses
    them for per-channel toggles and float-node exclusions.
    """
    import_ort()
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator, save_tensors_data
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    name, fixed = model_input(pre_onnx)
    batch = fixed or batch_size
    usable = len(calib_x) - len(calib_x) % batch  # a fixed batch > 1 cannot take a short last batch
    if usable == 0:
        raise DataError(
            f"{len(calib_x)} calibration samples, but the model takes batches of exactly {batch}.",
            "Pass more calibration samples, or export with dynamic_batch.",
        )
    member, options = METHODS[method]
    with contextlib.redirect_stdout(io.StringIO()) as printed:  # the histogram calibrators print()
        calibrator = create_calibrator(
            Path(pre_onnx),
            sorted(set(QLinearOpsRegistry) | set(QDQRegistry)),  # what quantize_static calibrates
            augmented_model_path=str(cache.with_suffix(".augmented.onnx")),
            calibrate_method=getattr(CalibrationMethod, member),
            providers=["CPUExecutionProvider"],
            extra_options=dict(options),
        )
        calibrator.collect_data(ArrayReader(name, calib_x[:usable], batch))
        save_tensors_data(calibrator.compute_data(), cache)
    log.debug("calibration output:\n%s", printed.getvalue())
    return {"calibration_samples": usable, "calibration_batch_size": batch}


def quantize_file(pre_onnx: Path, dest: Path, settings: QuantSettings, cache: Path) -> None:
    """quantize_static (QDQ, int8) of a pre-processed model into `dest`, with ranges from `cache`."""
    import_ort()
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    quantize_static(
        str(pre_onnx),
        str(dest),
        None,  # ranges come from the cache written by `calibrate`
        calibration_cache_path=str(cache),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        per_channel=settings.per_channel,
        reduce_range=settings.reduce_range,
        calibrate_method=getattr(CalibrationMethod, METHODS[settings.method][0]),
        nodes_to_exclude=list(settings.exclude_nodes),
        extra_options=settings.extra_options(),
    )


def dedicate_dequantize(path: str | Path) -> int:
    """Give every consumer of a shared DequantizeLinear its own Q/DQ pair; returns pairs made.

    ORT's DedicatedQDQPair still shares a DQ between a quantized and a float consumer (e.g. the
    Div and Mul of an erf-GELU at opset 18), and a weight's DQ between the nodes that read that
    weight; TensorRT wants each pair fused into one consumer. A copied DQ of an activation gets
    its own copy of the QuantizeLinear too, so no Q feeds two DQs. Copies read the same tensor,
    scale and zero point, so results are unchanged.
    """
    import onnx

    proto = onnx.load(str(path))
    graph = proto.graph
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    producers = {out: node for node in graph.node for out in node.output}
    copies = []
    for node in list(graph.node):
        if node.op_type != "DequantizeLinear":
            continue
        quantize = producers.get(node.input[0])
        for index, reader in enumerate(readers.get(node.output[0], [])[1:], start=1):
            new = _copy_node(quantize, index) if quantize is not None and quantize.op_type == "QuantizeLinear" else []
            dq = _copy_node(node, index, first_input=new[0].output[0] if new else None)
            reader.input[:] = [dq[0].output[0] if name == node.output[0] else name for name in reader.input]
            copies.append((node, new + dq))
    for original, nodes in copies:  # keep topological order: the copies right after the original DQ
        at = list(graph.node).index(original) + 1
        for offset, new_node in enumerate(nodes):
            graph.node.insert(at + offset, new_node)
    if copies:
        onnx.save_model(proto, str(path))
    return len(copies)


def _copy_node(node, index: int, first_input: str | None = None) -> list:
    import onnx

    inputs = [first_input or node.input[0], *node.input[1:]]
    copy = onnx.helper.make_node(node.op_type, inputs, [f"{node.output[0]}_dedicated{index}"],
                                 name=f"{node.name}_dedicated{index}")
    copy.attribute.extend(node.attribute)
    return [copy]


def qdq_count(path: str | Path) -> int:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in graph.node)


def copy_metadata(fp32_onnx: Path, qdq_onnx: Path, settings: QuantSettings) -> None:
    """Carry the FP32 file's metadata_props (preprocessing, classes...) over; add the precision."""
    import onnx

    source = onnx.load(str(fp32_onnx), load_external_data=False)
    proto = onnx.load(str(qdq_onnx))
    props = {p.key: p.value for p in source.metadata_props}
    props["edgekd.precision"] = json.dumps("int8")
    props["edgekd.quantization"] = json.dumps(
        {"method": settings.method, "per_channel": settings.per_channel, "trt_ready": settings.trt_ready,
         "reduce_range": settings.reduce_range}
    )
    del proto.metadata_props[:]
    for key, value in sorted(props.items()):
        proto.metadata_props.add(key=key, value=value)
    onnx.save_model(proto, str(qdq_onnx))


def publish(
    qdq_tmp: Path, out_path: Path, fp32_onnx: Path, settings: QuantSettings, facts: dict, seconds: float,
    sidecar_extra: dict | None = None,
) -> QuantResult:
    """Check a quantized temp file (ONNX checker, ORT loads it, TRT rules), then rename it to out_path."""
    import onnx

    notes = [SATURATION_NOTE] if settings.reduce_range else []
    if settings.trt_ready and (copies := dedicate_dequantize(qdq_tmp)):
        notes.append(f"{copies} shared activation DequantizeLinear nodes duplicated, one per consumer")
    copy_metadata(fp32_onnx, qdq_tmp, settings)
    try:
        onnx.checker.check_model(str(qdq_tmp), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ModelError(
            f"The INT8 model failed the ONNX checker: {str(exc).splitlines()[0]}",
            "Keep the failing node in float (exclude_nodes) or ship FP32; report it with the FP32 file.",
        ) from None
    make_session(qdq_tmp)  # raises RuntimeBackendError if ONNX Runtime refuses it
    if settings.trt_ready and (problems := check_qdq_for_tensorrt(qdq_tmp)):
        raise ModelError(
            "The INT8 model breaks TensorRT's explicit-quantization rules: " + "; ".join(problems[:5]),
            "This is an edgekd bug with this onnxruntime version; report it with the sidecar JSON.",
        )
    result = QuantResult(
        path=str(out_path), sidecar=str(sidecar_path(out_path)), source=str(fp32_onnx),
        method=settings.method, per_channel=settings.per_channel, trt_ready=settings.trt_ready,
        excluded_nodes=list(settings.exclude_nodes), reduce_range=settings.reduce_range,
        extra_options=settings.extra_options(), qdq_nodes=qdq_count(qdq_tmp), sha256=sha256_file(qdq_tmp), seconds=round(seconds, 3), notes=notes,
        **facts,
    )
    os.replace(qdq_tmp, out_path)
    sidecar = {**asdict(result), "source_sha256": sha256_file(fp32_onnx), "versions": versions(), **(sidecar_extra or {})}
    write_json_atomic(sidecar_path(out_path), sidecar)
    return result


# ---------------------------------------------------------------------------
# The stage


def quantize_int8(
    fp32_onnx: str | Path,
    out_path: str | Path,
    calib_x: np.ndarray,
    *,
    method: str = "minmax",
    per_channel: bool = True,
    trt_ready: bool = False,
    exclude_nodes: tuple[str, ...] | list[str] = (),
    batch_size: int = 16,
    reduce_range: bool | None = None,
) -> QuantResult:
    """Quantize `fp32_onnx` to a QDQ int8 model at `out_path`, calibrated on `calib_x` (N, C, H, W).

    method: "minmax" | "entropy" | "percentile" (options in METHODS).
    per_channel: per-output-channel weight scales (activations are always per-tensor).
    trt_ready: TensorRT's explicit-quantization form (TRT_OPTIONS); needs per_channel.
    exclude_nodes: node names (of the pre-processed graph) kept in float.
    batch_size: calibration batch, unless the model's batch dimension is fixed.
    reduce_range: 7-bit weights; None = where this CPU's int8 kernels would saturate (u8s8_saturates_here).
    `out_path` only appears once the result passed the ONNX checker and loads in ONNX
    Runtime; its sidecar `<out_path>.json` records settings, sample count and hashes.
    """
    reduce_range = u8s8_saturates_here() if reduce_range is None else reduce_range
    settings = QuantSettings(method, bool(per_channel), bool(trt_ready), tuple(exclude_nodes), bool(reduce_range))
    validate_settings(settings)
    calib_x = check_samples(calib_x, "calib_x")
    fp32_onnx, out_path = Path(fp32_onnx), Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    # under out_path's folder (edgekd.rundir scratch): the final os.replace is an atomic rename
    with scratch(out_path.parent, "quant-") as tmp:
        pre = preprocess(fp32_onnx, tmp / "pre.onnx")
        check_excludes(pre, settings.exclude_nodes)
        cache = tmp / f"{settings.method}.calib.json"
        facts = calibrate(pre, calib_x, settings.method, batch_size, cache)
        qdq = tmp / "int8.onnx"
        quantize_file(pre, qdq, settings, cache)
        return publish(qdq, out_path, fp32_onnx, settings, facts, time.perf_counter() - start)
