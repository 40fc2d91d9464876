"""Post-training INT8 quantization with ONNX Runtime, typed for the file's target (torch-free).

    quantize_int8(fp32_onnx, out_path, calib_x, method=..., per_channel=..., scheme=choose_scheme(...))

Steps: `quant_pre_process` (shape inference + ORT basic fusions, which quantization
needs to place Q/DQ well; unnamed nodes then get names so they can be kept float),
calibration streamed one batch at a time, then `quantize_static` with the scheme's
types (edgekd.quantize.schemes: U8S8 for x86 ONNX Runtime, S8S8 for aarch64, symmetric
S8 for TensorRT) in QDQ or QOperator form.

onnx / onnxruntime are the `[ort]` extra and are imported inside the functions.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgekd.artifacts import sha256_file, sidecar_path, versions, write_json_atomic
from edgekd.errors import ConfigError, DataError, ModelError
from edgekd.onnxtools.trt_rules import TRT_QUANTIZE_OPTIONS, check_qdq_for_tensorrt
from edgekd.quantize.schemes import Int8Scheme, choose_scheme, host_arch, host_cpu_features
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

# TensorRT explicit quantization's extra_options (zero point 0, float bias, one Q/DQ pair per
# consumer): one table, in edgekd.onnxtools.trt_rules, which also checks the result; see DESIGN.md.
TRT_OPTIONS = TRT_QUANTIZE_OPTIONS

CHECK_CHUNK = 256  # samples checked for NaN/inf at a time
SATURATION_NOTE = ("weights quantized to 7 bits (reduce_range): this x86 CPU has no VNNI, and ONNX Runtime's "
                   "u8 x s8 kernels saturate with 8-bit weights here")


def host_scheme(trt_ready: bool = False, reduce_range: bool | None = None) -> Int8Scheme:
    """The scheme for this machine's ONNX Runtime (or TensorRT), with reduce_range forced when given."""
    scheme = choose_scheme("tensorrt" if trt_ready else "onnxruntime", host_arch(), host_cpu_features())
    if reduce_range is not None and not trt_ready and reduce_range != scheme.reduce_range:
        scheme = replace(scheme, reduce_range=bool(reduce_range))
    return scheme


@dataclass(frozen=True)
class QuantSettings:
    method: str = "minmax"
    per_channel: bool = True
    exclude_nodes: tuple[str, ...] = ()
    scheme: Int8Scheme = field(default_factory=host_scheme)
    quant_format: str = "qdq"  # "qdq" | "qoperator" (ORT CPU runs both; TensorRT only QDQ)

    @property
    def trt_ready(self) -> bool:
        return self.scheme.trt_ready

    @property
    def reduce_range(self) -> bool:
        return self.scheme.reduce_range

    def extra_options(self) -> dict[str, Any]:
        return self.scheme.extra_options()

    def describe(self) -> dict[str, Any]:
        """What decides the file's contents, as plain data (sidecar, metadata, attempts)."""
        return {"method": self.method, "per_channel": self.per_channel, "format": self.quant_format,
                "activations": self.scheme.activations, "weights": self.scheme.weights,
                "types": self.scheme.types, "activation_symmetric": self.scheme.activation_symmetric,
                "reduce_range": self.reduce_range, "trt_ready": self.trt_ready, "scheme": self.scheme.key}


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
    quant_format: str = "qdq"
    scheme: dict[str, Any] = field(default_factory=dict)  # Int8Scheme.as_dict(): types and why
    notes: list[str] = field(default_factory=list)


