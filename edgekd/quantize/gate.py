"""INT8 accuracy gate with automatic fallbacks (torch-free).

    quantize_with_gate(fp32_onnx, out_path, calib_x, val_x, val_y,
                       reference_accuracy=..., max_accuracy_drop=..., method=..., per_channel=...)

Attempts, in order, stopping at the first whose accuracy drop
(reference_accuracy - int8 accuracy) is <= max_accuracy_drop:

1. the configured method and weight granularity;
2. the other calibration methods (minmax, entropy, percentile);
3. each method again with per-channel toggled (not for trt_ready: TensorRT wants
   per-channel weights);
4. from the most accurate attempt so far, keep the most quantization-sensitive
   nodes in float, 1, 2, 4, ... groups of them (each set with every calibration
   method), until it passes or `max_excluded_nodes` is reached.

On x86 CPUs without VNNI every attempt uses 7-bit weights (reduce_range; see
edgekd.quantize.ort_int8.u8s8_saturates_here): ONNX Runtime's int8 kernels there
saturate with 8-bit weights, and the accuracy measured would be wrong.

Sensitivity comes from ONNX Runtime's QDQ debugging tools (qdq_loss_debug): every
activation's signal-to-quantization-noise ratio (SQNR, dB) before vs after its own
Q/DQ pair, and every weight's float vs dequantized SQNR. Activation SQNR is
averaged over channels (axis 1) rather than taken over the whole tensor: one
outlier channel dominates a whole-tensor norm and hides that the other channels
were rounded to zero, which is exactly the failure that costs accuracy.

Every attempt records its accuracy and a quick batch-1 latency (INT8 is not always
faster: on tiny models Q/DQ overhead wins). If no attempt passes, GateError lists
them all and nothing is written to out_path; the FP32 model is never touched.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

from edgekd.errors import DataError, GateError
from edgekd.quantize.ort_int8 import (
    METHODS,
    ArrayReader,
    QuantResult,
    QuantSettings,
    check_samples,
    model_input,
    preprocess,
    publish,
    quantize_file,
    validate_settings,
    calibrate,
    u8s8_saturates_here,
)
from edgekd.rundir import scratch
from edgekd.runtime.ort import accuracy, make_session, predict

if TYPE_CHECKING:  # pragma: no cover
    from edgekd.targets import TargetProfile

SQNR_CAP_DB = 60.0  # beyond this the quantization noise is irrelevant; also stands for "exact"
DEBUG_SAMPLES = 16  # activations of every tensor are held in memory for this many samples
LATENCY_RUNS = 30
MAX_EXCLUDED_FRACTION = 0.25  # keeping more than a quarter of the graph in float defeats INT8
MIN_EXCLUDED_LIMIT = 4  # ...but a 10-node student may need a conv, its activation and its reader


@dataclass
class Attempt:
    method: str
    per_channel: bool
    excluded_nodes: list[str]
    accuracy: float
    accuracy_drop: float
    latency_ms_p50: float
    passed: bool
    seconds: float = 0.0
    reduce_range: bool = False

    def describe(self) -> str:
        verdict = "passed" if self.passed else "failed"
        granularity = ("per-channel" if self.per_channel else "per-tensor") + (", 7-bit weights" if self.reduce_range else "")
        return (
            f"{self.method}/{granularity}, {len(self.excluded_nodes)} float nodes: accuracy {self.accuracy:.4f} "
            f"(drop {self.accuracy_drop:+.4f}), {self.latency_ms_p50:.3f} ms p50 -> {verdict}"
        )


@dataclass
class GateResult:
    path: str
    sidecar: str
    reference_accuracy: float
    max_accuracy_drop: float
    attempts: list[Attempt]
    chosen: Attempt
    quant: QuantResult
    sensitivity: list[dict] = field(default_factory=list)  # ranked groups, when step 4 ran


def quantize_with_gate(
    fp32_onnx: str | Path,
    out_path: str | Path,
    calib_x: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    *,
    reference_accuracy: float,
    max_accuracy_drop: float,
    method: str = "minmax",
    per_channel: bool = True,
    trt_ready: bool = False,
    target: "TargetProfile | None" = None,
    batch_size: int = 16,
    max_excluded_nodes: int | None = None,
    fallbacks: bool = True,
    reduce_range: bool | None = None,
) -> GateResult:
    """Quantize `fp32_onnx` to `out_path`, trying fallbacks until the accuracy drop is within budget.

    reference_accuracy: what INT8 accuracy is compared to (e.g. the FP32 teacher's on val_x).
    max_accuracy_drop: allowed reference_accuracy - int8_accuracy (absolute, e.g. 0.02).
    target: the session settings (threads, graph optimization) for accuracy and latency.
    max_excluded_nodes: cap on nodes kept in float (default: a quarter of the graph's nodes, >= 4).
    fallbacks: False tries the configured setting only (the user pinned it).
    reduce_range: 7-bit weights in every attempt; None = where this CPU's int8 kernels would
    saturate (u8s8_saturates_here), since accuracy measured through saturating kernels is wrong.
    Raises GateError listing every attempt when none passes; out_path is then not written.
    """
    reduce_range = u8s8_saturates_here() if reduce_range is None else reduce_range
    first = QuantSettings(method, bool(per_channel), bool(trt_ready), reduce_range=bool(reduce_range))
    validate_settings(first)
    calib_x = check_samples(calib_x, "calib_x")
    val_x, val_y = check_samples(val_x, "val_x"), _labels(val_y, len(val_x))
    fp32_onnx, out_path = Path(fp32_onnx), Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    search = _Search(fp32_onnx, calib_x, val_x, val_y, reference_accuracy, max_accuracy_drop, target, batch_size)
    with scratch(out_path.parent, "gate-") as tmp:  # edgekd.rundir: where a re-run finds a killed search's files
        search.start(tmp)
        for settings in search_order(first) if fallbacks else [first]:
            if search.attempt(settings).passed:
                return search.finish(out_path)
        limit = max_excluded_nodes if max_excluded_nodes is not None else search.default_exclusion_limit()
        for settings in search.exclusion_steps(limit) if fallbacks else []:
            if search.attempt(settings).passed:
                return search.finish(out_path)
    raise GateError(
        f"No INT8 variant of {fp32_onnx.name} stays within the accuracy budget (reference "
        f"{reference_accuracy:.4f}, max drop {max_accuracy_drop:g}); tried:\n  "
        + "\n  ".join(a.describe() for a in search.attempts),
        "Ship FP32 for this target (the FP32 model is unchanged), calibrate on more representative "
        "samples, allow a larger `quantize.max_int8_drop`, or raise `max_excluded_nodes`.",
        details=[asdict(a) for a in search.attempts],
    )


def search_order(first: QuantSettings) -> list[QuantSettings]:
    """Steps 1-3: configured, other methods, then every method with per-channel toggled."""
    methods = [first.method, *(m for m in METHODS if m != first.method)]
    order = [replace(first, method=m) for m in methods]
    if not first.trt_ready:
        order += [replace(first, method=m, per_channel=not first.per_channel) for m in methods]
    return order


def _labels(val_y: np.ndarray, n: int) -> np.ndarray:
    val_y = np.asarray(val_y)
    if val_y.shape != (n,) or not np.issubdtype(val_y.dtype, np.integer):
        raise DataError(f"val_y has shape {val_y.shape} and dtype {val_y.dtype}.", f"Pass {n} integer class labels.")
    return val_y


class _Search:
    """State shared by the attempts: the pre-processed model, the files and the log."""

    def __init__(self, fp32_onnx, calib_x, val_x, val_y, reference, max_drop, target, batch_size):
        self.fp32_onnx, self.calib_x, self.val_x, self.val_y = fp32_onnx, calib_x, val_x, val_y
        self.reference, self.max_drop, self.target, self.batch_size = reference, max_drop, target, batch_size
        self.attempts: list[Attempt] = []
        self.files: list[tuple[Path, QuantSettings, dict]] = []
        self.sensitivity: list[dict] = []
        self.calibrated: dict[str, dict] = {}  # method -> calibration facts; ranges cached in tmp

    def start(self, tmp: Path) -> None:
        self.tmp = tmp
        self.pre = preprocess(self.fp32_onnx, tmp / "pre.onnx")

    def attempt(self, settings: QuantSettings) -> Attempt:
        start = time.perf_counter()
        dest = self.tmp / f"attempt{len(self.attempts)}.onnx"
        cache = self.tmp / f"{settings.method}.calib.json"
        if settings.method not in self.calibrated:
            self.calibrated[settings.method] = calibrate(self.pre, self.calib_x, settings.method, self.batch_size, cache)
        facts = self.calibrated[settings.method]
        quantize_file(self.pre, dest, settings, cache)
        session = make_session(dest, target=self.target)
        acc = accuracy(predict(session, self.val_x, self.batch_size), self.val_y)
        drop = self.reference - acc
        result = Attempt(
            settings.method, settings.per_channel, list(settings.exclude_nodes), round(acc, 6),
            round(drop, 6), latency_p50_ms(session, self.val_x[:1]), drop <= self.max_drop,
            round(time.perf_counter() - start, 3), settings.reduce_range,
        )
        self.attempts.append(result)
        self.files.append((dest, settings, facts))
        return result

    def finish(self, out_path: Path) -> GateResult:
        chosen = self.attempts[-1]
        dest, settings, facts = self.files[-1]
        gate = {
            "reference_accuracy": self.reference,
            "max_accuracy_drop": self.max_drop,
            "attempts": [asdict(a) for a in self.attempts],
            "sensitivity": self.sensitivity,
        }
        quant = publish(dest, out_path, self.fp32_onnx, settings, facts, chosen.seconds, {"gate": gate})
        return GateResult(quant.path, quant.sidecar, self.reference, self.max_drop, self.attempts, chosen,
                          quant, self.sensitivity)

    def default_exclusion_limit(self) -> int:
        import onnx

        nodes = len(onnx.load(str(self.pre), load_external_data=False).graph.node)
        return max(MIN_EXCLUDED_LIMIT, int(nodes * MAX_EXCLUDED_FRACTION))

    def exclusion_steps(self, limit: int) -> Iterator[QuantSettings]:
        """Step 4: the best attempt's settings with the 1, 2, 4, ... most sensitive groups in float,
        each set with the best attempt's calibration method first, then the others.

        Every method again, because the best attempt is chosen while the sensitive nodes still
        wreck accuracy (all attempts may sit near chance level): which calibration suits the
        rest of the graph only shows once those nodes are float. Ranges are cached per method.
        """
        best = max(range(len(self.attempts)), key=lambda i: self.attempts[i].accuracy)
        qdq, settings, _ = self.files[best]
        self.sensitivity = rank_sensitive_nodes(self.pre, qdq, self.calib_x[:DEBUG_SAMPLES], self.tmp)
        methods = [settings.method, *(m for m in METHODS if m != settings.method)]
        previous: tuple[str, ...] = ()
        for count in _doubling(len(self.sensitivity)):
            nodes = _union(group["nodes"] for group in self.sensitivity[:count])
            if len(nodes) > limit:
                return
            if nodes != previous:
                previous = nodes
                yield from (replace(settings, method=m, exclude_nodes=nodes) for m in methods)


def _doubling(n: int) -> list[int]:
    """1, 2, 4, ... below n, then n: few attempts, and the last one tries every group."""
    counts = [1 << k for k in range(max(n - 1, 0).bit_length()) if (1 << k) < n]
    return counts + [n] if n else []


def _union(groups) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for nodes in groups:
        for name in nodes:
            seen.setdefault(name, None)
    return tuple(seen)


def latency_p50_ms(session, x1: np.ndarray, runs: int = LATENCY_RUNS) -> float:
    """Median batch-1 latency over a few runs after warm-up: a quick ranking, not the bench stage."""
    feed = {session.get_inputs()[0].name: np.ascontiguousarray(x1[:1], dtype=np.float32)}
    for _ in range(3):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1e3, 4)


# ---------------------------------------------------------------------------
# Sensitivity, with onnxruntime.quantization.qdq_loss_debug


def rank_sensitive_nodes(pre_onnx: Path, qdq_onnx: Path, x: np.ndarray, tmp: Path) -> list[dict]:
    """Groups of nodes to keep in float, worst SQNR first: [{"tensor", "kind", "sqnr_db", "nodes"}].

    A tensor stays float only if no node quantizes it or an alias of it: its group is every
    node that produces or reads it, followed through ops that pass quantization parameters
    along (Relu, MaxPool, Reshape, ...: ORT fuses or shares their Q/DQ).
    """
    from onnxruntime.quantization import qdq_loss_debug as debug

    graph = _Graph(pre_onnx)
    groups = [
        {"tensor": tensor, "kind": "activation", "sqnr_db": sqnr, "nodes": graph.cluster(tensor)}
        for tensor, sqnr in activation_sqnr(pre_onnx, qdq_onnx, x, tmp).items()
    ]
    weight_errors = debug.compute_weight_error(debug.create_weight_matching(str(pre_onnx), str(qdq_onnx)))
    for tensor, sqnr in weight_errors.items():
        groups.append({"tensor": tensor, "kind": "weight", "sqnr_db": _finite(sqnr), "nodes": graph.readers(tensor)})
    groups = [g for g in groups if g["nodes"] and g["sqnr_db"] < SQNR_CAP_DB]
    return sorted(groups, key=lambda g: g["sqnr_db"])


# ops whose output shares its input's quantization (ORT removes Relu/Clip after a quantized
# producer and propagates scales through layout ops and MaxPool)
_PASS_THROUGH = {"Relu", "Clip", "MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity"}


class _Graph:
    def __init__(self, path: Path):
        import onnx

        graph = onnx.load(str(path), load_external_data=False).graph
        self.initializers = {t.name for t in graph.initializer}
        self.nodes = {node.name: node for node in graph.node}
        self.producer = {out: node.name for node in graph.node for out in node.output}
        self.consumers: dict[str, list[str]] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node.name)

    def readers(self, tensor: str) -> list[str]:
        return list(self.consumers.get(tensor, []))

    def cluster(self, tensor: str) -> list[str]:
        """Nodes that produce or read `tensor` or its pass-through aliases, in graph order."""
        seen_tensors, found, stack = {tensor}, set(), [tensor]
        while stack:
            current = stack.pop()
            neighbours = [self.producer[current]] if current in self.producer else []
            for name in neighbours + self.consumers.get(current, []):
                found.add(name)
                node = self.nodes[name]
                if node.op_type not in _PASS_THROUGH:
                    continue
                for alias in (node.input[0], *node.output):
                    if alias and alias not in seen_tensors and alias not in self.initializers:
                        seen_tensors.add(alias)
                        stack.append(alias)
        return [name for name in self.nodes if name in found]


def activation_sqnr(pre_onnx: Path, qdq_onnx: Path, x: np.ndarray, tmp: Path) -> dict[str, float]:
    """Per quantized activation: SQNR (dB, averaged over channels) of its Q/DQ applied to float values.

    The float model's activations (collected with qdq_loss_debug) go through each tensor's
    own scale and zero point from the QDQ model, so an upstream error does not make every
    later tensor look bad, as it would when comparing inside the QDQ model.
    """
    from onnxruntime.quantization import qdq_loss_debug as debug

    name, fixed = model_input(pre_onnx)
    augmented = tmp / "float_debug.onnx"
    debug.modify_model_output_intermediate_tensors(str(pre_onnx), str(augmented))
    activations = debug.collect_activations(str(augmented), ArrayReader(name, x, fixed or len(x)))
    shapes = _tensor_shapes(pre_onnx)
    result = {}
    for tensor, (scale, zero_point) in activation_qparams(qdq_onnx).items():
        if tensor not in activations:
            continue
        reference = [_unflatten(a, shapes.get(tensor)) for a in activations[tensor]]
        result[tensor] = channel_sqnr(reference, [fake_quant(a, scale, zero_point) for a in reference])
    return result


def activation_qparams(qdq_onnx: Path) -> dict[str, tuple[float, int]]:
    """Tensor -> (scale, zero point) of the per-tensor int8 QuantizeLinear that reads it."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(qdq_onnx), load_external_data=False).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    params = {}
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in inits or node.input[1] not in inits:
            continue
        scale = inits[node.input[1]]
        zero_point = inits.get(node.input[2], np.zeros(1, np.int8)) if len(node.input) > 2 else np.zeros(1, np.int8)
        if scale.size == 1 and zero_point.dtype == np.int8:
            params[node.input[0]] = (float(scale.reshape(())), int(zero_point.reshape(())))
    return params


def fake_quant(x: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """ONNX QuantizeLinear + DequantizeLinear to int8 (round half to even, saturate)."""
    q = np.clip(np.rint(x / scale) + zero_point, -128, 127)
    return ((q - zero_point) * scale).astype(np.float32)


def channel_sqnr(reference: Sequence[np.ndarray], noisy: Sequence[np.ndarray]) -> float:
    """Mean over channels (axis 1) of 20*log10(|x| / |x - q(x)|), capped at SQNR_CAP_DB.

    All-zero channels (dead ReLUs, quantized exactly) carry no signal and are skipped.
    """
    ref = np.concatenate([np.asarray(a, dtype=np.float64) for a in reference])
    out = np.concatenate([np.asarray(a, dtype=np.float64) for a in noisy])
    if ref.shape != out.shape:
        return SQNR_CAP_DB
    if ref.ndim >= 2:
        ref, out = np.moveaxis(ref, 1, 0), np.moveaxis(out, 1, 0)
    ref, out = ref.reshape(len(ref) if ref.ndim >= 2 else 1, -1), out.reshape(len(out) if out.ndim >= 2 else 1, -1)
    signal = np.linalg.norm(ref, axis=1)
    noise = np.linalg.norm(ref - out, axis=1)
    live = signal > 0
    if not live.any():
        return SQNR_CAP_DB
    with np.errstate(divide="ignore"):
        db = 20 * np.log10(signal[live] / noise[live])
    return float(np.minimum(db, SQNR_CAP_DB).mean())


def _finite(value: float) -> float:
    return SQNR_CAP_DB if math.isinf(value) or math.isnan(value) else min(float(value), SQNR_CAP_DB)


def _tensor_shapes(path: Path) -> dict[str, list[int | None]]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    shapes = {}
    for info in [*graph.value_info, *graph.output, *graph.input]:
        dims = [d.dim_value if d.HasField("dim_value") else None for d in info.type.tensor_type.shape.dim]
        shapes[info.name] = dims
    return shapes


def _unflatten(array: np.ndarray, shape: list[int | None] | None) -> np.ndarray:
    """collect_activations flattens every tensor to 1-D; restore (batch, *shape[1:]) when known."""
    if not shape or len(shape) < 2 or any(d is None for d in shape[1:]):
        return array
    per_sample = int(np.prod(shape[1:]))
    if per_sample == 0 or array.size % per_sample:
        return array
    return array.reshape(-1, *shape[1:])
