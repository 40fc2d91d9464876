"""Settings of each transfer-image method: config data, defaults from the published recipes.

One Strict model per named method, selected by `method` (a discriminated union, so a
misspelt key is an error with a "did you mean"). Defaults are the authors' own:

deepinversion           Yin et al., CVPR 2020, official code NVlabs/DeepInversion, cifar10/README.md
                        "parameters from the paper": batch 256, 2k iterations, Adam lr 0.05
                        (default betas, constant lr), r_feature 10, TV-l2 2.5e-5, l2 0, jitter 2 px,
                        no flip, no clipping (cifar10/deepinversion_cifar10.py). For small inputs.
deepinversion_imagenet  the same code's ImageNet recipe (imagenet_inversion.py, setting_id 1): 2k
                        iterations, Adam lr 0.25 betas (0.5, 0.9), cosine lr with 100 warm-up
                        iterations, r_feature 0.01 with 10x on the first BN, TV-l2 1e-4, l2 1e-5,
                        jitter 30 px, random flips, pixels clipped to [0, 1]. For 224-px teachers.
zskt                    Micaelli & Storkey, NeurIPS 2019, official code polo5/ZeroShotKnowledgeTransfer
                        (scripts/ZeroShot/main0.sh, CIFAR-10): batch 128, z 100, 80k rounds of 1
                        generator + 10 student steps, Adam lr 1e-3 (generator) / 2e-3 (student),
                        cosine annealing, KL at T=1, attention transfer beta 250, grad-norm clip 5.
dafl                    Chen et al., ICCV 2019, official code huawei-noah DAFL (DAFL_train.py, MNIST
                        defaults): batch 512, z 100, 200 epochs x 120 iterations, Adam lr 0.2
                        (generator) / 2e-3 (student), one-hot 1, information entropy 5, activation
                        0.1, the generator ends in tanh + a non-affine BatchNorm.

The two adversarial methods share one loss; each is a set of weights on its terms
(`edgekd.synth.adversarial`), so `zskt` plus `one_hot`/`entropy`/`activation` gives the
ZSKT generator with DAFL's priors.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, model_validator

from edgekd.schema import Strict


class DeepInversionSettings(Strict):
    """DeepInversion: optimise a batch of inputs so the teacher's BatchNorm statistics, a class prior
    and image priors are matched (small-image recipe: the official CIFAR-10 parameters)."""

    method: Literal["deepinversion"] = "deepinversion"
    batch_size: int = Field(256, ge=1, description="images optimised together (BN statistics are per batch)")
    iterations: int = Field(2000, ge=1, description="Adam steps per batch")
    lr: float = Field(0.05, gt=0, description="Adam learning rate on the pixels (normalised input space)")
    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam betas")
    lr_schedule: Literal["constant", "cosine"] = Field("constant", description="cosine: with `warmup` iterations")
    warmup: int = Field(0, ge=0, description="linear warm-up iterations of the cosine schedule")
    bn: float = Field(10.0, ge=0, description="weight of the BN-statistics loss (r_feature)")
    first_bn_multiplier: float = Field(1.0, ge=0, description="extra factor on the first BN layer's term")
    main_loss: float = Field(1.0, ge=0, description="weight of the class prior (cross-entropy to the target)")
    tv_l2: float = Field(2.5e-5, ge=0, description="total variation, L2 norms of neighbour differences")
    tv_l1: float = Field(0.0, ge=0, description="total variation, mean absolute neighbour differences")
    l2: float = Field(0.0, ge=0, description="mean per-image L2 norm of the input")
    jitter: int = Field(2, ge=0, description="random roll of up to this many pixels each iteration")
    flip: bool = Field(False, description="random horizontal flip each iteration")
    clip: bool = Field(False, description="clip pixels to [0, 1] (de-normalised) after each step")
    random_labels: bool = Field(False, description="uniform random targets instead of classes in turn")
    competition: float = Field(0.0, ge=0, description="Adaptive DeepInversion: weight of 1 - JS(teacher, "
                                                      "student); > 0 needs a student (0.2 in the paper)")
    competition_temperature: float = Field(3.0, gt=0, description="softmax temperature of the JS term")


class DeepInversionImageNetSettings(DeepInversionSettings):
    """DeepInversion with the official ImageNet recipe (setting_id 1), for 224-px teachers."""

    method: Literal["deepinversion_imagenet"] = "deepinversion_imagenet"  # type: ignore[assignment]
    batch_size: int = Field(84, ge=1, description="images optimised together (README example: 84)")
    lr: float = Field(0.25, gt=0, description="Adam learning rate on the pixels (README example: 0.25)")
    betas: tuple[float, float] = Field((0.5, 0.9), description="Adam betas")
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    warmup: int = Field(100, ge=0, description="linear warm-up iterations of the cosine schedule")
    bn: float = Field(0.01, ge=0, description="weight of the BN-statistics loss (README example: 0.01)")
    first_bn_multiplier: float = Field(10.0, ge=0, description="extra factor on the first BN layer's term")
    tv_l2: float = Field(1e-4, ge=0, description="total variation, L2 norms of neighbour differences")
    l2: float = Field(1e-5, ge=0, description="mean per-image L2 norm of the input")
    jitter: int = Field(30, ge=0, description="random roll of up to this many pixels each iteration")
    flip: bool = True
    clip: bool = True


class AdversarialSettings(Strict):
    """A small conv generator trained against the teacher (and a proxy copy of the student).
    Defaults: ZSKT's CIFAR-10 recipe. Images are drawn from the generator at evenly spaced
    rounds of its training, so the transfer set follows the adversarial curriculum."""

    method: Literal["zskt"] = "zskt"
    rounds: int = Field(80_000, ge=1, description="training rounds (ZSKT: pseudo-batches) of generator + student")
    batch_size: int = Field(128, ge=2, description="generated images per round")
    z_dim: int = Field(100, ge=1, description="latent size")
    generator_width: int = Field(128, ge=2, description="channels of the generator's first block (the second has "
                                                         "half); compute grows with its square")
    generator_lr: float = Field(1e-3, gt=0, description="Adam learning rate of the generator")
    student_lr: float = Field(2e-3, gt=0, description="Adam learning rate of the proxy student")
    generator_steps: int = Field(1, ge=1, description="generator steps per round")
    student_steps: int = Field(10, ge=0, description="proxy-student steps per round, on the round's batch")
    schedule: Literal["constant", "cosine"] = Field("cosine", description="lr schedule over `rounds`")
    grad_clip: float = Field(5.0, ge=0, description="gradient-norm clip of both models (0: off)")
    temperature: float = Field(1.0, gt=0, description="softmax temperature of the KL terms")
    adversarial: float = Field(1.0, ge=0, description="generator: weight of -KL(teacher || student)")
    one_hot: float = Field(0.0, ge=0, description="generator: DAFL one-hot loss (CE to the teacher's argmax)")
    activation: float = Field(0.0, ge=0, description="generator: DAFL activation loss (-mean |pre-logits|)")
    entropy: float = Field(0.0, ge=0, description="generator: DAFL information-entropy loss (class balance)")
    bn: float = Field(0.0, ge=0, description="generator: DeepInversion BN-statistics loss (needs BN)")
    attention: float = Field(250.0, ge=0, description="proxy student: attention-transfer beta (ZSKT)")
    tanh: bool = Field(False, description="generator output through tanh before its final BatchNorm (DAFL)")

    @model_validator(mode="after")
    def _some_generator_loss(self) -> "AdversarialSettings":
        if not any((self.adversarial, self.one_hot, self.activation, self.entropy, self.bn)):
            raise ValueError("every generator loss weight is 0: set adversarial, one_hot, activation, entropy or bn")
        return self

    @property
    def needs_student(self) -> bool:
        return self.adversarial > 0


class DAFLSettings(AdversarialSettings):
    """DAFL's MNIST recipe: the generator maximises the teacher's confidence, activations and class
    balance; the proxy student is only distilled alongside (no adversarial term)."""

    method: Literal["dafl"] = "dafl"  # type: ignore[assignment]
    rounds: int = Field(24_000, ge=1, description="200 epochs x 120 iterations")
    batch_size: int = Field(512, ge=2, description="generated images per round")
    generator_lr: float = Field(0.2, gt=0, description="Adam learning rate of the generator")
    student_steps: int = Field(1, ge=0, description="proxy-student steps per round")
    schedule: Literal["constant", "cosine"] = "constant"
    grad_clip: float = 0.0
    adversarial: float = 0.0
    one_hot: float = 1.0
    activation: float = 0.1
    entropy: float = 5.0
    attention: float = 0.0
    tanh: bool = True


SynthSettings = Annotated[
    Union[DeepInversionSettings, DeepInversionImageNetSettings, AdversarialSettings, DAFLSettings],
    Field(discriminator="method"),
]

SETTINGS: dict[str, type[Strict]] = {
    "deepinversion": DeepInversionSettings,
    "deepinversion_imagenet": DeepInversionImageNetSettings,
    "zskt": AdversarialSettings,
    "dafl": DAFLSettings,
}


def parse_settings(data: dict, source: str = "synthetic settings") -> SynthSettings:
    """A method's settings from a mapping such as {"method": "zskt", "rounds": 2000}."""
    from edgekd.errors import ConfigError
    from edgekd.schema import parse

    method = data.get("method") if isinstance(data, dict) else None
    if method not in SETTINGS:
        raise ConfigError(f"{source}: unknown transfer-image method {method!r}.",
                          f"Set method to one of: {', '.join(SETTINGS)}.")
    return parse(SETTINGS[method], data, source)
