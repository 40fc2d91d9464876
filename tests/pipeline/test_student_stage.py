"""The student stage from config to checkpoint, with a tiny ready teacher (no teacher training)."""

import pytest
import torch

from edgekd.config import CompressConfig
from edgekd.errors import ConfigError
from edgekd.models.io import build, read_checkpoint, save_checkpoint
from edgekd.pipeline.compress import _check_model_names
from edgekd.pipeline.context import RunContext
from edgekd.pipeline.train_stages import run_student
from edgekd.schema import parse
from edgekd.ui import UI

TEACHER_KWARGS = {"num_classes": 10, "in_chans": 1, "channels": [16, 32, 64, 128]}


def _ctx(tmp_path, losses, init="random", cache=True) -> RunContext:
    data = {"data": {"kind": "digits", "input_size": 16}, "teacher": {"model": "resnet18"},
            "student": {"width": 0.5, "depth": 0.5, "init": init}, "quantize": {"enabled": False},
            "distill": {"losses": losses, "teacher_cache": cache,
                        "train": {"epochs": 1, "batch_size": 128, "channels_last": False}}}
    ctx = RunContext(parse(CompressConfig, data, "test"), tmp_path, ui=UI(quiet=True), stage_key="k")
    torch.manual_seed(0)
    teacher = build("resnet18", TEACHER_KWARGS)
    save_checkpoint(tmp_path / "teacher.safetensors", teacher, "resnet18", TEACHER_KWARGS, preprocess=ctx.data.preprocess.to_dict())
    return ctx


def test_feature_losses_run_the_teacher_live_and_leave_no_adapters_in_the_student(tmp_path, single_thread):
    ctx = _ctx(tmp_path, [{"kind": "kd"}, {"kind": "fitnets"}, {"kind": "rkd", "weight": 0.1}], init="teacher")
    result = run_student(ctx)
    assert result["teacher_cache"].startswith("off: fitnets, rkd read teacher internals")
    assert result["init"].startswith("teacher (ResNet") and "init_val_accuracy" in result
    assert result["loss_params"] > 0 and "fitnets (layer1<-layer1" in result["losses"]
    ckpt = read_checkpoint(tmp_path / "student.safetensors")
    assert ckpt["arch_kwargs"]["channels"] == [8, 16, 32, 64]  # derived from the teacher checkpoint's own kwargs
    student = build(ckpt["arch"], ckpt["arch_kwargs"])
    assert set(ckpt["state_dict"]) == set(student.state_dict())  # no adapter tensors
    student.load_state_dict(ckpt["state_dict"])


def test_logit_only_losses_keep_the_cache(tmp_path, single_thread):
    result = run_student(_ctx(tmp_path, [{"kind": "dkd"}, {"kind": "ce"}]))
    assert result["teacher_cache"].startswith("on:") and result["init"] == "random"


def test_teacher_init_of_an_unprunable_family_fails_before_any_work():
    config = parse(CompressConfig, {"teacher": {"model": "mobilenetv3_small_100"}, "student": {"init": "teacher"}}, "t")
    with pytest.raises(ConfigError, match="Supported families: ResNet, ConvNeXt"):
        _check_model_names(config)


def _counting_teacher(monkeypatch):
    """The teacher run_student loads, with a counter on its forward passes."""
    from edgekd.pipeline import train_stages

    calls = {"n": 0}
    real = train_stages.load_model

    def load(path):
        model = real(path)
        model.register_forward_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
        return model

    monkeypatch.setattr(train_stages, "load_model", load)
    return calls


def test_teacher_free_losses_never_run_the_teacher(tmp_path, monkeypatch, single_thread):
    calls = _counting_teacher(monkeypatch)
    result = run_student(_ctx(tmp_path, [{"kind": "ce"}, {"kind": "tfkd", "a": 0.9, "temperature": 4.0}]))
    assert calls["n"] == 0
    assert result["teacher_cache"] == "off: no loss reads the teacher (ce, tfkd), it does not run"
    assert "tfkd (virtual teacher a=0.9, T=4)" in result["losses"]


def test_student_trains_on_its_share_with_withheld_labels(tmp_path, monkeypatch, single_thread):
    from edgekd.pipeline import train_stages

    ctx = _ctx(tmp_path, [{"kind": "kd", "divergence": "reverse", "alpha_end": 0.5}, {"kind": "dkd"}])
    ctx.config = ctx.config.model_copy(update={
        "data": ctx.config.data.model_copy(update={"train_fraction": 0.5}),
        "distill": ctx.config.distill.model_copy(update={"unlabeled_fraction": 0.5})})
    seen = {}
    real_train = train_stages.train

    def spy(model, train_xy, *args, **kwargs):
        seen["y"] = train_xy.labels.copy()
        return real_train(model, train_xy, *args, **kwargs)

    monkeypatch.setattr(train_stages, "train", spy)
    result = run_student(ctx)
    n = len(ctx.data.train_y)
    used = result["student_data"]
    assert used["train_split"] == n and abs(used["samples"] - n / 2) <= 10  # per-class rounding
    assert used["unlabeled"] == int((seen["y"] == -1).sum()) and abs(used["unlabeled"] - used["samples"] / 2) <= 10
    assert result["teacher_cache"].startswith("on:")  # the cache covers the split; batches index into it
    rows = (tmp_path / "student.metrics.jsonl").read_text()
    assert '"kd[0].alpha"' in rows and "reverse KL" in result["losses"]
    # the teacher stage trains on everything except the withheld labels
    teacher_y = train_stages._teacher_train_xy(ctx).labels
    assert len(teacher_y) == n - used["unlabeled"] and (teacher_y >= 0).all()
    assert {"data.train_fraction", "distill.unlabeled_fraction"} <= set(train_stages._teacher_reads(ctx))
