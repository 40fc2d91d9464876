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


@pytest.fixture
def unreachable_hub(monkeypatch, tmp_path):
    """A hub endpoint nothing listens on (connection refused at once) and an empty weights cache."""
    from huggingface_hub import constants

    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the online default: edgekd's probe must find the hub unreachable
    return tmp_path / "hub"


def test_pretrained_offline_suggests_a_checkpoint(unreachable_hub):
    with pytest.raises(ModelError) as err:
        build_teacher(TeacherConfig(model="resnet10t", pretrained=True), num_classes=10, in_chans=3)
    assert "teacher.checkpoint" in str(err.value)
    assert "127.0.0.1:9" in str(err.value) and "not in the local cache" in str(err.value)


def test_pretrained_offline_loads_weights_already_in_the_hub_cache(unreachable_hub):
    """An offline user whose hub cache holds the weights gets them (huggingface_hub's offline mode)."""
    from huggingface_hub import constants
    from safetensors.torch import save_file

    hub_model = build("resnet10t", {"num_classes": 1000, "in_chans": 3})
    snapshot = unreachable_hub / "models--timm--resnet10t.c3_in1k" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in hub_model.state_dict().items()}, str(snapshot / "model.safetensors"))
    (unreachable_hub / "models--timm--resnet10t.c3_in1k" / "refs").mkdir()
    (unreachable_hub / "models--timm--resnet10t.c3_in1k" / "refs" / "main").write_text("0" * 40)

    init = build_teacher(TeacherConfig(model="resnet10t", pretrained=True), num_classes=10, in_chans=3)
    assert init.source == "pretrained" and init.head_reset  # 1000 hub classes, 10 here
    assert torch.equal(init.model.state_dict()["conv1.0.weight"], hub_model.state_dict()["conv1.0.weight"])
    assert not constants.HF_HUB_OFFLINE  # offline mode was for that one call
