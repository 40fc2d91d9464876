"""Stages that measure artifacts and write the report."""

from __future__ import annotations

import json
from pathlib import Path

from edgekd.artifacts import TEACHER_CHECKPOINT, checkpoint_file, write_text_atomic
from edgekd.config import config_dict
from edgekd.pipeline.context import RunContext
from edgekd.pipeline.engine import Stage, read_record

# (name, model, runtime, precision, file) of every artifact a compress run can make.
ARTIFACTS = (
    ("teacher-pytorch", "teacher", "pytorch", "fp32", TEACHER_CHECKPOINT),
    ("teacher-fp32", "teacher", "onnxruntime", "fp32", "teacher.onnx"),
    ("student-fp32", "student", "onnxruntime", "fp32", "student.onnx"),
    ("student-int8", "student", "onnxruntime", "int8", "student.int8.onnx"),
    ("student-qat-int8", "student", "onnxruntime", "int8", "student.qat.onnx"),  # student.quantization: qat
)


def present_artifacts(run_dir: Path) -> list[tuple[str, str, str, str, str]]:
    return [a for a in ARTIFACTS if (run_dir / a[4]).is_file()]


# ---------------------------------------------------------------- bench


def _bench_params(ctx: RunContext) -> dict:
    return {"bench": config_dict(ctx.config.bench), "target": ctx.primary_target.model_dump(mode="json")}


def _bench_inputs(ctx: RunContext) -> list[str]:
    return ["data/val.npz"] + [a[4] for a in present_artifacts(ctx.run_dir)]


def run_bench(ctx: RunContext) -> dict:
    from edgekd.bench.measure import ArtifactToMeasure, BenchSettings, measure_artifacts

    b = ctx.config.bench
    settings = BenchSettings(warmup_s=b.warmup_s, min_iterations=b.min_iterations, min_seconds=b.min_seconds,
                             batch_sizes=tuple(b.batch_sizes), rounds=b.rounds)
    artifacts = present_artifacts(ctx.run_dir)
    val_x, _ = ctx.val_arrays()
    with ctx.ui.progress("measuring (interleaved, one process per artifact)", 1) as advance:
        measured = measure_artifacts([ArtifactToMeasure(name, runtime, ctx.run_dir / file)
                                      for name, _, runtime, _, file in artifacts],
                                     input_shape=tuple(val_x.shape[1:]), target=ctx.primary_target,
                                     settings=settings, data=ctx.run_dir / "data" / "val.npz")
        advance()
    rows = [_row(ctx, spec, measured[spec[0]]) for spec in artifacts]
    from edgekd.bench.sysinfo import machine_info

    write_text_atomic(ctx.run_dir / "bench.json", json.dumps({"machine": machine_info(), "rows": rows}, indent=2))
    fastest = min(rows, key=lambda r: r["latency_ms"]["p50"])
    return {"outputs": ["bench.json"], "summary": f"{len(rows)} artifacts; fastest {fastest['name']} "
            f"p50 {fastest['latency_ms']['p50']:.3f} ms"}


def _row(ctx: RunContext, spec, measurement) -> dict:
    name, model, runtime, precision, file = spec
    path = ctx.run_dir / file
    return {"name": name, "model": model, "runtime": runtime, "precision": precision, "path": file,
            "size_mb": path.stat().st_size / 2**20, **_model_cost(ctx, model), **measurement.report_fields()}


def _model_cost(ctx: RunContext, model: str) -> dict:
    """Params and FLOPs of the PyTorch model an artifact was made from (same for every precision)."""
    from edgekd.models.io import load_model
    from edgekd.models.stats import count_flops, count_params

    net = load_model(ctx.run_dir / checkpoint_file(model))
    val_x, _ = ctx.val_arrays()
    return {"params": count_params(net), "flops": count_flops(net, val_x.shape[1:])}


BENCH = Stage("bench", "latency, memory and accuracy of every artifact", run_bench, _bench_params, _bench_inputs)

# ---------------------------------------------------------------- report


