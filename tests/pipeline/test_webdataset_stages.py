"""data.kind: webdataset through the pipeline (issue #13, item 7): the shards of an ImageFolder give the
folder's exact data files, and under torchrun (2 gloo processes) rank 0 alone builds the uint8 cache
while each rank decodes only its stride of the training split."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgekd import BUILTIN_DIR
from edgekd.config import CompressConfig
from edgekd.pipeline.context import RunContext
from edgekd.pipeline.train_stages import run_data
from edgekd.schema import parse
from edgekd.ui import UI
from tests.data.imagefolders import write_folder, write_shards

REPO = Path(__file__).resolve().parents[2]
TRAIN = {"epochs": 1, "batch_size": 8, "lr": 0.01, "warmup_epochs": 0}


def _config(data: dict) -> dict:
    return {"data": {"input_size": 8, "channels": 3, "workers": 0, **data},
            "teacher": {"model": "test_resnet", "train": TRAIN}, "student": {"width": 0.5},
            "distill": {"train": TRAIN}, "targets": ["host-cpu"],
            "quantize": {"calibration": str(BUILTIN_DIR / "calib" / "digits.yaml")}}


def _ctx(run_dir: Path, data: dict) -> RunContext:
    run_dir.mkdir(parents=True, exist_ok=True)
    return RunContext(parse(CompressConfig, _config(data), "test"), run_dir, ui=UI(quiet=True))


@pytest.fixture()
def dataset(tmp_path):
    for split, count in (("train", 8), ("val", 3), ("test", 3)):
        write_folder(tmp_path / "images" / split, per_class=count, seed=len(split))
    return tmp_path / "images", write_shards(tmp_path / "images", tmp_path / "shards", per_shard=5)


@pytest.mark.parametrize("cache", ["none", "uint8"])
def test_shards_give_the_image_folders_exact_data_files(dataset, tmp_path, cache):
    images, shards = dataset
    folder = _ctx(tmp_path / "folder", {"kind": "imagefolder", "path": str(images), "cache": cache})
    tars = _ctx(tmp_path / "tars", {"kind": "webdataset", "shards": str(shards), "cache": cache})
    run_data(folder)
    summary = run_data(tars)["dataset"]
    assert summary["source"] == f"webdataset:{shards}" and summary["classes"] == ["cat", "dog", "fox"]
    assert summary["splits"] == {"train": 24, "val": 9, "test": 9}
    for name in ("val.npz", "test.npz", "calib.npz"):
        with np.load(folder.run_dir / "data" / name) as a, np.load(tars.run_dir / "data" / name) as b:
            np.testing.assert_array_equal(a["x"], b["x"])  # the same bytes, decoded the same way
            np.testing.assert_array_equal(a["y"], b["y"])


RANKS = """
import json, sys
from pathlib import Path
from edgekd.config import CompressConfig
from edgekd.distill.distributed import init_from_env, shutdown
from edgekd.pipeline.context import RunContext
from edgekd.pipeline.engine import run_stages
from edgekd.pipeline.train_stages import DATA, STUDENT, TEACHER
from edgekd.schema import parse
from edgekd.ui import UI
import edgekd.data.u8cache as u8cache

config, run_dir = json.loads(sys.argv[1]), Path(sys.argv[2])
dist, _ = init_from_env("cpu")
if not dist.is_main:  # only rank 0 may decode into the cache; the others must wait and open it
    def refuse(*args, **kwargs):
        raise RuntimeError(f"rank {dist.rank} tried to build the uint8 cache")
    u8cache._build = refuse
ctx = RunContext(parse(CompressConfig, config, "test"), run_dir, ui=UI(quiet=True), dist=dist)
run_stages([DATA, TEACHER, STUDENT], ctx, UI(quiet=True))
seen = [int(i) for idx, _, _ in ctx.data.train.batches(4, shuffle=True, seed=0, rank=dist.rank,
        world_size=dist.world_size).epoch(0) for i in idx]
(run_dir / f"rank{dist.rank}.json").write_text(json.dumps(seen))
shutdown(dist)
"""


@pytest.mark.slow
def test_torchrun_two_ranks_rank_zero_builds_the_cache_each_rank_reads_its_stride(dataset, tmp_path):
    _, shards = dataset
    run_dir, script = tmp_path / "ddp", tmp_path / "ranks.py"
    script.write_text(RANKS)
    config = _config({"kind": "webdataset", "shards": str(shards), "cache": "uint8",
                      "cache_dir": str(tmp_path / "cache")})
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                           str(29700 + os.getpid() % 1000), str(script), json.dumps(config), str(run_dir)],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    stores = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    assert len(stores) == 3 and all((p / "index.json").is_file() for p in stores)  # one per split, built once
    seen = [json.loads((run_dir / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == 12 and sorted(seen[0] + seen[1]) == list(range(24))  # disjoint strides
    assert (run_dir / "student.safetensors").is_file()
