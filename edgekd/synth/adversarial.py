"""Adversarial data-free transfer: a small conv generator trained against the teacher.

One loop serves ZSKT (Micaelli & Storkey, "Zero-shot Knowledge Transfer via Adversarial Belief
Matching", NeurIPS 2019) and DAFL (Chen et al., "Data-Free Learning of Student Networks", ICCV
2019); each is a set of weights on the generator's terms (edgekd.synth.settings):

    generator   adversarial * -KL(p_T || p_S)          ZSKT: find inputs where the student and
                                                       teacher disagree (needs a student)
              + one_hot * CE(teacher(x), argmax)       DAFL: inputs the teacher is sure about
              + activation * -mean |pre-logits_T|      DAFL: strong teacher features
              + entropy * sum_k pbar_k log10 pbar_k    DAFL: every class equally often in a batch
              + bn * BN-statistics gap                 DeepInversion's prior, on generated batches
    student     KL(p_T || p_S) + attention * sum AT    ZSKT's student, on each round's batch

KL is averaged over batch and classes (ZSKT's F.kl_div default 'mean'), the temperature is
`temperature`; AT is Zagoruyko & Komodakis' attention map difference over stage pairs matched by
spatial size. A round is `generator_steps` generator updates on one latent batch z, then
`student_steps` updates of a proxy student (a private copy of the given student: the caller's
model is never trained here) on G(z).

The output is images, not the proxy student: `count` images are drawn from the generator at
evenly spaced rounds of its training (fresh z each time), so the transfer set samples the whole
adversarial curriculum rather than only the final generator, which ZSKT's generator would have
narrowed to the last student's blind spots. With `adversarial: 0` (DAFL) the student has no
effect on the images and no proxy is trained.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from edgekd.distill.feature import at_loss
from edgekd.distill.taps import PRE_LOGITS, Tap, pair_stages
from edgekd.errors import ConfigError
from edgekd.models.torchfile import load_weights_only, save_atomic
from edgekd.synth.deepinversion import BNStatistics, require_batchnorm
from edgekd.synth.settings import AdversarialSettings
from edgekd.synth.tensors import frozen, model_device


class Generator(nn.Module):
    """DAFL's generator (ZSKT's is the same but for its upsampling factors), `width` 128 as published:
    z (B, z_dim) -> linear -> (width, h/4, w/4) -> BN -> [x2, conv width, BN, LeakyReLU]
    -> [x2, conv width/2, BN, LeakyReLU] -> conv C -> [tanh] -> BN without affine (B, C, H, W).
    The last BN keeps every output channel at zero mean and unit variance over the batch: the
    scale of a normalised model input."""

    def __init__(self, z_dim: int, shape: tuple[int, int, int], tanh: bool = False, width: int = 128):
        super().__init__()
        channels, self.height, self.width = shape
        self.h0, self.w0, self.channels = math.ceil(self.height / 4), math.ceil(self.width / 4), width
        self.project = nn.Linear(z_dim, width * self.h0 * self.w0)
        self.bn0 = nn.BatchNorm2d(width)
        half = max(1, width // 2)
        self.block1 = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.LeakyReLU(0.2))
        self.block2 = nn.Sequential(nn.Conv2d(width, half, 3, padding=1), nn.BatchNorm2d(half), nn.LeakyReLU(0.2))
        self.to_image = nn.Conv2d(half, channels, 3, padding=1)
        self.tanh = tanh
        self.out_bn = nn.BatchNorm2d(channels, affine=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.bn0(self.project(z).view(len(z), self.channels, self.h0, self.w0))
        x = self.block1(F.interpolate(x, scale_factor=2))
        x = self.block2(F.interpolate(x, scale_factor=2))
        if x.shape[-2:] != (self.height, self.width):  # sizes that are not multiples of 4
            x = F.interpolate(x, size=(self.height, self.width), mode="bilinear", align_corners=False)
        x = self.to_image(x)
        return self.out_bn(torch.tanh(x) if self.tanh else x)


def mean_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(p_T || p_S) averaged over batch and classes (ZSKT's reduction)."""
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    p_t = F.softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_p_s, p_t, reduction="sum") / student_logits.numel()


