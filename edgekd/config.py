"""model.yaml as typed data.

Every section is a `Strict` model: unknown keys are errors with a "did you
mean", wrong types name their key path, and rules that span fields are checked
here, at load time, never mid-run. Defaults sit next to what they mean.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from edgekd import BUILTIN_DIR
from edgekd.data.transforms import IMAGE_ONLY_KEYS, ImageAugmentConfig, TrainTransformConfig
from edgekd.distill.recipes import DISTILL_RECIPES, TEACHER_RECIPES, expand_recipe
from edgekd.errors import ConfigError
from edgekd.schema import Strict, parse, read_yaml
from edgekd.search.config import SearchConfig
from edgekd.synth.config import SyntheticConfig

CONFIG_VERSION = 1


class DataConfig(Strict):
    kind: Literal["digits", "idx", "imagefolder", "webdataset", "synthetic"] = Field(
        "digits", description="where labelled images come from; synthetic: none at all, only the teacher "
        "(data.synthetic makes every image; accuracy is reported as unmeasured)")
    use: Literal["all", "report"] = Field(
        "all", description="all: the real labelled data trains, chooses and scores as usual; report (with "
        "data.synthetic): only its test split is used, to score the report, and every choice is made on held-out "
        "synthetic images as with kind: synthetic")
    classes: int | list[str] | None = Field(
        None, description="kind synthetic only: the teacher's classes, a count or their names in the head's order "
        "(with real data they come from the data)")
    path: Path | None = Field(None, description="idx: folder of *-ubyte.gz files; imagefolder: root of class folders")
    shards: str | None = Field(
        None, description="webdataset: tar shards (<key>.jpg + <key>.cls): a folder of *.tar (or of train/, val/, "
        "test/ subfolders), a glob, or a brace-expanded pipe:/URL list (copied once into the cache folder)")
    input_size: int = Field(32, ge=8, description="square side the model sees, in pixels")
    channels: Literal[1, 3] = 1
    val_fraction: float = Field(
        0.2, gt=0, lt=1, description="carved out of the training data for validation (every choice: best epoch, "
        "early stopping, INT8 gate) when the source has no validation split (digits, idx, imagefolder without ROOT/val)")
    test_fraction: float = Field(
        0.2, gt=0, lt=1, description="carved out for the test split (every reported accuracy, used for no choice) "
        "when the source has none (digits, imagefolder without ROOT/test); idx uses its t10k files")
    seed: int = 0
    mean: tuple[float, ...] | None = Field(None, description="per channel; default from the teacher's timm config or the data")
    std: tuple[float, ...] | None = None
    augment: Literal["none", "crop_flip", "crop", "timm"] = Field(
        "none", description="crop / crop_flip: a seeded 4-px shift (and flip) of the preprocessed batch; timm "
        "(imagefolder): timm's training transform (data.train_transform) from the picture, in the DataLoader workers")
    train_transform: ImageAugmentConfig = Field(
        default_factory=ImageAugmentConfig, description="augment: timm only; timm's names (create_transform)")
    train_fraction: float = Field(
        1.0, gt=0, le=1, description="the student stage trains on this seeded, class-stratified share of the "
        "training split; the teacher stage always trains on all of it")
    workers: int | None = Field(
        None, ge=0, description="imagefolder: DataLoader worker processes that decode images; default: this "
        "machine's cores (shared by the torchrun ranks on it); 0: in the training process")
    cache: Literal["none", "uint8"] = Field(
        "none", description="imagefolder: uint8 = decode every image once into a uint8 file at training size "
        "(4x smaller than float32), read per sample by every stage and by later runs")
    cache_dir: Path | None = Field(
        None, description="where the uint8 cache lives; default: <run dir>/cache/data. A shared folder "
        "(e.g. ~/.cache/edgekd/data) lets other runs of the same files reuse it")
    on_bad_image: Literal["error", "skip"] = Field(
        "error", description="imagefolder: error = list every unreadable image and stop before any training; "
        "skip = leave them out (the data summary counts them)")
    synthetic: SyntheticConfig | None = Field(
        None, description="transfer images generated from the teacher (data-free distillation, docs/data_free.md): "
        "{method, count, seed, <method settings>}; the student trains on them (distill.synthetic_fraction)")

    @model_validator(mode="after")
    def _path_when_needed(self) -> "DataConfig":
        if self.kind == "synthetic":
            return _check_no_real_data(self)
        if self.classes is not None:
            raise ValueError(f"data.classes is for data.kind: synthetic (no real images); {self.kind} data names "
                             "its own classes: remove data.classes")
        if self.use == "report" and self.synthetic is None:
            raise ValueError("data.use: report keeps the real data for the report only, so the student needs "
                             "data.synthetic images to learn and choose on: add a data.synthetic section, or set "
                             "data.use: all")
        if self.use == "all" and self.synthetic is not None and "holdout" in self.synthetic.model_fields_set:
            raise ValueError("data.synthetic.holdout holds synthetic images out for choices when no real "
                             "validation split makes them (data.kind: synthetic, or data.use: report); here "
                             "data.kind's own validation split chooses: remove holdout")
        if self.kind in ("idx", "imagefolder") and self.path is None:
            raise ValueError(f"data.kind {self.kind!r} needs data.path")
        if (self.kind == "webdataset") != (self.shards is not None):
            raise ValueError("data.kind webdataset needs data.shards (and data.shards is for webdataset only)")
        streamed = self.kind in ("imagefolder", "webdataset")
        if not streamed and (self.cache != "none" or self.cache_dir is not None):
            raise ValueError(f"data.cache and data.cache_dir apply to imagefolder and webdataset; {self.kind} is "
                             "held in memory")
        if self.augment == "timm" and not streamed:
            raise ValueError(f"data.augment 'timm' crops and recolours pictures (imagefolder); {self.kind} arrays "
                             "are already at input size: use augment: crop or crop_flip")
        if "train_transform" in self.model_fields_set and self.augment != "timm":
            raise ValueError(f"data.train_transform applies with augment: timm (now {self.augment!r}): set "
                             "augment: timm or remove train_transform")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None and len(value) != self.channels:
                raise ValueError(f"data.{name} needs {self.channels} value(s), one per channel")
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(f"data.val_fraction {self.val_fraction:g} + data.test_fraction {self.test_fraction:g} "
                             "leave nothing to train on: keep their sum below 1")
        return self

    @property
    def real(self) -> bool:
        """Whether the run has real labelled images (every kind but synthetic)."""
        return self.kind != "synthetic"

    @property
    def real_choices(self) -> bool:
        """Whether real labels make the choices (best epoch, INT8 gate) and may train: not with kind synthetic
        (none) nor with use: report (kept for the report's test accuracy)."""
        return self.real and self.use == "all"

    @property
    def class_names(self) -> list[str] | None:
        """kind synthetic: data.classes as names (a count gives "0", "1", ...)."""
        if self.classes is None:
            return None
        return [str(i) for i in range(self.classes)] if isinstance(self.classes, int) else list(self.classes)

    @property
    def augment_keys(self) -> list[str]:
        """The keys that decide what a training sample looks like (the trainers' reads)."""
        return ["data.augment"] + (["data.train_transform"] if self.augment == "timm" else [])


NO_REAL_DATA_KEYS = ("use", "path", "shards", "cache", "cache_dir", "on_bad_image", "val_fraction", "test_fraction",
                     "train_fraction")  # they describe real images: meaningless without any


def _check_no_real_data(d: "DataConfig") -> "DataConfig":
    """data.kind: synthetic: the teacher and data.synthetic are the only sources; keys about real images are
    refused, not ignored (a user who sets data.path expects it read)."""
    given = [k for k in NO_REAL_DATA_KEYS if k in d.model_fields_set]
    if given:
        raise ValueError(f"data.kind: synthetic means no real images, but data.{given[0]} describes real ones: "
                         f"remove {', '.join('data.' + k for k in given)}, or set data.kind to the real data's kind "
                         "(with data.synthetic the student can still train on synthetic images alone)")
    unstated = [k for k in ("input_size", "channels") if k not in d.model_fields_set]
    if unstated:
        raise ValueError(f"data.kind: synthetic has no images to take the input shape from: set data."
                         f"{unstated[0]} to the teacher's (data.input_size and data.channels)")
    for name in ("mean", "std"):
        value = getattr(d, name)
        if value is not None and len(value) != d.channels:
            raise ValueError(f"data.{name} needs {d.channels} value(s), one per channel")
    if d.synthetic is None:
        raise ValueError("data.kind: synthetic makes every image from the teacher, and there is no data.synthetic "
                         "section: add one, e.g. synthetic: {method: deepinversion, count: 2048}")
    if d.classes is None:
        raise ValueError("data.kind: synthetic has no labelled data to read the classes from: set data.classes to "
                         "the teacher's class count or names (in the order of its classifier outputs)")
    if isinstance(d.classes, int) and d.classes < 2 or isinstance(d.classes, list) and len(d.classes) < 2:
        raise ValueError("data.classes needs at least 2 classes")
    if d.synthetic.holdout >= d.synthetic.count:
        raise ValueError(f"data.synthetic.holdout {d.synthetic.holdout} leaves none of the {d.synthetic.count} "
                         "synthetic images to train on: raise count or lower holdout")
    if d.augment == "timm":
        raise ValueError("data.augment 'timm' crops and recolours pictures; synthetic images are stored at input "
                         "size: use augment: none, crop or crop_flip")
    return d


class TrainConfig(Strict):
    epochs: int = Field(10, ge=0)
    batch_size: int = Field(64, ge=1)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd only")
    schedule: Literal["cosine", "onecycle", "constant"] = "cosine"
    warmup_epochs: float = Field(1.0, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    grad_clip: float | None = Field(None, gt=0, description="max global grad norm")
    channels_last: bool = True
    early_stopping: int | None = Field(None, ge=1, description="stop after this many epochs without a better val accuracy")
    scale_lr: bool = Field(False, description="under torchrun: lr x world size (batch_size is per process)")
    amp: Literal["none", "bf16", "fp16"] = Field(
        "none", description="autocast precision: bf16 on CPU or CUDA, fp16 on CUDA only (with a GradScaler)")
    tensorboard: bool = Field(False, description="write per-epoch scalars for TensorBoard (needs the tensorboard package)")
    ema: bool = Field(
        False, description="keep an exponential moving average of the weights (timm ModelEmaV3); every epoch scores "
        "the model and the average on the validation split, and the better one can become the checkpoint")
    ema_decay: float = Field(0.999, gt=0, lt=1, description="the average's decay per optimizer step, reached after "
                             "timm's warm-up ramp (1 - (1 + step)^-3/4)")
    augment: TrainTransformConfig | None = Field(
        None, description="this training's augmentation in timm's names (edgekd.data.transforms): pad_crop, hflip, "
        "vflip, re_prob/re_mode/re_count (random erasing), mixup, cutmix, cutmix_minmax, mixup_prob, "
        "mixup_switch_prob, mixup_mode; drawn per sample in the DataLoader workers, seeded per (seed, sample, epoch), "
        "after the split's transform (timm's with data.augment: timm); replaces data.augment crop/crop_flip. With "
        "mixup/cutmix the teacher and the student receive the same mixed batch")

    @model_validator(mode="after")
    def _train_keys_fit(self) -> "TrainConfig":
        # compared with the defaults, not `model_fields_set`: a section rebuilt from a dump (teachers[0] as
        # `teacher`) has every key set
        if self.ema_decay != TrainConfig.model_fields["ema_decay"].default and not self.ema:
            raise ValueError("ema_decay applies to ema: true: set ema: true or remove ema_decay")
        given = sorted(k for k in IMAGE_ONLY_KEYS if self.augment is not None
                       and getattr(self.augment, k) != TrainTransformConfig.model_fields[k].default)
        if given:
            raise ValueError(f"augment.{', '.join(given)} need decoded pictures; training here augments the "
                             "preprocessed tensors: use pad_crop, hflip, vflip, re_*, mixup and cutmix")
        return self

    @property
    def mixing(self) -> bool:
        return self.augment is not None and self.augment.mixing


class TeacherConfig(Strict):
    recipe: Literal[tuple(TEACHER_RECIPES)] = Field(
        "standard", description="standard: the keys as written; strong: sgd (Nesterov) lr 0.05, label smoothing 0.1, "
        "crop + flip + random erasing, weight EMA, 30 epochs (edgekd/distill/recipes.py). Every key it sets can be "
        "overridden")
    model: str = Field("resnet18", description="a timm model name")
    pretrained: bool = Field(False, description="download timm's pretrained weights (needs the model hub)")
    checkpoint: Path | None = Field(None, description="a state dict, timm checkpoint, safetensors or edgekd checkpoint")
    trust_checkpoint: bool = Field(
        False, description="unpickle a torch checkpoint fully (it can run code: only for a file you trust); "
        "off: torch files are read weights-only (docs/security.md)")
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(epochs=8, lr=2e-3),
        description="how the teacher is trained or fine-tuned when no ready checkpoint is given",
    )
    finetune: bool | None = Field(None, description="train the loaded teacher further; default: only when no checkpoint")

    @model_validator(mode="before")
    @classmethod
    def _expand_recipe(cls, data):
        return expand_recipe("teacher", data)

    @model_validator(mode="after")
    def _one_source(self) -> "TeacherConfig":
        if self.pretrained and self.checkpoint is not None:
            raise ValueError("give teacher.pretrained or teacher.checkpoint, not both")
        if self.trust_checkpoint and self.checkpoint is None:
            raise ValueError("trust_checkpoint applies to a teacher.checkpoint file, and none is given")
        return self


class WeightedTeacherConfig(TeacherConfig):
    """One entry of `teachers:` (multi-teacher distillation)."""

    weight: float = Field(1.0, gt=0, description="its share of the ensemble's soft targets (normalised over teachers)")


class StudentConfig(Strict):
    model: str | None = Field(None, description="a timm model name; default: derived from the teacher")
    width: float = Field(0.25, gt=0, le=1, description="channel multiplier for a derived student")
    depth: float = Field(0.5, gt=0, le=1, description="blocks-per-stage multiplier for a derived student")
    init: Literal["random", "teacher"] = Field("random", description="teacher = keep the teacher's most important channels/blocks")
    quantization: Literal["none", "qat"] = Field(
        "none", description="qat = after distillation, fold BatchNorm, insert INT8 fake quantizers (NVIDIA Model "
        "Optimizer) and distil further with them in place (distill.qat); exports student.qat.onnx")
    search: SearchConfig | None = Field(
        None, description="measure candidate students on each target and distil the best that fits its budget "
        "(docs/search.md); replaces model/width/depth")
    input_size: int | None = Field(
        None, ge=8, description="square side the student sees, in pixels; default data.input_size (the teacher's). "
        "Another size (or channels) gives the student its own view of every sample: export, parity, calibration, "
        "bench and ship use it")
    channels: Literal[1, 3] | None = Field(
        None, description="the student's input channels (1: grey, 3: RGB); default data.channels (the teacher's)")

    @model_validator(mode="after")
    def _teacher_init_needs_derived(self) -> "StudentConfig":
        if self.init == "teacher" and self.model is not None:
            raise ValueError("student.init 'teacher' prunes the teacher into a derived student: remove student.model")
        return self

    @model_validator(mode="after")
    def _search_chooses_the_student(self) -> "StudentConfig":
        if self.search is None:
            return self
        given = [k for k in ("model", "width", "depth") if k in self.model_fields_set]
        if given:
            raise ValueError(f"student.search chooses the student, so student.{given[0]} would be ignored: remove "
                             f"{', '.join('student.' + k for k in given)} (list candidates in search.widths, "
                             "search.depths and search.models)")
        if self.init == "teacher" and self.search.models:
            raise ValueError("student.init 'teacher' prunes the teacher into a derived student, and student.search."
                             f"models lists named ones ({', '.join(self.search.models)}): remove search.models or use "
                             "student.init: random")
        return self


# ---- distillation losses: one model per `kind`, so each kind's keys are checked on their own.


class _Loss(Strict):
    weight: float = Field(1.0, ge=0, description="the term's factor in the summed loss")


class CEConfig(_Loss):
    """Cross-entropy with the labels (pair it with feature or relation losses)."""

    kind: Literal["ce"] = "ce"


class KDConfig(_Loss):
    """Hinton KD: alpha * T^2 * D(teacher, student at T) + (1 - alpha) * CE, D = KL(teacher || student) by default.

    alpha and temperature may move over training (alpha_end, temperature_end) along `schedule`,
    driven by the share of optimizer steps done."""

    kind: Literal["kd"] = "kd"
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.9, ge=0, le=1, description="share of the soft-target term; 1-alpha goes to cross-entropy")
    divergence: Literal["forward", "reverse", "symmetric"] = Field(
        "forward", description="forward KL(teacher||student): mass-covering (Hinton); reverse KL(student||teacher): "
        "mode-seeking; symmetric: (1-divergence_mix)*forward + divergence_mix*reverse")
    divergence_mix: float = Field(0.5, ge=0, le=1, description="symmetric only: the reverse KL's share")
    alpha_end: float | None = Field(None, ge=0, le=1, description="alpha at the end of training; None: constant")
    temperature_end: float | None = Field(None, gt=0, description="temperature at the end of training; None: constant")
    schedule: Literal["linear", "cosine"] = Field(
        "linear", description="how alpha/temperature move from start to end over training progress 0 -> 1")

    @model_validator(mode="after")
    def _no_idle_keys(self) -> "KDConfig":
        # a key that would silently do nothing is a mistake worth naming
        if "divergence_mix" in self.model_fields_set and self.divergence != "symmetric":
            raise ValueError(f"divergence_mix only applies to divergence: symmetric (this term is {self.divergence!r}): "
                             "set divergence: symmetric or remove divergence_mix")
        if "schedule" in self.model_fields_set and self.alpha_end is None and self.temperature_end is None:
            raise ValueError("schedule moves alpha/temperature toward alpha_end/temperature_end, and neither is set: "
                             "add alpha_end or temperature_end, or remove schedule")
        return self

    @property
    def scheduled(self) -> bool:
        return self.alpha_end is not None or self.temperature_end is not None


