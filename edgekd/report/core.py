"""report.json (the stable contract other tools read) and report.md.

Schema version 1, top level:
    schema_version, edgekd_version, created, run, target, dataset, machine,
    teacher, student, export, quantization, artifacts[], notes[]
Each artifact (see `ARTIFACT_KEYS`):
    name, model (teacher|student), runtime, precision, path, accuracy,
    accuracy_drop_vs_teacher, latency_ms {p50,p90,p99,mean,std,min,max},
    throughput_ips, peak_rss_mb, load_s, size_mb, params, flops,
    speedup_vs_teacher, memory_ratio_vs_teacher, batch_sweep,
    budget {latency_ms, memory_mb, max_accuracy_drop, checks{...}, pass}
Torch-free: it only formats numbers the stages measured.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from edgekd import __version__

SCHEMA_VERSION = 1
ARTIFACT_KEYS = ("name", "model", "runtime", "precision", "path", "accuracy", "latency_ms", "peak_rss_mb",
                 "size_mb", "budget")


def judge(row: dict, budgets: dict, teacher_accuracy: float | None) -> dict:
    """Pass/fail of one artifact against a target's budgets, check by check."""
    drop = None if teacher_accuracy is None else teacher_accuracy - row["accuracy"]
    checks = {"latency": row["latency_ms"]["p50"] <= budgets["latency_ms"]}
    if budgets.get("memory_mb") is not None and row.get("peak_rss_mb") is not None:
        checks["memory"] = row["peak_rss_mb"] <= budgets["memory_mb"]
    if drop is not None and row["model"] == "student":
        checks["accuracy"] = drop <= budgets["max_accuracy_drop"]
    return {"latency_ms": budgets["latency_ms"], "memory_mb": budgets.get("memory_mb"),
            "max_accuracy_drop": budgets["max_accuracy_drop"], "checks": checks, "pass": all(checks.values())}


def assemble(*, run: dict, target: dict, dataset: dict, machine: dict, rows: list[dict], extra: dict) -> dict:
    """The report dict: rows gain teacher-relative ratios and a budget verdict."""
    teacher = next((r for r in rows if r["model"] == "teacher" and r["runtime"] == "pytorch"), None)
    teacher_acc = teacher["accuracy"] if teacher else None
    for row in rows:
        if teacher is not None:
            row["speedup_vs_teacher"] = teacher["latency_ms"]["p50"] / row["latency_ms"]["p50"]
            row["memory_ratio_vs_teacher"] = (row["peak_rss_mb"] / teacher["peak_rss_mb"]
                                              if teacher.get("peak_rss_mb") else None)
            row["accuracy_drop_vs_teacher"] = teacher_acc - row["accuracy"]
        row["budget"] = judge(row, target["budgets"], teacher_acc)
    missing = [(r.get("name"), k) for r in rows for k in ARTIFACT_KEYS if k not in r]
    if missing:  # a programming error, not user input: the contract must hold
        raise ValueError(f"report rows lack required keys: {missing}")
    return {"schema_version": SCHEMA_VERSION, "edgekd_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "run": run, "target": target, "dataset": dataset,
            "machine": machine, **extra, "artifacts": rows}


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


def render_markdown(report: dict) -> str:
    t, d = report["target"], report["dataset"]
    lines = [
        f"# edgekd report — {report['run']['name']}",
        "",
        f"Target **{t['name']}** ({t.get('description', '')}): budget p50 ≤ {t['budgets']['latency_ms']:g} ms at batch 1"
        + (f", peak memory ≤ {t['budgets']['memory_mb']:g} MB" if t["budgets"].get("memory_mb") else "")
        + f", accuracy drop ≤ {t['budgets']['max_accuracy_drop']:.3f} vs the teacher.",
        f"Dataset: {d['source']} — {d['train']} train / {d['val']} validation images, {len(d['classes'])} classes, "
        f"input {d['preprocess']['channels']}×{d['preprocess']['input_size']}×{d['preprocess']['input_size']}.",
        f"Measured on: {_machine_line(report.get('machine', {}))}. Created {report['created']} by edgekd {report['edgekd_version']}.",
        "",
        "| artifact | runtime | precision | accuracy | Δ vs teacher | p50 ms | p90 ms | p99 ms | throughput img/s | "
        "peak RSS MB | size MB | params | MFLOPs | speed-up | budget |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for a in report["artifacts"]:
        lat = a["latency_ms"]
        lines.append(
            f"| {a['name']} | {a['runtime']} | {a['precision']} | {a['accuracy']:.4f} | "
            f"{_signed(a.get('accuracy_drop_vs_teacher')) if a['model'] == 'student' else '—'} | {lat['p50']:.3f} | {lat['p90']:.3f} | {lat['p99']:.3f} | "
            f"{a.get('throughput_ips', 0):,.0f} | {_num(a.get('peak_rss_mb'))} | {a['size_mb']:.2f} | "
            f"{_count(a.get('params'))} | {_num(a.get('flops', 0) / 1e6 if a.get('flops') else None)} | "
            f"{_ratio(a.get('speedup_vs_teacher'))} | {_verdict(a['budget'])} |"
        )
    lines += ["", *_sections(report)]
    return "\n".join(lines) + "\n"


def _sections(report: dict) -> list[str]:
    out = []
    for note in report.get("notes", []):
        out.append(f"- {note}")
    if out:
        out = ["## Notes", "", *out, ""]
    for file in (report.get("quantization") or {}).get("files") or []:
        out += _int8_section(file)
    out += _tensorrt_section(report.get("tensorrt"))
    out += ["## How to read this", "",
            "- Latency: batch 1, after a timed warm-up, each artifact in its own fresh process, rounds interleaved "
            "across artifacts so machine noise hits all alike. Peak RSS is the process's peak resident memory over "
            "its baseline before the model was loaded.",
            "- Accuracy: top-1 on the held-out validation split (`data/val.npz`), run through the artifact's own runtime.",
            "- Budget: p50 latency, peak memory and (students) accuracy drop vs the PyTorch teacher, from the target profile.",
            "- INT8 is not assumed faster: every precision is measured; the `recommended` artifact is the fastest one that passes.",
            ""]
    return out


def _int8_section(file: dict) -> list[str]:
    """One INT8 file: its types and why, then every gate attempt and why it lost (accuracy first, then speed)."""
    s = file["scheme"]
    out = [f"## INT8 file `{file['file']}` for {', '.join(file['targets'])}", "",
           f"Types {s['types']} ({s['activations']} activations, {s['weights']} weights"
           + (", 7-bit" if s.get("reduce_range") else "") + f"): {s['reason']}. Accuracy bound: drop ≤ "
           f"{file['max_accuracy_drop']:g} vs the FP32 student. "
           + (file["speed"].get("verdict") or file["speed"].get("why", "")) + ".", "",
           "| # | step | method | per-channel | form | float nodes | accuracy | p50 ms | outcome |",
           "|---:|---|---|---|---|---:|---:|---:|---|"]
    for i, att in enumerate(file["attempts"], 1):
        out.append(f"| {i} | {att.get('purpose', '')} | {att['method']} | {att['per_channel']} | "
                   f"{att.get('quant_format', 'qdq').upper()} | {len(att.get('excluded_nodes', []))} | "
                   f"{att['accuracy']:.4f} | {_num(att.get('latency_ms_p50'), 3)} | {att.get('outcome') or '—'} |")
    return out + [""]


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


def _verdict(budget: dict) -> str:
    failed = [k for k, ok in budget["checks"].items() if not ok]
    return "pass" if budget["pass"] else "FAIL (" + ", ".join(failed) + ")"
