"""INT8 gate: accuracy first, then the fastest file within the bound (torch-free).

    quantize_with_gate(fp32_onnx, out_path, calib_x, val_x, val_y, reference_accuracy=...,
                       max_accuracy_drop=..., scheme=choose_scheme(...), method=..., per_channel=...)

Accuracy phase, in order, stopping at the first attempt whose accuracy drop
(reference_accuracy - int8 accuracy) is <= max_accuracy_drop:

1. the configured method and weight granularity;
2. the other calibration methods (minmax, entropy, percentile);
3. each method again with per-channel toggled (not for TensorRT: it wants per-channel);
4. from the most accurate attempt so far, keep the most quantization-sensitive nodes in
   float, 1, 2, 4, ... groups of them (each set with every calibration method), until it
   passes or `max_excluded_nodes` is reached.

Speed phase, only where this machine runs the file as its targets do (x86 ONNX Runtime
files on an x86 host; edgekd.quantize.schemes.timed_here), from the passing setting:

5. the QOperator form (QLinearConv...), where the runtime runs both;
6. ONNX Runtime's profiler on FP32 and on the INT8 attempt, per unit (a Conv and the
   activation chain it fuses; edgekd.quantize.profile): the units whose INT8 kernels,
   with the float islands and Q/DQ boundaries they cause, take longer than FP32 kept float
   (recorded with the units that take the most INT8 time and the time per op type: what
   bounds the speed-up where INT8 wins, and any float kernel left between quantized ones);
7. the contiguous run of units whose INT8 saving is largest, the rest float (one int8
   region, no float islands between quantized nodes).

Every passing attempt is then timed at batch 1, interleaved with the FP32 model, and the
fastest is kept (attempts within TIE_MARGIN of it count as as fast: the one with fewest float
nodes wins); each attempt records why it lost (accuracy, or how much slower). Where
timing here means nothing (TensorRT, ARM files on x86) the first passing attempt is kept.
The types (U8S8 / S8S8 / symmetric S8) come from the scheme; 7-bit weights only in x86
files made for CPUs without VNNI.

Sensitivity comes from ONNX Runtime's QDQ debugging tools (qdq_loss_debug): every
activation's signal-to-quantization-noise ratio (SQNR, dB) before vs after its own
Q/DQ pair, and every weight's float vs dequantized SQNR. Activation SQNR is
averaged over channels (axis 1) rather than taken over the whole tensor: one
outlier channel dominates a whole-tensor norm and hides that the other channels
were rounded to zero, which is exactly the failure that costs accuracy.

If no attempt passes, GateError lists them all and nothing is written to out_path;
the FP32 model is never touched.
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
    BatchReader,
    QuantResult,
    QuantSettings,
    calibrate,
    check_samples,
    host_scheme,
    model_input,
    preprocess,
    publish,
    quantize_file,
    validate_settings,
)
from edgekd.quantize.schemes import Int8Scheme, timed_here
from edgekd.rundir import scratch
from edgekd.ui import progress_of
from edgekd.runtime.ort import accuracy, make_session, predict

if TYPE_CHECKING:  # pragma: no cover
    from edgekd.targets import TargetProfile

SQNR_CAP_DB = 60.0  # beyond this the quantization noise is irrelevant; also stands for "exact"
DEBUG_SAMPLES = 16  # activations of every tensor are held in memory for this many samples
MAX_EXCLUDED_FRACTION = 0.25  # keeping more than a quarter of the graph in float defeats INT8
MIN_EXCLUDED_LIMIT = 4  # ...but a 10-node student may need a conv, its activation and its reader
RACE_ROUNDS = 5  # interleaved rounds of the final timing
RACE_MIN_CALLS = 10  # per candidate and round; and at least RACE_MIN_SECONDS
RACE_MIN_SECONDS = 0.1
# Attempts within this fraction of the fastest count as equally fast (in-process timing on a shared
# machine moves by a few percent): the one with fewest float nodes, then QDQ, then the earliest is kept.
TIE_MARGIN = 0.03
SHOWN_UNITS = 8  # costliest units recorded for the report


@dataclass
class Attempt:
    method: str
    per_channel: bool
    excluded_nodes: list[str]
    accuracy: float
    accuracy_drop: float
    latency_ms_p50: float | None  # batch 1, from the final interleaved timing; None: not timed
    passed: bool
    seconds: float = 0.0
    reduce_range: bool = False
    quant_format: str = "qdq"
    types: str = ""  # e.g. "U8S8": activations, weights
    purpose: str = "configured"  # which step made it (see the module docstring)
    float_units: list[str] = field(default_factory=list)  # units kept float for speed (step 6/7)
    outcome: str = ""  # "chosen", or why it lost

    def describe(self) -> str:
        granularity = ("per-channel" if self.per_channel else "per-tensor") + (", 7-bit weights" if self.reduce_range else "")
        latency = f", {self.latency_ms_p50:.3f} ms p50" if self.latency_ms_p50 is not None else ""
        verdict = "passed" if self.passed else "failed"
        return (
            f"{self.method}/{granularity}/{self.quant_format.upper()} {self.types}, {len(self.excluded_nodes)} float nodes"
            f" [{self.purpose}]: accuracy {self.accuracy:.4f} (drop {self.accuracy_drop:+.4f}){latency} -> {verdict}"
            + (f" ({self.outcome})" if self.outcome and self.outcome != "chosen" else "")
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
    scheme: dict = field(default_factory=dict)  # Int8Scheme.as_dict(): the types and why
    speed: dict = field(default_factory=dict)  # timing and profile (see _Search.speed_record)


def quantize_with_gate(
    fp32_onnx: str | Path,
    out_path: str | Path,
    calib_x,
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
    scheme: Int8Scheme | None = None,
    speed_search: bool = True,
    ui=None,
) -> GateResult:
    """Quantize `fp32_onnx` to `out_path`: the fastest attempt within the accuracy bound.

    reference_accuracy: what INT8 accuracy is compared to (e.g. the FP32 student's on val_x).
    max_accuracy_drop: allowed reference_accuracy - int8_accuracy (absolute, e.g. 0.02).
    scheme: the types for the file's targets (edgekd.quantize.schemes); default: this
        machine's ONNX Runtime, or TensorRT's form with `trt_ready` (`reduce_range` overrides
        the default scheme's 7-bit choice, only without `scheme`).
    target: the session settings (threads, graph optimization) for accuracy and timing.
    max_excluded_nodes: cap on nodes kept in float for accuracy (default: a quarter of the graph, >= 4).
    fallbacks: False tries the configured setting only (the user pinned it): no fallback, no speed search.
    speed_search: steps 5-7 where the file can be timed here.
    calib_x: (N, C, H, W) samples, any array-like that slices (a memmap streams).
    ui: an edgekd.ui.UI: calibration shows progress with rate and ETA.
    Raises GateError listing every attempt when none passes; out_path is then not written.
    """
    scheme = scheme or host_scheme(bool(trt_ready), reduce_range)
    first = QuantSettings(method, bool(per_channel), scheme=scheme)
    validate_settings(first)
    calib_x = check_samples(calib_x, "calib_x", finite=False)
    val_x, val_y = check_samples(val_x, "val_x"), _labels(val_y, len(val_x))
    fp32_onnx, out_path = Path(fp32_onnx), Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    search = _Search(fp32_onnx, calib_x, val_x, val_y, reference_accuracy, max_accuracy_drop, target, batch_size, ui)
    with scratch(out_path.parent, "gate-") as tmp:  # edgekd.rundir: where a re-run finds a killed search's files
        search.start(tmp)
        passing = search.accuracy_phase(first, fallbacks, max_excluded_nodes)
        if passing is not None:
            timed = timed_here(scheme)
            if timed and fallbacks and speed_search:
                search.speed_phase(passing)
            return search.finish(out_path, timed)
    raise GateError(
        f"No INT8 variant of {fp32_onnx.name} stays within the accuracy budget (reference "
        f"{reference_accuracy:.4f}, max drop {max_accuracy_drop:g}); tried:\n  "
        + "\n  ".join(a.describe() for a in search.attempts),
        "Ship FP32 for this target (the FP32 model is unchanged), calibrate on more representative "
        "samples, allow a larger `quantize.max_int8_drop`, or raise `max_excluded_nodes`.",
        details=[asdict(a) for a in search.attempts],
    )


def search_order(first: QuantSettings) -> list[tuple[QuantSettings, str]]:
    """Steps 1-3: configured, other methods, then every method with per-channel toggled."""
    methods = [first.method, *(m for m in METHODS if m != first.method)]
    order = [(replace(first, method=m), "configured" if m == first.method else "calibration fallback") for m in methods]
    if not first.trt_ready:
        label = "per-tensor fallback" if first.per_channel else "per-channel fallback"
        order += [(replace(first, method=m, per_channel=not first.per_channel), label) for m in methods]
    return order


def _labels(val_y: np.ndarray, n: int) -> np.ndarray:
    val_y = np.asarray(val_y)
    if val_y.shape != (n,) or not np.issubdtype(val_y.dtype, np.integer):
        raise DataError(f"val_y has shape {val_y.shape} and dtype {val_y.dtype}.", f"Pass {n} integer class labels.")
    return val_y


class _Search:
    """State shared by the attempts: the pre-processed model, the files and the log."""

    def __init__(self, fp32_onnx, calib_x, val_x, val_y, reference, max_drop, target, batch_size, ui=None):
        self.fp32_onnx, self.calib_x, self.val_x, self.val_y, self.ui = fp32_onnx, calib_x, val_x, val_y, ui
        self.reference, self.max_drop, self.target, self.batch_size = reference, max_drop, target, batch_size
        self.attempts: list[Attempt] = []
        self.files: list[tuple[Path, QuantSettings, dict]] = []
        self.sensitivity: list[dict] = []
        self.calibrated: dict[str, dict] = {}  # method -> calibration facts; ranges cached in tmp
        self.speed: dict = {}

    def start(self, tmp: Path) -> None:
        self.tmp = tmp
        self.pre = preprocess(self.fp32_onnx, tmp / "pre.onnx")

    # ------------------------------------------------------------------ accuracy first

    def accuracy_phase(self, first: QuantSettings, fallbacks: bool, max_excluded: int | None) -> int | None:
        """Steps 1-4; the index of the first passing attempt, or None."""
        for settings, purpose in search_order(first) if fallbacks else [(first, "configured")]:
            if self.attempt(settings, purpose).passed:
                return len(self.attempts) - 1
        if not fallbacks:
            return None
        limit = max_excluded if max_excluded is not None else self.default_exclusion_limit()
        for settings in self.exclusion_steps(limit):
            purpose = f"{len(settings.exclude_nodes)} sensitive nodes float"
            if self.attempt(settings, purpose).passed:
                return len(self.attempts) - 1
        return None

    def attempt(self, settings: QuantSettings, purpose: str, float_units: list[str] | None = None) -> Attempt:
        start = time.perf_counter()
        dest = self.tmp / f"attempt{len(self.attempts)}.onnx"
        cache = self.tmp / f"{settings.method}.calib.json"
        if settings.method not in self.calibrated:
            with progress_of(self.ui, f"calibrating INT8 ranges ({settings.method})", len(self.calib_x),
                             "images") as advance:
                self.calibrated[settings.method] = calibrate(self.pre, self.calib_x, settings.method, self.batch_size,
                                                             cache, progress=advance)
        facts = self.calibrated[settings.method]
        quantize_file(self.pre, dest, settings, cache)
        session = make_session(dest, target=self.target)
        acc = accuracy(predict(session, self.val_x, self.batch_size), self.val_y)
        drop = self.reference - acc
        passed = drop <= self.max_drop
        result = Attempt(
            settings.method, settings.per_channel, list(settings.exclude_nodes), round(acc, 6), round(drop, 6),
            None, passed, round(time.perf_counter() - start, 3), settings.reduce_range, settings.quant_format,
            settings.scheme.types, purpose, list(float_units or []),
            "" if passed else f"accuracy drop {drop:+.4f} > {self.max_drop:g}",
        )
        self.attempts.append(result)
        self.files.append((dest, settings, facts))
        return result

    # ------------------------------------------------------------------ then fastest

    def speed_phase(self, index: int) -> None:
        """Steps 5-7 from the passing attempt `index`; every candidate is a full attempt (accuracy checked)."""
        from edgekd.quantize.profile import Units, costly_units, int8_op_totals, profile_model, totals, unit_costs

        base_file, base, _ = self.files[index]
        if "qoperator" in base.scheme.formats and base.quant_format != "qoperator":
            self.attempt(replace(base, quant_format="qoperator"), "speed: QOperator form")
        units = Units(self.pre)
        x1 = self.val_x[:1]
        costs, rest = unit_costs(units, profile_model(self.pre, x1, self.tmp, self.target),
                                 profile_model(base_file, x1, self.tmp, self.target))
        costly = costly_units(costs)
        kernel_totals = totals(costs, rest)
        self.speed["profile"] = {"of": "the INT8 attempt that first passed, against the FP32 graph, batch 1",
                                 "kernel_totals_us": kernel_totals, "units": len(costs),
                                 "costly_units": [c.as_dict() for c in costly[:SHOWN_UNITS]],
                                 "costly_count": len(costly), "unattributed_us": rest,
                                 "heaviest_units": heaviest_units(costs, kernel_totals["int8_us"]),
                                 "int8_ops_us": int8_op_totals(costs, rest)}
        quantizable = [c for c in costs if _runs_int8(c)]
        for purpose, kept_float in (("speed: units that cost more in INT8 kept float", costly),
                                    ("speed: best contiguous INT8 region", _outside_best_region(costs))):
            kept_float = [c for c in kept_float if _runs_int8(c)]
            if not kept_float or len(kept_float) >= len(quantizable):
                continue  # nothing to change, or nothing left in INT8
            nodes = tuple(dict.fromkeys([*base.exclude_nodes, *(n for c in kept_float for n in c.nodes)]))
            if any(self.files[i][1].exclude_nodes == nodes for i in range(len(self.files))):
                continue
            self.attempt(replace(base, exclude_nodes=nodes), purpose, [c.unit for c in kept_float])

    def finish(self, out_path: Path, timed: bool) -> GateResult:
        chosen_index = self.choose(timed)
        chosen = self.attempts[chosen_index]
        dest, settings, facts = self.files[chosen_index]
        gate = {
            "reference_accuracy": self.reference,
            "max_accuracy_drop": self.max_drop,
            "attempts": [asdict(a) for a in self.attempts],
            "sensitivity": self.sensitivity,
            "speed": self.speed,
        }
        quant = publish(dest, out_path, self.fp32_onnx, settings, facts, chosen.seconds, {"gate": gate})
        return GateResult(quant.path, quant.sidecar, self.reference, self.max_drop, self.attempts, chosen,
                          quant, self.sensitivity, settings.scheme.as_dict(), self.speed)

    def choose(self, timed: bool) -> int:
        """The fastest passing attempt (timed here), else the first passing one; sets every outcome."""
        passing = [i for i, a in enumerate(self.attempts) if a.passed]
        if not timed:
            chosen = passing[0]
            for i in passing[1:]:
                self.attempts[i].outcome = "a passing attempt came first (speed not measurable here)"
            self.speed["timed"] = False
            self.speed["why"] = ("Not timed: this machine does not run the file as its targets do; the first "
                                 "attempt within the accuracy bound is kept")
        else:
            latencies = race_latency([self.fp32_onnx] + [self.files[i][0] for i in passing], self.val_x[:1], self.target)
            fp32_ms = latencies[0]
            for i, ms in zip(passing, latencies[1:]):
                self.attempts[i].latency_ms_p50 = ms
            chosen = pick_fastest([self.attempts[i] for i in passing])
            chosen = passing[chosen]
            best = self.attempts[chosen].latency_ms_p50
            for i in passing:
                if i != chosen:
                    ms = self.attempts[i].latency_ms_p50
                    self.attempts[i].outcome = (f"slower: {ms:.3f} ms vs {best:.3f} ms ({ms / best:.2f}x)" if ms > best else
                                                f"as fast within {TIE_MARGIN:.0%} ({ms:.3f} vs {best:.3f} ms): the "
                                                "chosen one has fewer float nodes or comes first")
            self.speed.update(self.speed_record(fp32_ms, best))
        self.attempts[chosen].outcome = "chosen"
        return chosen

    def speed_record(self, fp32_ms: float, int8_ms: float) -> dict:
        """Batch-1 timing of the chosen INT8 file against FP32 (same process, interleaved), and the verdict."""
        speedup = fp32_ms / int8_ms
        record = {"timed": True, "fp32_ms_p50": fp32_ms, "int8_ms_p50": int8_ms, "speedup_vs_fp32": round(speedup, 3)}
        if speedup >= 1 + TIE_MARGIN:
            record["verdict"] = f"INT8 is {speedup:.2f}x faster than FP32 at batch 1"
        elif speedup >= 1 - TIE_MARGIN:
            record["verdict"] = (f"The fastest INT8 variant is as fast as FP32, within {TIE_MARGIN:.0%} ({int8_ms:.3f} "
                                 f"vs {fp32_ms:.3f} ms at batch 1): no quantization pays here")
        else:
            record["verdict"] = (f"No INT8 variant tried beat FP32: the fastest is {1 / speedup:.2f}x slower "
                                 f"({int8_ms:.3f} vs {fp32_ms:.3f} ms at batch 1)")
        return record

    # ------------------------------------------------------------------ sensitivity (step 4)

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


def pick_fastest(attempts: Sequence[Attempt]) -> int:
    """Index of the attempt to keep among timed passing ones: the fastest, where "as fast" means
    within TIE_MARGIN of it; among those, fewest float nodes, then QDQ (any runtime reads it), then first."""
    fastest = min(a.latency_ms_p50 for a in attempts)
    tied = [i for i, a in enumerate(attempts) if a.latency_ms_p50 <= fastest * (1 + TIE_MARGIN)]
    return min(tied, key=lambda i: (len(attempts[i].excluded_nodes), attempts[i].quant_format != "qdq", i))


def heaviest_units(costs: Sequence, int8_total_us: float, shown: int = SHOWN_UNITS) -> list[dict]:
    """The units that take the most INT8 kernel time, with their share of it and their own
    FP32/INT8 speed-up: where INT8 is faster but not by enough, these say which nodes bound it
    (a unit with half the INT8 time and a 1.0x speed-up caps the model near 2x whatever the rest does)."""
    ranked = sorted(costs, key=lambda c: -c.int8_us)[:shown]
    return [{**c.as_dict(), "int8_share": round(c.int8_us / int8_total_us, 3) if int8_total_us else None,
             "speedup": round(c.fp32_us / c.int8_us, 2) if c.int8_us else None} for c in ranked]


def _runs_int8(cost) -> bool:
    """Whether a unit ran integer kernels in the profiled INT8 model."""
    return any(op.startswith("QLinear") or op in ("QGemm", "MatMulInteger", "ConvInteger") for op in cost.int8_kernels)


def _outside_best_region(costs: list) -> list:
    """Units outside the contiguous run (graph order) with the largest summed INT8 saving
    (maximum-subarray): one int8 region, float before and after it."""
    best, best_span, running, start = 0.0, None, 0.0, 0
    for i, cost in enumerate(costs):
        if running <= 0:
            running, start = 0.0, i
        running += cost.saving_us
        if running > best:
            best, best_span = running, (start, i)
    if best_span is None:
        return list(costs)
    first, last = best_span
    return costs[:first] + costs[last + 1 :]


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


def race_latency(paths: Sequence[Path], x1: np.ndarray, target=None) -> list[float]:
    """Median batch-1 latency (ms) of each model, timed in interleaved rounds in this process
    (rotating the order each round) so that load from other jobs lands on all alike.
    A ranking for the gate; the bench stage measures each artifact in its own process."""
    sessions = [make_session(p, target=target) for p in paths]
    feeds = [{s.get_inputs()[0].name: np.ascontiguousarray(x1[:1], dtype=np.float32)} for s in sessions]
    for session, feed in zip(sessions, feeds):
        for _ in range(3):
            session.run(None, feed)
    times: list[list[float]] = [[] for _ in sessions]
    for round_ in range(RACE_ROUNDS):
        order = list(range(len(sessions)))
        order = order[round_ % len(order):] + order[: round_ % len(order)]
        for i in order:
            began, calls = time.perf_counter(), 0
            while calls < RACE_MIN_CALLS or time.perf_counter() - began < RACE_MIN_SECONDS:
                start = time.perf_counter()
                sessions[i].run(None, feeds[i])
                times[i].append(time.perf_counter() - start)
                calls += 1
    return [round(statistics.median(t) * 1e3, 4) for t in times]


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
    activations = debug.collect_activations(str(augmented), BatchReader(name, x, fixed or len(x)))
    shapes = _tensor_shapes(pre_onnx)
    result = {}
    for tensor, (scale, zero_point, dtype) in activation_qparams(qdq_onnx).items():
        if tensor not in activations:
            continue
        reference = [_unflatten(a, shapes.get(tensor)) for a in activations[tensor]]
        result[tensor] = channel_sqnr(reference, [fake_quant(a, scale, zero_point, dtype) for a in reference])
    return result


def activation_qparams(qdq_onnx: Path) -> dict[str, tuple[float, int, str]]:
    """Tensor -> (scale, zero point, "int8" | "uint8") of the per-tensor QuantizeLinear that reads it."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(qdq_onnx), load_external_data=False).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    params = {}
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in inits or node.input[1] not in inits:
            continue
        scale = inits[node.input[1]]
        # no zero point: uint8 and 0, per the ONNX spec
        zero_point = inits.get(node.input[2], np.zeros(1, np.uint8)) if len(node.input) > 2 else np.zeros(1, np.uint8)
        if scale.size == 1 and zero_point.dtype in (np.int8, np.uint8):
            params[node.input[0]] = (float(scale.reshape(())), int(zero_point.reshape(())), zero_point.dtype.name)
    return params


_INT_RANGE = {"int8": (-128, 127), "uint8": (0, 255)}


def fake_quant(x: np.ndarray, scale: float, zero_point: int, dtype: str = "int8") -> np.ndarray:
    """ONNX QuantizeLinear + DequantizeLinear to `dtype` (round half to even, saturate)."""
    low, high = _INT_RANGE[dtype]
    q = np.clip(np.rint(x / scale) + zero_point, low, high)
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