def run_report(ctx: RunContext) -> dict:
    from edgekd.report.core import assemble, render_markdown, write_json
    from edgekd.report.html import write_html

    bench = json.loads((ctx.run_dir / "bench.json").read_text())
    dataset = json.loads((ctx.run_dir / "data" / "summary.json").read_text())
    results = {name: (read_record(ctx.run_dir, name) or {}).get("result", {})
               for name in ("teacher", "student", "export", "quantize", "qat", "tensorrt")}
    rows = bench["rows"]
    report = assemble(run={"name": ctx.config.name, "config": ctx.config.model_dump(mode="json")},
                      target=ctx.primary_target.model_dump(mode="json"), dataset=dataset, machine=bench["machine"],
                      rows=rows, extra={"teacher": _public(results["teacher"]), "student": _public(results["student"]),
                                        "export": results["export"].get("models"),
                                        "quantization": _public(results["quantize"]),
                                        **({"qat": _public(results["qat"])} if results["qat"].get("export") else {})})
    report["recommended"] = recommend(report["artifacts"])
    if results["tensorrt"].get("builds"):
        report["tensorrt"] = {"builds": results["tensorrt"]["builds"], "variants": results["tensorrt"]["variants"]}
    report["notes"] = notes(report, results)
    write_json(report, ctx.run_dir / "report.json")
    (ctx.run_dir / "report.md").write_text(render_markdown(report))
    write_html(report, ctx.run_dir / "report.html")
    rec = report["recommended"]
    return {"outputs": ["report.json", "report.md", "report.html"],
            "summary": f"recommended: {rec['name']} ({rec['why']})" if rec else "no student artifact passes the budgets"}


def _public(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in ("summary",)}


def recommend(rows: list[dict]) -> dict | None:
    """The fastest student artifact that passes every budget check — measured, never assumed."""
    passing = [r for r in rows if r["model"] == "student" and r["budget"]["pass"]]
    if not passing:
        return None
    best = min(passing, key=lambda r: r["latency_ms"]["p50"])
    others = [r for r in passing if r is not best]
    why = "fastest student passing every budget"
    if others:
        runner_up = min(others, key=lambda r: r["latency_ms"]["p50"])
        why += f"; {runner_up['name']} was {runner_up['latency_ms']['p50'] / best['latency_ms']['p50']:.2f}× slower"
    return {"name": best["name"], "path": best["path"], "why": why}


def notes(report: dict, results: dict) -> list[str]:
    out = []
    teacher = results["teacher"]
    if teacher:
        out.append(f"Teacher weights: {teacher.get('source')}" + (f", trained {teacher.get('epochs')} epochs here"
                                                                   if teacher.get("trained") else ""))
    student = results["student"]
    if student:
        out.append(f"Teacher-output cache: {student.get('teacher_cache')}.")
        used = student.get("student_data")
        if used and (used["samples"] < used["train_split"] or used["unlabeled"]):
            withheld = " (withheld from teacher training too)" if used["unlabeled"] else ""
            out.append(f"Student training data: {used['samples']} of {used['train_split']} training samples, "
                       f"{used['unlabeled']} of them used without labels{withheld}.")
    for name, exp in (report.get("export") or {}).items():
        if exp.get("fallback_error"):
            out.append(f"{name} export fell back to {exp['exporter']}: {exp['fallback_error']}")
        if exp.get("simplify_note") and not exp.get("simplified"):
            out.append(f"{name} ONNX kept unsimplified: {exp['simplify_note']}")
    rows = {r["name"]: r for r in report["artifacts"]}
    if "student-int8" in rows and "student-fp32" in rows:
        fp32, int8 = rows["student-fp32"]["latency_ms"]["p50"], rows["student-int8"]["latency_ms"]["p50"]
        if int8 < fp32:
            out.append(f"The INT8 student is {fp32 / int8:.2f}× faster than the FP32 student at batch 1.")
        else:
            out.append(f"The INT8 student is {int8 / fp32:.2f}× SLOWER than the FP32 student at batch 1: at this "
                       "model size the quantize/dequantize overhead outweighs the integer kernels, so the FP32 "
                       "student is recommended if it fits the budgets.")
    if "student-qat-int8" in rows and "student-int8" in rows:
        qat, ptq = rows["student-qat-int8"]["accuracy"], rows["student-int8"]["accuracy"]
        out.append(f"Quantization-aware INT8 student: accuracy {qat:.4f} vs {ptq:.4f} for post-training INT8 "
                   f"({qat - ptq:+.4f}).")
    return out


REPORT = Stage("report", "write report.json, report.md and report.html", run_report,
               lambda ctx: {"target": ctx.primary_target.model_dump(mode="json")},
               lambda ctx: ["bench.json"] + [f".edgekd/{s}.json" for s in ("teacher", "student", "export", "quantize", "qat", "tensorrt")])