class DKDConfig(_Loss):
    """Decoupled KD (Zhao et al. 2022): alpha * TCKD + beta * NCKD, both scaled by T^2. No CE inside."""

    kind: Literal["dkd"] = "dkd"
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(1.0, ge=0, description="target-class KD weight")
    beta: float = Field(8.0, ge=0, description="non-target-class KD weight")


class TfKDConfig(_Loss):
    """Teacher-free KD, Tf-KD_reg (Yuan et al. 2020): (1 - alpha) * CE + alpha * T^2 * KL(virtual || student at T),
    the virtual teacher right with probability `a`, the rest spread evenly. Needs no teacher."""

    kind: Literal["tfkd"] = "tfkd"
    a: float = Field(0.9, gt=0, lt=1, description="the virtual teacher's probability for the correct class")
    temperature: float = Field(20.0, gt=0, description="softens the virtual teacher and the student (the paper's 20)")
    alpha: float = Field(0.9, ge=0, le=1, description="share of the virtual-teacher term; 1-alpha goes to cross-entropy")


class FeaturePair(Strict):
    student: str = Field(description="module name in the student, e.g. layer3 or stages.2")
    teacher: str = Field(description="module name in the teacher")


class _FeatureLoss(_Loss):
    pairs: list[FeaturePair] | None = Field(
        None, min_length=1, description="default: stages paired by spatial size from timm's feature_info")


