"""Where an INT8 model loses or gains time against FP32, unit by unit, from ONNX Runtime's profiler.

    costs = unit_costs(pre_onnx, profile_model(pre_onnx, ...), profile_model(int8_onnx, ...))
    costly = [c for c in costs if c.int8_us > c.fp32_us]      # keep these in float

A *unit* is what ONNX Runtime runs as one kernel in FP32: a Conv/Gemm/MatMul with the
activation chain it fuses (Relu, Clip, HardSigmoid, HardSwish = HardSigmoid + Mul,
SiLU = Sigmoid + Mul) and a residual Add it sums into its output (NCHWc Conv + Add + Relu),
or any other node on its own. In INT8 the same unit may cost a
QLinearConv plus a float island (DequantizeLinear -> HardSigmoid -> QuantizeLinear) plus
a QLinearMul: per-unit sums of kernel times, FP32 against INT8, say which units pay.

Runtime nodes are attributed to the pre-processed graph's nodes by name: ORT names fused
nodes after the node they replace (plus `_token_N`, `_quant`), NCHWc convolutions after the
tensor they produce (`<tensor>_nchwc`), and edgekd's quantizer names Q/DQ nodes
`<tensor>_QuantizeLinear` / `_DequantizeLinear`. A remaining QuantizeLinear is charged to the
unit that reads its tensor, a remaining DequantizeLinear to the unit that produced it: the
quantized side of a float/int8 boundary pays for it. What cannot be attributed (layout
reorders, transposes) is reported per op type. Torch-free.
"""

from __future__ import annotations

import bisect
import json
import re
import statistics
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

PROFILE_RUNS = 30  # timed runs per profile, after WARMUP_RUNS
WARMUP_RUNS = 3
ANCHORS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
# ops ORT's FP32 kernels fuse into the Conv/Gemm before them (ConvActivationFusion, NCHWc)
FUSED_ACTIVATIONS = frozenset({"Relu", "Clip", "LeakyRelu", "HardSigmoid", "HardSwish", "Sigmoid", "Tanh", "Mul"})
_RUNTIME_SUFFIX = re.compile(r"(_token_\d+|_nchwc|_quant)+$")
_QDQ_TAGS = (("_QuantizeLinear", "q"), ("_DequantizeLinear", "dq"))
_TENSOR_SUFFIX = re.compile(r"(_QuantizeLinear_Output|_DequantizeLinear_Output|_QuantizeLinear|_DequantizeLinear"
                            r"|_quantized)$")


@dataclass
class NodeTime:
    name: str  # the runtime node's name (after ORT's graph optimizations)
    op_type: str
    us: float  # median kernel time per run, microseconds
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)


@dataclass
class UnitCost:
    unit: str  # the anchor node's name (or the node's own)
    ops: str  # e.g. "Conv+HardSigmoid+Mul"
    nodes: list[str]  # pre-processed graph nodes in the unit (what nodes_to_exclude keeps float)
    fp32_us: float
    int8_us: float
    int8_kernels: dict[str, float]  # runtime op type -> us, e.g. {"QLinearConv": 40, "DequantizeLinear": 12}

    @property
    def saving_us(self) -> float:
        return round(self.fp32_us - self.int8_us, 1)

    def as_dict(self) -> dict:
        return {**asdict(self), "saving_us": self.saving_us}

    def describe(self) -> str:
        kernels = " + ".join(f"{op} {us:.0f}" for op, us in sorted(self.int8_kernels.items(), key=lambda kv: -kv[1]))
        return (f"{self.unit} ({self.ops}): FP32 {self.fp32_us:.0f} us, INT8 {self.int8_us:.0f} us"
                + (f" ({kernels})" if kernels else ""))


# ---------------------------------------------------------------------------- profiling


