"""The data and teacher stages on their own: what they write, what they say."""

import numpy as np
import torch

from edgekd import BUILTIN_DIR
from edgekd.config import CompressConfig
from edgekd.models.io import read_checkpoint
from edgekd.pipeline.context import RunContext
from edgekd.pipeline.train_stages import chance_warning, run_data, run_teacher, rows_for_test_file
from edgekd.schema import parse
from edgekd.ui import UI


def _ctx(tmp_path, **sections) -> RunContext:
    data = {"data": {"kind": "digits", "input_size": 8}, "teacher": {"model": "test_resnet", "train": {"epochs": 0}},
            **sections}
    data.setdefault("quantize", {})["calibration"] = str(BUILTIN_DIR / "calib" / "digits.yaml")
    return RunContext(parse(CompressConfig, data, "test"), tmp_path, ui=UI(quiet=True), stage_key="k")


def test_the_teacher_starts_from_the_same_weights_whatever_ran_before(tmp_path):
    states = []
    for i, noise in enumerate((1, 2)):
        torch.manual_seed(noise)  # what validation, another stage or a library left in the global RNG
        torch.rand(1000)
        ctx = _ctx(tmp_path / str(i))
        ctx.run_dir.mkdir()
        run_teacher(ctx)
        states.append(read_checkpoint(ctx.run_dir / "teacher.safetensors")["state_dict"])
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_an_untrained_teacher_is_called_out(tmp_path):
    ctx = _ctx(tmp_path)
    result = run_teacher(ctx)  # random weights, zero epochs: guessing
    assert result["warnings"][0].startswith("teacher teacher.safetensors is at or near chance")
    assert chance_warning(0.95, 10, 360, "teacher") is None
    assert chance_warning(0.13, 10, 360, "teacher") is not None  # within 3 standard errors of 0.1
    assert chance_warning(0.70, 2, 100, "teacher") is None and chance_warning(0.6, 2, 100, "teacher") is not None


def test_the_data_stage_writes_three_splits_and_what_a_jetson_int8_build_needs(tmp_path):
    ctx = _ctx(tmp_path, quantize={"enabled": False}, targets=["jetson-orin-nano"])
    result = run_data(ctx)
    assert "data/calib.npz" in result["outputs"]  # the Jetson PTQ file calibrates even with quantize off
    with np.load(tmp_path / "data" / "test.npz") as test, np.load(tmp_path / "data" / "val.npz") as val:
        assert len(test["y"]) == result["dataset"]["splits"]["test"] and len(val["y"]) == result["dataset"]["splits"]["val"]
    (tmp_path / "cpu").mkdir()
    assert "data/calib.npz" not in run_data(_ctx(tmp_path / "cpu", quantize={"enabled": False}))["outputs"]


def test_the_test_file_is_capped_and_stays_stratified():
    labels = np.repeat(np.arange(10), 3000)  # 30k samples of 224x224x3 float32: 18 GB uncapped
    rows = rows_for_test_file(labels, sample_bytes=3 * 224 * 224 * 4, seed=0)
    assert len(rows) * 3 * 224 * 224 * 4 <= 256 * 2**20
    counts = np.bincount(labels[rows])
    assert counts.max() - counts.min() <= 1  # every class alike (to the rounding of 445 over 10)
    assert len(rows_for_test_file(labels[:5000], sample_bytes=4 * 8 * 8, seed=0)) == 5000  # small: all of it