class FitNetsConfig(_FeatureLoss):
    """FitNets hints: MSE(adapter(student feature), teacher feature); 1x1-conv adapters where channels differ."""

    kind: Literal["fitnets"] = "fitnets"


class ATConfig(_FeatureLoss):
    """Attention transfer (Zagoruyko & Komodakis 2017): beta/2 * sum of mean squared attention-map differences."""

    kind: Literal["at"] = "at"
    beta: float = Field(1000.0, ge=0, description="the paper's beta (1e3)")


class RKDConfig(_Loss):
    """Relational KD (Park et al. 2019) on the penultimate embeddings: distance and angle terms."""

    kind: Literal["rkd"] = "rkd"
    distance_weight: float = Field(25.0, ge=0)
    angle_weight: float = Field(50.0, ge=0)


def _loss_kind(value) -> str:
    # `kind` may be left out: a term without it is Hinton KD, as before kinds existed.
    return value.get("kind", "kd") if isinstance(value, dict) else getattr(value, "kind", "kd")


LossConfig = Annotated[
    Union[
        Annotated[CEConfig, Tag("ce")],
        Annotated[KDConfig, Tag("kd")],
        Annotated[DKDConfig, Tag("dkd")],
        Annotated[TfKDConfig, Tag("tfkd")],
        Annotated[FitNetsConfig, Tag("fitnets")],
        Annotated[ATConfig, Tag("at")],
        Annotated[RKDConfig, Tag("rkd")],
    ],
    Discriminator(_loss_kind),
]
FEATURE_LOSS_KINDS = ("fitnets", "at", "rkd")  # these read model internals: the teacher runs live
TEACHER_FREE_KINDS = ("ce", "tfkd")  # these read only the student and the labels: no teacher runs for them


