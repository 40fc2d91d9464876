"""The K-view teacher replay cache through the pipeline under torchrun (2 gloo processes on the CPU), as
tests/pipeline/test_webdataset_stages.py runs the uint8 cache: the student stage on two ranks builds one
replay file (each rank's teacher on its own shard), and a single-process run with another schedule reuses
that very file (without mixup the stored views do not depend on the world size)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgekd.pipeline.engine import read_record, run_stages
from edgekd.pipeline.train_stages import DATA, STUDENT, TEACHER
from edgekd.ui import UI
from tests.pipeline.test_imagefolder_stages import TRAIN, _ctx, _folder

REPO = Path(__file__).resolve().parents[2]

RANKS = """
import json, sys
from pathlib import Path
from edgekd.distill.distributed import init_from_env, shutdown
from edgekd.pipeline.engine import run_stages
from edgekd.pipeline.train_stages import DATA, STUDENT, TEACHER
from edgekd.ui import UI
from tests.pipeline.test_imagefolder_stages import _ctx
import edgekd.distill.replay as replay

images, tmp, distill = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
dist, _ = init_from_env("cpu")
ran = []
encode = replay.ReplayTeacher._encode
def counted(self, logits):  # the samples this rank's teacher ran on for the cache
    ran.append(len(logits))
    return encode(self, logits)
replay.ReplayTeacher._encode = counted
ctx = _ctx(tmp, images, distill=distill, augment="timm")
ctx = type(ctx)(ctx.config, ctx.run_dir, ui=UI(quiet=True), dist=dist)
run_stages([DATA, TEACHER, STUDENT], ctx, UI(quiet=True))
(tmp / f"rank{dist.rank}.json").write_text(json.dumps({"teacher_samples": sum(ran)}))
shutdown(dist)
"""


@pytest.mark.slow
def test_torchrun_builds_one_replay_file_sharded_and_one_process_reuses_it(tmp_path):
    images = _folder(tmp_path / "images", per_class=6)
    distill = {"replay_views": 2, "replay_topk": 2, "train": {**TRAIN, "augment": {"pad_crop": 1}}}
    script = tmp_path / "ranks.py"
    script.write_text(RANKS)
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                           str(29800 + os.getpid() % 1000), str(script), str(images), str(tmp_path), json.dumps(distill)],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    built = read_record(tmp_path / "run", "student")["result"]["teacher_outputs"]
    assert built["mode"] == "replay" and not built["reused"] and built["storage"] == "top-2"
    files = sorted(p.name for p in (tmp_path / "run" / "cache").glob("teacher_replay.*"))
    assert files == [built["file"].removesuffix(".npy") + ".json", built["file"]]  # one file and its sidecar
    samples = built["shape"][1]
    ran = [json.loads((tmp_path / f"rank{r}.json").read_text())["teacher_samples"] for r in (0, 1)]
    assert ran == [2 * -(-samples // 2)] * 2  # each rank: its half of every view, once

    ctx = _ctx(tmp_path, images, distill={**distill, "train": {**distill["train"], "epochs": 2}}, augment="timm")
    run_stages([DATA, TEACHER, STUDENT], ctx, UI(quiet=True))  # one process, another schedule
    again = read_record(ctx.run_dir, "student")["result"]["teacher_outputs"]
    assert again["reused"] and again["file"] == built["file"]
