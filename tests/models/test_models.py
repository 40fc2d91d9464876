import pytest
import torch

from edgekd.config import TeacherConfig
from edgekd.errors import ModelError
from edgekd.models.io import build, load_model, save_checkpoint
from edgekd.models.teacher import build_teacher


def test_unknown_timm_name_suggests_close_ones():
    with pytest.raises(ModelError) as err:
        build("resnet81", {})
    assert "resnet18" in str(err.value)


def test_checkpoint_round_trip_rebuilds_without_config(tmp_path):
    model = build("resnet10t", {"num_classes": 3, "in_chans": 1}).eval()
    save_checkpoint(tmp_path / "m.safetensors", model, "resnet10t", {"num_classes": 3, "in_chans": 1}, metrics={"a": 1})
    x = torch.randn(1, 1, 32, 32)
    assert torch.equal(load_model(tmp_path / "m.safetensors")(x), model(x))


def test_teacher_from_state_dict_adapts_head_and_channels(tmp_path):
    source = build("resnet10t", {"num_classes": 5, "in_chans": 3})
    torch.save({"state_dict": source.state_dict()}, tmp_path / "t.pth")  # timm train.py layout
    init = build_teacher(TeacherConfig(model="resnet10t", checkpoint=tmp_path / "t.pth"), num_classes=10, in_chans=1)
    assert init.head_reset and init.needs_training
    assert init.model.eval()(torch.randn(1, 1, 32, 32)).shape == (1, 10)


def test_teacher_checkpoint_of_another_arch_is_refused(tmp_path):
    torch.save(build("resnet18", {"num_classes": 10}).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(ModelError, match="different architecture|does not fit"):
        build_teacher(TeacherConfig(model="resnet34", checkpoint=tmp_path / "r18.pth"), 10, 3)


def test_pretrained_offline_suggests_a_checkpoint():
    with pytest.raises(ModelError) as err:
        build_teacher(TeacherConfig(model="resnet10t", pretrained=True), num_classes=10, in_chans=3)
    assert "teacher.checkpoint" in str(err.value)
