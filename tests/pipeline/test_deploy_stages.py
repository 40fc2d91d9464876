"""The INT8 gate's bound: its own setting, not the teacher budget's; per file, the strictest of its targets."""

from edgekd.config import CompressConfig
from edgekd.pipeline.context import RunContext
from edgekd.pipeline.deploy_stages import max_int8_drop, ort_int8_plan
from edgekd.pipeline.tensorrt_stage import int8_targets
from edgekd.targets import Budgets


def _ctx(tmp_path, **config) -> RunContext:
    return RunContext(CompressConfig(**config), tmp_path)


def test_the_int8_bound_is_the_strictest_served_target_unless_set(tmp_path, monkeypatch):
    ctx = _ctx(tmp_path, targets=["host-cpu", "rpi5", "rpi4", "jetson-orin-nano"])
    rpi5 = ctx.targets[1]
    monkeypatch.setattr(rpi5, "budgets", Budgets(max_accuracy_drop=0.5, max_int8_drop=0.005))
    files = {scheme.key: targets for scheme, targets in ort_int8_plan(ctx)}
    assert [t.name for t in files["arm64"]] == ["rpi5", "rpi4"]
    assert max_int8_drop(ctx, files["arm64"]) == 0.005  # rpi5 runs the aarch64 file; its teacher budget is no gate
    assert max_int8_drop(ctx, files["x86"]) == 0.02  # host-cpu's own: rpi5's bound is not the x86 file's
    assert max_int8_drop(ctx, int8_targets(ctx)) == 0.02  # the Jetson's own, for the TensorRT file
    configured = _ctx(tmp_path, targets=["host-cpu", "rpi5"], quantize={"max_int8_drop": 0.1})
    assert {max_int8_drop(configured, targets) for _, targets in ort_int8_plan(configured)} == {0.1}
