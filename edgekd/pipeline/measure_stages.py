"""Stages that measure artifacts and write the report.

What bench measures, and the report lists, comes from the stage records
(`edgekd.pipeline.records.current_artifacts`), never from the files in the run
directory: an artifact an earlier config made is not measured again.
"""

from __future__ import annotations

import json
import shlex

from edgekd.artifacts import write_bytes_atomic, write_text_atomic
from edgekd.config import WHOLE_CONFIG, config_warnings
from edgekd.pipeline.context import RunContext
from edgekd.pipeline.engine import Stage
from edgekd.pipeline.records import (CALIB_FILE, CHECKPOINTS, RECORDS, STAGE_ORDER, SUMMARY_FILE, TEST_FILE, Artifact,
                                     current_artifacts, read_record, student_runs)

UNMEASURED = "no real labelled data"  # a row's accuracy_unmeasured (data.kind: synthetic); torch-free
HOST_RUNTIMES = ("pytorch", "onnxruntime")  # what this workstation measures; TensorRT files run on the device
BENCH_FILE = "bench.json"
REPORT_FILES = ["report.json", "report.md", "report.html"]
UPSTREAM = STAGE_ORDER[: STAGE_ORDER.index("bench")]
# whose results the report shows
RESULT_STAGES = ("search", "teacher", "choose", "synthetic", "student", "export", "quantize", "qat", "tensorrt")


PRECISION_ORDER = {"fp32": 0, "fp16": 1, "int8": 2}


def to_measure(ctx: RunContext) -> list[Artifact]:
    """The current artifacts this host can run, in the report's order: the teacher (PyTorch first),
    then the students by precision and name."""
    found = [a for a in current_artifacts(ctx.run_dir, stages=UPSTREAM) if a.runtime in HOST_RUNTIMES]
    return sorted(found, key=lambda a: (a.model != "teacher", a.runtime != "pytorch",
                                        PRECISION_ORDER.get(a.precision, 3), a.name))


def measuring_target(ctx: RunContext):
    """Whose session settings (threads, graph optimization) the measurements use: the first target this
    host is (its CPU architecture, ONNX Runtime), else the first target."""
    from edgekd.bench.sysinfo import host_arch

    here = host_arch()
    return next((t for t in ctx.targets if t.arch == here and t.runtime == "onnxruntime"), ctx.primary_target)


# ---------------------------------------------------------------- bench


def _bench_inputs(ctx: RunContext) -> list[str]:
    scored = ctx.has_test  # data.kind: synthetic: latency and memory only
    tests = dict.fromkeys(ctx.test_file(model) for model in CHECKPOINTS) if scored else {}  # the teacher's view's too
    return [*tests, SUMMARY_FILE, *CHECKPOINTS.values()] + [a.path for a in to_measure(ctx)]  # summary: full test


def run_bench(ctx: RunContext) -> dict:
    from edgekd.bench.measure import (ArtifactToMeasure, BenchSettings, measure_artifacts, measurement_context,
                                      measurement_steps)
    from edgekd.bench.sysinfo import machine_info

    b = ctx.config.bench
    settings = BenchSettings(warmup_s=b.warmup_s, min_iterations=b.min_iterations, min_seconds=b.min_seconds,
                             batch_sizes=tuple(b.batch_sizes), rounds=b.rounds)
    artifacts, target = to_measure(ctx), measuring_target(ctx)
    scored = ctx.has_test  # no real test split (data.kind: synthetic): no accuracy is claimed
    shapes = {model: tuple(ctx.test_arrays(model)[0].shape[1:] if scored else ctx.data_for(model).input_shape)
              for model in CHECKPOINTS}  # per view (C, H, W)
    steps = measurement_steps(len(artifacts), settings, data=scored)
    with ctx.ui.progress("measuring (interleaved, one process per artifact)", steps, unit="steps") as advance:
        measured = measure_artifacts([ArtifactToMeasure(a.name, a.runtime, ctx.run_dir / a.path, shapes[a.model],
                                                        ctx.run_dir / ctx.test_file(a.model) if scored else None)
                                      for a in artifacts],
                                     input_shape=shapes["student"], target=target, settings=settings,
                                     data=ctx.run_dir / ctx.test_file() if scored else None, progress=advance)
    rows = [_row(ctx, a, measured[a.name], shapes[a.model]) for a in artifacts]
    _add_full_test(ctx, artifacts, rows)
    measurement = measurement_context(target, settings)
    for note in measurement["notes"]:
        ctx.ui.warn(note)
    write_text_atomic(ctx.run_dir / BENCH_FILE, json.dumps({"machine": machine_info(), "measurement": measurement,
                                                           "rows": rows}, indent=2))
    fastest = min(rows, key=lambda r: r["latency_ms"]["p50"])
    return {"outputs": [BENCH_FILE], "summary": f"{len(rows)} artifacts; fastest {fastest['name']} "
            f"p50 {fastest['latency_ms']['p50']:.3f} ms"}