def profile_model(onnx_path: str | Path, x1: np.ndarray, workdir: Path, target=None,
                  runs: int = PROFILE_RUNS) -> list[NodeTime]:
    """Per runtime node, the median kernel time (us) over `runs` batch-1 runs of `x1`,
    with the target's session settings, plus each node's tensors (from ORT's optimized graph)."""
    import onnx

    from edgekd.runtime.ort import import_ort, session_settings

    ort = import_ort()
    settings = session_settings(target)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = settings["intra_op_num_threads"]
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _level(settings["graph_optimization_level"]))
    opts.log_severity_level = 3  # ORT warns that an NCHWc-optimized graph is hardware specific: we only read names
    opts.enable_profiling = True
    opts.profile_file_prefix = str(workdir / f"{Path(onnx_path).stem}.profile")
    optimized = workdir / f"{Path(onnx_path).stem}.optimized.onnx"
    opts.optimized_model_filepath = str(optimized)
    session = ort.InferenceSession(str(onnx_path), sess_options=opts, providers=settings["providers"])
    feed = {session.get_inputs()[0].name: np.ascontiguousarray(x1[:1], dtype=np.float32)}
    for _ in range(WARMUP_RUNS + runs):
        session.run(None, feed)
    trace = Path(session.end_profiling())
    try:
        events = json.loads(trace.read_text())
    finally:
        trace.unlink(missing_ok=True)
    io = {n.name: (list(n.input), list(n.output)) for n in onnx.load(str(optimized), load_external_data=False).graph.node}
    optimized.unlink(missing_ok=True)
    return [NodeTime(name, op, us, *io.get(name, ([], []))) for name, op, us in _median_kernel_times(events, WARMUP_RUNS)]


def _level(name: str) -> str:
    return {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
            "all": "ORT_ENABLE_ALL"}[name]


def _median_kernel_times(events: list[dict], skip_runs: int) -> list[tuple[str, str, float]]:
    """(node, op, median us per run) from a Chrome-trace profile; a node's events within one
    run are summed (a name can repeat), the first `skip_runs` runs are dropped."""
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")[skip_runs:]
    starts = [start for start, _ in runs]
    per_run: dict[tuple[str, str], dict[int, float]] = defaultdict(lambda: defaultdict(float))
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        index = bisect.bisect_right(starts, e["ts"]) - 1
        if index < 0 or e["ts"] > runs[index][1]:
            continue
        per_run[(e["name"][: -len("_kernel_time")], e["args"].get("op_name", "?"))][index] += e["dur"]
    return [(name, op, statistics.median([times.get(i, 0.0) for i in range(len(runs))]))
            for (name, op), times in per_run.items()]


# ---------------------------------------------------------------------------- units


class Units:
    """The pre-processed float graph's nodes grouped into units (see the module docstring)."""

    def __init__(self, pre_onnx: str | Path):
        import onnx

        graph = onnx.load(str(pre_onnx), load_external_data=False).graph
        self.initializers = {t.name for t in graph.initializer}
        self.graph_inputs = {i.name for i in graph.input}
        self.order = [n.name for n in graph.node]
        self.position = {name: i for i, name in enumerate(self.order)}
        self.op = {n.name: n.op_type for n in graph.node}
        self.producer = {out: n.name for n in graph.node for out in n.output}
        self.consumers: dict[str, list[str]] = defaultdict(list)
        for n in graph.node:
            for name in n.input:
                self.consumers[name].append(n.name)
        self.unit: dict[str, str] = {}
        for n in graph.node:
            self.unit[n.name] = self._unit_of(n)
        self.members: dict[str, list[str]] = defaultdict(list)
        for name in self.order:
            self.members[self.unit[name]].append(name)

    def _unit_of(self, node) -> str:
        if node.op_type == "Add":
            return self._residual_unit(node)
        if node.op_type in ANCHORS or node.op_type not in FUSED_ACTIVATIONS:
            return node.name
        sources = {self.unit[self.producer[i]] for i in node.input
                   if i and i not in self.initializers and i in self.producer}
        if len(sources) == 1:
            (unit,) = sources
            if self.op[unit] in ANCHORS and all(self.unit.get(self.producer.get(i, ""), None) == unit
                                                for i in node.input if i and i not in self.initializers):
                return unit
        return node.name

    def _residual_unit(self, node) -> str:
        """A residual Add joins the unit of its latest-computed input when that is a Conv's (ORT
        sums the skip branch into that convolution's output)."""
        inputs = [self.producer[i] for i in node.input if i and i not in self.initializers and i in self.producer]
        if len(inputs) != 2:
            return node.name
        latest = self.unit[max(inputs, key=lambda name: self.position[name])]
        return latest if self.op[latest] == "Conv" else node.name

    def ops(self, unit: str) -> str:
        return "+".join(self.op[n] for n in self.members[unit])

    def resolve(self, runtime: NodeTime) -> str | None:
        """The unit a runtime node's time belongs to, or None."""
        base = _RUNTIME_SUFFIX.sub("", runtime.name)
        if base in self.unit:
            return self.unit[base]
        for tag, kind in _QDQ_TAGS:
            if base.endswith(tag):
                return self._boundary_unit(base[: -len(tag)], kind)
        if base in self.producer or base in self.graph_inputs:  # NCHWc: named after its output tensor
            return self._tensor_unit(base, "dq")
        for kind, tensors in (("dq", runtime.outputs), ("q", runtime.inputs)):
            for tensor in tensors:
                found = self._tensor_unit(_TENSOR_SUFFIX.sub("", tensor), kind)
                if found:
                    return found
        return None

    def _boundary_unit(self, tensor: str, kind: str) -> str | None:
        """Q of a tensor: the unit that reads it; DQ: the unit that made it (weights: their reader)."""
        if kind == "q" or tensor in self.initializers or tensor in self.graph_inputs:
            readers = self.consumers.get(tensor, [])
            return self.unit[readers[0]] if readers else None
        return self._tensor_unit(tensor, kind)

    def _tensor_unit(self, tensor: str, kind: str) -> str | None:
        if tensor in self.producer and kind == "dq":
            return self.unit[self.producer[tensor]]
        readers = self.consumers.get(tensor, [])
        return self.unit[readers[0]] if readers else None


