from dataclasses import dataclass, field
from pathlib import Path

import pytest

from edgekd.pipeline.engine import RETIRED, Stage, read_record, run_stages
from edgekd.ui import UI


@dataclass
class Ctx:
    """The engine's view of a context: a config (here a dict), its key values, a run directory."""

    run_dir: Path
    config: dict = field(default_factory=lambda: {"a": 1, "b": 1, "b_writes_extra": False})
    calls: list = field(default_factory=list)
    stage_key: str = ""

    def config_values(self, paths):
        return {p: self.config[p] for p in paths}


def _writer(name, source=None):
    def run(ctx):
        ctx.calls.append(name)
        text = str(ctx.config[name]) + ((ctx.run_dir / source).read_text() if source else "")
        (ctx.run_dir / f"{name}.txt").write_text(text)
        outputs = [f"{name}.txt"]
        if name == "b" and ctx.config["b_writes_extra"]:
            (ctx.run_dir / "extra.txt").write_text("extra")
            outputs.append("extra.txt")
        return {"outputs": outputs, "summary": text}

    return run


STAGES = [
    Stage("a", "first", _writer("a"), lambda ctx: ["a"], lambda ctx: [], lambda ctx: ["a.txt"]),
    Stage("b", "second", _writer("b", "a.txt"), lambda ctx: ["b", "b_writes_extra"], lambda ctx: ["a.txt"],
          lambda ctx: ["b.txt", "extra.txt"]),
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
    ctx.config["b"] = 2
    run_stages(STAGES, ctx, UI(quiet=True))
    assert ctx.calls == ["a", "b", "b"]
    ctx.config["a"] = 3
    run_stages(STAGES, ctx, UI(quiet=True))
    assert ctx.calls[-2:] == ["a", "b"] and (tmp_path / "b.txt").read_text() == "23"


def test_a_key_nobody_reads_reruns_nothing(tmp_path):
    ctx = Ctx(tmp_path)
    run_stages(STAGES, ctx, UI(quiet=True))
    ctx.config["unread"] = 5
    run_stages(STAGES, ctx, UI(quiet=True))
    assert ctx.calls == ["a", "b"]


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


def test_a_file_the_stage_no_longer_writes_is_moved_aside(tmp_path):
    ctx = Ctx(tmp_path, config={"a": 1, "b": 1, "b_writes_extra": True})
    run_stages(STAGES, ctx, UI(quiet=True))
    assert (tmp_path / "extra.txt").is_file()
    ctx.config["b_writes_extra"] = False  # e.g. quantize disabled: its INT8 file must not look current
    run_stages(STAGES, ctx, UI(quiet=True))
    assert not (tmp_path / "extra.txt").exists()
    assert (tmp_path / RETIRED / "extra.txt").read_text() == "extra"  # nothing computed is lost
    assert list(read_record(tmp_path, "b")["outputs"]) == ["b.txt"]


def test_an_undeclared_output_is_a_bug(tmp_path):
    sloppy = Stage("a", "first", _writer("a"), lambda ctx: ["a"], lambda ctx: [], lambda ctx: [])
    with pytest.raises(RuntimeError, match="does not declare"):
        run_stages([sloppy], Ctx(tmp_path), UI(quiet=True))
