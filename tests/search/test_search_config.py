import pytest

from edgekd.errors import ConfigError
from edgekd.schema import parse
from edgekd.search.candidates import expand_grid
from edgekd.search.config import SearchConfig, check_search, precisions_for
from edgekd.search.plan import plan_targets, this_arch
from edgekd.targets import load_target


def search(**data) -> SearchConfig:
    return parse(SearchConfig, data, source="student.search")


def test_grid_expands_to_named_candidates_in_order():
    s = search(widths=[0.25, 0.5], depths=[0.5, 1], models=["mobilenetv3_small_050"], input_sizes=[160, 224])
    got = expand_grid(s, "resnet18", ["fp32", "int8"], default_input_size=32)
    assert len(got) == (2 * 2 + 1) * 2 * 2 == s.grid_size() * 2
    assert [c.name for c in got[:4]] == ["resnet18-w0.25-d0.5-160px-fp32", "resnet18-w0.25-d0.5-160px-int8",
                                         "resnet18-w0.25-d1-160px-fp32", "resnet18-w0.25-d1-160px-int8"]
    named = [c for c in got if c.model == "mobilenetv3_small_050"]
    assert [(c.width, c.depth, c.input_size, c.precision) for c in named] == [
        (None, None, 160, "fp32"), (None, None, 160, "int8"), (None, None, 224, "fp32"), (None, None, 224, "int8")]
    assert named[0].arch_name == "mobilenetv3_small_050-160px" and not named[0].derived
    assert got[0].arch_name == "resnet18-w0.25-d0.5-160px" and got[0].derived
    # without input_sizes, the data's size
    assert {c.input_size for c in expand_grid(search(models=["resnet10t"]), "resnet18", ["fp32"], 32)} == {32}


@pytest.mark.parametrize("data, message", [
    ({"widths": [0.5]}, "depths is not"),
    ({"depths": [0.5]}, "widths is not"),
    ({}, "the grid is empty"),
    ({"widths": [0.5, 1.5], "depths": [1]}, "multipliers must be in (0, 1]"),
    ({"models": ["resnet10t", "resnet10t"]}, "listed twice"),
    ({"models": ["resnet10t"], "input_sizes": [4]}, "at least 8 pixels"),
    ({"models": ["resnet10t"], "margin": 1.2}, "margin"),
    ({"models": ["resnet10t"], "precisions": ["int4"]}, "precisions"),
    ({"models": ["resnet10t"], "proxy_epoch": 1}, "did you mean 'proxy_epochs'"),
])
def test_bad_sections_are_refused(data, message):
    with pytest.raises(ConfigError, match="student.search") as info:
        search(**data)
    assert message in str(info.value)


def test_a_grid_larger_than_max_candidates_is_refused_with_its_size():
    with pytest.raises(ConfigError) as info:
        search(widths=[0.25, 0.5, 1], depths=[0.5, 1], models=["resnet10t", "efficientnet_b0"],
               input_sizes=[160, 224], max_candidates=10)
    text = str(info.value)
    assert "the grid holds 16 candidates (3 widths x 2 depths + 2 models, x 2 input sizes)" in text
    assert "more than max_candidates 10" in text
    assert search(widths=[0.25, 0.5, 1], depths=[0.5, 1], models=["resnet10t", "efficientnet_b0"],
                  input_sizes=[160, 224], max_candidates=16).grid_size() == 16


def test_precisions_must_be_the_targets():
    host, jetson = load_target("host-cpu"), load_target("jetson-orin-nano")
    check_search(search(models=["resnet10t"], precisions=["int8"]), [host])
    assert precisions_for(search(models=["resnet10t"]), host) == ["fp32", "int8"]
    assert precisions_for(search(models=["resnet10t"], precisions=["int8"]), host) == ["int8"]
    with pytest.raises(ConfigError, match="'fp16', which no target offers"):
        check_search(search(models=["resnet10t"], precisions=["fp16"]), [host])
    check_search(search(models=["resnet10t"]), [jetson])  # TensorRT: measured on the device (test_search_trt.py)
    assert precisions_for(search(models=["resnet10t"]), jetson) == list(jetson.precisions)


def test_latency_tables_are_checked_against_the_targets(tmp_path):
    host, pi = load_target("host-cpu"), load_target("rpi5")
    table = tmp_path / "t.json"
    table.write_text("{}")
    with pytest.raises(ConfigError, match="one file, but there are 2 targets"):
        check_search(search(models=["resnet10t"], latency_table=str(table)), [host, pi])
    with pytest.raises(ConfigError, match="names target 'rpi4', which is not in targets"):
        check_search(search(models=["resnet10t"], latency_table={"rpi4": str(table)}), [host, pi])
    with pytest.raises(ConfigError, match="does not exist"):
        check_search(search(models=["resnet10t"], latency_table={"rpi5": str(tmp_path / "nope.json")}), [host, pi])
    s = search(models=["resnet10t"], latency_table={"rpi5": str(table)})
    check_search(s, [host, pi])
    assert s.table_for("rpi5") == table and s.table_for("host-cpu") is None


def test_each_target_is_planned_where_it_can_be_measured(tmp_path):
    table = tmp_path / "t.json"
    table.write_text("{}")
    host, pi, pi4 = load_target("host-cpu"), load_target("rpi5"), load_target("rpi4")
    plans = plan_targets(search(models=["resnet10t"], latency_table={"rpi4": str(table)}), [host, pi, pi4], 32,
                         hosts={"rpi5": "pi@raspberrypi"})
    assert [(p.backend, p.where) for p in plans] == [
        ("host", "this machine"), ("ssh", "pi@raspberrypi over ssh"), ("table", f"latency table {table}")]
    assert plans[0].precisions == ("fp32", "int8") and plans[0].input_sizes == (32,)
    other = "aarch64" if this_arch() == "x86_64" else "x86_64"
    foreign = host.model_copy(update={"arch": other, "name": "elsewhere"})
    with pytest.raises(ConfigError, match="cannot be timed here") as info:
        plan_targets(search(models=["resnet10t"]), [foreign], 32)
    assert "host: user@name" in info.value.hint and "edgekd profile" in info.value.hint
    with pytest.raises(ConfigError, match="Hosts are given for rpi5"):
        plan_targets(search(models=["resnet10t"]), [host], 32, hosts={"rpi5": "pi@raspberrypi"})


def test_target_profiles_take_a_host_and_a_runtime_version(tmp_path):
    good = tmp_path / "board.yaml"
    good.write_text("runtime: onnxruntime\narch: aarch64\nprecisions: [fp32]\nmax_opset: 17\n"
                    "host: pi@raspberrypi\nruntime_version: '1.18'\nedgekd_command: ~/venv/bin/edgekd\n")
    t = load_target(str(good))
    assert (t.host, t.runtime_version, t.edgekd_command) == ("pi@raspberrypi", "1.18", "~/venv/bin/edgekd")
    assert load_target("rpi5").edgekd_command == "python3 -m edgekd"
    bad = tmp_path / "bad.yaml"
    bad.write_text("runtime: onnxruntime\narch: aarch64\nprecisions: [fp32]\nmax_opset: 17\nhost: pi@rasp:22\n")
    with pytest.raises(ConfigError, match="host"):
        load_target(str(bad))
