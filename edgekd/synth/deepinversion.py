"""DeepInversion (Yin et al., "Dreaming to Distill", CVPR 2020): transfer images optimised from noise.

A batch of inputs x (B, C, H, W), in the teacher's normalised input space, is optimised with
Adam so that, for the teacher in eval mode,

    main_loss * CE(teacher(x'), targets)                       class prior: sampled target classes
  + bn * sum_l m_l (||mu_l(x') - running_mean_l||_2             feature-distribution prior: every
                    + ||var_l(x') - running_var_l||_2)          BatchNorm layer's input statistics
  + tv_l2 * TV_2(x') + tv_l1 * TV_1(x') + l2 * mean_i ||x'_i||_2  image priors
  + competition * (1 - JS(student(x'), teacher(x')))            Adaptive DeepInversion (optional)

is minimised, where x' is x rolled by a random jitter (and flipped) each iteration, and m_l is
`first_bn_multiplier` on the first BN layer, 1 elsewhere. The statistics are read through forward
hooks on the BN layers (the teacher's code is never touched). Terms and their reductions follow
the official code (NVlabs/DeepInversion: deepinversion.py, cifar10/deepinversion_cifar10.py).

Teachers without BatchNorm (ViT, ConvNeXt with LayerNorm) have no statistics to match: they are
refused with a ModelError that points at the adversarial methods.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from edgekd.errors import ConfigError, ModelError
from edgekd.synth.settings import DeepInversionSettings
from edgekd.synth.tensors import frozen, model_device, num_classes, pixel_bounds


def bn_layers(model: nn.Module) -> list[_BatchNorm]:
    """BatchNorm layers that carry running statistics, in forward-definition order."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.running_mean is not None]


def require_batchnorm(teacher: nn.Module, method: str = "deepinversion") -> list[_BatchNorm]:
    layers = bn_layers(teacher)
    if not layers:
        raise ModelError(
            f"{method} needs a teacher with BatchNorm layers: it matches their running statistics, and "
            f"{type(teacher).__name__} has none (LayerNorm/GroupNorm models such as ViT or ConvNeXt keep no "
            "statistics of their training data).",
            "Use an adversarial method instead (method: zskt, or dafl), which needs only the teacher's outputs.",
        )
    return layers


