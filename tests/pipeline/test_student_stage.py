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
    save_checkpoint(tmp_path / "teacher.pt", teacher, "resnet18", TEACHER_KWARGS, preprocess=ctx.data.preprocess.to_dict())
    return ctx


def test_feature_losses_run_the_teacher_live_and_leave_no_adapters_in_the_student(tmp_path, single_thread):
    ctx = _ctx(tmp_path, [{"kind": "kd"}, {"kind": "fitnets"}, {"kind": "rkd", "weight": 0.1}], init="teacher")
    result = run_student(ctx)
    assert result["teacher_cache"].startswith("off: fitnets, rkd read teacher internals")
    assert result["init"].startswith("teacher (ResNet") and "init_val_accuracy" in result
    assert result["loss_params"] > 0 and "fitnets (layer1<-layer1" in result["losses"]
    ckpt = read_checkpoint(tmp_path / "student.pt")
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
