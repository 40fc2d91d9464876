"""The INT8 gate's bound: its own setting, not the teacher budget's."""

from edgekd.config import CompressConfig
from edgekd.pipeline.context import RunContext
from edgekd.pipeline.deploy_stages import max_int8_drop
from edgekd.targets import Budgets


def _ctx(tmp_path, **config) -> RunContext:
    return RunContext(CompressConfig(**config), tmp_path)


def test_the_int8_bound_is_the_strictest_served_target_unless_set(tmp_path, monkeypatch):
    ctx = _ctx(tmp_path, targets=["host-cpu", "rpi5", "jetson-orin-nano"])
    rpi5 = ctx.targets[1]
    monkeypatch.setattr(rpi5, "budgets", Budgets(max_accuracy_drop=0.5, max_int8_drop=0.005))
    assert max_int8_drop(ctx) == 0.005  # rpi5 runs this ONNX Runtime INT8 file too; its teacher budget is no gate
    assert max_int8_drop(ctx, "tensorrt") == 0.02  # the Jetson's own
    assert max_int8_drop(_ctx(tmp_path, quantize={"max_int8_drop": 0.1})) == 0.1
