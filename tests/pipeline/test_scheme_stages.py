"""The student stage under each multi-pass scheme, with tiny ready teachers (no teacher training)."""

import pytest
import torch

from edgekd.config import CompressConfig
from edgekd.errors import ConfigError
from edgekd.models.io import build, load_model, read_checkpoint, save_checkpoint
from edgekd.pipeline import train_stages
from edgekd.pipeline.context import RunContext
from edgekd.pipeline.train_stages import run_student
from edgekd.schema import parse
from edgekd.ui import UI

TEACHER_KWARGS = {"num_classes": 10, "in_chans": 1, "channels": [16, 32, 64, 128]}


def _ctx(tmp_path, distill: dict, teachers: list[dict] | None = None, stage_key="k") -> RunContext:
    data = {"data": {"kind": "digits", "input_size": 16}, "student": {"width": 0.25, "depth": 0.5},
            "quantize": {"enabled": False},
            "distill": {**distill, "train": {"epochs": 1, "batch_size": 128, "channels_last": False}}}
    data.update({"teachers": teachers} if teachers else {"teacher": {"model": "resnet18"}})
    ctx = RunContext(parse(CompressConfig, data, "test"), tmp_path, ui=UI(quiet=True), stage_key=stage_key)
    for i, path in enumerate(["teacher.safetensors"] + [f"teachers/{i}.safetensors" for i in range(1, len(teachers or [None]))]):
        torch.manual_seed(i)
        (tmp_path / path).parent.mkdir(exist_ok=True)
        save_checkpoint(tmp_path / path, build("resnet18", TEACHER_KWARGS), "resnet18", TEACHER_KWARGS,
                        preprocess=ctx.data.preprocess.to_dict())
    return ctx


def test_several_teachers_cache_their_combined_soft_targets(tmp_path, single_thread):
    ctx = _ctx(tmp_path, {}, teachers=[{"model": "resnet18", "weight": 2.0}, {"model": "resnet18"}])
    result = run_student(ctx)
    assert result["teacher_cache"].startswith("on:")
    assert [t["weight"] for t in result["teacher_ensemble"]] == [2.0, 1.0]
    single = train_stages._cache_tag(ctx, ["teacher.safetensors"])
    assert len(list((tmp_path / "cache").glob("teacher_logits.*.npy"))) == 1
    assert not (tmp_path / "cache" / f"teacher_logits.{single}.npy").exists()  # not the primary's own logits


def test_assistant_chain_with_born_again_generations_saves_every_link(tmp_path, single_thread, monkeypatch):
    distill = {"assistants": [{"width": 0.5}], "generations": 2}
    ctx = _ctx(tmp_path, distill)
    real_fit, calls = train_stages._fit, []

    def fit_then_interrupt(ctx, model, name, *args, **kwargs):
        calls.append(name)
        if name == "student":  # the second link: the assistant is finished and saved
            raise KeyboardInterrupt
        return real_fit(ctx, model, name, *args, **kwargs)

    monkeypatch.setattr(train_stages, "_fit", fit_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_student(ctx)
    monkeypatch.setattr(train_stages, "_fit",
                        lambda ctx, model, name, *a, **k: calls.append(name) or real_fit(ctx, model, name, *a, **k))
    result = run_student(ctx)
    assert calls == ["assistant1", "student", "student", "student.gen2"]  # the assistant was not retrained
    assert [link["name"] for link in result["chain"]] == ["assistant1", "student", "student.gen2"]
    assert result["chain"][0]["params"] > result["chain"][1]["params"] == result["chain"][2]["params"]
    assert all(0 <= link["val_accuracy"] <= 1 for link in result["chain"])
    assert result["val_accuracy"] == result["chain"][-1]["val_accuracy"]  # the last generation is the student
    for path in ("assistants/1.safetensors", "generations/1.safetensors", "student.safetensors"):
        assert (tmp_path / path).is_file(), path
    assert read_checkpoint(tmp_path / "assistants/1.safetensors")["arch_kwargs"]["channels"] == [8, 16, 32, 64]
    assert read_checkpoint(tmp_path / "student.safetensors")["arch_kwargs"]["channels"] == [8, 8, 16, 32]


def test_online_peers_need_no_teacher_and_the_best_peer_is_the_student(tmp_path, single_thread, monkeypatch):
    ctx = _ctx(tmp_path, {"scheme": "online", "peers": 2})
    monkeypatch.setattr(train_stages, "load_model", lambda *_: pytest.fail("scheme online loaded a teacher"))
    result = run_student(ctx)
    accuracies = [p["val_accuracy"] for p in result["peers"]]
    assert len(accuracies) == 2 and result["val_accuracy"] == max(accuracies)
    assert result["peers"][0]["seed"] != result["peers"][1]["seed"]
    student = load_model(tmp_path / "student.safetensors")
    assert read_checkpoint(tmp_path / "student.safetensors")["metrics"]["best_peer"] == result["best_peer"]
    assert sum(p.numel() for p in student.parameters()) == result["params"]


def test_schemes_are_refused_under_torchrun(tmp_path):
    from edgekd.distill.distributed import Dist

    ctx = _ctx(tmp_path, {"generations": 2})
    ctx.dist = Dist(rank=0, world_size=2)
    with pytest.raises(ConfigError, match="distill.generations is not supported under torchrun"):
        run_student(ctx)