def _add_full_test(ctx: RunContext, artifacts: list[Artifact], rows: list[dict]) -> None:
    """When data/test.npz is a capped subset: every row's accuracy on the whole test split, streamed."""
    from edgekd.pipeline.full_test import score_full_test, test_file_is_subset

    if not test_file_is_subset(ctx):
        return
    scores = score_full_test(ctx, artifacts)
    for row in rows:
        row["accuracy_full_test"] = scores[row["name"]]


def _row(ctx: RunContext, artifact: Artifact, measurement, sample_shape) -> dict:
    path = ctx.run_dir / artifact.path
    scored = {"accuracy_split": "test"} if ctx.has_test else {"accuracy": None, "accuracy_unmeasured": UNMEASURED}
    return {**artifact.to_dict(), "size_mb": path.stat().st_size / 2**20,
            **_model_cost(ctx, artifact.model, sample_shape), **measurement.report_fields(), **scored}


def _model_cost(ctx: RunContext, model: str, sample_shape) -> dict:
    """Params and FLOPs of the PyTorch model an artifact was made from (same for every precision)."""
    from edgekd.models.io import load_model
    from edgekd.models.stats import count_flops, count_params

    net = load_model(ctx.run_dir / CHECKPOINTS[model])
    return {"params": count_params(net), "flops": count_flops(net, tuple(sample_shape))}


BENCH = Stage("bench", "latency, memory and accuracy of every artifact", run_bench,
              lambda ctx: ["bench", "targets"], _bench_inputs, lambda ctx: [BENCH_FILE],
              facts=lambda ctx: {"artifacts": [a.to_dict() for a in to_measure(ctx)]})

# ---------------------------------------------------------------- report


def run_report(ctx: RunContext) -> dict:
    from edgekd.report.core import assemble, render_markdown, write_json
    from edgekd.report.html import write_html

    bench = json.loads((ctx.run_dir / BENCH_FILE).read_text())
    dataset = student_dataset(ctx, json.loads((ctx.run_dir / SUMMARY_FILE).read_text()))
    results = {name: (read_record(ctx.run_dir, name) or {}).get("result", {}) for name in RESULT_STAGES}
    extra = {"teacher": _public(results["teacher"]), "student": _public(results["student"]),
             "export": results["export"].get("models"), "quantization": _public(results["quantize"]),
             **({"qat": _public(results["qat"])} if results["qat"].get("export") else {}),
             **({"synthetic": {**results["synthetic"]["transfer_set"], "training": results["student"].get("synthetic")}}
                if results["synthetic"].get("transfer_set") else {})}
    report = assemble(run={"name": ctx.config.name, "config": ctx.config.model_dump(mode="json")},
                      targets=[t.model_dump(mode="json") for t in ctx.targets], dataset=dataset,
                      machine=bench["machine"], measurement=bench["measurement"], rows=bench["rows"], extra=extra)
    if results["tensorrt"].get("builds"):
        report["tensorrt"] = {"builds": results["tensorrt"]["builds"], "variants": results["tensorrt"]["variants"]}
    plots = _search_report(ctx, report)
    if student_runs(ctx.run_dir):
        from edgekd.pipeline.students import student_rows

        report["students"] = student_rows(ctx.run_dir, report)
    report["on_device"] = on_device_steps(ctx, report)
    report["failures"] = [f for r in results.values() for f in r.get("failures", [])]
    report["notes"] = notes(ctx, report, results)
    write_json(report, ctx.run_dir / "report.json")
    (ctx.run_dir / "report.md").write_text(render_markdown(report))
    write_html(report, ctx.run_dir / "report.html")
    rec = report["recommended"]
    return {"outputs": REPORT_FILES + plots,
            "summary": f"recommended: {rec['name']} ({rec['why']})" if rec else
            f"no student artifact passes every {ctx.primary_target.name} check measured here"}


def student_dataset(ctx: RunContext, summary: dict) -> dict:
    """data/summary.json as the report shows it: with the search's chosen input size other than the configured
    student's (ctx.student_files), that size's view and files in place of the configured student's."""
    if ctx.student_files is None:
        return summary
    view = summary["searched_views"][str(ctx.config.student.input_size)]
    out = {**summary, "val_file": view["val_file"], "test_file": view["test_file"]}
    out.pop("student_view", None)
    if "calibration" in view:
        out["calibration"] = view["calibration"]
    if view["preprocess"] != summary["preprocess"]:  # the teacher's files: where the data stage wrote them
        teacher = {"val_file": {**summary["val_file"], "path": ctx.val_file("teacher")},
                   "test_file": {**summary["test_file"], "path": ctx.test_file("teacher")}}
        out["student_view"] = {"preprocess": view["preprocess"], "fingerprint": view["fingerprint"],
                               "teacher_files": teacher}
    return out


