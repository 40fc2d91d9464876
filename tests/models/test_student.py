import pytest
import timm
import torch

from edgekd.config import StudentConfig
from edgekd.errors import ModelError
from edgekd.models.io import build, load_model, save_checkpoint
from edgekd.models.student import DERIVATIONS, family_of, student_spec

BASE = {"num_classes": 10, "in_chans": 1}
# One teacher per family; a ViT needs a patch grid that fits 32x32 inputs.
TEACHERS = {
    "ResNet": ("resnet18", {}),
    "ConvNeXt": ("convnext_atto", {}),
    "VisionTransformer": ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 4}),
    "MobileNetV3": ("mobilenetv3_large_100", {}),
    "EfficientNet": ("efficientnet_b0", {}),
}


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("family", list(DERIVATIONS))
def test_derived_student_is_smaller_runs_at_32px_and_rebuilds(family, tmp_path):
    arch, extra = TEACHERS[family]
    teacher_kwargs = {**BASE, **extra}
    s_arch, s_kwargs = student_spec(StudentConfig(width=0.25, depth=0.5), arch, teacher_kwargs)
    student = build(s_arch, s_kwargs).eval()
    assert family_of(s_arch, s_kwargs) == family  # same timm class as the teacher
    assert _params(student) < _params(build(arch, teacher_kwargs)) / 4
    x = torch.randn(2, 1, 32, 32)
    assert student(x).shape == (2, 10)
    # (arch, kwargs) alone rebuild it: through timm directly and through an edgekd checkpoint.
    save_checkpoint(tmp_path / "s.safetensors", student, s_arch, s_kwargs)
    assert torch.equal(load_model(tmp_path / "s.safetensors")(x), student(x))
    assert _params(timm.create_model(s_arch, **s_kwargs)) == _params(student)


def test_resnet_derivation_scales_layers_and_channels():
    _, kwargs = student_spec(StudentConfig(width=0.25, depth=0.5), "resnet18", BASE)
    assert kwargs["layers"] == [1, 1, 1, 1] and kwargs["channels"] == [16, 32, 64, 128]


def test_vit_keeps_head_size_and_patch_grid():
    _, kwargs = student_spec(StudentConfig(width=0.25, depth=0.5), "vit_base_patch16_224",
                             {**BASE, "img_size": 32, "patch_size": 4})
    assert (kwargs["depth"], kwargs["num_heads"], kwargs["embed_dim"]) == (6, 3, 192)  # ViT-B -> ViT-Ti width
    assert (kwargs["img_size"], kwargs["patch_size"]) == (32, 4)


def test_mbconv_multipliers_compose_with_the_teachers_own():
    arch, kwargs = student_spec(StudentConfig(width=0.5, depth=0.5), "efficientnet_b3", BASE)
    assert arch == "edgekd_mbconv" and kwargs["variant"] == "efficientnet_b3"
    assert kwargs["gen_args"] == {"channel_multiplier": 0.6, "depth_multiplier": 0.7}  # b3 is (1.2, 1.4)
    _, tf_kwargs = student_spec(StudentConfig(), "tf_mobilenetv3_large_100", BASE)
    assert tf_kwargs["pad_type"] == "same" and tf_kwargs["bn_eps"] == 1e-3  # the tf_ entrypoint's defaults


def test_distilled_deit_counts_as_a_vit():
    assert family_of("deit_tiny_distilled_patch16_224", {"img_size": 32, "patch_size": 4}) == "VisionTransformer"


def test_unsupported_family_lists_supported_ones():
    with pytest.raises(ModelError, match="Supported families: ResNet, ConvNeXt, VisionTransformer"):
        student_spec(StudentConfig(), "levit_128s", {"num_classes": 10, "in_chans": 3})


def test_generator_without_depth_multiplier_says_so():
    with pytest.raises(ModelError, match="no depth multiplier"):
        student_spec(StudentConfig(width=0.5, depth=0.5), "mnasnet_100", BASE)
