"""Report plots as PNG bytes, drawn with matplotlib's Agg canvas (no pyplot).

Using `Figure` + `FigureCanvasAgg` directly never switches the global
matplotlib backend nor keeps figures alive in pyplot's registry, so the
caller's matplotlib state is left as it was.

Inputs are report.json artifact entries (dicts); every plot returns None
when no artifact carries what it needs.
"""

from __future__ import annotations

import io

import numpy as np

PASS, FAIL, UNJUDGED = "#1a7f37", "#cf222e", "#57606a"
FRONT = "#0969da"
_MARKERS = {"teacher": "s", "student": "o"}


def status_color(artifact: dict) -> str:
    budget = artifact.get("budget")
    if not budget or budget.get("pass") is None:  # not judged, or not measured on the target
        return UNJUDGED
    return PASS if budget.get("pass") else FAIL


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points no other point beats on both axes (lower latency, higher accuracy).

    Returned in order of increasing latency; ties in latency keep the more accurate.
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -np.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def accuracy_vs_latency(artifacts: list[dict], budget_ms: float | None) -> bytes | None:
    """Scatter of p50 latency (batch 1) vs accuracy with the Pareto front and the budget line."""
    rows = [a for a in artifacts if a.get("accuracy") is not None and (a.get("latency_ms") or {}).get("p50")]
    if not rows:
        return None
    pts = [(a["latency_ms"]["p50"], a["accuracy"]) for a in rows]
    fig, ax = _figure(8.5, 4.2)
    front = pareto_front(pts)
    ax.step([pts[i][0] for i in front], [pts[i][1] for i in front], where="post",
            color=FRONT, lw=1.5, alpha=0.7, label="Pareto front", zorder=1)
    for a, (x, y) in zip(rows, pts):
        ax.scatter([x], [y], s=70, color=status_color(a), marker=_MARKERS.get(a.get("model"), "D"),
                   edgecolor="white", linewidth=1.0, zorder=3)
        ax.annotate(a.get("name", "?"), (x, y), textcoords="offset points", xytext=(6, 5), fontsize=8.5)
    _budget_line(ax, budget_ms)
    _log_if_wide(ax, [p[0] for p in pts] + ([budget_ms] if budget_ms else []), axis="x")
    ax.set_xlabel("p50 latency at batch 1 (ms)")
    ax.set_ylabel("accuracy")
    ax.margins(x=0.15, y=0.12)
    _legend(ax)
    return _png(fig)


def latency_distributions(artifacts: list[dict], budget_ms: float | None) -> bytes | None:
    """One horizontal box per artifact from its raw per-call samples (whiskers at p1/p99)."""
    rows = [a for a in artifacts if a.get("latency_samples_ms")]
    if not rows:
        return None
    fig, ax = _figure(8.5, 0.9 + 0.45 * len(rows))
    data = [np.asarray(a["latency_samples_ms"], dtype=float) for a in rows]
    box = ax.boxplot(data, whis=(1, 99), showfliers=True, widths=0.55, patch_artist=True,
                     flierprops={"marker": ".", "markersize": 2, "alpha": 0.4}, **_horizontal())
    for patch, a in zip(box["boxes"], rows):
        patch.set_facecolor(status_color(a))
        patch.set_alpha(0.35)
    ax.set_yticks(range(1, len(rows) + 1), [a.get("name", "?") for a in rows], fontsize=9)
    ax.invert_yaxis()  # same order as the table, top to bottom
    _budget_line(ax, budget_ms)
    _log_if_wide(ax, [float(d.min()) for d in data] + [float(d.max()) for d in data] + ([budget_ms] if budget_ms else []), axis="x")
    ax.set_xlabel("latency per call at batch 1 (ms); box: p25–p75, whiskers: p1–p99")
    _legend(ax)
    return _png(fig)


def throughput_sweep(artifacts: list[dict]) -> bytes | None:
    """Images per second against batch size, one line per artifact."""
    rows = [a for a in artifacts if len(a.get("batch_sweep") or {}) > 1]
    if not rows:
        return None
    fig, ax = _figure(8.5, 3.6)
    for a in rows:
        sweep = sorted((int(b), v["throughput_ips"]) for b, v in a["batch_sweep"].items())
        ax.plot([b for b, _ in sweep], [t for _, t in sweep], marker="o", label=a.get("name", "?"))
    sizes = sorted({int(b) for a in rows for b in a["batch_sweep"]})
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(b) for b in sizes])
    ax.minorticks_off()
    ax.set_xlabel("batch size")
    ax.set_ylabel("images / s")
    _legend(ax)
    return _png(fig)


def _horizontal() -> dict:
    """`orientation=` exists from matplotlib 3.10, which deprecated `vert=`."""
    import matplotlib

    major, minor = (int(p) for p in matplotlib.__version__.split(".")[:2])
    return {"orientation": "horizontal"} if (major, minor) >= (3, 10) else {"vert": False}


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.grid(True, alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    return fig, ax


def _budget_line(ax, budget_ms: float | None) -> None:
    if budget_ms:
        ax.axvline(budget_ms, color=FAIL, ls="--", lw=1.2, label=f"latency budget {budget_ms:g} ms")


def _log_if_wide(ax, values: list[float], axis: str) -> None:
    """Teacher and int8 student can sit 100x apart; a linear axis would crush one of them."""
    positive = [v for v in values if v > 0]
    if positive and max(positive) / min(positive) > 20:
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
        # Plain numbers (0.5, 2, 50) read faster than 10^-1 on a latency axis.
        from matplotlib.ticker import FuncFormatter

        (ax.xaxis if axis == "x" else ax.yaxis).set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


def _legend(ax) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best", frameon=False)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
