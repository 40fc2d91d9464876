"""Recipes through the stages: function matching runs the teacher live on the student's mixed
batch; a chosen weight average is what the checkpoint holds."""

import torch

from edgekd.config import CompressConfig
from edgekd.distill.trainer import split_accuracy
from edgekd.models.io import build, load_model, save_checkpoint
from edgekd.pipeline.context import RunContext
from edgekd.pipeline.train_stages import run_student, run_teacher
from edgekd.schema import parse
from edgekd.ui import UI

TEACHER_KWARGS = {"num_classes": 10, "in_chans": 1, "channels": [16, 32, 64, 128]}
ONE_EPOCH = {"epochs": 1, "batch_size": 128, "channels_last": False}


def _ctx(tmp_path, **sections) -> RunContext:
    data = {"data": {"kind": "digits", "input_size": 16}, "student": {"width": 0.5, "depth": 0.5},
            "quantize": {"enabled": False}, **sections}
    return RunContext(parse(CompressConfig, data, "test"), tmp_path, ui=UI(quiet=True), stage_key="k")


def _val_accuracy(ctx, path) -> float:
    return split_accuracy(load_model(path), ctx.data.val)  # counted as the trainer counts


def test_function_matching_runs_the_teacher_live_and_saves_the_scored_weights(tmp_path, single_thread):
    ctx = _ctx(tmp_path, distill={"recipe": "function_matching", "train": ONE_EPOCH})
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "teacher.safetensors", build("resnet18", TEACHER_KWARGS), "resnet18", TEACHER_KWARGS,
                    preprocess=ctx.data.preprocess.to_dict())
    result = run_student(ctx)
    assert result["teacher_cache"].startswith("off: distill.train.augment draws new views every step")
    assert "mixed batch" in result["teacher_cache"] and result["losses"] == "1*kd"
    assert result["best_weights"] in ("model", "ema")
    assert _val_accuracy(ctx, tmp_path / "student.safetensors") == result["val_accuracy"]


def test_the_strong_teacher_recipe_trains_with_its_keys(tmp_path, single_thread):
    ctx = _ctx(tmp_path, teacher={"model": "resnet10t", "recipe": "strong", "train": ONE_EPOCH})
    result = run_teacher(ctx)
    rows = (tmp_path / "teacher.metrics.jsonl").read_text().splitlines()
    assert len(rows) == 1 and "val_accuracy_ema" in rows[0]
    assert result["trained"] and result["best_weights"] in ("model", "ema")
    assert _val_accuracy(ctx, tmp_path / "teacher.safetensors") == result["val_accuracy"]
