"""The search in the report: one `search` section per target and its Pareto plot.

    sections = search_sections(result)        # [{target, budget_ms, margin, precision, candidates, chosen, cost}]
    png = pareto_plot(sections[0])            # bytes (PNG, or SVG with fmt="svg"), None without candidates

Plots are drawn as edgekd.report.plots draws the report's: matplotlib's Agg
canvas, no pyplot, so the caller's matplotlib state is untouched.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from edgekd.search.driver import SearchResult
    from edgekd.search.rank import Judged


def search_sections(result: "SearchResult") -> list[dict]:
    """The report.json `search` data, one dict per target, in the targets' order."""
    return [_section(result, plan) for plan in result.plans]


def _section(result: "SearchResult", plan) -> dict:
    t = plan.target
    chosen = result.chosen[t.name]
    rows = [j for j in result.judged if j.row.target == t.name]
    runtime = result.runtimes.get(t.name)
    return {
        "target": t.name,
        "budget_ms": t.budgets.latency_ms,
        "memory_budget_mb": t.budgets.memory_mb,
        "margin": result.search.margin,
        "limit_ms": chosen.limit_ms,
        "precision": chosen.candidate.precision,
        "ranking": result.ranking,
        "measured_on": plan.where,
        "runtime": runtime.describe() if runtime else None,
        "candidates": [_candidate(j, result) for j in rows],
        "chosen": chosen.candidate.name,
        "per_target": result.search.per_target,
        "cost": dict(result.cost),
    }


def _candidate(j: "Judged", result: "SearchResult") -> dict:
    c = j.candidate
    proxy = result.scores.get(c.arch_name) if result.ranking == "proxy" else None
    return {"name": c.name, "model": c.model, "width": c.width, "depth": c.depth, "input_size": c.input_size,
            "precision": c.precision, "params": j.row.params, "flops": j.row.flops, "p50_ms": j.row.p50_ms,
            "peak_rss_mb": j.row.peak_rss_mb, "proxy_accuracy": proxy, "fits": j.fits, "why_not": j.why_not,
            "cached": j.row.cached}


# ------------------------------------------------------------------ text for report.md / report.html
COLUMNS = ("candidate", "precision", "params", "MFLOPs", "p50 ms", "proxy val acc", "fits")


def plot_file(section: dict, several: bool) -> str:
    """The run-directory file report.md shows the section's plot from."""
    return f"search_pareto.{section['target']}.png" if several else "search_pareto.png"


def headline(section: dict) -> str:
    """One sentence: the target, its limit, where it was measured, how it was ranked, the choice."""
    ranking = "proxy distillation (validation accuracy)" if section["ranking"] == "proxy" else "FLOPs"
    memory = (f" and peak memory <= {section['margin']:g} x {section['memory_budget_mb']:g} MB"
              if section.get("memory_budget_mb") else "")
    return (f"Target {section['target']}: a candidate fits at p50 <= {section['margin']:g} x {section['budget_ms']:g} ms "
            f"= {section['limit_ms']:.3g} ms{memory}, measured on {section['measured_on']}"
            + (f" ({section['runtime']})" if section.get("runtime") else "")
            + f"; ranked by {ranking}. Chosen: {section['chosen']}, {why_chosen(section)}." + _input_note(section))


def _input_note(section: dict) -> str:
    """With several searched input sizes: the size the chosen student is trained, exported and measured at."""
    sizes = sorted({c["input_size"] for c in section["candidates"] if c.get("input_size")}, reverse=True)
    if len(sizes) < 2:
        return ""
    chosen = next(c for c in section["candidates"] if c["name"] == section["chosen"])
    return (f" The student takes {chosen['input_size']}x{chosen['input_size']} px inputs (searched: "
            f"{', '.join(f'{s} px' for s in sizes)}).")


def why_chosen(section: dict) -> str:
    """Why the section's choice won, from its candidates: its score against the others that fit here, and
    with `per_target: false` whether a student fitting only this target would have scored higher."""
    fits = [c for c in section["candidates"] if c["fits"]]
    chosen = next(c for c in section["candidates"] if c["name"] == section["chosen"])
    proxy = section["ranking"] == "proxy"

    def score(c: dict) -> float:
        return (c["proxy_accuracy"] if c["proxy_accuracy"] is not None else -1.0) if proxy else c["flops"]

    what = (f"proxy validation accuracy {chosen['proxy_accuracy']:.4f}" if proxy
            else f"{chosen['flops'] / 1e6:.0f} MFLOPs")
    why = f"{what} at p50 {chosen['p50_ms']:.3g} ms, of {len(fits)} candidate{'s' if len(fits) != 1 else ''} that fit"
    better = [c for c in fits if score(c) > score(chosen)]
    if section.get("per_target") is False and better:
        best = max(better, key=score)
        return (f"{why}: the best single student that fits every target (per_target: false); for this target alone "
                f"{best['name']} would score higher ({best['proxy_accuracy']:.4f})" if proxy else
                f"{why}: the best single student that fits every target (per_target: false); for this target alone "
                f"{best['name']} ({best['flops'] / 1e6:.0f} MFLOPs) would win")
    return f"{why}: the {'most accurate' if proxy else 'most compute'} that fits"


