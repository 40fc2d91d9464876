"""check_parity: PyTorch vs ONNX Runtime logits, tolerances and the failure message."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

from edgekd.errors import ConfigError, GateError  # noqa: E402
from edgekd.export import TOLERANCES, check_parity, export_onnx  # noqa: E402


def _resnet(seed: int):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return timm.create_model("resnet18", layers=[1, 1, 1, 1], channels=(8, 8, 16, 16), num_classes=10, in_chans=1)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = _resnet(0).eval()
    path = tmp_path_factory.mktemp("parity") / "m.onnx"
    export_onnx(model, path, input_shape=(1, 1, 32, 32), opset=18)
    return model, path


def _x(n=6):
    return np.random.default_rng(0).standard_normal((n, 1, 32, 32), dtype=np.float32)


def test_tolerance_table_orders_precisions():
    assert TOLERANCES["fp32"].atol < TOLERANCES["fp16"].atol < TOLERANCES["int8"].atol
    assert TOLERANCES["fp32"].min_top1 >= TOLERANCES["fp16"].min_top1 >= TOLERANCES["int8"].min_top1
    assert all(t.why for t in TOLERANCES.values())


def test_matching_model_passes_and_train_mode_is_restored(exported):
    model, path = exported
    model.train()
    result = check_parity(model, path, _x())
    assert model.training  # the caller's mode is restored
    model.eval()
    assert result.passed and result.max_abs_diff <= 1e-5 and result.top1_agreement == 1.0
    assert (result.atol, result.min_top1_agreement, result.precision) == (1e-4, 0.99, "fp32")


def test_mismatch_raises_with_both_numbers(exported):
    _, path = exported
    other = _resnet(1).eval()  # same architecture, other weights
    with pytest.raises(GateError) as info:
        check_parity(other, path, _x())
    message = str(info.value)
    assert "max |logit difference|" in message and "(tolerance 0.0001)" in message
    assert "top-1 agreement" in message and "(minimum 99.00%)" in message and "on 6 samples" in message

    report = check_parity(other, path, _x(), raise_on_fail=False)
    assert not report.passed and report.max_abs_diff > 1e-3
    # a caller-given tolerance wide enough lets it pass (here: only the top-1 bound matters)
    loose = check_parity(other, path, _x(), atol=1e6, min_top1_agreement=0.0)
    assert loose.passed and loose.atol == 1e6


@pytest.mark.parametrize("kwargs", [dict(precision="bf16"), dict(atol=-1.0), dict(min_top1_agreement=1.5)])
def test_bad_limits_are_config_errors(exported, kwargs):
    model, path = exported
    with pytest.raises(ConfigError):
        check_parity(model, path, _x(2), **kwargs)


def test_samples_must_be_nchw(exported):
    model, path = exported
    with pytest.raises(ConfigError, match="N, C, H, W"):
        check_parity(model, path, np.zeros((1, 32, 32), np.float32))
