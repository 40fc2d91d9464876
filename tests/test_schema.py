"""Bounded YAML (edgekd.schema.read_yaml): size, alias expansion, depth, self-reference, empty files."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edgekd.config import load_config
from edgekd.errors import ConfigError
from edgekd.schema import MAX_YAML_BYTES, read_yaml
from edgekd.targets import load_target

REPO = Path(__file__).resolve().parent.parent

# "Billion laughs": 9 lines, 9 aliases each -> 9**9 = 387M strings once expanded (3.1 GB and 30 s before
# a MemoryError when expanded naively).
BOMB = "\n".join([f'{a}: &{a} [{",".join(["lol"] * 9) if i == 0 else ",".join(["*" + prev] * 9)}]'
                  for i, (a, prev) in enumerate(zip("abcdefghi", " abcdefgh"))]) + "\n"

# Runs `edgekd compress` on the bomb in a child and reports its exit code and peak RSS (KiB on Linux).
# The child's address space is capped at 2 GiB so that a regression fails fast instead of eating the
# machine's memory; the bound checked is the measured peak RSS.
_MEASURE = """
import json, resource, subprocess, sys
def cap():
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
proc = subprocess.run([sys.executable, "-m", "edgekd", "compress", sys.argv[1], "--out", sys.argv[2]],
                      capture_output=True, text=True, preexec_fn=cap, timeout=60)
print(json.dumps({"rc": proc.returncode, "stderr": proc.stderr[-2000:],
                  "peak_rss_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def write(tmp_path, text: str, name: str = "model.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_an_alias_bomb_exits_2_in_bounded_memory_before_touching_the_run_directory(tmp_path):
    config = write(tmp_path, BOMB)
    assert len(BOMB) < 400
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-c", _MEASURE, str(config), str(out)], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    result = json.loads(done.stdout)
    assert result["rc"] == 2, result["stderr"]
    assert "aliases" in result["stderr"] and len(result["stderr"]) < 1000
    assert result["peak_rss_kib"] < 300 * 1024
    assert not out.exists()


def test_aliases_within_bounds_still_work(tmp_path):
    cfg = load_config(write(tmp_path, """
        teacher: {model: resnet18, train: &short {epochs: 1, batch_size: 32}}
        distill: {train: *short}
    """))
    assert cfg.distill.train.epochs == 1 and cfg.teacher.train.batch_size == 32


def test_a_self_referencing_alias_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="refers to itself"):
        read_yaml(write(tmp_path, "a: &a [1, *a]\n"))


def test_deep_nesting_is_refused(tmp_path):
    for depth in (60, 5000):  # past the bound; past PyYAML's recursive composer
        with pytest.raises(ConfigError, match="nests collections too deeply"):
            read_yaml(write(tmp_path, "x: " + "[" * depth + "]" * depth + "\n"))


def test_an_oversized_file_is_refused_before_parsing(tmp_path):
    path = tmp_path / "model.yaml"
    path.write_text("# padding\n" * (MAX_YAML_BYTES // 10 + 1))
    with pytest.raises(ConfigError, match="edgekd reads at most"):
        read_yaml(path)


def test_a_large_wrong_value_gives_a_short_message(tmp_path):
    items = ", ".join(["'" + "x" * 50 + "'"] * 2000)
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, f"teacher: {{model: [{items}]}}\n"))
    assert "teacher.model" in str(err.value) and len(str(err.value)) < 500


def test_many_problems_are_counted_not_all_listed(tmp_path):
    keys = "\n".join(f"  unknown_{i}: 1" for i in range(40))
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, f"teacher:\n{keys}\n"))
    assert "has 40 problems" in str(err.value) and "and 30 more" in str(err.value)


@pytest.mark.parametrize("text", ["", "# nothing but a comment\n", "---\n"])
def test_an_empty_config_points_to_edgekd_init(tmp_path, text):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert "is empty" in err.value.message and "edgekd init" in err.value.hint


def test_an_empty_target_profile_does_not_point_to_edgekd_init(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_target(str(write(tmp_path, "", name="board.yaml")))
    assert "is empty" in err.value.message and "edgekd init" not in err.value.hint


def test_not_utf8_is_a_config_error(tmp_path):
    path = tmp_path / "model.yaml"
    path.write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_yaml(path)