def unit_costs(units: Units, fp32: list[NodeTime], int8: list[NodeTime]) -> tuple[list[UnitCost], dict]:
    """Per unit, FP32 against INT8 kernel time; and what could not be attributed, per side and op type."""
    fp32_us: dict[str, float] = defaultdict(float)
    int8_us: dict[str, float] = defaultdict(float)
    kernels: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    unattributed = {"fp32": defaultdict(float), "int8": defaultdict(float)}
    for side, nodes in (("fp32", fp32), ("int8", int8)):
        for node in nodes:
            unit = units.resolve(node)
            if unit is None:
                unattributed[side][node.op_type] += node.us
            elif side == "fp32":
                fp32_us[unit] += node.us
            else:
                int8_us[unit] += node.us
                kernels[unit][node.op_type] += node.us
    costs = [UnitCost(unit, units.ops(unit), list(units.members[unit]), round(fp32_us[unit], 1),
                      round(int8_us[unit], 1), {k: round(v, 1) for k, v in kernels[unit].items()})
             for unit in dict.fromkeys(units.unit[n] for n in units.order) if unit in fp32_us or unit in int8_us]
    rest = {side: {op: round(us, 1) for op, us in ops.items()} for side, ops in unattributed.items()}
    return costs, rest


def costly_units(costs: list[UnitCost], min_loss_us: float = 1.0) -> list[UnitCost]:
    """Units whose INT8 kernels take at least `min_loss_us` longer than FP32's, worst first."""
    return sorted((c for c in costs if c.int8_us - c.fp32_us >= min_loss_us), key=lambda c: c.saving_us)


def totals(costs: list[UnitCost], rest: dict) -> dict:
    """Whole-model kernel time per side (us), attributed plus not."""
    return {"fp32_us": round(sum(c.fp32_us for c in costs) + sum(rest["fp32"].values()), 1),
            "int8_us": round(sum(c.int8_us for c in costs) + sum(rest["int8"].values()), 1)}


def int8_op_totals(costs: list[UnitCost], rest: dict) -> dict[str, float]:
    """The INT8 model's kernel time (us) per runtime op type, largest first: whether float kernels
    (Add, Relu, Conv, ...) remain between quantized ones, and what the Q/DQ boundaries cost."""
    ops: dict[str, float] = defaultdict(float)
    for cost in costs:
        for op, us in cost.int8_kernels.items():
            ops[op] += us
    for op, us in rest["int8"].items():
        ops[op] += us
    return {op: round(us, 1) for op, us in sorted(ops.items(), key=lambda kv: -kv[1])}
