"""Run by tests/distill/test_distributed.py under torchrun: edgekd's trainer on toy data.

    python -m torch.distributed.run --nproc-per-node 2 ddp_worker.py OUT_DIR PER_RANK_BATCH LR SCALE_LR [STOP_AFTER]

Rank 0 saves the final weights to OUT_DIR/state.pt; STOP_AFTER=k makes rank 0 die after
epoch k (an interruption; the epoch checkpoint stays behind for the resumed run).
"""

import sys
from pathlib import Path

import torch

from edgekd.config import TrainConfig
from edgekd.distill.distributed import init_from_env, shutdown
from edgekd.distill.losses import cross_entropy
from edgekd.distill.trainer import train

EPOCHS = 3


def toy_data(n=96):
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(n, 1, 8, 8, generator=g) * 0.5 + y.view(n, 1, 1, 1).float()
    return x, y


def toy_model():
    # no BatchNorm: with it, per-rank batch statistics would differ from the 1-process batch's
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(4, 3))


def config(batch_size: int, lr: float, scale_lr: bool) -> TrainConfig:
    return TrainConfig(epochs=EPOCHS, batch_size=batch_size, lr=lr, warmup_epochs=0.5, channels_last=False,
                       scale_lr=scale_lr)


def main() -> None:
    out, batch, lr, scale = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4] == "1"
    stop_after = int(sys.argv[5]) if len(sys.argv) > 5 else None
    dist, _ = init_from_env("cpu")

    def progress(**_):
        progress.epochs += 1
        if progress.epochs == stop_after:
            raise SystemExit(3)

    progress.epochs = 0
    model = toy_model()
    data = toy_data()
    result = train(model, data, data, config(batch, lr, scale), cross_entropy(), out / "work", key="k",
                   augment="none", dist=dist, progress=progress)
    if dist.is_main:
        torch.save({"state": model.state_dict(), "resumed_from_epoch": result.resumed_from_epoch,
                    "history": result.history}, out / "state.pt")
    shutdown(dist)


if __name__ == "__main__":
    main()