class AssistantConfig(Strict):
    """One teacher-assistant (TAKD): a derived student's width/depth, or a timm model name.

    Keys left out take the student's value, so `{width: 0.5}` is the student at width 0.5.
    """

    model: str | None = Field(None, description="a timm model name; default: derived from the teacher")
    width: float | None = Field(None, gt=0, le=1, description="default: student.width")
    depth: float | None = Field(None, gt=0, le=1, description="default: student.depth")

    @model_validator(mode="after")
    def _name_or_multipliers(self) -> "AssistantConfig":
        if self.model is not None and (self.width is not None or self.depth is not None):
            raise ValueError("give an assistant either model or width/depth, not both")
        return self


class DistillConfig(Strict):
    recipe: Literal[tuple(DISTILL_RECIPES)] = Field(
        "standard", description="standard: the keys as written; function_matching: kd with alpha 1 and T 1 (KL to the "
        "teacher only), teacher and student on the same mixup/cutmix batch (live teacher, or replay_views), weight "
        "EMA, 100 epochs "
        "(edgekd/distill/recipes.py). Every key it sets can be overridden")
    losses: list[LossConfig] = Field(default_factory=lambda: [KDConfig()], min_length=1)
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=15, lr=3e-3))
    teacher_cache: bool = Field(
        True, description="compute teacher logits once when inputs are deterministic and every loss reads logits only")
    replay_views: int = Field(
        0, ge=0, description="with augmentation (train.augment or data.augment: timm): 0 = the teacher runs live on "
        "every batch; K >= 1 = K fixed views per image (view = epoch mod K, seeded per sample), the teacher's logits "
        "of each computed once, stored fp16 on disk and replayed (edgekd.distill.replay; with mixup/cutmix whole "
        "epochs repeat every K). Logit losses only; under torchrun each rank fills its shard, rank 0 writes the file")
    replay_topk: int = Field(
        0, ge=0, description="with replay_views: 0 = store every logit (fp16); k >= 1 = only the k largest per view "
        "(fp16 values, int16 classes) and one logit for the rest, FKD's marginal smoothing: the top-k probabilities "
        "exact, the remaining mass spread evenly over the other classes; 4k + 2 bytes per view and image")
    qat: TrainConfig = Field(
        default_factory=lambda: TrainConfig(epochs=3, lr=3e-4, warmup_epochs=0.0),
        description="quantization-aware fine-tuning of the distilled student (student.quantization: qat): "
        "a few epochs at about a tenth of the distillation learning rate",
    )
    unlabeled_fraction: float = Field(
        0.0, ge=0, lt=1, description="this seeded, class-stratified share of the student's training samples is "
        "used without labels (transfer data): only teacher-reading terms learn from it. The teacher stage "
        "never sees those labels either")
    synthetic_fraction: float = Field(
        1.0, gt=0, le=1, description="with data.synthetic: the share of synthetic images in every student batch; "
        "the rest are real training samples (unlabeled_fraction applies to them). 1: synthetic only")

    @model_validator(mode="before")
    @classmethod
    def _expand_recipe(cls, data):
        if isinstance(data, dict) and data.get("recipe") == "function_matching" and data.get("scheme") == "online":
            raise ValueError("recipe function_matching distils from a teacher; scheme: online has none: "
                             "use scheme: offline or recipe: standard")
        return expand_recipe("distill", data)

    @model_validator(mode="after")
    def _unlabeled_needs_a_teacher(self) -> "DistillConfig":
        if self.unlabeled_fraction > 0 and all(loss.kind in TEACHER_FREE_KINDS for loss in self.losses):
            kinds = ", ".join(sorted({loss.kind for loss in self.losses}))
            raise ValueError(f"unlabeled_fraction {self.unlabeled_fraction:g} leaves samples without labels, but "
                             f"every loss ({kinds}) learns from labels only: those samples would train nothing. "
                             "Add a loss that reads the teacher (kd, dkd, ...), or set unlabeled_fraction: 0")
        return self

    scheme: Literal["offline", "online"] = Field(
        "offline", description="offline: from a trained teacher; online: deep mutual learning among `peers` students")
    peers: int = Field(2, ge=2, description="online: students trained together, each distilled from the others")
    peer_temperature: float = Field(1.0, gt=0, description="online: temperature of the peers' KL term (DML: 1)")
    assistants: list[AssistantConfig] = Field(
        default_factory=list, description="TAKD: teacher -> assistant 1 -> ... -> student, each a full distillation")
    generations: int = Field(1, ge=1, description="born-again networks: the student teaches a fresh copy of itself, "
                             "generations - 1 times; the last generation is the student")

    @model_validator(mode="after")
    def _scheme_keys_fit(self) -> "DistillConfig":
        online_only = sorted({"peers", "peer_temperature"} & self.model_fields_set)
        if self.scheme == "offline" and online_only:
            raise ValueError(f"distill.{online_only[0]} applies to scheme: online only")
        if self.scheme == "online":
            if "losses" in self.model_fields_set:
                raise ValueError("scheme: online trains each peer with cross-entropy + KL to the other peers "
                                 "(peer_temperature); distill.losses does not apply: remove it")
            if self.assistants or self.generations > 1:
                raise ValueError("scheme: online has no teacher to chain: remove distill.assistants/generations")
            if self.unlabeled_fraction > 0:
                raise ValueError("scheme: online peers learn from labels and each other, not from a teacher: "
                                 "unlabeled samples would only echo the peers' guesses; set unlabeled_fraction: 0")
            if self.train.ema or self.train.augment is not None:
                raise ValueError("scheme: online trains its peers in their own loop, without train.ema or "
                                 "train.augment: remove them (data.augment applies)")
        if self.replay_views:
            _check_replay(self)
        elif self.replay_topk:
            raise ValueError(f"distill.replay_topk {self.replay_topk} says what the replay cache stores, but "
                             "replay_views is 0 (no cache): set replay_views: K, or remove replay_topk")
        if self.qat.ema or self.qat.augment is not None:
            raise ValueError("distill.qat fine-tunes a quantizer-wrapped student: qat.ema and qat.augment are not "
                             "supported there, remove them")
        return self

    @model_validator(mode="after")
    def _mixing_fits_the_losses(self) -> "DistillConfig":
        if not self.train.mixing:
            return self
        # a mixed batch has soft labels (two classes per row): terms built on one target class cannot read them
        one_class = sorted({loss.kind for loss in self.losses if loss.kind in ("dkd", "tfkd")})
        if one_class:
            raise ValueError(f"distill.train.augment mixes batches (mixup/cutmix), and {', '.join(one_class)} "
                             "need one target class per sample: use kd/ce, or remove mixup/cutmix")
        if self.unlabeled_fraction > 0 and any(_reads_labels(loss) for loss in self.losses):
            raise ValueError("with unlabeled_fraction > 0 and mixup/cutmix, a mixed row may pair a sample without "
                             "a label: every loss must read the teacher only (kd with alpha 1, fitnets, at, rkd; "
                             "no ce), or remove mixup/cutmix")
        return self


