"""What a search will do, before it does it (for `edgekd validate`): candidates and measurements.

    p = preview(search, targets, teacher_arch="resnet18", teacher_kwargs={...}, default_input_size=224)
    print(format_preview(p))

Builds each architecture once on the CPU (random weights) to count parameters and
FLOPs, plans where each target is measured and checks its latency table; with
`probe=True` it also asks each ssh device what it runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgekd.search.candidates import architectures_of, describe_architectures, expand_grid
from edgekd.search.config import SearchConfig
from edgekd.search.measure import open_backends
from edgekd.search.plan import MeasureOptions, plan_targets

if TYPE_CHECKING:  # pragma: no cover
    from edgekd.targets import TargetProfile


def preview(search: SearchConfig, targets: list["TargetProfile"], *, teacher_arch: str, teacher_kwargs: dict,
            default_input_size: int, teacher_name: str | None = None, hosts: dict[str, str] | None = None,
            probe: bool = False, options: MeasureOptions = MeasureOptions()) -> dict:
    plans = plan_targets(search, targets, default_input_size, hosts)
    checked = [p for p in plans if p.backend == "table" or (probe and p.backend == "ssh")]
    runtimes = {name: b.runtime.describe() for name, b in open_backends(checked, options).items()}
    precisions = list(dict.fromkeys(p for plan in plans for p in plan.precisions))
    candidates = expand_grid(search, teacher_name or teacher_arch, precisions, default_input_size)
    archs = describe_architectures(candidates, teacher_arch, teacher_kwargs)
    rows = [{"arch_name": c.arch_name, "model": c.model, "width": c.width, "depth": c.depth,
             "input_size": c.input_size, "params": archs[c.arch_name].params, "flops": archs[c.arch_name].flops}
            for c in architectures_of(candidates)]
    where = [{"target": p.target.name, "backend": p.backend, "where": p.where, "precisions": list(p.precisions),
              "measurements": len(rows) * len(p.precisions), "runtime": runtimes.get(p.target.name)} for p in plans]
    ranking = (f"proxy distillation: {search.proxy_epochs} epochs on {search.proxy_fraction:g} of the training split"
               if search.proxy_epochs else "FLOPs (proxy_epochs: 0)")
    return {"architectures": rows, "targets": where, "measurements": sum(w["measurements"] for w in where),
            "ranking": ranking, "margin": search.margin, "per_target": search.per_target}


def format_preview(p: dict) -> str:
    lines = [f"student.search: {len(p['architectures'])} candidates, {p['measurements']} measurements; "
             f"fits at p50 <= {p['margin']:g} x budget; ranked by {p['ranking']}"
             f"{'' if p['per_target'] else '; one student for all targets'}"]
    lines += [f"  {a['arch_name']:<36} {a['params'] / 1e6:>7.2f} M params {a['flops'] / 1e6:>9.1f} MFLOPs"
              for a in p["architectures"]]
    for t in p["targets"]:
        runtime = f" ({t['runtime']})" if t["runtime"] else ""
        lines.append(f"  {t['target']}: {t['measurements']} measurements ({', '.join(t['precisions'])}) on "
                     f"{t['where']}{runtime}")
    return "\n".join(lines)
