"""report.json (the stable contract other tools read) and report.md.

Schema version 2, top level:
    schema_version, edgekd_version, created, run, target (the first of `targets:`), targets[],
    dataset {source, splits {train, val, test}, split_origin, test_file, classes, preprocess (the teacher's input),
             student_view {preprocess, fingerprint, teacher_files} only when the student has its own input},
    machine, measurement {arch, cores, session_target, threads, graph_optimization_level, notes},
    teacher, student, export, quantization, recommended, recommended_by_target, on_device[], notes[]
quantization: reference_val_accuracy, files[] (one per INT8 scheme: file, artifact, targets, scheme {types,
    activations, weights, reduce_range, reason, ...}, max_int8_drop, gate_passed, val_accuracy, attempts[],
    chosen, speed {timed, verdict, fp32_ms_p50, int8_ms_p50, profile {costly_units[], ...}}).
Each artifact (see `ARTIFACT_KEYS`):
    name, model (teacher|student), runtime, precision, path, targets, accuracy (test split),
    accuracy_samples, accuracy_drop_vs_teacher, latency_ms {p50,p90,p95,p99,mean,std,min,max},
    throughput_ips, peak_rss_mb, load_s, size_mb, params, flops, speedup_vs_teacher,
    memory_ratio_vs_teacher, batch_sweep, budgets {target: verdict}, budget (the first target's verdict)
A verdict: target, latency_ms, memory_mb, max_accuracy_drop, measured_on_target, checks{...}, pass —
pass is null when the row was not measured on that target (another arch or runtime): only its
accuracy check applies there, the latency and memory checks wait for a measurement on the device.
Changes from 1: dataset.splits replaces dataset.train/val; budgets, measured_on_target, pass null.
Torch-free: it only formats numbers the stages measured.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from edgekd import __version__

SCHEMA_VERSION = 2
UNMEASURED = "accuracy unmeasured (no real labelled data)"  # data.kind: synthetic, wherever an accuracy would be
READABLE_SCHEMAS = (1, 2)  # report.json versions `edgekd report merge` and `edgekd ship` read
ARTIFACT_KEYS = ("name", "model", "runtime", "precision", "path", "accuracy", "latency_ms", "peak_rss_mb",
                 "size_mb", "budget", "budgets")


def measured_on(target: dict, runtime: str, measurement: dict) -> str | None:
    """None when a row measured here (`measurement`: bench's arch and session settings) stands for
    `target`; else why not. The PyTorch reference stands in for CPU (onnxruntime) targets."""
    name = target["name"]
    if measurement.get("arch") != target["arch"]:
        return f"measured on {measurement.get('arch')}; {name} is {target['arch']}"
    if runtime != target["runtime"] and not (runtime == "pytorch" and target["runtime"] == "onnxruntime"):
        return f"measured with {runtime}; {name} runs {target['runtime']}"
    threads = min(target["threads"], measurement.get("cores") or target["threads"])
    asked = (threads, target.get("graph_optimization_level", "all"))
    used = (measurement.get("threads"), measurement.get("graph_optimization_level", "all"))
    if measurement.get("threads") is not None and asked != used:
        return f"measured with {used[0]} threads and {used[1]} graph optimization; {name} asks for {asked[0]} and {asked[1]}"
    return None


def judge(row: dict, target: dict, teacher_accuracy: float | None, measurement: dict) -> dict:
    """One artifact against one target's budgets, check by check. Latency and memory are judged only
    when measured on that target; a student's accuracy drop vs the teacher always is."""
    budgets = target["budgets"]
    why_not = measured_on(target, row["runtime"], measurement)
    checks = {}
    if why_not is None:
        checks["latency"] = row["latency_ms"]["p50"] <= budgets["latency_ms"]
        if budgets.get("memory_mb") is not None and row.get("peak_rss_mb") is not None:
            checks["memory"] = row["peak_rss_mb"] <= budgets["memory_mb"]
    if teacher_accuracy is not None and row["model"] == "student" and row.get("accuracy") is not None:
        checks["accuracy"] = teacher_accuracy - row["accuracy"] <= budgets["max_accuracy_drop"]
    verdict = {"target": target["name"], "latency_ms": budgets["latency_ms"], "memory_mb": budgets.get("memory_mb"),
               "max_accuracy_drop": budgets["max_accuracy_drop"], "measured_on_target": why_not is None,
               "checks": checks, "pass": all(checks.values()) if why_not is None else None}
    if why_not is not None:
        verdict["not_measured_on_target"] = why_not
    return verdict


def verdict_word(budget: dict | None) -> str:
    """pass / FAIL (checks) / not measured on target (+ accuracy verdict) / n/a, as every report prints it."""
    if not budget:
        return "n/a"
    failed = [k for k, ok in budget.get("checks", {}).items() if not ok]
    if budget.get("pass") is None and budget.get("measured_on_target") is False:
        accuracy = budget.get("checks", {}).get("accuracy")
        suffix = "" if accuracy is None else (", accuracy ok" if accuracy else ", FAIL accuracy")
        return f"not measured on {budget.get('target', 'target')}{suffix}"
    if budget.get("pass"):
        return "pass"
    return "FAIL" + (" (" + ", ".join(failed) + ")" if failed else "")


def assemble(*, run: dict, targets: list[dict], dataset: dict, machine: dict, measurement: dict, rows: list[dict],
             extra: dict) -> dict:
    """The report dict: rows gain teacher-relative ratios and one verdict per target."""
    teacher = next((r for r in rows if r["model"] == "teacher" and r["runtime"] == "pytorch"), None)
    teacher_acc = teacher["accuracy"] if teacher else None
    for row in rows:
        if teacher is not None:
            row["speedup_vs_teacher"] = teacher["latency_ms"]["p50"] / row["latency_ms"]["p50"]
            row["memory_ratio_vs_teacher"] = (row["peak_rss_mb"] / teacher["peak_rss_mb"]
                                              if teacher.get("peak_rss_mb") else None)
            row["accuracy_drop_vs_teacher"] = (None if teacher_acc is None or row["accuracy"] is None
                                               else teacher_acc - row["accuracy"])
        row["budgets"] = {t["name"]: judge(row, t, teacher_acc, measurement) for t in targets}
        row["budget"] = row["budgets"][targets[0]["name"]]
    missing = [(r.get("name"), k) for r in rows for k in ARTIFACT_KEYS if k not in r]
    if missing:  # a programming error, not user input: the contract must hold
        raise ValueError(f"report rows lack required keys: {missing}")
    report = {"schema_version": SCHEMA_VERSION, "edgekd_version": __version__,
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "run": run, "target": targets[0], "targets": targets,
              "dataset": dataset, "machine": machine, "measurement": measurement, **extra, "artifacts": rows}
    report["recommended_by_target"] = {t["name"]: recommend(rows, t["name"]) for t in targets}
    report["recommended"] = report["recommended_by_target"][targets[0]["name"]]
    return report


def recommend(rows: list[dict], target: str) -> dict | None:
    """The fastest student artifact made for `target` (an INT8 file is typed for its targets' CPUs) that
    passes every check of `target` — measured there, never assumed."""
    passing = [r for r in rows if r["model"] == "student" and r["budgets"][target]["pass"]
               and (not r.get("targets") or target in r["targets"])]
    if not passing:
        return None
    best = min(passing, key=lambda r: r["latency_ms"]["p50"])
    others = [r for r in passing if r is not best]
    why = f"fastest student passing every {target} budget"
    if others:
        runner_up = min(others, key=lambda r: r["latency_ms"]["p50"])
        why += f"; {runner_up['name']} was {runner_up['latency_ms']['p50'] / best['latency_ms']['p50']:.2f}× slower"
    return {"name": best["name"], "path": best["path"], "why": why}


def write_json(report: dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(report, indent=2, default=_jsonable))
    tmp.replace(path)


def _jsonable(value):
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def input_text(dataset: dict) -> str:
    """The models' input as C×H×W: one shape, or the teacher's and the student's own (student.input_size /
    channels: dataset.student_view)."""
    def shape(pre: dict) -> str:
        return f"{pre['channels']}×{pre['input_size']}×{pre['input_size']}"

    student = (dataset.get("student_view") or {}).get("preprocess")
    if student is None:
        return shape(dataset["preprocess"])
    return (f"teacher {shape(dataset['preprocess'])}, student {shape(student)} (its own view of each sample: "
            f"mean {_means(student['mean'])}, std {_means(student['std'])})")


def _means(values) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in values) + ")"