class BNStatistics:
    """Forward hooks on BN layers; after a forward pass, `loss()` is the summed statistics gap."""

    def __init__(self, layers: list[_BatchNorm]):
        self.gaps: list[torch.Tensor] = [torch.zeros(())] * len(layers)
        self._handles = [layer.register_forward_hook(self._recorder(i)) for i, layer in enumerate(layers)]

    def _recorder(self, i: int):
        def record(module: _BatchNorm, args, _output):
            x = args[0].float()  # (B, C, ...) the BN layer's input
            dims = [0, *range(2, x.ndim)]
            var, mean = torch.var_mean(x, dim=dims, unbiased=False)
            self.gaps[i] = torch.norm(module.running_var.float() - var, 2) + torch.norm(module.running_mean.float() - mean, 2)

        return record

    def loss(self, first_multiplier: float = 1.0) -> torch.Tensor:
        return first_multiplier * self.gaps[0] + sum(self.gaps[1:], torch.zeros((), device=self.gaps[0].device))

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def total_variation(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(TV-l1, TV-l2) over horizontal, vertical and both diagonal neighbour differences."""
    diffs = (x[:, :, :, :-1] - x[:, :, :, 1:], x[:, :, :-1, :] - x[:, :, 1:, :],
             x[:, :, 1:, :-1] - x[:, :, :-1, 1:], x[:, :, :-1, :-1] - x[:, :, 1:, 1:])
    return sum(d.abs().mean() for d in diffs), sum(torch.norm(d) for d in diffs)


def js_competition(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """1 - JS(p_S, p_T) with the official clamps: 0 when the two disagree completely. Minimising it
    pushes the images to where the student does not yet follow the teacher (Adaptive DeepInversion)."""
    p = F.softmax(student_logits / temperature, dim=1)
    q = F.softmax(teacher_logits / temperature, dim=1)
    m = (0.5 * (p + q)).clamp(0.01, 0.99)
    p, q = p.clamp(0.01, 0.99), q.clamp(0.01, 0.99)
    js = 0.5 * F.kl_div(p.log(), m, reduction="batchmean") + 0.5 * F.kl_div(q.log(), m, reduction="batchmean")
    return 1.0 - js.clamp(0.0, 1.0)


def objective(teacher: nn.Module, x: torch.Tensor, targets: torch.Tensor, settings: DeepInversionSettings,
              stats: BNStatistics, student: nn.Module | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The weighted DeepInversion loss of inputs `x` (already jittered) and its terms."""
    logits = teacher(x)
    terms = {"ce": F.cross_entropy(logits, targets), "bn": stats.loss(settings.first_bn_multiplier)}
    terms["tv_l1"], terms["tv_l2"] = total_variation(x)
    terms["l2"] = torch.norm(x.flatten(1), dim=1).mean()
    weights = {"ce": settings.main_loss, "bn": settings.bn, "tv_l1": settings.tv_l1, "tv_l2": settings.tv_l2,
               "l2": settings.l2}
    if settings.competition > 0 and student is not None:
        terms["competition"] = js_competition(student(x), logits, settings.competition_temperature)
        weights["competition"] = settings.competition
    loss = sum(weights[k] * terms[k] for k in terms)
    return loss, {"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in terms.items()}}


def lr_factor(settings: DeepInversionSettings, iteration: int) -> float:
    """The official lr_cosine_policy: linear warm-up, then half a cosine to 0."""
    if settings.lr_schedule == "constant":
        return 1.0
    if iteration < settings.warmup:
        return (iteration + 1) / settings.warmup
    span = max(1, settings.iterations - settings.warmup)
    return 0.5 * (1 + math.cos(math.pi * (iteration - settings.warmup) / span))


def invert_batch(teacher: nn.Module, settings: DeepInversionSettings, targets: torch.Tensor,
                 shape: tuple[int, int, int], mean, std, generator: torch.Generator,
                 student: nn.Module | None = None, stats: BNStatistics | None = None) -> tuple[torch.Tensor, dict]:
    """Optimise len(targets) images from Gaussian noise; returns them (normalised, (B, C, H, W))
    and the loss terms of the first and last iterations."""
    device = model_device(teacher)
    own_stats = stats is None
    stats = stats or BNStatistics(require_batchnorm(teacher))
    x = torch.randn((len(targets), *shape), generator=generator).to(device).requires_grad_()
    optimizer = torch.optim.Adam([x], lr=settings.lr, betas=settings.betas, eps=1e-8)
    low, high = pixel_bounds(mean, std, x)
    targets = targets.to(device)
    first = last = {}
    was = teacher.training, student.training if student is not None else None
    teacher.eval()
    if student is not None:
        student.eval()
    try:
        with frozen(teacher, student):
            for it in range(settings.iterations):
                for group in optimizer.param_groups:
                    group["lr"] = settings.lr * lr_factor(settings, it)
                loss, last = objective(teacher, _jittered(x, settings, generator), targets, settings, stats, student)
                first = first or last
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if settings.clip:
                    with torch.no_grad():
                        x.copy_(torch.maximum(torch.minimum(x, high), low))
    finally:
        teacher.train(was[0])
        if student is not None:
            student.train(was[1])
        if own_stats:
            stats.close()
    return x.detach(), {"first": first, "last": last}


def _jittered(x: torch.Tensor, settings: DeepInversionSettings, generator: torch.Generator) -> torch.Tensor:
    """Roll by up to `jitter` pixels each way (the same shift for the batch, as the official code),
    then maybe flip horizontally."""
    if settings.jitter:
        dy, dx = (int(v) for v in torch.randint(-settings.jitter, settings.jitter + 1, (2,), generator=generator))
        x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    if settings.flip and bool(torch.rand((), generator=generator) < 0.5):
        x = torch.flip(x, dims=(3,))
    return x


def batch_generator(seed: int, index: int) -> torch.Generator:
    """An independent, reproducible stream per (seed, batch): batch k is the same whether or not
    the generation was interrupted before it."""
    state = np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state >> np.uint64(1)))


class DeepInversionSource:
    """Batches of DeepInversion images; batch k depends only on (teacher, settings, seed, k)."""

    stateful = False  # batches are independent: a resumed run needs no checkpoint

    def __init__(self, teacher: nn.Module, settings: DeepInversionSettings, shape: tuple[int, int, int],
                 mean, std, seed: int, student: nn.Module | None = None):
        layers = require_batchnorm(teacher, settings.method)  # refusals before any work
        if settings.competition > 0 and student is None:
            raise ConfigError(f"{settings.method}: competition {settings.competition:g} (Adaptive DeepInversion) "
                              "needs the student the images are for.", "Pass the student, or set competition: 0.")
        self.teacher, self.settings, self.shape, self.mean, self.std = teacher, settings, shape, mean, std
        self.seed, self.classes = seed, num_classes(teacher, shape)
        self.student = student if settings.competition > 0 else None
        self.stats = BNStatistics(layers)
        self.batch_size = settings.batch_size
        self.losses: dict[str, float] = {}

    @property
    def uses_student(self) -> bool:
        return self.student is not None

    def targets(self, index: int, generator: torch.Generator) -> torch.Tensor:
        """Classes in turn across batches (balanced, as the official CIFAR code), or uniform random."""
        if self.settings.random_labels:
            return torch.randint(0, self.classes, (self.batch_size,), generator=generator)
        return (torch.arange(self.batch_size) + index * self.batch_size) % self.classes

    def next_batch(self, index: int) -> torch.Tensor:
        generator = batch_generator(self.seed, index)
        targets = self.targets(index, generator)
        x, losses = invert_batch(self.teacher, self.settings, targets, self.shape, self.mean, self.std, generator,
                                 self.student, self.stats)
        self.losses = {"loss": losses["last"]["loss"], "bn": losses["last"]["bn"], "ce": losses["last"]["ce"]}
        return x

    def close(self) -> None:
        self.stats.close()