def class_balance(teacher_logits: torch.Tensor) -> torch.Tensor:
    """DAFL's information-entropy loss: sum_k pbar_k log10 pbar_k, lowest when the batch-mean
    prediction pbar is uniform."""
    pbar = F.softmax(teacher_logits, dim=1).mean(0)
    return (pbar * torch.log10(pbar.clamp_min(1e-12))).sum()


class AdversarialSource:
    """Trains generator (+ proxy student) round by round; `next_batch(k)` first runs the rounds due
    before batch k, then draws a batch. The whole training state is saved with each batch."""

    stateful = True

    def __init__(self, teacher: nn.Module, settings: AdversarialSettings, shape: tuple[int, int, int],
                 seed: int, count: int, student: nn.Module | None = None):
        if settings.needs_student and student is None:
            raise ConfigError(f"{settings.method}: adversarial {settings.adversarial:g} trains the generator against "
                              "a student, and none was given.", "Pass the student to be distilled, or use method: dafl.")
        self.teacher, self.settings, self.shape, self.count = teacher, settings, shape, count
        self.batch_size = settings.batch_size
        self.device = model_device(teacher)
        self.rng = torch.Generator().manual_seed(seed)  # latents
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.generator = Generator(settings.z_dim, shape, settings.tanh, settings.generator_width)
            self.generator.to(self.device).train()
        self.student = copy.deepcopy(student).to(self.device).train() if settings.needs_student else None
        self.g_opt, self.g_sched = self._optimizer(self.generator, settings.generator_lr)
        self.s_opt, self.s_sched = self._optimizer(self.student, settings.student_lr) if self.student else (None, None)
        self.taps = self._taps()
        self.stats = BNStatistics(require_batchnorm(teacher, f"{settings.method} with bn > 0")) if settings.bn else None
        self.round = 0
        self.losses: dict[str, float] = {}

    @property
    def uses_student(self) -> bool:
        return self.student is not None

    def _optimizer(self, model: nn.Module, lr: float):
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        rounds = self.settings.rounds
        cosine = lambda r: 0.5 * (1 + math.cos(math.pi * min(r, rounds) / rounds))  # noqa: E731  CosineAnnealingLR
        factor = cosine if self.settings.schedule == "cosine" else (lambda r: 1.0)
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    def _taps(self) -> dict:
        taps = {}
        if self.settings.activation:
            taps["features"] = Tap(self.teacher, [PRE_LOGITS])
        if self.student is not None and self.settings.attention:
            pairs = pair_stages(self.student, self.teacher, self.shape)
            taps["pairs"] = pairs
            taps["student"] = Tap(self.student, [p.student for p in pairs])
            taps["teacher"] = Tap(self.teacher, [p.teacher for p in pairs])
        return taps

    def emit_round(self, index: int) -> int:
        """Rounds trained before batch `index` is drawn: evenly spaced, the last batch after all of them."""
        batches = math.ceil(self.count / self.batch_size)
        return math.ceil((index + 1) * self.settings.rounds / batches)

    @torch.no_grad()
    def next_batch(self, index: int) -> torch.Tensor:
        with torch.enable_grad():
            while self.round < self.emit_round(index):
                self.train_round()
        z = torch.randn((self.batch_size, self.settings.z_dim), generator=self.rng).to(self.device)
        return self.generator(z)

    def train_round(self) -> None:
        z = torch.randn((self.batch_size, self.settings.z_dim), generator=self.rng).to(self.device)
        terms = {}
        for _ in range(self.settings.generator_steps):
            terms = self.generator_step(z)
        if self.student is not None and self.settings.student_steps:
            terms.update(self.student_round(z))
            self.s_sched.step()
        self.g_sched.step()
        self.round += 1
        self.losses = terms

    def generator_step(self, z: torch.Tensor) -> dict[str, float]:
        """One update of the generator on latents z (B, z_dim); the teacher and student stay fixed."""
        self.teacher.eval()
        with frozen(self.teacher, self.student):
            loss, terms = self.generator_loss(self.generator(z))
            self._step(self.g_opt, self.generator, loss)
        return terms

    def generator_loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        s = self.settings
        logits = self.teacher(x)
        terms = {}
        if s.adversarial:
            terms["adversarial"] = -mean_kl(self.student(x), logits, s.temperature)
        if s.one_hot:
            terms["one_hot"] = F.cross_entropy(logits, logits.argmax(1))
        if s.activation:
            terms["activation"] = -self.taps["features"].features[PRE_LOGITS].abs().mean()
        if s.entropy:
            terms["entropy"] = class_balance(logits)
        if s.bn:
            terms["bn"] = self.stats.loss()
        weights = {"adversarial": s.adversarial, "one_hot": s.one_hot, "activation": s.activation,
                   "entropy": s.entropy, "bn": s.bn}
        loss = sum(weights[k] * v for k, v in terms.items())
        return loss, {"g_loss": float(loss.detach()), **{k: float(v.detach()) for k, v in terms.items()}}

    def student_round(self, z: torch.Tensor) -> dict[str, float]:
        with torch.no_grad():
            x = self.generator(z)
            teacher_logits = self.teacher(x)
            teacher_maps = dict(self.taps["teacher"].features) if "teacher" in self.taps else {}
        for _ in range(self.settings.student_steps):
            loss = self.student_loss(x, teacher_logits, teacher_maps)
            self._step(self.s_opt, self.student, loss)
        return {"s_loss": float(loss.detach())}

    def student_loss(self, x: torch.Tensor, teacher_logits: torch.Tensor, teacher_maps: dict) -> torch.Tensor:
        loss = mean_kl(self.student(x), teacher_logits, self.settings.temperature)
        if "pairs" in self.taps:
            student_maps = self.taps["student"].features
            loss = loss + self.settings.attention * sum(at_loss(student_maps[p.student], teacher_maps[p.teacher])
                                                        for p in self.taps["pairs"])
        return loss

    def _step(self, optimizer, model: nn.Module, loss: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.settings.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), self.settings.grad_clip)
        optimizer.step()

    def state_dict(self) -> dict:
        state = {"round": self.round, "rng": self.rng.get_state(), "generator": self.generator.state_dict(),
                 "g_opt": self.g_opt.state_dict(), "g_sched": self.g_sched.state_dict()}
        if self.student is not None:
            state.update(student=self.student.state_dict(), s_opt=self.s_opt.state_dict(),
                         s_sched=self.s_sched.state_dict())
        return state

    def save(self, path) -> None:
        save_atomic(self.state_dict(), path)

    def load(self, path) -> None:
        """The state `save` wrote, read weights-only (tensors, numbers and dicts: nothing to unpickle)."""
        state = load_weights_only(path, "transfer-image generator state",
                                  fix=f"edgekd did not write it: delete {Path(path).parent} to generate again")
        self.round = state["round"]
        self.rng.set_state(state["rng"].cpu())
        self.generator.load_state_dict(state["generator"])
        self.g_opt.load_state_dict(state["g_opt"])
        self.g_sched.load_state_dict(state["g_sched"])
        if self.student is not None:
            self.student.load_state_dict(state["student"])
            self.s_opt.load_state_dict(state["s_opt"])
            self.s_sched.load_state_dict(state["s_sched"])

    def close(self) -> None:
        for tap in self.taps.values():
            if isinstance(tap, Tap):
                tap.close()
        if self.stats is not None:
            self.stats.close()
