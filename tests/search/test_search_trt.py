"""TensorRT targets (Jetson profiles) in the search: the pure logic, on this machine without TensorRT.

What is real here: the candidate files (the FP32 file FP16 engines are built from, the INT8 QDQ file in
TensorRT's form, checked against TensorRT's Q/DQ rules), the bundle a Jetson profiles, the refusal of a
device without TensorRT, and how a TensorRT latency table is read. What cannot run here: the engine build
and timing themselves (edgekd.trt against a GPU; tests/trt/test_trt_gpu.py where one is lent).
"""

import json
import warnings

import pytest
from click.testing import CliRunner

from edgekd.cli import main
from edgekd.errors import ConfigError, RuntimeBackendError
from edgekd.onnxtools.trt_rules import check_qdq_for_tensorrt
from edgekd.quantize.ort_int8 import host_scheme
from edgekd.quantize.schemes import scheme_for_target
from edgekd.search.bundle import write_candidate_bundle
from edgekd.search.candidates import expand_grid, prepare_candidates
from edgekd.search.config import SearchConfig, check_search
from edgekd.search.measure import measure_candidates, open_backends
from edgekd.search.plan import MeasureOptions, plan_targets
from edgekd.search.profile import ProfileItem, runtime_or_raise
from edgekd.search.trt_timing import check_items, table_entry
from edgekd.targets import load_target
from tests.search.conftest import TEACHER, calibration

ONE = SearchConfig(widths=[0.25], depths=[0.5], input_sizes=[32], proxy_epochs=0)


@pytest.fixture(scope="module")
def jetson():
    return load_target("jetson-orin-nano")


