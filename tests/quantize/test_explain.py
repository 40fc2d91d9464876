"""Report text about INT8 speed comes from the quantize stage's measurements, not a guess."""

from __future__ import annotations

from edgekd.quantize.explain import int8_speed_note
from edgekd.report.core import _int8_section

UNIT = {"unit": "/conv_stem/Conv", "ops": "Conv+HardSigmoid+Mul", "nodes": ["/conv_stem/Conv"], "fp32_us": 95.0,
        "int8_us": 464.0, "saving_us": -369.0,
        "int8_kernels": {"QLinearConv": 210.0, "DequantizeLinear": 69.0, "QuantizeLinear": 68.0, "QLinearMul": 44.0}}


def _file(timed: bool = True, float_units=()) -> dict:
    attempt = {"method": "minmax", "per_channel": True, "excluded_nodes": [], "accuracy": 0.9, "accuracy_drop": 0.0,
               "latency_ms_p50": 2.0 if timed else None, "passed": True, "quant_format": "qdq", "types": "U8S8",
               "purpose": "configured", "float_units": list(float_units), "outcome": "chosen"}
    failed = {**attempt, "passed": False, "latency_ms_p50": None, "accuracy": 0.5, "purpose": "calibration fallback",
              "outcome": "accuracy drop +0.4000 > 0.02"}
    speed = ({"timed": True, "fp32_ms_p50": 1.5, "int8_ms_p50": 2.0, "verdict": "No INT8 variant tried beat FP32",
              "profile": {"costly_units": [UNIT], "costly_count": 40, "units": 63,
                          "kernel_totals_us": {"fp32_us": 1719.5, "int8_us": 2660.0}}}
             if timed else {"timed": False, "why": "Not timed: this machine does not run the file as its targets do"})
    return {"file": "student.int8.x86.onnx", "targets": ["host-cpu"], "max_int8_drop": 0.02, "chosen": 0,
            "scheme": {"types": "U8S8", "activations": "uint8", "weights": "int8", "reduce_range": False,
                       "reason": "ONNX Runtime's x86 int8 kernels multiply u8 activations by s8 weights"},
            "attempts": [attempt, failed], "speed": speed}


def test_a_slower_int8_file_is_explained_by_the_profile():
    note = int8_speed_note(_file(), int8_ms=2.0, fp32_ms=1.5)
    assert "1.33× SLOWER" in note and "/conv_stem/Conv (Conv+HardSigmoid+Mul): INT8 464 us" in note
    assert "QLinearConv 210" in note and "40 of 63 units" in note and "overhead" not in note  # measured, no guess


def test_a_faster_int8_file_names_the_float_units_and_an_untimed_one_says_so():
    assert "1.50× faster" in int8_speed_note(_file(float_units=["a", "b"]), 1.0, 1.5)
    assert "2 unit(s) kept in float" in int8_speed_note(_file(float_units=["a", "b"]), 1.0, 1.5)
    assert "on the device" in int8_speed_note(_file(timed=False), 9.0, 1.5)


def test_a_faster_int8_file_names_the_unit_that_bounds_its_speed_up():
    file = _file()
    file["speed"]["profile"]["heaviest_units"] = [{**UNIT, "unit": "/conv1/Conv", "ops": "Conv+Relu", "int8_us": 1352.0,
                                                   "fp32_us": 1384.0, "int8_share": 0.56, "speedup": 1.02}]
    note = int8_speed_note(file, 1.5, 2.6)
    assert "1.73× faster" in note and "/conv1/Conv (Conv+Relu): 56% of the INT8 kernel time, 1.02× its FP32" in note
    assert "heaviest" not in int8_speed_note(_file(), 1.0, 1.5)  # no such record: nothing invented


def test_report_section_lists_types_why_and_every_attempt_outcome():
    text = "\n".join(_int8_section(_file()))
    assert "`student.int8.x86.onnx` for host-cpu" in text and "Types U8S8" in text and "u8 activations" in text
    assert "| 1 | configured | minmax |" in text and "chosen" in text and "accuracy drop +0.4000 > 0.02" in text
