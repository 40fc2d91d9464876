"""No checkpoint runs code (docs/security.md): a crafted pickle that would create a file, in every load path.

The crafted file's unpickling calls `open(marker, "w")`: the marker file exists afterwards only if
the pickle ran. The trusted path shows it really does run when fully unpickled, so the other
checks are not vacuous.
"""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from edgekd.config import TeacherConfig, TrainConfig
from edgekd.distill.losses import cross_entropy
from edgekd.distill.schemes import train_peers
from edgekd.distill.trainer import train
from edgekd.errors import ConfigError, ModelError
from edgekd.models.io import LEGACY_FORMAT, RECORD_KEY, build, load_model, read_checkpoint, save_checkpoint
from edgekd.models.teacher import build_teacher, read_state_dict
from tests.distill.test_trainer import _toy_data

ARCH, KWARGS = "resnet10t", {"num_classes": 3, "in_chans": 1}


class _CreatesAFile:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):  # what unpickling calls: open(marker, "w") creates the file
        return (open, (self.marker, "w"))


@pytest.fixture
def crafted(tmp_path):
    """(write(path, payload) -> path with the code-running object added to `payload`, marker)."""
    marker = tmp_path / "pwned"

    def write(path, payload):
        torch.save({**payload, "extra": _CreatesAFile(marker)}, path)
        return path

    return write, marker


def _small_state():
    return build(ARCH, KWARGS).state_dict()


def test_teacher_checkpoint_is_refused_naming_file_and_global(crafted, tmp_path):
    write, marker = crafted
    path = write(tmp_path / "teacher.pth", {"state_dict": _small_state()})
    with pytest.raises(ModelError) as err:
        build_teacher(TeacherConfig(model=ARCH, checkpoint=path), num_classes=3, in_chans=1)
    assert not marker.exists()
    assert err.value.exit_code == 4
    assert str(path) in err.value.message and "'io.open'" in err.value.message
    assert "teacher.trust_checkpoint: true" in err.value.hint


def test_trust_checkpoint_is_the_explicit_opt_in(crafted, tmp_path):
    write, marker = crafted
    path = write(tmp_path / "teacher.pth", {"state_dict": _small_state()})
    init = build_teacher(TeacherConfig(model=ARCH, checkpoint=path, trust_checkpoint=True), num_classes=3, in_chans=1)
    assert marker.exists()  # the crafted file really runs code when unpickled: the refusals above matter
    assert init.source.startswith("checkpoint:")


def test_trust_checkpoint_without_a_checkpoint_is_a_config_error(tmp_path):
    from edgekd.config import load_config

    (tmp_path / "m.yaml").write_text("teacher: {trust_checkpoint: true}\n")
    with pytest.raises(ConfigError, match="trust_checkpoint"):
        load_config(tmp_path / "m.yaml")


def test_edgekd_checkpoint_path_is_refused(crafted, tmp_path):
    write, marker = crafted
    path = write(tmp_path / "student.pt", {"format": LEGACY_FORMAT, "arch": ARCH, "arch_kwargs": KWARGS,
                                           "state_dict": _small_state()})
    for load in (read_checkpoint, load_model):
        with pytest.raises(ModelError, match="io.open"):
            load(path)
    assert not marker.exists()


def test_resume_from_a_crafted_last_pt_is_refused(crafted, tmp_path):
    write, marker = crafted
    work = tmp_path / "work"
    work.mkdir()
    write(work / "last.pt", {"key": "k"})
    x, y = _toy_data(32)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    with pytest.raises(ModelError, match="epoch checkpoint") as err:
        train(model, (x, y), (x, y), TrainConfig(epochs=1, batch_size=16), cross_entropy(), work, key="k")
    assert not marker.exists() and str(work / "last.pt") in err.value.hint


def test_online_peers_resume_is_refused(crafted, tmp_path):
    write, marker = crafted
    work = tmp_path / "peers"
    work.mkdir()
    write(work / "last.pt", {"key": "k", "peers": []})
    x, y = _toy_data(32)
    peers = [torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3)) for _ in range(2)]
    with pytest.raises(ModelError, match="epoch checkpoint"):
        train_peers(peers, (x, y), (x, y), TrainConfig(epochs=1, batch_size=16), work, key="k")
    assert not marker.exists()


