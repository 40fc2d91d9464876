"""prepare_for_export: eval copy, timm re-parameterization, BatchNorm folded into convolutions."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

from edgekd.errors import ModelError  # noqa: E402
from edgekd.export import fold_batchnorm, prepare_for_export  # noqa: E402

nn = torch.nn


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Fresh BNs are identities (mean 0, var 1); give them real statistics so folding is tested."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model


def _bn_count(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def _max_rel_diff(a: nn.Module, b: nn.Module, shape) -> float:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, out = a.eval()(x), b(x)
    return float((out - ref).abs().max() / max(1.0, float(ref.abs().max())))


@pytest.mark.parametrize(
    "arch, kwargs",
    [
        ("resnet18", dict(layers=[1, 1, 1, 1], channels=(16, 32, 64, 128), in_chans=1)),  # nn.BatchNorm2d
        ("mobilenetv3_small_050", dict(in_chans=3)),  # timm BatchNormAct2d (BN + activation in one)
    ],
)
def test_every_batchnorm_is_folded_and_outputs_unchanged(arch, kwargs):
    model = _randomize_bn(timm.create_model(arch, num_classes=10, **kwargs)).train()
    shape = (2, kwargs["in_chans"], 32, 32)
    before = _bn_count(model)
    prepared = prepare_for_export(model, shape)
    assert before > 0 and _bn_count(prepared) == 0
    assert not prepared.training
    assert _max_rel_diff(model, prepared, shape) <= 1e-5
    assert _bn_count(model) == before  # the caller's model is left alone


def test_reparameterizes_mobileone():
    model = _randomize_bn(timm.create_model("mobileone_s0", num_classes=10))
    prepared = prepare_for_export(model, (1, 3, 32, 32))
    assert _bn_count(prepared) == 0
    assert all(getattr(m, "reparam_conv", None) is not None for m in prepared.modules() if hasattr(m, "reparam_conv"))
    assert _max_rel_diff(model, prepared, (2, 3, 32, 32)) <= 1e-4  # branches summed in float32


class _SharedConvOutput(nn.Module):
    """conv output read by BN and by a second module: folding would change the second reader."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.pool = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        y = self.conv(x)
        return (self.pool(self.bn(y)) + self.pool(y)).flatten(1)


class _FunctionalReader(_SharedConvOutput):
    """Same, but the second read is functional (`y.mean`), which hooks cannot see."""

    def forward(self, x):
        y = self.conv(x)
        return self.pool(self.bn(y)).flatten(1) + y.mean((2, 3))


def test_conv_output_read_twice_is_not_folded():
    model = _randomize_bn(_SharedConvOutput()).eval()
    assert fold_batchnorm(model, torch.randn(1, 1, 8, 8)) == 0


def test_functional_reader_is_caught_by_the_output_check():
    model = _randomize_bn(_FunctionalReader())
    with pytest.raises(ModelError, match="fold_bn=False"):
        prepare_for_export(model, (1, 1, 8, 8))
    prepared = prepare_for_export(model, (1, 1, 8, 8), fold_bn=False)
    assert _bn_count(prepared) == 1


def test_does_not_consume_the_global_rng():
    model = timm.create_model("resnet18", layers=[1, 1, 1, 1], channels=(8, 8, 8, 8))
    state = torch.get_rng_state()
    prepare_for_export(model, (1, 3, 32, 32))
    assert torch.equal(state, torch.get_rng_state())
