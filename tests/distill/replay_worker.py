"""Run by tests/distill/test_replay_distributed.py under torchrun: the trainer with a K-view replay cache.

    python -m torch.distributed.run --nproc-per-node 2 replay_worker.py OUT_DIR MIXING TOP_K REFUSE

Each rank trains a toy student for EPOCHS epochs with a ReplayTeacher (VIEWS views of 27 samples: the
2-rank shards are padded) and writes OUT_DIR/rank<r>.json: how many samples its teacher ran on, and per
step the largest difference between the replayed logits and a twin teacher's on the very tensor the
student got. TOP_K 0 stores every logit. REFUSE=1: a teacher that raises if it runs (the cache must be
reused).
"""

import json
import sys
from pathlib import Path

import torch
from torch import nn

from edgekd.config import TrainConfig
from edgekd.distill.distributed import init_from_env, shutdown
from edgekd.distill.replay import ReplayTeacher
from edgekd.distill.trainer import train

CLASSES, SAMPLES, VIEWS, EPOCHS = 5, 27, 2, 3  # 2 ranks x 14 samples: rank 1's last one is padding


def data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(SAMPLES, 1, 8, 8, generator=g), torch.randint(0, CLASSES, (SAMPLES,), generator=g)


def net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, CLASSES))
    model.num_classes = CLASSES  # as timm models carry it (mixup's one-hot targets)
    return model.eval()


class Refuses(nn.Module):
    def forward(self, _x):
        raise RuntimeError("the teacher ran, though the replay cache was complete")


class Watched:
    """The teacher function the trainer calls: the replay, each step compared with a twin teacher."""

    def __init__(self, replay: ReplayTeacher):
        self.replay, self.views, self.twin = replay, replay.views, net(1)
        self.errors, self.seen = [], []

    def set_epoch(self, epoch):
        self.replay.set_epoch(epoch)

    def fill(self, *args, **kwargs):
        self.replay.fill(*args, **kwargs)

    def __call__(self, idx, inputs):
        logits = self.replay(idx, inputs)
        with torch.no_grad():
            self.errors.append(float((logits - self.twin(inputs)).abs().max()))
        self.seen.append([int(i) for i in idx])
        return logits


def main() -> None:
    out, mixing, top_k, refuse = Path(sys.argv[1]), sys.argv[2] == "1", int(sys.argv[3]) or None, sys.argv[4] == "1"
    dist, _ = init_from_env("cpu")
    teacher, ran = net(1), []
    teacher.register_forward_hook(lambda _m, args, _o: ran.append(len(args[0])))
    watched = Watched(ReplayTeacher(Refuses() if refuse else teacher, out / "cache" / "replay.npy", VIEWS, SAMPLES,
                                    top_k=top_k))
    augment = {"pad_crop": 2, "re_prob": 0.5, **({"mixup": 1.0, "cutmix": 1.0} if mixing else {})}
    cfg = TrainConfig(epochs=EPOCHS, batch_size=4, lr=0.01, channels_last=False, augment=augment)
    x, y = data()
    train(net(2).train(), (x, y), (x, y), cfg, lambda s, t, _labels: (s - t).pow(2).mean(),
          out / f"work-{dist.rank}-{int(refuse)}", key="k", seed=3, teacher=watched, dist=dist)
    (out / f"rank{dist.rank}-{int(refuse)}.json").write_text(json.dumps(
        {"teacher_samples": sum(ran), "max_error": max(watched.errors), "steps": len(watched.errors),
         "seen": watched.seen}))
    shutdown(dist)


if __name__ == "__main__":
    main()
