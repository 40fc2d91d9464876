"""benchmarks/int8_speed.py: its recipes, its trained-student cache and its report of a family that failed.

No timing and no training beyond one step: the script's measuring is what it is for, and its
results are committed in benchmarks/results/int8_speed.{md,json}.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


def _script():
    if "int8_speed" in sys.modules:
        return sys.modules["int8_speed"]
    spec = importlib.util.spec_from_file_location("int8_speed", REPO / "benchmarks" / "int8_speed.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["int8_speed"] = module
    spec.loader.exec_module(module)
    return module


def test_every_family_has_a_recipe_and_a_flag_overrides_it():
    script = _script()
    assert set(script.RECIPES) == set(script.FAMILIES) and script.FAMILIES["convnext"] == "convnext_atto"
    args = script.parse_args(["--epochs", "1"])
    plan = script.recipe("resnet18", args)
    assert plan["epochs"] == 1 and plan["train"] == script.RECIPES["resnet18"]["train"]


def test_a_trained_student_is_stored_and_reused_not_trained_again(tmp_path, monkeypatch):
    pytest.importorskip("timm")
    script = _script()
    args = script.parse_args(["--work", str(tmp_path), "--train", "2", "--epochs", "1", "--batch-size", "2",
                              "--final-images", "2", "--threads", "1"])
    monkeypatch.setattr(script, "to_input", lambda x28, size=224: np.zeros((len(x28), 3, 32, 32), np.float32))
    x28, y = np.zeros((2, 28, 28), np.uint8), np.array([0, 1])
    first = script.trained_student("resnet18", args, x28, y)
    assert "reused" not in first[3] and len(list((tmp_path / "resnet18").glob("student-*.pt"))) == 1

    def no_training(*a, **k):
        raise AssertionError("trained again")

    monkeypatch.setattr(script, "train", no_training)
    again = script.trained_student("resnet18", args, x28, y)
    assert again[3]["reused"].endswith(".pt")
    for name, tensor in first[0].state_dict().items():
        assert (again[0].state_dict()[name] == tensor).all()


def test_a_family_that_failed_gets_a_row_that_says_why():
    script = _script()
    results = {"machine": {"cpu": "AMD EPYC", "cores": 2, "versions": {}, "os": "Linux"}, "cpu_int8_flags": ["avx2"],
               "settings": {"gate_val": 1, "calib": 1, "rounds": 1, "threads": 2, "test": 1},
               "families": [{"made": {"family": "convnext", "teacher": "convnext_atto",
                                      "error": "ModelError: LayerNormalization did not export"}}]}
    text = script.markdown(json.loads(json.dumps(results)))
    assert "| convnext | (from convnext_atto) | — |" in text
    assert "not measured: ModelError: LayerNormalization did not export" in text
    assert "no VNNI" in text  # this CPU's ratios are not the VNNI host's
