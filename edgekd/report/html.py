"""One self-contained HTML page for a report.json (torch-free).

    write_html(report_dict, "runs/x/report.html")

Plots are PNGs embedded as base64 data URIs and the style sheet is inline:
the file opens offline, from an e-mail or a scp'd copy, with no external
URL and no script. Missing fields (a device report without accuracy, a
report without a target) show as "–" rather than failing.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from edgekd.report import plots
from edgekd.report.core import input_text

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2328;margin:0;background:#f6f8fa}
main{max-width:1240px;margin:0 auto;padding:24px 28px 40px;background:#fff;min-height:100vh}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 10px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
.sub{color:#57606a;margin:0 0 16px}
.cards{display:flex;gap:14px;flex-wrap:wrap}
.card{border:1px solid #d0d7de;border-radius:6px;padding:10px 14px;min-width:220px;flex:1}
.card h3{font-size:13px;text-transform:uppercase;letter-spacing:.04em;color:#57606a;margin:0 0 6px}
.card dl{display:grid;grid-template-columns:auto 1fr;gap:2px 10px;margin:0}.card dt{color:#57606a}.card dd{margin:0}
table{border-collapse:collapse;width:100%;font-size:12.5px}
th,td{padding:4px 7px;border-bottom:1px solid #d8dee4;text-align:right;white-space:nowrap}
th{white-space:normal;vertical-align:bottom}
th{background:#f6f8fa;font-weight:600}th:first-child,td:first-child{text-align:left}
td.l,th.l{text-align:left}
tr.selected td{background:#ddf4ff}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-weight:600;font-size:12px;color:#fff}
.pass{background:#1a7f37}.fail{background:#cf222e}.none{background:#8c959f}
figure{margin:8px 0 4px}figure img{max-width:100%;height:auto}
figcaption,.note{color:#57606a;font-size:12.5px}
.scroll{overflow-x:auto}
"""

# (title, getter, format); getters take an artifact entry.
_COLUMNS = [
    ("artifact", lambda a: a.get("name"), "{}"),
    ("model", lambda a: a.get("model"), "{}"),
    ("runtime", lambda a: a.get("runtime"), "{}"),
    ("precision", lambda a: a.get("precision"), "{}"),
    ("accuracy", lambda a: a.get("accuracy") if a.get("accuracy_unmeasured") is None else "unmeasured (no real "
     "labelled data)", "{:.4f}"),
    ("p50 ms", lambda a: (a.get("latency_ms") or {}).get("p50"), "{:.3f}"),
    ("p90 ms", lambda a: (a.get("latency_ms") or {}).get("p90"), "{:.3f}"),
    ("p99 ms", lambda a: (a.get("latency_ms") or {}).get("p99"), "{:.3f}"),
    ("img/s", lambda a: a.get("throughput_ips"), "{:,.1f}"),
    ("peak RSS MB", lambda a: a.get("peak_rss_mb"), "{:.1f}"),
    ("load s", lambda a: a.get("load_s"), "{:.3f}"),
    ("size MB", lambda a: a.get("size_mb"), "{:.2f}"),
    ("params", lambda a: a.get("params"), "{:,}"),
    ("speedup", lambda a: a.get("speedup_vs_teacher"), "{:.2f}×"),
    ("memory / teacher", lambda a: a.get("memory_ratio_vs_teacher"), "{:.2f}×"),
]


def write_html(report: dict, out_path: str | Path) -> Path:
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    tmp.write_text(render_html(report), encoding="utf-8")
    tmp.replace(out)  # never leave a half-written page where a reader expects a whole one
    return out