def _check_replay(d: "DistillConfig") -> None:
    """What the K-view teacher replay cache cannot serve, refused at load time."""
    why = None
    if not d.teacher_cache:
        why = "teacher_cache is false (replay is a teacher cache): remove replay_views or set teacher_cache: true"
    elif d.scheme == "online":
        why = "scheme: online has no teacher to replay: set replay_views: 0"
    elif kinds := sorted({loss.kind for loss in d.losses} & set(FEATURE_LOSS_KINDS)):
        why = (f"{', '.join(kinds)} read teacher internals every step and only logits are stored: use logit "
               "losses (kd, dkd) or replay_views: 0 (live teacher)")
    elif all(loss.kind in TEACHER_FREE_KINDS for loss in d.losses):
        why = "no loss reads the teacher, so there is nothing to replay: set replay_views: 0"
    if why:
        raise ValueError(f"distill.replay_views {d.replay_views}: {why}")


def _reads_labels(loss) -> bool:
    if loss.kind == "kd":
        return loss.alpha < 1 or (loss.alpha_end is not None and loss.alpha_end < 1)
    return loss.kind in ("ce", "dkd", "tfkd")


class ParityConfig(Strict):
    samples: int = Field(128, ge=1, description="validation samples compared")
    atol: float | None = Field(None, gt=0, description="max |pytorch - onnxruntime| logit difference; default 1e-4 (fp32)")
    min_top1_agreement: float | None = Field(None, ge=0, le=1, description="default 0.99")


class ExportConfig(Strict):
    opset: int | None = Field(None, ge=11, le=25, description="default: the strictest target's maximum")
    exporter: Literal["auto", "dynamo", "torchscript"] = "auto"
    simplify: bool = True
    dynamic_batch: bool = Field(True, description="batch dimension left symbolic (needed for the batch-size sweep)")
    parity: ParityConfig = ParityConfig()


class QuantizeConfig(Strict):
    enabled: bool = True
    calibration: Path = Field(Path("calib/digits.yaml"), description="calibration manifest; a relative path is the "
                              "config folder's file, else the one shipped with edgekd (edgekd/builtin/calib/)")
    method: Literal["minmax", "entropy", "percentile"] = "minmax"
    per_channel: bool = True
    max_int8_drop: float | None = Field(
        None, ge=0, le=1, description="the INT8 gate: the INT8 file's val accuracy may sit this much below the FP32 "
        "student's; default: the strictest `budgets.max_int8_drop` of the targets it serves")
    fallbacks: bool = Field(True, description="try other calibrations / float layers when the gate fails")

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data):
        if isinstance(data, dict) and "max_accuracy_drop" in data:
            raise ValueError("quantize.max_accuracy_drop is now quantize.max_int8_drop (INT8 vs the FP32 student); "
                             "a target's budgets.max_accuracy_drop bounds the student vs the teacher")
        return data


class BenchConfig(Strict):
    warmup_s: float = Field(1.0, ge=0)
    min_iterations: int = Field(100, ge=1)
    min_seconds: float = Field(2.0, ge=0)
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 8])
    rounds: int = Field(5, ge=1, description="interleaved rounds across artifacts")


