"""Measuring backends, one per module: this machine (host), a device over ssh (ssh), a latency table (table).

Each is a class built from `(TargetPlan, MeasureOptions)` that probes or checks on
construction and has `runtime` and `measure(todo, save)` (see edgekd.search.plan.MeasureBackend).
"""
