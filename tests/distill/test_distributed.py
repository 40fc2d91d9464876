"""Data-parallel training under torchrun: sharding, equivalence with one process, resume, compress end to end.

The multi-process tests start real 2-process gloo jobs on the CPU with
`python -m torch.distributed.run` (what the `torchrun` command runs), OMP_NUM_THREADS=1.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgekd.distill.distributed import Dist, shard_size

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("ddp_worker.py")


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}


def torchrun(args: list, *, nproc: int = 2, check: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
           "--master-port", str(29500 + os.getpid() % 1000), *map(str, args)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=REPO, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"torchrun failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


@pytest.mark.parametrize("n", [1, 7, 96, 97, 100])
@pytest.mark.parametrize("world", [2, 3])
def test_shards_are_disjoint_equal_and_cover_the_permutation(n, world):
    order = torch.randperm(n, generator=torch.Generator().manual_seed(n))
    shards = [Dist(rank=r, world_size=world).shard(order) for r in range(world)]
    assert all(len(s) == shard_size(n, world) for s in shards)  # same step count on every rank
    taken = torch.cat(shards)
    assert set(taken.tolist()) == set(order.tolist())
    assert len(taken) - len(set(taken.tolist())) == len(taken) - n  # repeats: only the padding


def test_single_process_helpers_change_nothing():
    single, model, order = Dist(), torch.nn.Linear(2, 2), torch.arange(5)
    assert not single.enabled and single.is_main
    assert single.wrap(model) is model and torch.equal(single.shard(order), order)
    assert single.broadcast_object({"a": 1}) == {"a": 1} and single.all_reduce_sum([1.0, 2.0]) == [1.0, 2.0]
    single.barrier()
    single.sync_buffers(model)
    assert (single.gather_strided(order.numpy()) == order.numpy()).all()


def _one_process(batch: int, lr: float, tmp_path: Path) -> dict:
    sys.path.insert(0, str(WORKER.parent))
    try:
        import ddp_worker
    finally:
        sys.path.remove(str(WORKER.parent))
    from edgekd.distill.losses import cross_entropy
    from edgekd.distill.trainer import train

    model = ddp_worker.toy_model()
    data = ddp_worker.toy_data()
    train(model, data, data, ddp_worker.config(batch, lr, False), cross_entropy(), tmp_path / f"one-{batch}-{lr}", key="k")
    return model.state_dict()


def _assert_same_weights(a: dict, b: dict, atol: float) -> None:
    for k, value in a.items():
        torch.testing.assert_close(value, b[k], rtol=0, atol=atol, msg=k)


def test_two_ranks_train_what_one_process_trains(tmp_path):
    # 2 ranks x batch 8 on disjoint halves, gradients averaged by DDP = 1 process x batch 16 on the
    # union (the k-th global batch holds the same 16 samples): same weights up to float summation
    # order. Measured 2.4e-7 after 18 AdamW steps; 1e-5 leaves room, a missing gradient average
    # (each rank stepping on its own half) moves weights by ~1e-2.
    torchrun([WORKER, tmp_path / "two", 8, 0.05, 0])
    two = torch.load(tmp_path / "two" / "state.pt")
    _assert_same_weights(_one_process(16, 0.05, tmp_path), two["state"], 1e-5)
    assert len(two["history"]) == 3
    lines = (tmp_path / "two" / "work" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3  # rank 0 alone writes


def test_scale_lr_multiplies_by_world_size(tmp_path):
    torchrun([WORKER, tmp_path / "scaled", 8, 0.025, 1])  # 0.025 x 2 ranks
    scaled = torch.load(tmp_path / "scaled" / "state.pt")
    assert scaled["history"][0]["lr"] > 0
    _assert_same_weights(_one_process(16, 0.05, tmp_path), scaled["state"], 1e-5)


def test_interrupted_two_rank_training_resumes_exactly(tmp_path):
    torchrun([WORKER, tmp_path / "straight", 8, 0.05, 0])
    stopped = torchrun([WORKER, tmp_path / "resumed", 8, 0.05, 0, 2], check=False)
    assert stopped.returncode != 0 and not (tmp_path / "resumed" / "state.pt").exists()
    assert (tmp_path / "resumed" / "work" / "last.pt").is_file()  # written by rank 0 after epoch 2
    torchrun([WORKER, tmp_path / "resumed", 8, 0.05, 0])
    straight, resumed = (torch.load(tmp_path / d / "state.pt") for d in ("straight", "resumed"))
    assert resumed["resumed_from_epoch"] == 2
    _assert_same_weights(straight["state"], resumed["state"], 0)  # same ranks, same order, same collectives