class CompressConfig(Strict):
    version: Literal[1] = CONFIG_VERSION
    name: str | None = Field(None, description="run name; default: the config file's stem")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    data: DataConfig = DataConfig()
    teacher: TeacherConfig = TeacherConfig()
    teachers: list[WeightedTeacherConfig] | None = Field(
        None, min_length=1, description="multi-teacher distillation; the first is the primary teacher (teacher.safetensors)")
    student: StudentConfig = StudentConfig()
    distill: DistillConfig = DistillConfig()
    export: ExportConfig = ExportConfig()
    quantize: QuantizeConfig = QuantizeConfig()
    targets: list[str] = Field(default_factory=lambda: ["host-cpu"], min_length=1)
    bench: BenchConfig = BenchConfig()

    @model_validator(mode="after")
    def _fp16_needs_cuda(self) -> "CompressConfig":
        sections = {"teacher.train": self.teacher.train, "distill.train": self.distill.train}
        for key, train in sections.items():
            if train.amp == "fp16" and self.device == "cpu":
                raise ValueError(f"{key}.amp 'fp16' needs CUDA but device is 'cpu': use amp: bf16 on the CPU")
        return self

    @model_validator(mode="after")
    def _one_teacher_section(self) -> "CompressConfig":
        if self.teachers is None:
            return self
        if "teacher" in self.model_fields_set:
            raise ValueError("give teacher or teachers, not both (teachers[0] is the primary teacher)")
        # The rest of the pipeline (data normalisation, export, report rows, QAT) reads `teacher`: the primary.
        self.teacher = TeacherConfig(**self.teachers[0].model_dump(exclude={"weight"}))
        return self

    @model_validator(mode="after")
    def _schemes_fit_together(self) -> "CompressConfig":
        d = self.distill
        kinds = sorted({loss.kind for loss in d.losses} & set(FEATURE_LOSS_KINDS))
        if self.teachers and len(self.teachers) > 1 and kinds:
            raise ValueError(f"{', '.join(kinds)} read one teacher's internals; with several teachers only "
                             "logit losses (ce, kd, dkd) combine their soft targets: use those, or one teacher")
        if self.teachers and len(self.teachers) > 1 and d.scheme == "online":
            raise ValueError("scheme: online does not use a teacher: give one teacher (the report's reference)")
        if self.student.init == "teacher" and self.teachers and len(self.teachers) > 1:
            raise ValueError("student.init 'teacher' prunes one teacher: give one teacher, or use student.init: random")
        if self.student.init == "teacher" and (d.assistants or d.generations > 1 or d.scheme == "online"):
            raise ValueError("student.init 'teacher' prunes the teacher into the first student; it does not apply "
                             "to assistants, born-again generations or online peers: use student.init: random")
        return self

    @model_validator(mode="after")
    def _replay_has_views(self) -> "CompressConfig":
        # K fixed views need per-sample, seeded augmentation; data.augment crop/crop_flip shifts whole batches
        if self.distill.replay_views and self.distill.train.augment is None and self.data.augment != "timm":
            raise ValueError(f"distill.replay_views {self.distill.replay_views} stores the teacher's logits of "
                             "augmented views, but distill.train has no per-sample augmentation (data.augment "
                             f"{self.data.augment!r}, no distill.train.augment): set distill.train.augment (or "
                             "distill.recipe: function_matching) or data.augment: timm, or replay_views: 0 (without "
                             "augmentation teacher_cache already computes the logits once)")
        return self

    @model_validator(mode="after")
    def _search_fits_the_run(self) -> "CompressConfig":
        search = self.student.search
        if search is None:
            return self
        chained = [k for k in multi_pass_schemes(self) if k != "teachers"]  # an ensemble teaches one student
        if chained:
            raise ValueError(f"student.search ranks one teacher -> student distillation per candidate; {chained[0]} "
                             "trains other students too (assistants, generations or peers, whose shape the search "
                             f"does not choose): remove {chained[0]}, or student.search and give the student by hand")
        size = self.student.input_size or self.data.input_size  # the student's own input, else the teacher's
        for other in dict.fromkeys(s for s in search.input_sizes or [] if s != size):
            # a candidate at another size is trained, exported and measured on its own view of each sample
            # (data/student-<S>px/): what a student with its own input may not do, it may not do here either
            at_size = self.model_copy(update={"student": self.student.model_copy(update={"input_size": other})})
            try:
                at_size._student_view_fits_the_run()
            except ValueError as exc:  # its fix "or remove student.input_size" is ours: remove the size
                why = str(exc).split(", or remove student.")[0]
                raise ValueError(f"student.search.input_sizes {search.input_sizes} includes {other} px: at that size "
                                 f"{why}, or remove {other} from student.search.input_sizes") from None
        return self

    @model_validator(mode="after")
    def _student_view_fits_the_run(self) -> "CompressConfig":
        """A student with its own input (student.input_size / channels): the teacher's outputs come from the
        teacher's view of the same sample, by index; data.augment crop/crop_flip and distill.train.augment's
        pad_crop/flips draw one shift and flip per row for both views (edgekd.data.paired), its mixup/cutmix one
        batch-mode draw for both (edgekd.data.mixing). What else would need both models to see one random draw
        (a paired picture crop, erasing, per-row mixing) or one input tensor is not built for two views yet:
        refused with the fix."""
        if student_data_config(self) is None:
            return self
        s, d = self.student, self.distill
        mix_mode = d.train.augment.mixup_mode if d.train.mixing else "batch"
        timm = self.data.augment == "timm"
        view = student_data_config(self)
        views = [(self.data.input_size, self.data.channels), (view.input_size, view.channels)]
        larger = max(views)  # (input size, channels): the view timm crops at
        given = ", ".join(f"student.{k} {getattr(s, k)}" for k in ("input_size", "channels")
                          if getattr(s, k) is not None)
        fix = "or remove " + " and ".join(f"student.{k}" for k in ("input_size", "channels")
                                          if getattr(s, k) is not None) + " (the student sees the teacher's input)"
        clashes = [
            # crop / crop_flip: one shift and flip per row for both views (edgekd.data.paired); timm: one crop,
            # flips and colour per sample at the larger view, resized per model (transforms.PairedTrainTransform)
            (timm and self.data.kind == "webdataset", "data.augment 'timm' makes both views from one decoded "
             "picture, which webdataset shards do not hand out by index yet", "use data.kind: imagefolder, or "
             "data.augment: crop or crop_flip"),
            (timm and self.data.train_transform.re_prob > 0, "data.train_transform.re_prob (random erasing) "
             "would draw its box for each view apart", "set data.train_transform.re_prob: 0"),
            (timm and larger[1] < max(channels for _, channels in views), "data.augment 'timm' "
             "crops both views from the larger one, which has fewer channels", "give the larger view 3 channels"),
            # train.augment: pad_crop/flips drawn once per row for both views, mixup/cutmix one batch-mode draw
            # for both (edgekd.data.paired, edgekd.data.mixing); what draws per view or per row stays refused
            (d.train.augment is not None and d.train.augment.re_prob > 0, "distill.train.augment.re_prob (random "
             "erasing) would draw its box for each view apart", "set distill.train.augment.re_prob: 0"),
            (mix_mode != "batch", f"distill.train.augment.mixup_mode {mix_mode!r} draws per row, which is paired "
             "for both views in batch mode only", "use mixup_mode: batch"),
            (bool(d.replay_views), "distill.replay_views stores the teacher's logits of augmented views",
             "set distill.replay_views: 0"),
            (any(loss.kind in FEATURE_LOSS_KINDS for loss in d.losses), "feature losses (fitnets, at, rkd) compare "
             "maps of one input tensor", "use logit losses (kd, dkd, ...)"),
            (self.data.synthetic is not None, "data.synthetic makes transfer images at the teacher's input only",
             "remove data.synthetic"),
            (d.scheme == "online" or any(k != "teachers" for k in multi_pass_schemes(self)),
             "online peers, assistants and generations are students of their own", "distil one student"),
            (s.quantization == "qat", "student.quantization: qat distils from the teacher on the student's batch",
             "use student.quantization: none (post-training INT8 still applies)"),
            (s.init == "teacher" and s.channels not in (None, self.data.channels),
             "student.init 'teacher' copies the teacher's first convolution, made for its channel count",
             "use student.init: random"),
        ]
        for clash, why, what_to_do in clashes:
            if clash:
                raise ValueError(f"{given} gives the student its own view of each sample, but {why}: "
                                 f"{what_to_do}, {fix}")
        return self

    @model_validator(mode="after")
    def _synthetic_fits_the_run(self) -> "CompressConfig":
        d, synthetic = self.distill, self.data.synthetic
        if synthetic is None:
            if "synthetic_fraction" in d.model_fields_set:
                raise ValueError("distill.synthetic_fraction mixes synthetic images into each batch, but there is no "
                                 "data.synthetic section: add one, or remove synthetic_fraction")
            return self
        if d.scheme == "online" or multi_pass_schemes(self):
            raise ValueError("data.synthetic distils one teacher -> student link on images made from the teacher; "
                             "it does not combine with scheme: online, assistants, generations or several teachers")
        if all(loss.kind in TEACHER_FREE_KINDS for loss in d.losses):
            raise ValueError("synthetic images carry no labels, only the teacher's outputs, but every distill loss "
                             "is teacher-free: add a loss that reads the teacher (kd, dkd, ...)")
        if self.student.search is not None:
            raise ValueError("student.search ranks candidates by distilling them on real data; with data.synthetic "
                             "give the student by hand")
        if d.replay_views:
            raise ValueError("distill.replay_views caches teacher outputs per real training image; with data.synthetic "
                             "the teacher runs live on every batch: set replay_views: 0")
        if self.student.quantization == "qat":
            raise ValueError("student.quantization: qat fine-tunes on the real training split, not on data.synthetic's "
                             "images: use quantization: none (post-training INT8 still applies)")
        if not self.data.real_choices:
            _check_teacher_only_run(self)
        return self

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str | None) -> str | None:
        if value is not None and (not value or "/" in value or value.startswith(".")):
            raise ValueError("must be a plain folder name (no '/', not starting with '.')")
        return value


