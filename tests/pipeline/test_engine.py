from dataclasses import dataclass, field
from pathlib import Path

from edgekd.pipeline.engine import Stage, read_record, run_stages
from edgekd.ui import UI


@dataclass
class Ctx:
    run_dir: Path
    params: dict = field(default_factory=lambda: {"a": 1, "b": 1})
    calls: list = field(default_factory=list)
    stage_key: str = ""


def _writer(name, source=None):
    def run(ctx):
        ctx.calls.append(name)
        text = str(ctx.params[name]) + ((ctx.run_dir / source).read_text() if source else "")
        (ctx.run_dir / f"{name}.txt").write_text(text)
        return {"outputs": [f"{name}.txt"], "summary": text}

    return run


STAGES = [
    Stage("a", "first", _writer("a"), lambda ctx: ctx.params["a"], lambda ctx: []),
    Stage("b", "second", _writer("b", "a.txt"), lambda ctx: ctx.params["b"], lambda ctx: ["a.txt"]),
]


def test_unchanged_stages_are_reused(tmp_path):
    ctx = Ctx(tmp_path)
    run_stages(STAGES, ctx, UI(quiet=True))
    run_stages(STAGES, ctx, UI(quiet=True))
    assert ctx.calls == ["a", "b"]
    assert read_record(tmp_path, "b")["result"]["summary"] == "11"


def test_a_change_flows_downstream_only(tmp_path):
    ctx = Ctx(tmp_path)
    run_stages(STAGES, ctx, UI(quiet=True))
    ctx.params["b"] = 2
    run_stages(STAGES, ctx, UI(quiet=True))
    assert ctx.calls == ["a", "b", "b"]
    ctx.params["a"] = 3
    run_stages(STAGES, ctx, UI(quiet=True))
    assert ctx.calls[-2:] == ["a", "b"] and (tmp_path / "b.txt").read_text() == "23"


def test_tampered_output_is_redone(tmp_path):
    ctx = Ctx(tmp_path)
    run_stages(STAGES, ctx, UI(quiet=True))
    (tmp_path / "b.txt").write_text("edited")
    run_stages(STAGES, ctx, UI(quiet=True))
    assert ctx.calls == ["a", "b", "b"]


def test_force_redoes_everything(tmp_path):
    ctx = Ctx(tmp_path)
    run_stages(STAGES, ctx, UI(quiet=True))
    run_stages(STAGES, ctx, UI(quiet=True), force=True)
    assert ctx.calls == ["a", "b", "a", "b"]


def test_stage_sees_its_key(tmp_path):
    ctx = Ctx(tmp_path)
    run_stages(STAGES[:1], ctx, UI(quiet=True))
    assert ctx.stage_key == read_record(tmp_path, "a")["key"]