def test_an_epoch_checkpoint_of_other_work_is_ignored_after_a_safe_load(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    torch.save({"key": "another training", "model": {}}, work / "last.pt")
    x, y = _toy_data(32)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    result = train(model, (x, y), (x, y), TrainConfig(epochs=1, batch_size=16), cross_entropy(), work, key="k")
    assert result.resumed_from_epoch == 0 and result.epochs_run == 1


def test_checkpoints_of_earlier_edgekd_versions_still_load(tmp_path):
    """edgekd 0.1 wrote teacher.pt/student.pt with torch.save: dicts, strings, numbers, tensors (and, for
    QAT, tuples, sizes and dtypes) — all within what the weights-only loader builds."""
    model = build(ARCH, KWARGS).eval()
    old = {"format": LEGACY_FORMAT, "arch": ARCH, "arch_kwargs": KWARGS,
           "state_dict": {k: v.clone() for k, v in model.state_dict().items()},
           "preprocess": {"input_size": 32, "channels": 1, "mean": [0.5], "std": [0.2]}, "classes": ["a", "b", "c"],
           "config": {"teacher": {"model": ARCH}}, "metrics": {"val_accuracy": 0.9},
           "versions": {"edgekd": "0.1.0"}, "extra": {"pair": ("quantize", {"shape": torch.Size([3, 1]),
                                                                             "dtype": torch.float32})}}
    torch.save(old, tmp_path / "teacher.pt")
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(load_model(tmp_path / "teacher.pt")(x), model(x))
    init = build_teacher(TeacherConfig(model=ARCH, checkpoint=tmp_path / "teacher.pt"), num_classes=3, in_chans=1)
    assert not init.head_reset and torch.equal(init.model.eval()(x), model(x))


def test_timm_train_checkpoints_with_their_argparse_namespace_load(tmp_path):
    state = _small_state()
    torch.save({"epoch": 3, "arch": ARCH, "state_dict": state, "optimizer": {}, "version": 2,
                "args": argparse.Namespace(lr=0.1, model=ARCH), "metric": 0.5}, tmp_path / "model_best.pth.tar")
    loaded = read_state_dict(tmp_path / "model_best.pth.tar")
    assert loaded.keys() == state.keys()
    assert argparse.Namespace not in torch.serialization.get_safe_globals()  # allowed for that load only


def test_damaged_torch_file_is_a_model_error(tmp_path):
    path = tmp_path / "t.pth"
    torch.save({"a": torch.zeros(3)}, path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ModelError, match="Cannot read teacher.checkpoint"):
        read_state_dict(path)


def test_edgekd_checkpoints_are_safetensors_with_a_json_record(tmp_path):
    from safetensors import safe_open

    model = build(ARCH, KWARGS)
    record_extra = {"qat": {"state": [("quantize", {"shape": torch.Size([4, 1]), "dtype": torch.float16,
                                                    "axis": (0, 1)})]}}
    save_checkpoint(tmp_path / "s.safetensors", model, ARCH, KWARGS, metrics={"val_accuracy": 0.5}, **record_extra)
    with safe_open(str(tmp_path / "s.safetensors"), framework="pt") as f:
        record = json.loads(f.metadata()[RECORD_KEY])
        assert set(f.keys()) == set(model.state_dict())
    assert record["arch"] == ARCH and record["metrics"] == {"val_accuracy": 0.5}
    back = read_checkpoint(tmp_path / "s.safetensors")["qat"]["state"][0]
    assert back == ("quantize", {"shape": torch.Size([4, 1]), "dtype": torch.float16, "axis": (0, 1)})
    assert isinstance(back[1]["shape"], torch.Size) and not list(tmp_path.glob("*.partial"))


def test_a_record_naming_a_torch_attribute_that_is_not_a_dtype_is_refused(tmp_path):
    from safetensors.torch import save_file

    record = {"format": "edgekd.checkpoint/2", "arch": ARCH, "arch_kwargs": KWARGS, "x": {"__dtype__": "load"}}
    save_file({"w": torch.zeros(1)}, str(tmp_path / "s.safetensors"), metadata={RECORD_KEY: json.dumps(record)})
    with pytest.raises(ModelError, match="record is not valid"):
        read_checkpoint(tmp_path / "s.safetensors")