def _check_teacher_only_run(c: "CompressConfig") -> None:
    """data.kind: synthetic (nothing is labelled) or data.use: report (the labels only score the report):
    nothing may train on labels or mix in real samples."""
    d, t = c.distill, c.teacher
    none = ("data.kind: synthetic has none" if not c.data.real else
            "data.use: report keeps the real ones for the report")
    if t.checkpoint is None and not t.pretrained:
        raise ValueError(f"a teacher trains on labelled images and {none}: give the trained teacher as "
                         "teacher.checkpoint (or teacher.pretrained: true)")
    if t.finetune:
        raise ValueError(f"teacher.finetune trains the teacher on labelled images, and {none}: remove "
                         "teacher.finetune (the teacher is used as loaded)")
    if "synthetic_fraction" in d.model_fields_set and d.synthetic_fraction < 1:
        raise ValueError(f"distill.synthetic_fraction {d.synthetic_fraction:g} leaves a share of every batch for real "
                         f"samples, and {none}: remove synthetic_fraction (1: synthetic only)")
    if d.unlabeled_fraction > 0:
        raise ValueError(f"distill.unlabeled_fraction withholds labels of real samples, and {none}: remove "
                         "unlabeled_fraction")
    if c.student.init == "teacher":
        raise ValueError(f"student.init 'teacher' recalibrates the pruned student's BatchNorm on real training "
                         f"images, and {none}: use student.init: random")


def load_config(path: str | Path) -> CompressConfig:
    """Read and fully validate model.yaml; relative paths resolve against its folder."""
    path = Path(path)
    data = read_yaml(path, what="config")
    config = parse(CompressConfig, data, source=str(path))
    if config.name is None:
        config = config.model_copy(update={"name": path.stem})
    config = _resolve_paths(config, path.resolve().parent)
    profiles = _check_targets(config)
    _check_files_exist(config, profiles)
    _check_qat(config)
    _check_search(config, profiles)
    return config


def _resolve_paths(config: CompressConfig, base: Path) -> CompressConfig:
    def resolve(p: Path | None) -> Path | None:
        if p is None or p.is_absolute():
            return p
        # `calib/digits.yaml` is the config folder's file when it has one, else the one shipped with edgekd
        here, shipped = base / p, BUILTIN_DIR / p
        return here if here.exists() or not shipped.exists() else shipped

    cache_dir = config.data.cache_dir and config.data.cache_dir.expanduser()
    cache_dir = cache_dir if cache_dir is None or cache_dir.is_absolute() else base / cache_dir
    shards = config.data.shards  # a local folder or glob: from the config's folder; pipe:/URL specs stay as written
    if shards and not shards.startswith("pipe:") and "://" not in shards and not Path(shards).expanduser().is_absolute():
        shards = str(base / shards)
    data = config.data.model_copy(update={"path": resolve(config.data.path), "cache_dir": cache_dir,
                                          "shards": shards})
    teacher = config.teacher.model_copy(update={"checkpoint": resolve(config.teacher.checkpoint)})
    teachers = config.teachers and [t.model_copy(update={"checkpoint": resolve(t.checkpoint)}) for t in config.teachers]
    quantize = config.quantize.model_copy(update={"calibration": resolve(config.quantize.calibration)})
    student = config.student
    if student.search is not None and student.search.latency_table is not None:
        table = student.search.latency_table  # the user's own files: read from the config folder, never shipped
        here = (lambda p: p if p.is_absolute() else base / p)
        tables = {k: here(v) for k, v in table.items()} if isinstance(table, dict) else here(table)
        student = student.model_copy(update={"search": student.search.model_copy(update={"latency_table": tables})})
    return config.model_copy(update={"data": data, "teacher": teacher, "teachers": teachers, "quantize": quantize,
                                     "student": student})


def student_input(config: CompressConfig) -> tuple[int, int]:
    """(input size, channels) of the student: student.input_size / channels, else the teacher's (data.*)."""
    return config.student.input_size or config.data.input_size, config.student.channels or config.data.channels


def student_data_config(config: CompressConfig) -> DataConfig | None:
    """The data section as the student sees it, when student.input_size or student.channels differ from the
    teacher's (data.input_size, data.channels); None when the student sees the teacher's input. Same files,
    seed and splits, so row i of either view is the same sample. data.mean/std are per channel: another
    channel count takes its own (computed from the data, or the teacher's timm config where it fits)."""
    d = config.data
    size, channels = student_input(config)
    if (size, channels) == (d.input_size, d.channels):
        return None
    own = {} if channels == d.channels else {"mean": None, "std": None}
    return d.model_copy(update={"input_size": size, "channels": channels, **own})


def needs_calibration(config: CompressConfig, targets: list) -> bool:
    """Whether a run draws calibration samples (data/calib.npz): for ONNX Runtime INT8 (`quantize.enabled`),
    and for a TensorRT target's post-training INT8 file (int8 among its precisions, unless the student
    is quantization-aware: its own QDQ export is that file)."""
    trt_ptq = config.student.quantization != "qat" and any(
        t.runtime == "tensorrt" and "int8" in t.precisions for t in targets)
    return config.quantize.enabled or trt_ptq