def render_html(report: dict) -> str:
    artifacts = report.get("artifacts") or []
    target = report.get("target") or {}
    budget_ms = (target.get("budgets") or {}).get("latency_ms")
    title = f"edgekd report — {target.get('name') or _device(report)}"
    parts = [
        f"<h1>{_e(title)}</h1>",
        f'<p class="sub">created {_e(report.get("created", "?"))} · edgekd {_e(report.get("edgekd_version", "?"))}</p>',
        _cards(report),
        "<h2>Artifacts</h2>",
        _artifact_table(artifacts, _selected(report)),
        _notes(report),
        _figure(plots.accuracy_vs_latency(artifacts, budget_ms), "Accuracy against p50 latency at batch 1",
                "Squares: teacher, circles: student. Green meets the target's budgets, red does not, grey "
                "was not judged. The blue steps join the Pareto front: no other artifact is both faster and "
                "more accurate. The dashed line is the latency budget."),
        _figure(plots.latency_distributions(artifacts, budget_ms), "Latency distribution per artifact",
                "Every timed call at batch 1, interleaved across artifacts in rounds."),
        _figure(plots.throughput_sweep(artifacts), "Throughput against batch size", ""),
        _sweep_table(artifacts),
        *_search(report),
    ]
    body = "\n".join(p for p in parts if p)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>\n"
        f"<body><main>\n{body}\n</main></body></html>\n"
    )


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value, fmt: str) -> str:
    if value is None:
        return "–"
    try:
        return _e(fmt.format(value))
    except (ValueError, TypeError):  # a field of an unexpected type: show it rather than fail
        return _e(value)


def _device(report: dict) -> str:
    machine = report.get("machine") or {}
    return machine.get("device") or machine.get("hostname") or "unknown device"


def _selected(report: dict) -> str | None:
    """The name of the artifact report.json recommends (the pipeline writes `recommended`)."""
    chosen = report.get("recommended")
    return chosen.get("name") if isinstance(chosen, dict) else chosen


def _card(heading: str, items: list[tuple[str, object]]) -> str:
    rows = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in items if v not in (None, ""))
    return f'<div class="card"><h3>{_e(heading)}</h3><dl>{rows or "<dt>–</dt><dd></dd>"}</dl></div>'


def _cards(report: dict) -> str:
    target = report.get("target") or {}
    budgets = target.get("budgets") or {}
    machine = report.get("machine") or {}
    dataset = report.get("dataset") or {}
    versions = machine.get("versions") or {}
    cards = [
        _card("Target", [
            ("profile", target.get("name")),
            ("runtime", target.get("runtime")),
            ("threads", target.get("threads")),
            ("latency budget", f"{budgets['latency_ms']:g} ms p50" if budgets.get("latency_ms") else None),
            ("memory budget", f"{budgets['memory_mb']:g} MB" if budgets.get("memory_mb") else None),
            ("max accuracy drop", budgets.get("max_accuracy_drop")),  # student vs teacher
            ("max INT8 drop", budgets.get("max_int8_drop")),  # INT8 file vs FP32 student (the gate)
        ]),
        _card("Measured on", [
            ("device", _device(report)),
            ("cpu", machine.get("cpu")),
            ("cores", machine.get("cores")),
            ("os", machine.get("os")),
            ("runtimes", ", ".join(f"{k} {v}" for k, v in versions.items() if k in ("onnxruntime", "tensorrt", "torch"))),
        ]),
        _card("Dataset", [(k, v) for k, v in dataset.items() if isinstance(v, (str, int, float))]
              + [(f"{split} images", n) for split, n in (dataset.get("splits") or {}).items()]
              + ([("input", input_text(dataset))] if dataset.get("preprocess") else [])),
    ]
    return '<div class="cards">' + "".join(cards) + "</div>"


def _badge(artifact: dict) -> str:
    """One badge per target the artifact was judged against (report.json `budgets`; a device report: `budget`)."""
    verdicts = list((artifact.get("budgets") or {}).values()) or ([artifact["budget"]] if artifact.get("budget") else [])
    if not verdicts:
        return '<span class="badge none">n/a</span>'
    return " ".join(_one_badge(v, len(verdicts) > 1) for v in verdicts)


def _one_badge(budget: dict, named: bool) -> str:
    why = []
    if budget.get("latency_ms") is not None:
        why.append(f"latency budget {budget['latency_ms']:g} ms")
    if budget.get("memory_mb") is not None:
        why.append(f"memory budget {budget['memory_mb']:g} MB")
    if budget.get("not_measured_on_target"):
        why.append(budget["not_measured_on_target"])
    passed = budget.get("pass")
    cls, text = ("none", "not measured") if passed is None else (("pass", "pass") if passed else ("fail", "FAIL"))
    label = f"{budget.get('target')}: {text}" if named and budget.get("target") else text
    return f'<span class="badge {cls}" title="{_e("; ".join(why))}">{_e(label)}</span>'


