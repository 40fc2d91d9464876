"""Report sentences about INT8 speed, from what the quantize stage measured (torch-free, no runtime).

    int8_speed_note(file_record, int8_p50_ms, fp32_p50_ms) -> str

`file_record` is one entry of the quantize stage's `files` (edgekd.pipeline.deploy_stages):
its scheme, attempts and `speed` (the gate's interleaved timing and ONNX Runtime's per-unit
profile, edgekd.quantize.profile). The latencies are the bench stage's.
"""

from __future__ import annotations

SHOWN = 3  # costliest units named in a note


def int8_speed_note(file: dict, int8_ms: float, fp32_ms: float) -> str:
    """One note: how the INT8 file compares with FP32 at batch 1 here, and why, from the profile."""
    scheme, speed = file.get("scheme", {}), file.get("speed") or {}
    head = f"{file['file']} ({scheme.get('types', 'int8')}, for {', '.join(file.get('targets', []))})"
    if not speed.get("timed"):
        return (f"{head}: measured here at {int8_ms:.3f} ms vs FP32 {fp32_ms:.3f} ms, but this host does not run it "
                "as its targets do; its speed is only known from `edgekd bench` on the device.")
    kept = _kept_float(file)
    if int8_ms < fp32_ms:
        return f"{head} is {fp32_ms / int8_ms:.2f}× faster than the FP32 student at batch 1{kept}." + _bound(speed)
    return (f"{head} is {int8_ms / fp32_ms:.2f}× SLOWER than the FP32 student at batch 1{kept}. "
            + profile_sentence(speed) + " The FP32 student is the one to ship where it fits the budgets.")


def profile_sentence(speed: dict) -> str:
    """Which units cost more in INT8 than in FP32, per ONNX Runtime's profiler (kernel times, batch 1)."""
    profile = speed.get("profile") or {}
    units = profile.get("costly_units") or []
    if not units:
        return "ONNX Runtime's profile found no single unit slower in INT8; the loss is spread over the graph."
    worst = "; ".join(_unit(u) for u in units[:SHOWN])
    totals = profile.get("kernel_totals_us") or {}
    total = (f" Kernel time over the whole model: INT8 {totals['int8_us']:.0f} us vs FP32 {totals['fp32_us']:.0f} us."
             if totals else "")
    return (f"ONNX Runtime's profile (quantize stage, this host) finds {profile.get('costly_count', len(units))} of "
            f"{profile.get('units', '?')} units slower in INT8, the worst: {worst}.{total} "
            f"{speed.get('verdict', '')}".rstrip() + ("." if speed.get("verdict") else ""))


def _unit(u: dict) -> str:
    kernels = ", ".join(f"{op} {us:.0f}" for op, us in sorted(u["int8_kernels"].items(), key=lambda kv: -kv[1])[:4])
    return f"{u['unit']} ({u['ops']}): INT8 {u['int8_us']:.0f} us ({kernels}) vs FP32 {u['fp32_us']:.0f} us"


def _bound(speed: dict) -> str:
    """What bounds a faster INT8 file: the unit with the most INT8 kernel time, when it gains least."""
    heaviest = ((speed.get("profile") or {}).get("heaviest_units") or [None])[0]
    if not heaviest or not heaviest.get("int8_share") or not heaviest.get("speedup"):
        return ""
    return (f" Its heaviest unit in ONNX Runtime's profile is {heaviest['unit']} ({heaviest['ops']}): "
            f"{heaviest['int8_share']:.0%} of the INT8 kernel time, {heaviest['speedup']:.2f}× its FP32 time.")


def _kept_float(file: dict) -> str:
    attempts = file.get("attempts") or []
    chosen = attempts[file["chosen"]] if attempts and "chosen" in file else {}
    units = chosen.get("float_units") or []
    return f", with {len(units)} unit(s) kept in float because they cost more in INT8" if units else ""