def _search_report(ctx: RunContext, report: dict) -> list[str]:
    """report.json `search` (the first target's section; every target's under `search_targets` when there are
    several) and each section's Pareto plot as a PNG beside report.md; returns the plot files."""
    from edgekd.pipeline.search_stage import report_sections
    from edgekd.search.report import pareto_plot, plot_file

    names = [t.name for t in ctx.targets]  # a student's run reports the targets it serves (edgekd.pipeline.students)
    sections = [s for s in report_sections(ctx.run_dir) if s["target"] in names]
    if not sections:
        return []
    report["search"] = sections[0]
    if len(sections) > 1:
        report["search_targets"] = sections
    written = []
    for section in sections:
        png = pareto_plot(section)
        if png is not None:
            name = plot_file(section, len(sections) > 1)
            write_bytes_atomic(ctx.run_dir / name, png)
            written.append(name)
    return written


def _report_outputs(ctx: RunContext) -> list[str]:
    if ctx.config.student.search is None:
        return REPORT_FILES
    from edgekd.search.report import plot_file

    several = len(ctx.targets) > 1
    return REPORT_FILES + [plot_file({"target": t.name}, several) for t in ctx.targets]


def _report_inputs(ctx: RunContext) -> list[str]:
    from edgekd.pipeline.students import sub_reports

    return [BENCH_FILE, SUMMARY_FILE] + [f"{RECORDS}/{stage}.json" for stage in RESULT_STAGES] + sub_reports(ctx.run_dir)


def _public(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in ("summary", "artifacts", "failures")}


def on_device_steps(ctx: RunContext, report: dict) -> list[dict]:
    """For every ONNX Runtime target this host is not: the commands that measure its artifacts there."""
    unmeasured = {name: v["not_measured_on_target"] for a in report["artifacts"]
                  for name, v in a["budgets"].items() if not v["measured_on_target"]}
    steps = []
    for target in ctx.targets:
        files = [a.path for a in current_artifacts(ctx.run_dir, target=target.name, stages=UPSTREAM)
                 if a.runtime == "onnxruntime" and a.model == "student"]
        if target.name in unmeasured and target.runtime == "onnxruntime" and files:
            steps.append({"target": target.name, "why": unmeasured[target.name], "files": files,
                          "commands": device_commands(ctx, target.name, files)})
    return steps


def device_commands(ctx: RunContext, target: str, files: list[str]) -> list[str]:
    run, bundle = shlex.quote(str(ctx.run_dir)), f"edgekd-{ctx.config.name}"
    models = " ".join(f"{bundle}/{f}" for f in files)
    return [f"# here: bundle the {target} files and copy them over (USER@HOST: your device)",
            f"edgekd ship {run} --target {target} --to USER@HOST:{bundle}",
            "# on the device (pip install \"edgekd[ort]\", no torch needed)",
            f"edgekd verify {bundle}",
            f"edgekd bench {models} --target {target}"
            + (f" --data {bundle}/{TEST_FILE}" if ctx.has_test else "") + f" --out {target}-report",
            f"# here again, after copying {target}-report/report.json back",
            f"edgekd report merge {run}/report.json {target}-report/report.json -o merged.md"]


def notes(ctx: RunContext, report: dict, results: dict) -> list[str]:
    out = []
    teacher = results["teacher"]
    if teacher:
        out.append(f"Teacher weights: {teacher.get('source')}" + (f", trained {teacher.get('epochs')} epochs here"
                                                                   if teacher.get("trained") else ""))
        out += teacher.get("warnings", [])
        if teacher.get("finetune"):  # data.kind: synthetic: why the teacher was used as loaded
            out.append(f"Teacher {teacher['finetune']}.")
    out += config_warnings(ctx.config)
    out += report["measurement"].get("notes", [])
    for step in report["on_device"]:
        out.append(f"{step['target']}: {step['why']}, so its latency and memory verdicts are left open "
                   f"(budget pass: null); \"Measuring on {step['target']}\" below says how to measure there.")
    for fail in report["failures"]:
        out.append(f"{fail['check']} failed: {fail['message'].splitlines()[0]} Nothing from it is in this report; "
                   "the other artifacts are unaffected, and `edgekd compress` exits with code 5.")
    out += _dataset_notes(report["dataset"], report["artifacts"])
    student = results["student"]
    if student:
        out.append(f"Teacher-output cache: {student.get('teacher_cache')}.")
        used, synthetic = student.get("student_data"), student.get("synthetic")
        if synthetic and synthetic["fraction_per_batch"] == 1:
            out.append(f"Student training data: the {synthetic['images']} synthetic transfer images alone "
                       "(data.synthetic), no real training sample; teacher soft targets only.")
        elif used and (used["samples"] < used["train_split"] or used["unlabeled"] or synthetic):
            withheld = " (withheld from teacher training too)" if used["unlabeled"] else ""
            out.append(f"Student training data: {used['samples']} of {used['train_split']} training samples, "
                       f"{used['unlabeled']} of them used without labels{withheld}"
                       + (f", mixed with {synthetic['images']} synthetic images ({synthetic['fraction_per_batch']:.0%} "
                          "of every batch)." if synthetic else "."))
    out += _export_notes(report)
    out += _int8_notes(report, results["quantize"])
    return out


