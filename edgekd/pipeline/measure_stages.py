"""Stages that measure artifacts and write the report."""

from __future__ import annotations

import json
from pathlib import Path

from edgekd.config import config_dict
from edgekd.pipeline.context import RunContext
from edgekd.pipeline.engine import Stage, read_record

# (name, model, runtime, precision, file) of every artifact a compress run can make; the
# post-training INT8 files (one per target scheme) come from the quantize stage's record.
ARTIFACTS = (
    ("teacher-pytorch", "teacher", "pytorch", "fp32", "teacher.pt"),
    ("teacher-fp32", "teacher", "onnxruntime", "fp32", "teacher.onnx"),
    ("student-fp32", "student", "onnxruntime", "fp32", "student.onnx"),
    ("student-qat-int8", "student", "onnxruntime", "int8", "student.qat.onnx"),  # student.quantization: qat
)


def int8_files(run_dir: Path) -> list[dict]:
    """The quantize stage's INT8 files: {file, targets, scheme, speed, ...} each."""
    return ((read_record(run_dir, "quantize") or {}).get("result") or {}).get("files") or []


def present_artifacts(run_dir: Path) -> list[tuple[str, str, str, str, str]]:
    int8 = [(f"student-int8-{f['scheme']['key']}", "student", "onnxruntime", "int8", f["file"]) for f in int8_files(run_dir)]
    return [a for a in [*ARTIFACTS[:3], *int8, *ARTIFACTS[3:]] if (run_dir / a[4]).is_file()]


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

    (ctx.run_dir / "bench.json").write_text(json.dumps({"machine": machine_info(), "rows": rows}, indent=2))
    fastest = min(rows, key=lambda r: r["latency_ms"]["p50"])
    return {"outputs": ["bench.json"], "summary": f"{len(rows)} artifacts; fastest {fastest['name']} "
            f"p50 {fastest['latency_ms']['p50']:.3f} ms"}


def _row(ctx: RunContext, spec, measurement) -> dict:
    name, model, runtime, precision, file = spec
    path = ctx.run_dir / file
    served = {f["file"]: f["targets"] for f in int8_files(ctx.run_dir)}  # an INT8 file is made for its targets
    return {"name": name, "model": model, "runtime": runtime, "precision": precision, "path": file,
            **({"targets": served[file]} if file in served else {}),
            "size_mb": path.stat().st_size / 2**20, **_model_cost(ctx, model), **measurement.report_fields()}


def _model_cost(ctx: RunContext, model: str) -> dict:
    """Params and FLOPs of the PyTorch model an artifact was made from (same for every precision)."""
    from edgekd.models.io import load_model
    from edgekd.models.stats import count_flops, count_params

    net = load_model(ctx.run_dir / f"{model}.pt")
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
    report["recommended"] = recommend(report["artifacts"], ctx.primary_target.name)
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


def recommend(rows: list[dict], target: str | None = None) -> dict | None:
    """The fastest student artifact for `target` that passes every budget check — measured, never assumed."""
    passing = [r for r in rows if r["model"] == "student" and r["budget"]["pass"]
               and (target is None or target in r.get("targets", [target]))]
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
    from edgekd.quantize.explain import int8_speed_note

    for file in (results.get("quantize") or {}).get("files") or []:
        row = next((r for r in report["artifacts"] if r["path"] == file["file"]), None)
        if row is not None and "student-fp32" in rows:
            out.append(int8_speed_note(file, row["latency_ms"]["p50"], rows["student-fp32"]["latency_ms"]["p50"]))
    ptq_row = next((r for r in report["artifacts"] if r["name"].startswith("student-int8")), None)
    if "student-qat-int8" in rows and ptq_row is not None:
        qat, ptq = rows["student-qat-int8"]["accuracy"], ptq_row["accuracy"]
        out.append(f"Quantization-aware INT8 student: accuracy {qat:.4f} vs {ptq:.4f} for post-training INT8 "
                   f"({qat - ptq:+.4f}).")
    return out


REPORT = Stage("report", "write report.json, report.md and report.html", run_report,
               lambda ctx: {"target": ctx.primary_target.model_dump(mode="json")},
               lambda ctx: ["bench.json"] + [f".edgekd/{s}.json" for s in ("teacher", "student", "export", "quantize", "qat", "tensorrt")])
