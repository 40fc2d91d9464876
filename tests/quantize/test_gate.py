"""The INT8 accuracy gate: first try, fallbacks, sensitivity-guided float nodes, clean failure."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgekd.artifacts import sha256_file, sidecar_path
from edgekd.errors import GateError
from edgekd.quantize import quantize_with_gate
from edgekd.quantize.gate import (
    SQNR_CAP_DB,
    TIE_MARGIN,
    Attempt,
    _outside_best_region,
    heaviest_units,
    channel_sqnr,
    pick_fastest,
    search_order,
)
from edgekd.quantize.ort_int8 import QuantSettings
from edgekd.quantize.profile import UnitCost, costly_units
from edgekd.quantize.schemes import choose_scheme
from edgekd.runtime.ort import accuracy, make_session, predict
from edgekd.targets import load_target
from tests.quantize.conftest import assert_tensorrt_form


def test_search_order_tries_methods_then_granularity():
    order = search_order(QuantSettings("entropy", per_channel=True))
    assert [(s.method, s.per_channel) for s, _ in order] == [
        ("entropy", True), ("minmax", True), ("percentile", True),
        ("entropy", False), ("minmax", False), ("percentile", False),
    ]
    assert [purpose for _, purpose in order[:2]] == ["configured", "calibration fallback"]
    # TensorRT needs per-channel weights: no per-tensor fallback
    trt = QuantSettings(scheme=choose_scheme("tensorrt", "aarch64"))
    assert all(s.per_channel for s, _ in search_order(trt))


def _unit(name: str, fp32: float, int8: float) -> UnitCost:
    return UnitCost(name, "Conv", [name], fp32, int8, {"QLinearConv": int8})


def test_costly_units_and_the_best_int8_region_from_unit_costs():
    costs = [_unit("stem", 10, 40), _unit("a", 50, 20), _unit("b", 30, 35), _unit("c", 60, 20), _unit("head", 5, 15)]
    assert [c.unit for c in costly_units(costs)] == ["stem", "head", "b"]  # worst first
    # a..c saves 30 - 5 + 40 = 65 us, more than a or c alone: one region, float before and after it
    assert [c.unit for c in _outside_best_region(costs)] == ["stem", "head"]
    assert [c.unit for c in _outside_best_region([_unit("x", 1, 9)])] == ["x"]  # nothing pays: every unit outside


def test_heaviest_units_rank_int8_time_and_say_how_much_each_gained():
    costs = [_unit("stem", 1384, 1452), _unit("a", 500, 200), _unit("b", 300, 120), _unit("head", 17, 28)]
    ranked = heaviest_units(costs, int8_total_us=2000.0, shown=2)
    assert [(u["unit"], u["int8_share"], u["speedup"]) for u in ranked] == [("stem", 0.726, 0.95), ("a", 0.1, 2.5)]
    assert ranked[0]["saving_us"] == -68.0


def _timed(ms: float, float_nodes: int = 0, form: str = "qdq") -> Attempt:
    return Attempt("minmax", True, [f"n{i}" for i in range(float_nodes)], 0.9, 0.0, ms, True, quant_format=form)


def test_pick_fastest_keeps_the_fastest_and_breaks_near_ties_by_simplicity():
    assert pick_fastest([_timed(2.0), _timed(1.5, 8), _timed(1.8, form="qoperator")]) == 1  # clearly faster wins
    assert pick_fastest([_timed(1.52), _timed(1.5, 8)]) == 0  # within 3%: fewer float nodes
    assert pick_fastest([_timed(1.5, form="qoperator"), _timed(1.51)]) == 1  # then QDQ


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
        speed_search=False,
    )
    assert len(result.attempts) == 1 and result.chosen is result.attempts[0]
    assert result.chosen.passed and result.chosen.latency_ms_p50 > 0 and result.chosen.outcome == "chosen"
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
        trt_ready=trt_ready, speed_search=False,
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
    if trt_ready:  # float nodes for accuracy leave the TensorRT form intact
        assert_tensorrt_form(out)


def test_pinned_setting_without_fallbacks_is_tried_once(digits, tmp_path):
    with pytest.raises(GateError) as err:
        quantize_with_gate(digits.onnx, tmp_path / "m.int8.onnx", digits.calib_x, digits.val_x, digits.val_y,
                           reference_accuracy=1.0, max_accuracy_drop=0.0, fallbacks=False)
    assert str(err.value).count("failed") == 1 and not (tmp_path / "m.int8.onnx").exists()


def test_gate_keeps_the_fastest_passing_attempt_and_says_why_the_others_lost(digits, tmp_path):
    out = tmp_path / "fast.int8.onnx"
    result = quantize_with_gate(digits.onnx, out, digits.calib_x, digits.val_x, digits.val_y,
                                reference_accuracy=digits.fp32_accuracy, max_accuracy_drop=0.03,
                                target=load_target("host-cpu"))
    passing = [a for a in result.attempts if a.passed]
    assert len(passing) >= 2 and any(a.quant_format == "qoperator" for a in passing)  # x86 runs both forms
    assert result.chosen.latency_ms_p50 <= min(a.latency_ms_p50 for a in passing) * (1 + TIE_MARGIN)
    for a in result.attempts:
        if a is result.chosen:
            assert a.outcome == "chosen"
        elif a.passed and a.latency_ms_p50 > result.chosen.latency_ms_p50:
            assert a.outcome.startswith("slower:")
        elif a.passed:  # as fast, within the margin: the chosen one is simpler
            assert a.outcome.startswith("as fast") and len(a.excluded_nodes) >= len(result.chosen.excluded_nodes)
        else:
            assert a.outcome.startswith("accuracy drop") and a.latency_ms_p50 is None
    side = json.loads(sidecar_path(out).read_text())
    assert side["quant_format"] == result.chosen.quant_format and side["scheme"]["types"] == "U8S8"
    speed = side["gate"]["speed"]
    assert speed["timed"] and speed["int8_ms_p50"] == result.chosen.latency_ms_p50 and speed["fp32_ms_p50"] > 0


def test_units_that_cost_more_in_int8_are_kept_float(hardswish_onnx, digits, tmp_path):
    # Untrained: the reference is the FP32 model's own answers; the bound lets any INT8 pass, so the
    # speed phase alone decides. Conv+HardSwish, squeeze-excite and the tiny head cost more in INT8
    # here (HardSwish becomes DQ -> HardSigmoid -> Q + QLinearMul; FP32 fuses it into the conv).
    labels = predict(make_session(hardswish_onnx), digits.val_x).argmax(1)
    result = quantize_with_gate(hardswish_onnx, tmp_path / "hs.int8.onnx", digits.calib_x[:64], digits.val_x, labels,
                                reference_accuracy=1.0, max_accuracy_drop=1.0, target=load_target("host-cpu"))
    profile = result.speed["profile"]
    assert profile["costly_count"] >= 1 and profile["unattributed_us"]["int8"].get("QLinearConv") is None
    for unit in profile["costly_units"]:  # the record explains itself: every listed unit lost time in INT8
        assert unit["int8_us"] > unit["fp32_us"] and unit["saving_us"] < 0
    floated = next(a for a in result.attempts if a.purpose.startswith("speed: units that cost more"))
    costly = {u["unit"]: u for u in profile["costly_units"]}
    assert floated.float_units and set(floated.float_units) <= set(costly)
    for unit in floated.float_units:
        assert set(costly[unit]["nodes"]) <= set(floated.excluded_nodes)
    assert "HardSigmoid" in " ".join(costly[u]["ops"] for u in floated.float_units)
    assert floated.passed and floated.outcome  # chosen or "slower: ..." from the interleaved timing
    heaviest = profile["heaviest_units"]  # where the INT8 time goes, whether or not a unit lost time
    assert [u["int8_us"] for u in heaviest] == sorted((u["int8_us"] for u in heaviest), reverse=True)
    assert 0 < sum(u["int8_share"] for u in heaviest) <= 1.0 + 1e-6
    assert all(u["speedup"] == round(u["fp32_us"] / u["int8_us"], 2) for u in heaviest)
    ops = profile["int8_ops_us"]  # every INT8 kernel, by op type: sums to the INT8 total
    assert ops["QLinearConv"] > 0 and "HardSigmoid" in ops  # HardSwish's float island, seen in the profile
    assert sum(ops.values()) == pytest.approx(profile["kernel_totals_us"]["int8_us"], abs=1.0)