def cost_line(section: dict) -> str:
    c = section["cost"]
    scored = (f"; {c['scored']} proxy distillations {c['score_s']:.1f} s" if section["ranking"] == "proxy"
              else "; ranked by FLOPs, no proxy runs")
    return (f"Search cost: {c['architectures']} candidates, {c['measurements']} measurements ({c['measured']} made, "
            f"{c['reused']} reused from the cache); preparing (export, INT8) {c['prepare_s']:.1f} s, measuring "
            f"{c['measure_s']:.1f} s{scored}.")


def candidate_cells(section: dict) -> list[tuple[bool, list[str]]]:
    """(is the chosen one, cells in COLUMNS order) per candidate, fastest first."""
    rows = []
    for c in sorted(section["candidates"], key=lambda c: c["p50_ms"]):
        proxy = "—" if c["proxy_accuracy"] is None else f"{c['proxy_accuracy']:.4f}"
        fits = "yes" if c["fits"] else f"no: {c['why_not']}"
        rows.append((c["name"] == section["chosen"],
                     [c["name"], c["precision"], f"{c['params']:,}", f"{c['flops'] / 1e6:.1f}", f"{c['p50_ms']:.3f}",
                      proxy, fits]))
    return rows


def pareto_plot(section: dict, fmt: str = "png") -> bytes | None:
    """p50 latency vs proxy accuracy (or MFLOPs when ranked by FLOPs): fits in green, misses in red, the
    Pareto front, the budget and margin lines, the chosen candidate starred."""
    from edgekd.report.plots import FAIL, FRONT, PASS, _figure, _legend, _log_if_wide, pareto_front

    rows = [c for c in section["candidates"] if c["p50_ms"] is not None]
    if not rows:
        return None
    by_proxy = section["ranking"] == "proxy"
    value = (lambda c: c["proxy_accuracy"]) if by_proxy else (lambda c: c["flops"] / 1e6)
    unscored = [c for c in rows if value(c) is None]  # missed the budget: never distilled, no proxy accuracy
    rows = [c for c in rows if value(c) is not None]
    if not rows:
        return None
    pts = [(c["p50_ms"], value(c)) for c in rows]
    fig, ax = _figure(8.5, 4.6)
    if unscored:  # along the bottom, so the plot still shows what the budget cut
        low, high = min(p[1] for p in pts), max(p[1] for p in pts)
        floor = low - 0.08 * ((high - low) or abs(low) or 1.0)
        ax.scatter([c["p50_ms"] for c in unscored], [floor] * len(unscored), s=36, marker="x", color=FAIL,
                   label="misses the budget (no proxy run)", zorder=2)
    front = pareto_front(pts)
    ax.step([pts[i][0] for i in front], [pts[i][1] for i in front], where="post", color=FRONT, lw=1.2, alpha=0.6,
            label="Pareto front", zorder=1)
    for marker, precision in (("o", "fp32"), ("^", "int8"), ("s", "fp16")):
        mine = [(c, p) for c, p in zip(rows, pts) if c["precision"] == precision]
        if mine:
            ax.scatter([p[0] for _, p in mine], [p[1] for _, p in mine], s=42, marker=marker, edgecolor="white",
                       color=[PASS if c["fits"] else FAIL for c, _ in mine], label=precision, zorder=3)
    chosen = next(((c, p) for c, p in zip(rows, pts) if c["name"] == section["chosen"]), None)
    if chosen is not None:
        ax.scatter([chosen[1][0]], [chosen[1][1]], s=260, marker="*", color="#bf8700", edgecolor="black", lw=0.6,
                   label=f"chosen: {section['chosen']}", zorder=4)
    ax.axvline(section["budget_ms"], color=FAIL, ls="--", lw=1.2, label=f"budget {section['budget_ms']:g} ms")
    ax.axvline(section["limit_ms"], color=FAIL, ls=":", lw=1.0, label=f"margin {section['margin']:g} x budget")
    _log_if_wide(ax, [p[0] for p in pts] + [c["p50_ms"] for c in unscored] + [section["budget_ms"]], axis="x")
    if not by_proxy:
        _log_if_wide(ax, [p[1] for p in pts], axis="y")
    ax.set_xlabel(f"p50 latency at batch 1 on {section['target']} (ms)")
    ax.set_ylabel("proxy validation accuracy" if by_proxy else "MFLOPs (more: more capacity)")
    ax.margins(x=0.1, y=0.1)
    _legend(ax)
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt)
    return buf.getvalue()