def _check_files_exist(config: CompressConfig, targets: list) -> None:
    checks = [("data.path", config.data.path)]
    if config.teachers:  # `teacher` is a copy of teachers[0]: name the key the user wrote
        checks += [(f"teachers[{i}].checkpoint", t.checkpoint) for i, t in enumerate(config.teachers)]
    else:
        checks.append(("teacher.checkpoint", config.teacher.checkpoint))
    if needs_calibration(config, targets):
        checks.append(("quantize.calibration", config.quantize.calibration))
    for key, path in checks:
        if path is not None and not path.exists():
            raise ConfigError(
                f"{key} points to {str(path)!r}, which does not exist.",
                "Fix the path (relative paths are read from the config file's folder).",
            )


def _check_targets(config: CompressConfig) -> list:
    """The target profiles, loaded; an explicit opset every one of them reads."""
    from edgekd.targets import load_target, strictest_opset

    profiles = [load_target(name) for name in config.targets]
    if config.export.opset is not None and config.export.opset > strictest_opset(profiles):
        worst = min(profiles, key=lambda p: p.max_opset)
        raise ConfigError(
            f"export.opset {config.export.opset} is above what target {worst.name!r} accepts "
            f"(max opset {worst.max_opset}).",
            f"Remove export.opset to use {worst.max_opset}, or drop that target.",
        )
    return profiles


def run_precisions(config: CompressConfig, target) -> list[str]:
    """The precisions this run makes a student file in for `target`, in the target's order: what a search may
    choose. ONNX Runtime: FP32 always, INT8 with `quantize.enabled` or a QAT student; TensorRT: the target's."""
    if target.runtime != "onnxruntime":
        return list(target.precisions)
    makes = {"fp32"} | ({"int8"} if config.quantize.enabled or config.student.quantization == "qat" else set())
    return [p for p in target.precisions if p in makes]


def search_targets(config: CompressConfig, profiles: list) -> list:
    """The target profiles as the search sees them: each offering only the precisions this run makes for it."""
    return [t.model_copy(update={"precisions": run_precisions(config, t)}) for t in profiles]


def _check_search(config: CompressConfig, profiles: list) -> None:
    from edgekd.search.config import check_search

    search = config.student.search
    if search is None:
        return
    unmade = [p for p in search.precisions or [] if not any(p in run_precisions(config, t) for t in profiles)]
    if unmade:
        raise ConfigError(f"student.search.precisions lists {unmade[0]}, but this run makes no {unmade[0]} student "
                          "file (quantize.enabled is false and student.quantization is none).",
                          f"Set quantize.enabled: true, or remove {unmade[0]} from student.search.precisions.")
    check_search(search, search_targets(config, profiles))


QAT_OPSETS = range(13, 21)  # per-channel QuantizeLinear needs 13; modelopt exports via TorchScript (<= 20)


def _check_qat(config: CompressConfig) -> None:
    opset = config.export.opset
    if config.student.quantization == "qat" and opset is not None and opset not in QAT_OPSETS:
        raise ConfigError(
            f"export.opset {opset} cannot carry a quantization-aware student: its Q/DQ export needs opset "
            f"{QAT_OPSETS.start}..{QAT_OPSETS.stop - 1} (per-channel QuantizeLinear from 13; NVIDIA Model "
            "Optimizer exports through the TorchScript exporter, which stops at 20).",
            "Remove export.opset (the QAT file then uses min(strictest target, 20)), "
            "or set student.quantization: none.",
        )


def config_warnings(config: CompressConfig) -> list[str]:
    """Settings that are valid but do not do what they seem to: said at validation, at the start
    of a run and in the report."""
    sections = [("teacher.train", config.teacher.train), ("distill.train", config.distill.train)]
    sections += [(f"teachers[{i}].train", t.train) for i, t in enumerate(config.teachers or []) if i > 0]
    if config.student.quantization == "qat":
        sections.append(("distill.qat", config.distill.qat))
    out = []
    for key, train in sections:
        if train.schedule != "onecycle" and 0 < train.epochs <= train.warmup_epochs:
            after = "the cosine decay never runs" if train.schedule == "cosine" else "the constant rate is never reached"
            out.append(f"{key}.warmup_epochs {train.warmup_epochs:g} >= epochs {train.epochs}: the whole run is the "
                       f"linear warm-up and {after}. Lower warmup_epochs or raise epochs.")
    return out


def config_dict(section) -> dict:
    """A section as plain JSON-able data (used for stage hashes and checkpoints)."""
    return section.model_dump(mode="json")


WHOLE_CONFIG = "*"


def config_value(config: CompressConfig, path: str):
    """The JSON-able value at a dotted key path: `data.augment`; `teachers[*].model` (one value per
    entry, None without the list); `*` (the whole config). Stages declare their reads this way."""
    data = config_dict(config)
    return data if path == WHOLE_CONFIG else _lookup(data, path.split("."), path)


def _lookup(node, parts: list[str], path: str):
    if not parts:
        return node
    part, rest = parts[0], parts[1:]
    name = part.removesuffix("[*]")
    if not isinstance(node, dict) or name not in node:  # a stage declared a key the schema lacks: a bug
        raise KeyError(f"config key {path!r}: no {name!r} here")
    if part.endswith("[*]"):
        return None if node[name] is None else [_lookup(item, rest, path) for item in node[name]]
    return _lookup(node[name], rest, path)


def assistant_student(config: CompressConfig, assistant: AssistantConfig) -> StudentConfig:
    """A teacher-assistant as a student config: its own keys over the student's width/depth."""
    if assistant.model is not None:
        return StudentConfig(model=assistant.model)
    return StudentConfig(width=config.student.width if assistant.width is None else assistant.width,
                         depth=config.student.depth if assistant.depth is None else assistant.depth)


def multi_pass_schemes(config: CompressConfig) -> list[str]:
    """The keys of the schemes in use that train more than one teacher -> student pass."""
    d = config.distill
    used = ["teachers"] if config.teachers and len(config.teachers) > 1 else []
    used += ["distill.assistants"] if d.assistants else []
    used += ["distill.generations"] if d.generations > 1 else []
    used += ["distill.scheme: online"] if d.scheme == "online" else []
    return used


def check_single_process(config: CompressConfig, world_size: int) -> None:
    """The multi-pass schemes have not been made DDP-safe (per-link barriers, cache files, joint
    peer steps): refuse them under torchrun rather than let the ranks drift apart."""
    # student.search: its proxy runs train in the choose stage, which rank 0 runs alone
    used = multi_pass_schemes(config) + (["student.search"] if config.student.search is not None else [])
    if world_size > 1 and used:
        raise ConfigError(f"{', '.join(used)} is not supported under torchrun yet ({world_size} processes).",
                          "Run this config in a single process (without torchrun), or remove those keys.")