class BatchReader:
    """A CalibrationDataReader that slices one batch at a time out of `source` (ORT takes any
    object with get_next). `source` is any (N, C, H, W) array-like that slices lazily, e.g. an
    np.memmap: only the batch being run is ever read into memory."""

    def __init__(self, input_name: str, source, batch_size: int, start: int = 0, end: int | None = None):
        self.input_name, self.source, self.batch_size = input_name, source, batch_size
        self.set_range(start, len(source) if end is None else end)

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._pos >= self._end:
            return None
        batch = np.ascontiguousarray(self.source[self._pos : min(self._pos + self.batch_size, self._end)],
                                     dtype=np.float32)
        if not np.isfinite(batch).all():
            raise DataError(f"Calibration samples {self._pos}..{self._pos + len(batch) - 1} contain NaN or inf.",
                            "Check the data pipeline's normalisation.")
        self._pos += self.batch_size
        return {self.input_name: batch}

    def set_range(self, start_index: int, end_index: int) -> None:
        self._pos, self._end = start_index, min(end_index, len(self.source))

    def rewind(self) -> None:
        self.set_range(0, len(self.source))

    def __iter__(self):
        return self

    def __next__(self):
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item

    def __len__(self) -> int:
        return -(-(self._end - self._pos) // self.batch_size)


ArrayReader = BatchReader  # the name the QDQ debugging helpers use


def npz_array(path: str | Path, key: str) -> np.ndarray:
    """Array `key` of an .npz file, memory-mapped when stored uncompressed (np.savez), else read.

    A memory map lets calibration read one batch at a time instead of the whole set
    (2,000 samples at 3x224x224 are 1.2 GB as float32).
    """
    import struct
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist.", "Run the data stage first (edgekd compress makes it).")
    with zipfile.ZipFile(path) as archive:
        try:
            info = archive.getinfo(f"{key}.npy")
        except KeyError:
            raise DataError(f"{path.name} has no array {key!r}.", "Re-run the data stage.") from None
        if info.compress_type != zipfile.ZIP_STORED:
            with np.load(path) as npz:
                return npz[key]
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)  # zip local file header; name and extra field lengths at bytes 26-29
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        f.seek(info.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        offset = f.tell()
    return np.memmap(path, dtype=dtype, mode="r", shape=shape, order="F" if fortran else "C", offset=offset)


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
    if settings.quant_format not in settings.scheme.formats:
        raise ConfigError(
            f"{settings.scheme.runtime} does not run the {settings.quant_format!r} INT8 form.",
            f"Use one of: {', '.join(settings.scheme.formats)}.",
        )


def check_samples(x, what: str, finite: bool = True):
    """(N, C, H, W) samples, non-empty, returned as given (an np.memmap stays one).

    `finite` checks for NaN/inf a chunk at a time; calibration leaves it to BatchReader,
    which reads one batch at a time anyway.
    """
    if not hasattr(x, "shape"):
        x = np.asarray(x, dtype=np.float32)
    if len(x.shape) != 4 or x.shape[0] == 0:
        raise DataError(f"{what} has shape {tuple(x.shape)}.", f"Pass {what} as a non-empty (N, C, H, W) float32 array.")
    for start in range(0, len(x) if finite else 0, CHECK_CHUNK):
        if not np.isfinite(x[start : start + CHECK_CHUNK]).all():
            raise DataError(f"{what} contains NaN or inf.", "Check the data pipeline's normalisation.")
    return x


def preprocess(fp32_onnx: str | Path, out: str | Path) -> Path:
    """ORT's quantization pre-processing: symbolic + ONNX shape inference, basic fusions."""
    import_ort()
    from onnxruntime.quantization import quant_pre_process

    source = Path(fp32_onnx)
    if not source.is_file():
        raise ModelError(f"FP32 ONNX file {str(source)!r} does not exist.", "Run the export stage first.")
    quant_pre_process(str(source), str(out))
    name_unnamed_nodes(out)
    return Path(out)


def name_unnamed_nodes(path: str | Path) -> int:
    """Name every unnamed node `<op>:<first output>` (unique: outputs are); returns how many.

    quant_pre_process inlines functions (HardSwish -> HardSigmoid + Mul) into unnamed nodes;
    nodes_to_exclude and the profiler address nodes by name.
    """
    import onnx

    proto = onnx.load(str(path))
    unnamed = [node for node in proto.graph.node if not node.name]
    for node in unnamed:
        node.name = f"{node.op_type}:{node.output[0]}"
    if unnamed:
        onnx.save_model(proto, str(path))
    return len(unnamed)


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


def calibrate(pre_onnx: Path, calib_x, method: str, batch_size: int, cache: Path, progress=None) -> dict:
    """Activation ranges for `method`, saved where quantize_static reads them (calibration_cache_path).

    Streamed: the calibrator sees one batch per collect_data call, so it holds one batch's
    activations at a time (ORT's calibrators keep every batch of one call in memory: a
    2,000-image 224-px histogram calibration reached 9 GB). MinMax merges ranges across
    calls; the histogram calibrators merge histograms. `calib_x` may be a memmap.
    The ranges depend on the method only, so the gate calibrates once per method and reuses
    them for every type, form, granularity and float-node choice. `progress(n)` after each batch.
    """
    import_ort()
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator, save_tensors_data
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    name, fixed = model_input(pre_onnx)
    batch = fixed or batch_size
    # a fixed batch > 1 cannot take a short last batch; a dynamic one takes every sample (N < batch_size too)
    usable = len(calib_x) - len(calib_x) % batch if fixed else len(calib_x)
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
        for start in range(0, usable, batch):
            calibrator.collect_data(BatchReader(name, calib_x, batch, start, start + batch))
            if progress is not None:
                progress(min(batch, usable - start))
        save_tensors_data(calibrator.compute_data(), cache)
    log.debug("calibration output:\n%s", printed.getvalue())
    return {"calibration_samples": usable, "calibration_batch_size": batch}


def quantize_file(pre_onnx: Path, dest: Path, settings: QuantSettings, cache: Path) -> None:
    """quantize_static of a pre-processed model into `dest`: the scheme's types and form, ranges from `cache`."""
    import_ort()
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    quantize_static(
        str(pre_onnx),
        str(dest),
        None,  # ranges come from the cache written by `calibrate`
        calibration_cache_path=str(cache),
        quant_format=QuantFormat.QDQ if settings.quant_format == "qdq" else QuantFormat.QOperator,
        activation_type=types[settings.scheme.activations],
        weight_type=types[settings.scheme.weights],
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
    props["edgekd.quantization"] = json.dumps(settings.describe())
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
        extra_options=settings.extra_options(), qdq_nodes=qdq_count(qdq_tmp), sha256=sha256_file(qdq_tmp),
        seconds=round(seconds, 3), quant_format=settings.quant_format, scheme=settings.scheme.as_dict(), notes=notes,
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
    scheme: Int8Scheme | None = None,
    quant_format: str = "qdq",
) -> QuantResult:
    """Quantize `fp32_onnx` to an int8 model at `out_path`, calibrated on `calib_x` (N, C, H, W).

    method: "minmax" | "entropy" | "percentile" (options in METHODS).
    per_channel: per-output-channel weight scales (activations are always per-tensor).
    scheme: the types for the file's target (edgekd.quantize.schemes.choose_scheme); default:
        this machine's ONNX Runtime, or TensorRT's form with `trt_ready` (needs per_channel).
    exclude_nodes: node names (of the pre-processed graph) kept in float.
    batch_size: calibration batch, unless the model's batch dimension is fixed.
    reduce_range: 7-bit weights, overriding the default scheme's choice (only without `scheme`).
    quant_format: "qdq" or "qoperator" (ONNX Runtime CPU only).
    `out_path` only appears once the result passed the ONNX checker and loads in ONNX
    Runtime; its sidecar `<out_path>.json` records settings, types, sample count and hashes.
    """
    scheme = scheme or host_scheme(bool(trt_ready), reduce_range)
    settings = QuantSettings(method, bool(per_channel), tuple(exclude_nodes), scheme, quant_format)
    validate_settings(settings)
    calib_x = check_samples(calib_x, "calib_x", finite=False)
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
