"""Data-parallel training under torchrun: who am I, and the few collectives the trainer needs.

    torchrun --nproc-per-node N -m edgekd compress model.yaml

torchrun starts N copies of edgekd and sets RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT; `init_from_env` joins them into one process group
(gloo on CPU, nccl on GPU, one GPU per local rank). Without torchrun
(WORLD_SIZE unset or 1) nothing is initialised and every helper here is a no-op,
so single-process runs take exactly the code path they always did.

What runs where (see edgekd.pipeline.engine): the training stages (teacher,
student, qat) run on every rank with the model wrapped in
DistributedDataParallel; every other stage, and every file write, happens on
rank 0 while the others wait. Each epoch's seeded permutation is the same on
every rank and each rank takes its own stride of it (`shard`), like
torch.utils.data.DistributedSampler: disjoint samples, padded so every rank runs
the same number of steps.

torch is imported inside the functions: `Dist()` is cheap to build anywhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

from edgekd.errors import ConfigError

# Ranks other than 0 wait in a collective while rank 0 runs the non-training stages between
# two training stages (data; export/quantize are after the last one). gloo's default is 30 min.
WAIT_TIMEOUT = timedelta(hours=2)


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # "gloo" | "nccl" once initialised
    device: str = "cpu"  # where collective tensors live (nccl needs the rank's GPU)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def broadcast_object(self, obj=None):
        """Rank 0's `obj` on every rank (picklable)."""
        if not self.enabled:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        if not self.enabled:
            return list(values)
        import torch
        import torch.distributed as dist

        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def gather_strided(self, part):
        """Inverse of `x[rank::world_size]`: every rank's stride (numpy arrays, rank 0's first)
        interleaved back into one array, on every rank."""
        if not self.enabled:
            return part
        import numpy as np
        import torch.distributed as dist

        parts = [None] * self.world_size
        dist.all_gather_object(parts, part)
        whole = np.empty((sum(len(p) for p in parts), *part.shape[1:]), dtype=part.dtype)
        for rank, stride in enumerate(parts):
            whole[rank :: self.world_size] = stride
        return whole

    def shard(self, order):
        """This rank's share of a permutation (1-d tensor), as DistributedSampler(drop_last=False) takes it.

        The permutation is padded with its own head (repeated) to a multiple of world_size, so every
        rank gets ceil(n / world_size) indices (hence the same number of steps); rank r
        takes positions r, r + world, r + 2·world, ...: disjoint apart from the padding.
        """
        if not self.enabled:
            return order
        total = shard_size(len(order), self.world_size) * self.world_size
        if len(order) and total > len(order):  # repeat whole copies first: n may be below world_size
            order = order.repeat(-(-total // len(order)))[:total]
        return order[self.rank :: self.world_size]

    def sync_buffers(self, model) -> None:
        """Rank 0's buffers (BatchNorm running statistics) everywhere.

        Each rank updates its running statistics from its own batches; DDP copies rank 0's
        at the start of the next forward, but evaluation and checkpoints come first, and
        must see one model on every rank.
        """
        if not self.enabled:
            return
        import torch.distributed as dist

        for buffer in model.buffers():
            dist.broadcast(buffer.data, src=0)

    def wrap(self, model):
        """DistributedDataParallel around `model` (already on its device); the model itself otherwise."""
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.local_rank] if self.backend == "nccl" else None
        return DistributedDataParallel(model, device_ids=device_ids)


def shard_size(n: int, world_size: int) -> int:
    return -(-n // world_size)


def torchrun_world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_from_env(device_choice: str):
    """(Dist, torch.device) for this process; joins torchrun's process group when WORLD_SIZE > 1."""
    from edgekd.distill.trainer import pick_device

    device = pick_device(device_choice)
    world = torchrun_world()
    if world <= 1:
        return Dist(), device
    import torch
    import torch.distributed as dist

    rank, local_rank = _env_int("RANK"), _env_int("LOCAL_RANK")
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"torchrun started local rank {local_rank}, but this machine has "
                              f"{torch.cuda.device_count()} GPU(s).", "Use --nproc-per-node <= the GPU count.")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=WAIT_TIMEOUT)  # env:// rendezvous from torchrun's variables
    return Dist(rank, world, local_rank, backend, str(device)), device


def shutdown(d: Dist, *, failed: bool = False) -> None:
    """Leave the process group: all ranks together on success, this rank alone on failure.

    The barrier first: a rank that tears its gloo pairs down while a peer is still
    finishing (rank 0 writing its last files) can abort the peer at exit (SIGABRT,
    "terminate called without an active exception"). After a failure the peers may sit
    in a collective this rank will never join, so destroying (a collective) could hang;
    the failed rank just exits non-zero and torchrun stops the others.
    """
    if not d.enabled or failed:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _env_int(name: str) -> int:
    value = os.environ.get(name)
    if value is None or not value.isdigit():
        raise ConfigError(f"WORLD_SIZE is set but {name} is {value!r}.",
                          "Start distributed runs with torchrun, which sets RANK, LOCAL_RANK and WORLD_SIZE.")
    return int(value)
