"""Merge report.json files from several devices into one table (torch-free).

    edgekd report merge rpi5/report.json orin/report.json --out merged.md

Rows are artifact x device, sorted by artifact then device. The device is
named from the report's `machine` (board model from the device tree, else
host name); the target profile the report was judged against is its own
column, because a workstation run judges against a target it is not.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import click

from edgekd.errors import DataError
from edgekd.report.core import READABLE_SCHEMAS, verdict_word

# (column title, row key, format); the markdown table and the JSON rows share these keys.
COLUMNS = [
    ("artifact", "artifact", "{}"),
    ("device", "device", "{}"),
    ("target", "target", "{}"),
    ("runtime", "runtime", "{}"),
    ("precision", "precision", "{}"),
    ("accuracy", "accuracy", "{:.4f}"),
    ("p50 ms", "p50_ms", "{:.3f}"),
    ("p99 ms", "p99_ms", "{:.3f}"),
    ("img/s", "throughput_ips", "{:.1f}"),
    ("peak RSS MB", "peak_rss_mb", "{:.1f}"),
    ("size MB", "size_mb", "{:.2f}"),
    ("speedup", "speedup_vs_teacher", "{:.2f}x"),
    ("budget", "budget", "{}"),
]


def load_report(path: str | Path) -> dict:
    path = Path(path)
    try:
        report = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"Report {str(path)!r} does not exist.", "Check the path.") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON ({exc.msg}, line {exc.lineno}).", "Re-run the benchmark.") from None
    if not isinstance(report, dict) or report.get("schema_version") not in READABLE_SCHEMAS:
        found = report.get("schema_version") if isinstance(report, dict) else type(report).__name__
        raise DataError(
            f"{path} is not an edgekd report (schema_version {found!r}, expected one of {READABLE_SCHEMAS}).",
            "Pass report.json files written by `edgekd compress` or `edgekd bench`.",
        )
    return report


def device_name(report: dict) -> str:
    machine = report.get("machine") or {}
    return machine.get("device") or machine.get("hostname") or (report.get("target") or {}).get("name") or "unknown"


def artifact_rows(report: dict, device: str | None = None) -> list[dict]:
    """One flat row per artifact of one report (the columns of COLUMNS)."""
    device = device or device_name(report)
    target = (report.get("target") or {}).get("name")
    rows = []
    for a in report.get("artifacts", []):
        latency = a.get("latency_ms") or {}
        budget = a.get("budget")
        rows.append(
            {
                "artifact": a.get("name"),
                "device": device,
                "target": target,
                "model": a.get("model"),
                "runtime": a.get("runtime"),
                "precision": a.get("precision"),
                "accuracy": a.get("accuracy"),
                **({"accuracy_unmeasured": a["accuracy_unmeasured"]} if a.get("accuracy_unmeasured") else {}),
                "p50_ms": latency.get("p50"),
                "p99_ms": latency.get("p99"),
                "throughput_ips": a.get("throughput_ips"),
                "peak_rss_mb": a.get("peak_rss_mb"),
                "size_mb": a.get("size_mb"),
                "speedup_vs_teacher": a.get("speedup_vs_teacher"),
                "budget": None if not budget else verdict_word(budget),
            }
        )
    return rows


def merge_reports(reports: list[dict], sources: list[str] | None = None) -> dict:
    """{"devices": [...], "rows": [...]}; same-named devices get " (2)", " (3)" suffixes."""
    sources = sources or [None] * len(reports)
    seen: dict[str, int] = {}
    devices, rows = [], []
    for report, source in zip(reports, sources):
        name = device_name(report)
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            name = f"{name} ({seen[name]})"
        devices.append(
            {
                "device": name,
                "target": (report.get("target") or {}).get("name"),
                "report": source,
                "created": report.get("created"),
                "machine": report.get("machine"),
            }
        )
        rows.extend(artifact_rows(report, name))
    rows.sort(key=lambda r: (str(r["artifact"]), r["device"]))
    return {
        "schema": "edgekd.merged/1",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "devices": devices,
        "rows": rows,
    }


def markdown_table(rows: list[dict]) -> str:
    header = "| " + " | ".join(title for title, _, _ in COLUMNS) + " |"
    rule = "|" + "|".join("---" if fmt == "{}" else "---:" for _, _, fmt in COLUMNS) + "|"
    lines = [header, rule]
    for row in rows:
        cells = [f"unmeasured ({row['accuracy_unmeasured']})" if key == "accuracy" and row.get("accuracy_unmeasured")
                 else _cell(row.get(key), fmt) for _, key, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(value, fmt: str) -> str:
    if value is None:
        return "–"
    text = fmt.format(value)
    return text.replace("|", "\\|")


def merged_markdown(merged: dict) -> str:
    lines = ["# edgekd: artifacts across devices", ""]
    for d in merged["devices"]:
        machine = d.get("machine") or {}
        lines.append(
            f"- **{d['device']}**: {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores, "
            f"target `{d['target'] or '-'}`, measured {d['created'] or '?'} ({d['report'] or 'in memory'})"
        )
    lines += ["", markdown_table(merged["rows"])]
    return "\n".join(lines)


def write_merged(merged: dict, out: str | Path) -> Path:
    """`.json` writes the merged rows; anything else (`.md`) the markdown table."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(merged, indent=2) + "\n" if out.suffix == ".json" else merged_markdown(merged)
    out.write_text(text)
    return out


@click.command("merge")
@click.argument("reports", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="merged.md (table) or merged.json (rows); prints the table when omitted.")
def merge_command(reports: tuple[Path, ...], out: Path | None) -> None:
    """Merge report.json files from several devices into one artifact x device table."""
    merged = merge_reports([load_report(p) for p in reports], [str(p) for p in reports])
    if out is None:
        click.echo(merged_markdown(merged))
    else:
        click.echo(f"wrote {write_merged(merged, out)}")