def _dataset_notes(dataset: dict, artifacts: list[dict]) -> list[str]:
    out = []
    test_file, val_file = dataset.get("test_file") or {}, dataset.get("val_file") or {}
    if test_file and test_file["samples"] < test_file["of"]:
        out.append(f"Accuracy is on a stratified {test_file['samples']} of the {test_file['of']} test samples "
                   f"(`{test_file['path']}` is capped so a device can hold it).")
        full = [f"{a['name']} {a['accuracy_full_test']:.4f}" for a in artifacts if "accuracy_full_test" in a]
        if full:
            out.append(f"On the whole test split ({test_file['of']} samples, streamed on this workstation): "
                       + ", ".join(full) + ".")
    if val_file and val_file["samples"] < val_file["of"]:
        out.append(f"The INT8 gate and parity checks use a stratified {val_file['samples']} of the {val_file['of']} "
                   f"validation samples (`{val_file['path']}`); validation accuracies are on all of them.")
    out += [note for note in [_bounded_files_note(dataset)] if note]
    skipped = dataset.get("skipped_images") or []
    if skipped:
        names = ", ".join(skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        out.append(f"{len(skipped)} unreadable image(s) left out (data.on_bad_image: skip): {names}.")
    if dataset.get("cache"):
        size = sum(c["bytes"] for c in dataset["cache"].values()) / 2**20
        out.append(f"Images were read from the uint8 cache ({size:.1f} MiB, "
                   f"{sum(c['records'] for c in dataset['cache'].values())} images).")
    return out


def _bounded_files_note(dataset: dict) -> str:
    """The sizes of the capped, stratified files the run's checks and devices read."""
    parts = [f"`{f['path']}` {f['samples']} of {f['of']} {what} samples"
             for what, f in (("validation", dataset.get("val_file")), ("test", dataset.get("test_file"))) if f]
    calib = dataset.get("calibration")
    if calib:
        parts.append(f"`{CALIB_FILE}` {calib['samples']} {calib['split']} samples")
    return "Bounded sample files (stratified, capped): " + "; ".join(parts) + "." if parts else ""


def _export_notes(report: dict) -> list[str]:
    out = []
    for name, exp in (report.get("export") or {}).items():
        if exp.get("fallback_error"):
            out.append(f"{name} export fell back to {exp['exporter']}: {exp['fallback_error']}")
        if exp.get("simplify_note") and not exp.get("simplified"):
            out.append(f"{name} ONNX kept unsimplified: {exp['simplify_note']}")
    return out


def _int8_notes(report: dict, quantize: dict) -> list[str]:
    """Per INT8 file: its speed against the FP32 student here, and why, from the quantize stage's profile."""
    from edgekd.quantize.explain import int8_speed_note

    rows = {r["path"]: r for r in report["artifacts"]}
    fp32 = rows.get("student.onnx")
    out = []
    for file in quantize.get("files") or []:
        if fp32 is not None and file["file"] in rows:
            out.append(int8_speed_note(file, rows[file["file"]]["latency_ms"]["p50"], fp32["latency_ms"]["p50"]))
    qat, ptq = rows.get("student.qat.onnx"), next((rows[f["file"]] for f in quantize.get("files") or []
                                                    if f["file"] in rows), None)
    if qat is not None and ptq is not None:
        out.append(f"Quantization-aware INT8 student: accuracy {qat['accuracy']:.4f} vs {ptq['accuracy']:.4f} for "
                   f"post-training INT8 ({ptq['name']}, {qat['accuracy'] - ptq['accuracy']:+.4f}).")
    return out


REPORT = Stage("report", "write report.json, report.md and report.html", run_report,
               lambda ctx: [WHOLE_CONFIG, "targets"], _report_inputs, _report_outputs)  # it embeds both