@pytest.fixture(scope="module")
def trt_prepared(tmp_path_factory, jetson):
    """One architecture for the Jetson (fp16, int8 in TensorRT's form) and for this host (int8 U8S8)."""
    candidates = expand_grid(ONE, "resnet18", ["fp16", "int8"], 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return prepare_candidates(candidates, folder=tmp_path_factory.mktemp("trt"), calib_x=calibration(), opset=17,
                                  exporter="torchscript", schemes=[scheme_for_target(jetson), host_scheme()],
                                  **TEACHER)


def test_each_precision_gets_the_file_tensorrt_builds_it_from(trt_prepared):
    by = {(p.candidate.precision, p.scheme): p.path.name for p in trt_prepared}
    assert by == {("fp16", None): "resnet18-w0.25-d0.5-32px.onnx",  # BuilderFlag.FP16 over the FP32 network
                  ("int8", "trt"): "resnet18-w0.25-d0.5-32px.int8.trt.onnx",
                  ("int8", "x86"): "resnet18-w0.25-d0.5-32px.int8.x86.onnx"}
    trt_file = next(p.path for p in trt_prepared if p.scheme == "trt")
    assert check_qdq_for_tensorrt(trt_file) == []  # symmetric S8, float biases, one Q/DQ pair per consumer


def test_a_jetson_is_searched_on_the_device_never_here(jetson):
    search = ONE.model_copy(update={"precisions": ["fp16", "int8"]})
    check_search(search, [jetson])  # TensorRT targets are searchable now
    with pytest.raises(ConfigError, match="aarch64 device") as err:
        plan_targets(search, [jetson], 32)
    assert "latency_table" in err.value.hint and "host" in err.value.hint
    plan = plan_targets(search, [jetson], 32, hosts={"jetson-orin-nano": "nvidia@orin"})[0]
    assert (plan.backend, plan.precisions, plan.int8_scheme.key) == ("ssh", ("fp16", "int8"), "trt")


def test_fp16_for_a_strongly_typed_tensorrt_is_refused_with_the_fix(jetson):
    thor = jetson.model_copy(update={"name": "thor", "tensorrt": jetson.tensorrt.model_copy(update={"version": "11.0"})})
    with pytest.raises(ConfigError, match="cannot measure target 'thor' in fp16"):
        check_search(ONE, [thor])
    check_search(ONE.model_copy(update={"precisions": ["int8"]}), [thor])


def test_a_device_without_tensorrt_is_a_clear_error(trt_prepared, jetson, tmp_path):
    probe = {"runtime": {"name": "onnxruntime", "version": "1.32.0"}, "tensorrt": None, "arch": "aarch64", "cpu": "x"}
    with pytest.raises(RuntimeBackendError, match="nano has no TensorRT") as err:
        runtime_or_raise(probe, where="nano", runtime="tensorrt")
    assert "python3-libnvinfer" in err.value.hint
    assert runtime_or_raise({**probe, "tensorrt": "10.3.0"}, runtime="tensorrt")["runtime"] == {
        "name": "tensorrt", "version": "10.3.0"}
    # `edgekd profile` over a Jetson's bundle on this machine (no tensorrt): exit 6, before any build
    bundle = write_candidate_bundle([p for p in trt_prepared if p.scheme != "x86"], jetson, tmp_path / "bundle")
    result = CliRunner().invoke(main, ["profile", str(bundle), "-o", str(tmp_path / "table.json")])
    assert result.exit_code == 6, result.output
    assert "has no TensorRT" in result.output and not (tmp_path / "engines").exists()


def test_profile_items_must_be_precisions_the_jetson_builds(jetson, tmp_path):
    item = ProfileItem("m-fp32", tmp_path / "m.onnx", "fp32", 32, None, "0")
    with pytest.raises(ConfigError, match="does not list precision fp32"):
        check_items([item], jetson)  # the Orin Nano profile lists fp16 and int8
    with pytest.raises(ConfigError, match="needs the Jetson target"):
        check_items([item], load_target("host-cpu"))


def _device_table(trt_prepared, jetson, path):
    """A latency table as `edgekd profile` writes it on the Jetson: entries made by table_entry from what
    build_engine's sidecar and EngineRunner.benchmark return (their keys; the numbers are made up here)."""
    entries = []
    for i, p in enumerate(x for x in trt_prepared if x.scheme != "x86"):
        item = ProfileItem(p.name, p.path, p.candidate.precision, 32, p.architecture.arch_id, "sha")
        stats = {"p50": 1.0 + i, "p90": 1.1 + i, "p99": 1.2 + i, "mean": 1.0 + i, "std": 0.01, "min": 0.9, "max": 2}
        timed = {"latency_ms": stats, "gpu_compute_ms": stats, "iterations": 100, "context_device_memory_bytes": 2**21,
                 "engine_bytes": 10, "tensorrt": "10.3.0"}
        entries.append(table_entry(item, {"build_seconds": 3.0, "precision": p.candidate.precision}, timed))
    path.write_text(json.dumps({
        "format": "edgekd.latency-table/1", "runtime": {"name": "tensorrt", "version": "10.3.0"},
        "machine": {"arch": "aarch64", "cpu": "ARMv8 Processor rev 1 (v8l)", "cores": 6, "device": "Orin Nano"},
        "threads": jetson.threads, "graph_optimization_level": "all", "settings": {}, "input_sizes": [32],
        "entries": entries}))
    return entries


def test_a_tensorrt_latency_table_is_read_by_precision(trt_prepared, jetson, tmp_path):
    entries = _device_table(trt_prepared, jetson, tmp_path / "orin.json")
    assert entries[0]["device_memory_mb"] == 2.0 and entries[0]["peak_rss_mb"] is None
    search = ONE.model_copy(update={"latency_table": tmp_path / "orin.json"})
    backends = open_backends(plan_targets(search, [jetson], 32), MeasureOptions())
    assert (backends[jetson.name].runtime.name, backends[jetson.name].runtime.version) == ("tensorrt", "10.3.0")
    rows = measure_candidates(trt_prepared, backends, tmp_path / "cache").rows
    # the host's U8S8 INT8 file is not the Jetson's: only the fp16 and TensorRT-form int8 candidates are read
    assert [(r.candidate.precision, r.p50_ms) for r in rows] == [("fp16", 1.0), ("int8", 2.0)]
    other = jetson.model_copy(update={"runtime_version": "8.5"})
    with pytest.raises(ConfigError, match="measured with tensorrt 10.3.0, target 'jetson-orin-nano' runs 8.5"):
        open_backends(plan_targets(search, [other], 32), MeasureOptions())
