"""The objective with real timm models: hooks, stage pairing, trained adapters, resume, AMP, TensorBoard."""

import sys

import pytest
import torch

from edgekd.config import ATConfig, FeaturePair, FitNetsConfig, KDConfig, RKDConfig, StudentConfig, TrainConfig
from edgekd.distill.losses import build_objective
from edgekd.distill.taps import PRE_LOGITS, Tap, pair_stages
from edgekd.distill.trainer import train
from edgekd.errors import ConfigError
from edgekd.models.io import build
from edgekd.models.student import student_spec

TEACHER = ("resnet18", {"num_classes": 3, "in_chans": 1, "channels": [16, 32, 64, 128]})
SHAPE = (1, 32, 32)


def _models():
    torch.manual_seed(0)
    teacher = build(*TEACHER).eval()
    student = build(*student_spec(StudentConfig(width=0.5, depth=0.5), *TEACHER))
    return student, teacher


def _toy(n=48):
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (n,), generator=g)
    return torch.randn(n, *SHAPE, generator=g) * 0.5 + y.view(n, 1, 1, 1), y


def _live(teacher):
    def fn(_idx, inputs):
        with torch.no_grad():
            return teacher(inputs).float()

    return fn


def test_stages_pair_by_spatial_size():
    student, teacher = _models()
    pairs = pair_stages(student, teacher, SHAPE)
    assert [(p.student, p.teacher) for p in pairs] == [(f"layer{i}", f"layer{i}") for i in (1, 2, 3, 4)]
    assert [p.student_shape[0] for p in pairs] == [8, 16, 32, 64] and pairs[0].teacher_shape == (16, 8, 8)


def test_named_pairs_override_and_unknown_names_list_the_stages():
    student, teacher = _models()
    pairs = pair_stages(student, teacher, SHAPE, [("layer2", "layer3")])
    assert pairs[0].student_shape == (16, 4, 4) and pairs[0].teacher_shape == (64, 2, 2)
    with pytest.raises(ConfigError, match="no module 'layer9'.*layer1, layer2"):
        pair_stages(student, teacher, SHAPE, [("layer9", "layer3")])


def test_vit_tokens_become_maps_and_embeddings_are_read_at_the_classifier():
    vit = build("vit_tiny_patch16_224", {"num_classes": 3, "in_chans": 1, "img_size": 32, "patch_size": 8,
                                         "depth": 2}).eval()
    tap = Tap(vit, ["blocks.1", PRE_LOGITS])
    vit(torch.randn(2, *SHAPE))
    assert tap.features["blocks.1"].shape == (2, 192, 4, 4) and tap.features[PRE_LOGITS].shape == (2, 192)
    tap.close()
    assert not vit.blocks[1]._forward_hooks


def test_feature_objective_trains_adapters_that_stay_out_of_the_student(tmp_path, single_thread):
    student, teacher = _models()
    losses = [KDConfig(), FitNetsConfig(), ATConfig(pairs=[FeaturePair(student="layer4", teacher="layer4")]),
              RKDConfig(weight=0.1)]
    objective = build_objective(losses, student=student, teacher=teacher, input_shape=SHAPE)
    assert objective.needs_teacher_internals
    assert "fitnets (layer1<-layer1, layer2<-layer2" in objective.describe()
    before = {k: v.clone() for k, v in objective.state_dict().items()}
    assert len(before) == 8  # four 1x1 adapters (8->16 ... 64->128), weight and bias each
    data = _toy()
    cfg = TrainConfig(epochs=2, batch_size=16, lr=3e-3, warmup_epochs=0, channels_last=False)
    result = train(student, data, data, cfg, objective, tmp_path, key="k", teacher=_live(teacher))
    assert all(not torch.equal(before[k], v) for k, v in objective.state_dict().items())  # adapters learned
    assert not any("adapter" in k for k in result.best_state)
    assert set(result.best_state) == set(build(*student_spec(StudentConfig(width=0.5, depth=0.5), *TEACHER)).state_dict())
    objective.close()
    assert not student.layer1._forward_hooks and not teacher.fc._forward_pre_hooks


def test_resume_restores_the_adapters_exactly(tmp_path, single_thread):
    data, cfg = _toy(), TrainConfig(epochs=3, batch_size=16, lr=3e-3, warmup_epochs=0, channels_last=False)

    def run(folder, stop_after=None):
        student, teacher = _models()
        objective = build_objective([FitNetsConfig()], student=student, teacher=teacher, input_shape=SHAPE)
        calls = {"n": 0}

        def progress(**_):
            calls["n"] += 1
            if calls["n"] == stop_after:
                raise KeyboardInterrupt

        try:
            train(student, data, data, cfg, objective, folder, key="k", teacher=_live(teacher), progress=progress)
        except KeyboardInterrupt:
            return None
        return student, objective

    straight_student, straight = run(tmp_path / "a")
    assert run(tmp_path / "b", stop_after=1) is None
    resumed_student, resumed = run(tmp_path / "b")
    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    for k, v in straight_student.state_dict().items():
        assert torch.equal(v, resumed_student.state_dict()[k]), k


def test_bf16_autocast_trains_on_cpu_and_fp16_is_refused_there(tmp_path, single_thread):
    student, teacher = _models()
    objective = build_objective([KDConfig()], student=student, teacher=teacher, input_shape=SHAPE)
    data = _toy(32)
    cfg = TrainConfig(epochs=1, batch_size=16, warmup_epochs=0, channels_last=False, amp="bf16")
    result = train(student, data, data, cfg, objective, tmp_path / "bf16", key="k", teacher=_live(teacher))
    assert torch.isfinite(torch.tensor(result.history[0]["loss"]))
    with pytest.raises(ConfigError, match="fp16.*needs a CUDA device"):
        train(student, data, data, cfg.model_copy(update={"amp": "fp16"}), objective, tmp_path / "fp16", key="k")


def test_tensorboard_is_skipped_with_a_note_when_not_installed(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # `import` now raises ImportError
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(32 * 32, 3))
    cfg = TrainConfig(epochs=1, batch_size=16, channels_last=False, tensorboard=True)
    data = _toy(16)
    result = train(model, data, data, cfg, build_objective([KDConfig(alpha=0)]), tmp_path, key="k",
                   teacher=lambda _i, x: torch.zeros(len(x), 3))
    assert result.notes and "not installed" in result.notes[0]


def test_tensorboard_writes_events_when_installed(tmp_path):
    pytest.importorskip("tensorboard", reason="optional: pip install tensorboard")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(32 * 32, 3))
    cfg = TrainConfig(epochs=1, batch_size=16, channels_last=False, tensorboard=True)
    data = _toy(16)
    train(model, data, data, cfg, build_objective([KDConfig(alpha=0)]), tmp_path, key="k",
          teacher=lambda _i, x: torch.zeros(len(x), 3))
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_feature_losses_need_both_models():
    with pytest.raises(ConfigError, match="needs both student and teacher"):
        build_objective([FitNetsConfig()])
