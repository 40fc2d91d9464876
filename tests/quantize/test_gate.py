"""The INT8 accuracy gate: first try, fallbacks, sensitivity-guided float nodes, clean failure."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgekd.artifacts import sha256_file, sidecar_path
from edgekd.errors import GateError
from edgekd.quantize import quantize_with_gate
from edgekd.quantize.gate import SQNR_CAP_DB, channel_sqnr, search_order
from edgekd.quantize.ort_int8 import QuantSettings
from edgekd.runtime.ort import accuracy, make_session, predict


def test_search_order_tries_methods_then_granularity():
    order = search_order(QuantSettings("entropy", per_channel=True))
    assert [(s.method, s.per_channel) for s in order] == [
        ("entropy", True), ("minmax", True), ("percentile", True),
        ("entropy", False), ("minmax", False), ("percentile", False),
    ]
    # TensorRT needs per-channel weights: no per-tensor fallback
    assert all(s.per_channel for s in search_order(QuantSettings(trt_ready=True)))


def test_channel_sqnr_against_hand_computed_values():
    x = np.ones((2, 3, 4, 4), np.float32)
    assert channel_sqnr([x], [x]) == SQNR_CAP_DB  # exact
    noisy = x.copy()
    noisy[:, 0] *= 1.1  # channel 0: |noise| / |signal| = 0.1 -> 20 dB; channels 1, 2: exact -> cap
    assert channel_sqnr([x], [noisy]) == pytest.approx((20 + 2 * SQNR_CAP_DB) / 3)
    dead = x.copy()
    dead[:, 1] = 0  # an all-zero channel carries no signal and is skipped
    assert channel_sqnr([dead], [dead * np.array([1.1, 1, 1])[None, :, None, None]]) == pytest.approx(
        (20 + SQNR_CAP_DB) / 2
    )


def test_passes_on_first_attempt(digits, tmp_path):
    out = tmp_path / "int8.onnx"
    result = quantize_with_gate(
        digits.onnx, out, digits.calib_x, digits.val_x, digits.val_y,
        reference_accuracy=digits.fp32_accuracy, max_accuracy_drop=0.03, method="minmax", per_channel=True,
    )
    assert len(result.attempts) == 1 and result.chosen is result.attempts[0]
    assert result.chosen.passed and result.chosen.latency_ms_p50 > 0
    assert result.chosen.accuracy == pytest.approx(accuracy(predict(make_session(out), digits.val_x), digits.val_y))
    gate = json.loads(sidecar_path(out).read_text())["gate"]
    assert gate["max_accuracy_drop"] == 0.03 and len(gate["attempts"]) == 1


def test_impossible_budget_fails_cleanly(digits, tmp_path):
    out = tmp_path / "int8.onnx"
    fp32_hash = sha256_file(digits.onnx)
    with pytest.raises(GateError) as info:
        quantize_with_gate(
            digits.onnx, out, digits.calib_x[:64], digits.val_x, digits.val_y,
            reference_accuracy=digits.fp32_accuracy, max_accuracy_drop=-1.0,  # would need accuracy > 1
            method="minmax", per_channel=True, max_excluded_nodes=3,
        )
    message = str(info.value)
    for label in ("minmax/per-channel", "entropy/per-channel", "percentile/per-tensor", "float nodes"):
        assert label in message
    assert message.count("-> failed") >= 7  # 6 settings + at least one float-node attempt
    assert list(tmp_path.iterdir()) == []  # no INT8 file, no sidecar, no temporary directory
    assert sha256_file(digits.onnx) == fp32_hash


@pytest.mark.parametrize("trt_ready", [False, True])
def test_outlier_passes_only_after_keeping_sensitive_nodes_float(digits, outlier_model, tmp_path, trt_ready):
    from edgekd.export import export_onnx

    fp32 = tmp_path / "outlier.onnx"
    export_onnx(outlier_model, fp32, input_shape=(1, 1, 32, 32), opset=18, prepare=False)
    reference = accuracy(predict(make_session(fp32), digits.val_x), digits.val_y)
    assert reference == pytest.approx(digits.fp32_accuracy, abs=0.002)  # same function in FP32

    out = tmp_path / "outlier.int8.onnx"
    result = quantize_with_gate(
        fp32, out, digits.calib_x, digits.val_x, digits.val_y,
        reference_accuracy=reference, max_accuracy_drop=0.02, method="minmax", per_channel=True,
        trt_ready=trt_ready,
    )
    plain = [a for a in result.attempts if not a.excluded_nodes]
    assert len(plain) == (3 if trt_ready else 6) and not any(a.passed for a in plain)
    assert max(a.accuracy for a in plain) < reference - 0.3  # measured: <= 0.47 vs 0.94
    assert result.chosen is result.attempts[-1] and result.chosen.passed
    # the sensitivity ranking put the outlier tensor (conv1 -> relu -> conv2) first
    first = result.sensitivity[0]
    assert first["kind"] == "activation" and len(first["nodes"]) == 3
    assert set(first["nodes"]) <= set(result.chosen.excluded_nodes)
    assert len(result.chosen.excluded_nodes) <= 5
    assert out.is_file() and json.loads(sidecar_path(out).read_text())["gate"]["sensitivity"]


def test_pinned_setting_without_fallbacks_is_tried_once(digits, tmp_path):
    with pytest.raises(GateError) as err:
        quantize_with_gate(digits.onnx, tmp_path / "m.int8.onnx", digits.calib_x, digits.val_x, digits.val_y,
                           reference_accuracy=1.0, max_accuracy_drop=0.0, fallbacks=False)
    assert str(err.value).count("failed") == 1 and not (tmp_path / "m.int8.onnx").exists()