def _artifact_table(artifacts: list[dict], selected: str | None) -> str:
    if not artifacts:
        return '<p class="note">No artifacts in this report.</p>'
    # The pass/fail badge sits next to the name so it stays in view when the table scrolls.
    head = "".join(f'<th class="{"l" if fmt == "{}" else ""}">{_e(t)}</th>' for t, _, fmt in _COLUMNS[1:])
    rows = []
    for a in artifacts:
        cells = "".join(
            f'<td class="{"l" if fmt == "{}" else ""}">{_fmt(get(a), fmt)}</td>' for _, get, fmt in _COLUMNS[1:]
        )
        cls = ' class="selected"' if selected and a.get("name") == selected else ""
        rows.append(f'<tr{cls}><td>{_e(a.get("name", "?"))}</td><td class="l">{_badge(a)}</td>{cells}</tr>')
    note = f'<p class="note">Highlighted: the recommended artifact, {_e(selected)}.</p>' if selected else ""
    return (
        f'<div class="scroll"><table><thead><tr><th>artifact</th><th class="l">budget</th>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>{note}"
        '<p class="note">Latency is per call at batch 1; peak RSS is the resident memory the model added '
        "over its process's baseline after the runtime was imported.</p>"
    )


def _sweep_table(artifacts: list[dict]) -> str:
    sizes = sorted({int(b) for a in artifacts for b in (a.get("batch_sweep") or {})})
    if not sizes:
        return ""
    head = "".join(f"<th>b={b} p50 ms</th><th>b={b} img/s</th>" for b in sizes)
    rows = []
    for a in artifacts:
        sweep = a.get("batch_sweep") or {}
        cells = ""
        for b in sizes:
            entry = sweep.get(str(b)) or {}
            cells += f"<td>{_fmt((entry.get('latency_ms') or {}).get('p50'), '{:.3f}')}</td>"
            cells += f"<td>{_fmt(entry.get('throughput_ips'), '{:,.1f}')}</td>"
        rows.append(f"<tr><td>{_e(a.get('name', '?'))}</td>{cells}</tr>")
    return (
        f'<div class="scroll"><table><thead><tr><th>artifact</th>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _notes(report: dict) -> str:
    notes = report.get("notes")
    if not notes:
        return ""
    items = "".join(f"<li>{_e(n)}</li>" for n in (notes if isinstance(notes, list) else [notes]))
    return f"<h2>Notes</h2><ul>{items}</ul>"


def _search(report: dict) -> list[str]:
    """student.search, per target: the Pareto plot, every candidate (the chosen one highlighted), the cost."""
    from edgekd.search.report import COLUMNS, candidate_cells, cost_line, headline, pareto_plot

    out = [_students(report)]
    for section in report.get("search_targets") or ([report["search"]] if report.get("search") else []):
        out.append(_figure(pareto_plot(section), f"Student search: {section['target']}", headline(section)))
        head = "".join(f'<th class="l">{_e(c)}</th>' for c in COLUMNS)
        rows = "".join(f'<tr{" class=selected" if chosen else ""}>' + "".join(f'<td class="l">{_e(v)}</td>' for v in cells)
                       + "</tr>" for chosen, cells in candidate_cells(section))
        out.append(f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>'
                   f'<p class="note">{_e(cost_line(section))}</p>')
    return out


def _students(report: dict) -> str:
    """One student per target (per_target search): which student each target got, and its p50 there."""
    from edgekd.report.core import STUDENT_COLUMNS, student_cells

    rows = report.get("students") or []
    if len({r["student"] for r in rows}) < 2:
        return ""
    head = "".join(f'<th class="l">{_e(c)}</th>' for c in STUDENT_COLUMNS)
    body = "".join("<tr>" + "".join(f'<td class="l">{_e(v)}</td>' for v in student_cells(r)) + "</tr>" for r in rows)
    return (f'<h2>One student per target</h2><div class="scroll"><table><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


def _figure(png: bytes | None, title: str, caption: str) -> str:
    if png is None:
        return ""
    data = base64.b64encode(png).decode("ascii")
    cap = f"<figcaption>{_e(caption)}</figcaption>" if caption else ""
    return f'<h2>{_e(title)}</h2><figure><img alt="{_e(title)}" src="data:image/png;base64,{data}">{cap}</figure>'
