"""Export + ONNX Runtime parity for a tiny model of each family the student derivation supports.

Random init, eval mode, num_classes=10, 32x32 inputs. Measured max |logit diff| here:
<= 1.5e-6 for all of them, against the fp32 tolerance of 1e-4.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

from edgekd.export import TOLERANCES, check_parity, export_onnx  # noqa: E402

FAMILIES = {
    "resnet": ("resnet18", dict(layers=[1, 1, 1, 1], channels=(16, 32, 64, 128), in_chans=1)),
    "mobilenetv3": ("mobilenetv3_small_050", dict(in_chans=3)),
    "convnext": ("convnext_atto", dict(in_chans=1)),
    "vit": ("vit_tiny_patch16_224", dict(img_size=32, patch_size=8, depth=2, in_chans=3)),
}


def _model(family: str):
    arch, kwargs = FAMILIES[family]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return timm.create_model(arch, num_classes=10, **kwargs).eval(), kwargs["in_chans"]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_export_and_parity(family, tmp_path):
    model, chans = _model(family)
    x = np.random.default_rng(0).standard_normal((4, chans, 32, 32), dtype=np.float32)
    result = export_onnx(model, tmp_path / f"{family}.onnx", input_shape=(1, chans, 32, 32), opset=18)
    assert result.exporter == "dynamo" and result.simplified
    parity = check_parity(model, result.path, x)
    assert parity.passed and parity.samples == 4
    assert parity.max_abs_diff <= TOLERANCES["fp32"].atol and parity.top1_agreement == 1.0


@pytest.mark.parametrize("family", ["convnext", "vit"])
def test_torchscript_opset17_parity(family, tmp_path):
    # opset 17 (TensorRT 8.5/8.6): LayerNormalization exists from 17, GELU is still Erf-based.
    model, chans = _model(family)
    x = np.random.default_rng(1).standard_normal((4, chans, 32, 32), dtype=np.float32)
    result = export_onnx(model, tmp_path / "m.onnx", input_shape=(1, chans, 32, 32), opset=17, verify_with=x)
    assert result.exporter == "torchscript" and result.parity["passed"]