def real_data(report: dict) -> bool:
    """False for a run without real labelled data (data.kind: synthetic): no accuracy was measured."""
    return report["dataset"].get("real_data", True)


def report_only(report: dict) -> bool:
    """data.use: report: real labels scored the report, held-out synthetic images made every choice."""
    return report["dataset"].get("use") == "report"


def _dataset_line(report: dict) -> str:
    d = report["dataset"]
    splits, test_file = d["splits"], d.get("test_file") or {}
    shape = input_text(d)
    if not real_data(report):
        return (f"Dataset: {d['source']}; {len(d['classes'])} classes, input {shape}. **{UNMEASURED[0].upper()}"
                f"{UNMEASURED[1:]}**: every accuracy cell says so, and no accuracy budget is judged.")
    return (f"Dataset: {d['source']} — {splits['train']} train / {splits['val']} validation / {splits['test']} test "
            f"images, {len(d['classes'])} classes, input {shape}. Accuracy is on "
            f"{test_file.get('samples', splits['test'])} test samples (`{test_file.get('path', 'data/test.npz')}`), "
            "a split used for no choice.")


def _accuracy_cell(a: dict) -> str:
    return "unmeasured (no real labelled data)" if a.get("accuracy") is None else f"{a['accuracy']:.4f}"


def render_markdown(report: dict) -> str:
    names = [t["name"] for t in report["targets"]]
    lines = [f"# edgekd report — {report['run']['name']}", "", *_target_lines(report), _dataset_line(report),
             f"Measured on: {_machine_line(report.get('machine', {}))}. Created {report['created']} by edgekd "
             f"{report['edgekd_version']}.", "",
             "| artifact | runtime | precision | accuracy | Δ vs teacher | p50 ms | p90 ms | p99 ms | throughput img/s | "
             "peak RSS MB | size MB | params | MFLOPs | speed-up | " + " | ".join(f"budget {n}" for n in names) + " |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + "---|" * len(names)]
    for a in report["artifacts"]:
        lat = a["latency_ms"]
        lines.append(
            f"| {a['name']} | {a['runtime']} | {a['precision']} | {_accuracy_cell(a)} | "
            f"{_signed(a.get('accuracy_drop_vs_teacher')) if a['model'] == 'student' else '—'} | {lat['p50']:.3f} | {lat['p90']:.3f} | {lat['p99']:.3f} | "
            f"{a.get('throughput_ips', 0):,.0f} | {_num(a.get('peak_rss_mb'))} | {a['size_mb']:.2f} | "
            f"{_count(a.get('params'))} | {_num(a.get('flops', 0) / 1e6 if a.get('flops') else None)} | "
            f"{_ratio(a.get('speedup_vs_teacher'))} | " + " | ".join(verdict_word(a["budgets"][n]) for n in names) + " |"
        )
    lines += ["", *_sections(report)]
    return "\n".join(lines) + "\n"


def _target_lines(report: dict) -> list[str]:
    """One line per target: its budgets, and whether this report measured it."""
    measured_here = {t for a in report["artifacts"] for t, v in a["budgets"].items() if v["measured_on_target"]}
    lines = []
    for t in report["targets"]:
        b = t["budgets"]
        where = ("measured here" if t["name"] in measured_here
                 else "**not measured here** (latency and memory verdicts wait for the device; see below)")
        lines.append(f"Target **{t['name']}** ({t.get('description', '')}), {where}: p50 ≤ {b['latency_ms']:g} ms at "
                     f"batch 1" + (f", peak memory ≤ {b['memory_mb']:g} MB" if b.get("memory_mb") else "")
                     + (f", student accuracy ≤ {b['max_accuracy_drop']:.3f} below the teacher's (test split)."
                        if real_data(report) else " (its accuracy budget is not judged: accuracy unmeasured, no "
                        "real labelled data)."))
    measure = _gate_measure(report)
    for file in (report.get("quantization") or {}).get("files") or []:
        what = (f"its {measure} ≤ {file['max_int8_drop']:.3f} below the FP32 student's" if measure == "val accuracy"
                else f"its top-1 {measure} ≥ {1 - file['max_int8_drop']:.3f}")
        lines.append(f"INT8 gate for `{file['file']}` ({', '.join(file['targets'])}): {what} "
                     "(`quantize.max_int8_drop`, else the strictest `budgets.max_int8_drop` of the targets it serves).")
    return lines + [""]


def _gate_measure(report: dict) -> str:
    """What the INT8 gate scored: val accuracy, or (no real labels) agreement with the FP32 student."""
    return (report.get("quantization") or {}).get("gate_measure") or "val accuracy"


def _sections(report: dict) -> list[str]:
    out = []
    for note in report.get("notes", []):
        out.append(f"- {note}")
    if out:
        out = ["## Notes", "", *out, ""]
    for file in (report.get("quantization") or {}).get("files") or []:
        out += _int8_section(file, _gate_measure(report))
    out += _students_section(report)
    out += _search_section(report)
    out += _synthetic_section(report.get("synthetic"), real_data(report) and not report_only(report),
                              real_data(report))
    out += _on_device_section(report.get("on_device") or [])
    out += _tensorrt_section(report.get("tensorrt"))
    out += ["## How to read this", "",
            "- Latency: batch 1, after a timed warm-up, each artifact in its own fresh process, rounds interleaved "
            "across artifacts so machine noise hits all alike. Peak RSS is the process's peak resident memory over "
            "its baseline before the model was loaded.",
            "- Accuracy: top-1 on the test split (`data/test.npz`), which no choice used (best epochs, early stopping "
            "and the INT8 gate chose on the validation split), run through the artifact's own runtime."
            if real_data(report) and not report_only(report) else
            "- Accuracy: top-1 on the real test split (`data/test.npz`), run through the artifact's own runtime; "
            "with data.use: report it is the only real data read. Best epochs chose on agreement with the teacher, "
            "and the INT8 gate on agreement with the FP32 student, both on held-out synthetic images."
            if real_data(report) else
            f"- Accuracy: {UNMEASURED}. Best epochs chose on agreement with the teacher, and the INT8 gate on "
            "agreement with the FP32 student, both on held-out synthetic images no student trained on: these "
            "agreements say how faithfully the student copies the teacher on the teacher's own images, not how "
            "often either is right on real ones.",
            "- Budget, one column per target: p50 latency, peak memory and (students) accuracy drop vs the PyTorch "
            "teacher, from the target profile. A target this host is not (another CPU architecture or runtime) gets "
            "its accuracy check only: its latency and memory are measured on the device.",
            "- INT8 is not assumed faster: every precision is measured; the `recommended` artifact is the fastest one "
            "that passes every check of the first target.",
            ""]
    return out


def _int8_section(file: dict, measure: str = "val accuracy") -> list[str]:
    """One INT8 file: its types and why, then every gate attempt and why it lost (accuracy first, then speed)."""
    s, speed = file["scheme"], file.get("speed") or {}
    verdict = speed.get("verdict") or speed.get("why") or ""
    agreement = not measure.startswith("val accuracy")
    bound = (f"top-1 {measure} ≥ {1 - file['max_int8_drop']:g}" if agreement else
             f"{measure} drop ≤ {file['max_int8_drop']:g} vs the FP32 student")
    outcome = (f"{'Agreement' if agreement else 'Accuracy'} bound: {bound}. " + verdict
               if file.get("gate_passed", True) else
               f"**No attempt stayed within the bound** ({bound}): no such file, ship FP32 to these targets")
    out = [f"## INT8 file `{file['file']}` for {', '.join(file['targets'])}", "",
           f"Types {s['types']} ({s['activations']} activations, {s['weights']} weights"
           + (", 7-bit" if s.get("reduce_range") else "") + f"): {s['reason']}. {outcome}".rstrip() + ".", "",
           ("The gate's search, on held-out synthetic images: top-1 agreement with the FP32 student, not accuracy."
            if agreement else "The gate's search, on the validation split (selection): these accuracies are not the "
            "report's test figures."), "",
           f"| # | step | method | per-channel | form | float nodes | {'agreement' if agreement else 'val accuracy'} "
           "| p50 ms | outcome |",
           "|---:|---|---|---|---|---:|---:|---:|---|"]
    for i, att in enumerate(file["attempts"], 1):
        out.append(f"| {i} | {att.get('purpose', '')} | {att['method']} | {att['per_channel']} | "
                   f"{att.get('quant_format', 'qdq').upper()} | {len(att.get('excluded_nodes', []))} | "
                   f"{att['accuracy']:.4f} | {_num(att.get('latency_ms_p50'), 3)} | "
                   f"{att.get('outcome') or ('pass' if att['passed'] else 'fail')} |")
    return out + [""]


STUDENT_COLUMNS = ("target", "student", "run directory", "artifact", "accuracy", "p50 ms", "budget ms", "verdict")


def student_cells(row: dict) -> list[str]:
    """One row of report.json `students` (a target, the student the search chose for it, its artifact there)."""
    if row.get("artifact") is None:
        return [row["target"], row["student"], row["run"], "—", "—", "—", "—", "no student artifact for it"]
    verdict = "pass" if row["pass"] else ("not measured here" if row["pass"] is None else "FAIL")
    return [row["target"], row["student"], row["run"], row["artifact"], f"{row['accuracy']:.4f}",
            f"{row['p50_ms']:.3f}", f"{row['budget_ms']:g}", verdict]


def _students_section(report: dict) -> list[str]:
    """student.search with several students (per_target): which student each target got, and its p50 there."""
    rows = report.get("students") or []
    if len({r["student"] for r in rows}) < 2:
        return []
    out = ["## One student per target", "",
           "Each target's student and its artifact for it (the recommended one, else the fastest), from the report "
           "in its run directory (`.` is this one).", "",
           "| " + " | ".join(STUDENT_COLUMNS) + " |", "|---|---|---|---|---:|---:|---:|---|"]
    return out + ["| " + " | ".join(student_cells(r)) + " |" for r in rows] + [""]


def _search_section(report: dict) -> list[str]:
    """student.search: per target, the choice, the Pareto plot (a PNG beside report.md) and every candidate."""
    from edgekd.search.report import COLUMNS, candidate_cells, cost_line, headline, plot_file

    sections = report.get("search_targets") or ([report["search"]] if report.get("search") else [])
    out = ["## Student search", ""] if sections else []
    for section in sections:
        out += [headline(section), "", f"![latency against proxy accuracy]({plot_file(section, len(sections) > 1)})",
                "", "| " + " | ".join(COLUMNS) + " |", "|---|---|---:|---:|---:|---:|---|"]
        out += ["| " + " | ".join(f"**{c}**" if chosen and i == 0 else c for i, c in enumerate(cells)) + " |"
                for chosen, cells in candidate_cells(section)]
        out += ["", cost_line(section), ""]
    return out


def _synthetic_section(synthetic: dict | None, real: bool = True, scored: bool = True) -> list[str]:
    """data.synthetic: how the transfer images were made, how many, how the student used them."""
    if not synthetic:
        return []
    how = ("reused (found complete on disk, nothing generated)" if synthetic["reused"] else
           f"resumed an interrupted generation ({synthetic['resumed_from']} images were on disk)"
           if synthetic["resumed_from"] else "generated in this run")
    counts = synthetic.get("label_counts") or []
    training = synthetic.get("training") or {}
    share = training.get("fraction_per_batch")
    used = ("the student trained on them alone" if share == 1 else
            f"{share:.0%} of every student batch synthetic, the rest {training.get('real_samples')} real training "
            "samples" if share is not None else "")
    out = ["## Synthetic transfer images (data.synthetic)", "",
           f"- {synthetic['count']} images by `{synthetic['method']}` (seed {synthetic.get('seed')}), {how}; "
           f"generation {synthetic['seconds']:.1f} s in this run; store `{synthetic['path']}` (key "
           f"{synthetic['key'][:16]}).",
           f"- {used}; their labels are only the teacher's outputs, so the student learned from its soft targets "
           "(no hard labels)." if used else "",
           "- The teacher's argmax on them, per class: " + ", ".join(f"{i}: {n}" for i, n in enumerate(counts)) + ".",
           "- Accuracy above is measured on the real validation/test splits of `data.kind`; INT8 calibration "
           "samples come from the real training split (`quantize.calibration`)." if real
           else _held_out_line(synthetic, scored),
           "- Settings: " + ", ".join(f"{k} {v}" for k, v in (synthetic.get("settings") or {}).items()
                                      if k != "method") + "."]
    return [line for line in out if line] + [""]


def _held_out_line(synthetic: dict, scored: bool = False) -> str:
    """data.kind: synthetic / data.use: report: what stood in for the real validation split and calibration set."""
    held = synthetic.get("held_out") or {}
    val, calib = held.get("val_file") or {}, held.get("calibration")
    line = (("- data.use: report: the real labelled data scored the report's accuracy (its test split) and made no "
             "choice: " if scored else "- No real labelled data: ")
            + f"{val.get('samples')} of the {val.get('of')} images were held out of training "
            f"(`{val.get('path')}`, labelled with the teacher's argmax): best epochs chose on the student's agreement "
            "with the teacher there" + ("." if scored else ", and export parity and the device checks run on them. "
                                        + UNMEASURED[0].upper() + UNMEASURED[1:] + "."))
    if calib:
        line += f" INT8 calibration: {calib['samples']} {calib['from']} (`{calib['path']}`)."
    return line


def _on_device_section(steps: list[dict]) -> list[str]:
    """Commands that measure a target this report could not: ship, verify and bench there, merge here."""
    out = []
    for step in steps:
        out += [f"## Measuring on {step['target']}", "",
                f"These rows were measured on this host, not on {step['target']} ({step['why']}). To measure there:",
                "", "```", *step["commands"], "```", ""]
    return out


def _tensorrt_section(trt: dict | None) -> list[str]:
    """On-device steps for Jetson targets: engines are built where they run."""
    if not trt or not trt.get("builds"):
        return []
    out = ["## Deploying to Jetson", "",
           "TensorRT engines are tied to the TensorRT version and GPU they were built with, so they are built on "
           "the device. Ship the bundle (`edgekd ship RUN_DIR --target T --to user@jetson:path`), then on the device:",
           ""]
    for b in trt["builds"]:
        out += [f"**{b['target']}** (JetPack {b['jetpack']}, TensorRT {b['tensorrt']}), {b['precision']} from "
                f"`{b['onnx']}` ({'strongly' if b['plan']['strongly_typed'] else 'weakly'} typed):", "", "```",
                *b["commands"], "```", ""]
    return out


def _machine_line(m: dict) -> str:
    versions = m.get("versions", {})
    libs = ", ".join(f"{k} {versions[k]}" for k in ("onnxruntime", "torch") if k in versions)
    parts = [m.get("cpu"), f"{m['cores']} cores" if m.get("cores") else None, m.get("os"), libs]
    return ", ".join(p for p in parts if p) or "this machine"


def _signed(v) -> str:
    return "—" if v is None else f"{-v:+.4f}"


def _num(v, digits: int = 1) -> str:
    return "—" if v is None else f"{v:,.{digits}f}"


def _count(v) -> str:
    return "—" if not v else (f"{v / 1e6:.2f}M" if v >= 1e6 else f"{v / 1e3:.0f}K")


def _ratio(v) -> str:
    return "—" if v is None else f"{v:.1f}×"
