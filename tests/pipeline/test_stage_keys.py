"""Every config key is classified: which stages read it, so that changing it re-runs them.

A stage's cache key is made of the config keys it declares in `reads` (plus its input files,
by content: what follows a re-run stage re-runs when its inputs change). This test walks
every leaf of the config schema, changes it, and compares the stages whose declared values
changed with `KEY_READERS` below. The report stage reads the whole config (it embeds it), so
it is left out of the table and checked for every key.

Adding a config key? Add it to KEY_READERS with a valid new value and the stages whose result
it changes, and declare it in those stages' `reads` (edgekd/pipeline/*_stages.py).
"""

from __future__ import annotations

import copy
import typing
from dataclasses import dataclass

import pytest
import yaml
from pydantic import BaseModel

from edgekd.config import CompressConfig, load_config
from edgekd.pipeline.context import RunContext
from edgekd.pipeline.stages import STAGES
from edgekd.pipeline.records import STAGE_ORDER
from edgekd.ui import UI
from tests.data.imagefolders import write_shards

# Lists whose entries' fields are read separately (the teacher stage reads a teacher's `model`,
# the student stage its `weight`): walked into as `teachers[*].<key>`. Other lists are one leaf.
PER_ITEM_LISTS = {"teachers"}
TRAIN_KEYS = ("epochs", "batch_size", "optimizer", "lr", "weight_decay", "momentum", "schedule", "warmup_epochs",
              "label_smoothing", "grad_clip", "channels_last", "early_stopping", "scale_lr", "amp", "tensorboard")
TRAIN_VALUES = {"epochs": 3, "batch_size": 32, "optimizer": "sgd", "lr": 0.01, "weight_decay": 0.0, "momentum": 0.8,
                "schedule": "constant", "warmup_epochs": 0.5, "label_smoothing": 0.1, "grad_clip": 1.0,
                "channels_last": False, "early_stopping": 2, "scale_lr": True, "amp": "bf16", "tensorboard": True,
                "ema": True}
# train.augment (timm's names, edgekd.data.transforms): a valid new value per key. The keys that need decoded
# pictures are refused for the in-memory tensors every training uses today: they have no valid new value.
AUGMENT_VALUES = {"hflip": 0.0, "vflip": 0.5, "re_prob": 0.25, "re_mode": "pixel", "re_count": 2, "pad_crop": 2,
                  "mixup": 0.2, "cutmix": 1.0, "cutmix_minmax": [0.2, 0.8], "mixup_prob": 0.5,
                  "mixup_switch_prob": 0.25, "mixup_mode": "pair"}
AUGMENT_REFUSED = ("scale", "ratio", "color_jitter", "auto_augment", "interpolation")
TRAIN_VALUES.update({f"augment.{k}": v for k, v in AUGMENT_VALUES.items()})
TRAIN_KEYS += ("ema", *(f"augment.{k}" for k in AUGMENT_VALUES))

# Base configs. FULL switches on every conditional read it can hold at once: several teachers,
# unlabeled samples (the teacher stage then reads the student's split), a QAT student, quantize,
# a Jetson target. Keys FULL cannot change validly use another base.
FULL = {"name": "keys", "data": {"path": "data-folder"},
        "teachers": [{"model": "resnet18"}, {"model": "resnet18", "weight": 2.0}],
        "student": {"quantization": "qat"},
        "distill": {"unlabeled_fraction": 0.25, "assistants": [{"width": 0.5}]},
        "targets": ["host-cpu", "jetson-orin-nano"]}
SINGLE = {"name": "keys", "data": {"path": "data-folder"}, "targets": ["host-cpu", "jetson-orin-nano"]}
ONLINE = {**SINGLE, "distill": {"scheme": "online"}}
LOADED = {**SINGLE, "teacher": {"checkpoint": "teacher.pth"}}  # keys that only apply to a checkpoint file
LOADED_TEACHERS = {**FULL, "teachers": [{"model": "resnet18"}, {"model": "resnet18", "checkpoint": "teacher.pth"}]}
IMAGES = {**SINGLE, "data": {"kind": "imagefolder", "path": "data-folder"}}
TIMM = {**SINGLE, "data": {"kind": "imagefolder", "path": "data-folder", "augment": "timm"}}
SHARDS = {**SINGLE, "data": {"kind": "webdataset", "shards": "data-shards"}}
REPLAY = {**TIMM, "distill": {"replay_views": 2}}  # the K-view replay cache (timm's views)
# student.search: candidates measured on the host (search) and ranked by proxy distillation (choose)
SEARCH = {"name": "keys", "data": {"path": "data-folder"}, "targets": ["host-cpu"],
          "student": {"search": {"widths": [0.5], "depths": [1.0], "models": ["resnet10t"]}}}
# ema_decay applies with ema: true (separate dicts: a deep copy keeps shared ones shared)
EMA_SINGLE = {**SINGLE, "teacher": {"train": {"ema": True}}, "distill": {"train": {"ema": True}}}
EMA_FULL = {**FULL, "teachers": [{"model": "resnet18"}, {"model": "resnet18", "train": {"ema": True}}]}
# data.synthetic: transfer images from the teacher (the synthetic stage), mixed into the student's batches
SYNTH = {**SINGLE, "data": {"path": "data-folder", "synthetic": {"method": "dafl", "count": 64}},
         "distill": {"synthetic_fraction": 0.5}}
SYNTH_ZSKT = {**SINGLE, "data": {"path": "data-folder", "synthetic": {"method": "zskt", "count": 64}}}
# data.kind: synthetic: no real images; a loaded teacher, its classes, held-out synthetic images for choices
NOREAL = {"name": "keys", "data": {"kind": "synthetic", "classes": 4, "input_size": 32, "channels": 1,
                                   "synthetic": {"method": "dafl", "count": 64, "holdout": 16}},
          "teacher": {"checkpoint": "teacher.pth"}, "targets": ["host-cpu"]}
# data.use: report: a real set beside data.synthetic scores the report only (a loaded teacher, synthetic only)
SYNTH_LOADED = {"name": "keys", "data": {"path": "data-folder", "synthetic": {"method": "dafl", "count": 64}},
                "teacher": {"checkpoint": "teacher.pth"}, "targets": ["host-cpu"]}
BASES = {"noreal": NOREAL, "synth_loaded": SYNTH_LOADED,
         "synth": SYNTH, "synth_zskt": SYNTH_ZSKT, "images": IMAGES, "timm": TIMM, "replay": REPLAY, "shards": SHARDS, "full": FULL, "single": SINGLE, "online": ONLINE, "loaded": LOADED,
         "loaded_teachers": LOADED_TEACHERS, "search": SEARCH, "ema_single": EMA_SINGLE, "ema_full": EMA_FULL}


@dataclass(frozen=True)
class Case:
    value: object  # a valid new value (for `[*]` keys: set on the list's last entry)
    readers: frozenset  # the stages (besides report) whose declared reads change
    base: str = "full"

    def __init__(self, value, readers, base="full"):
        object.__setattr__(self, "value", value)
        object.__setattr__(self, "readers", frozenset(readers))
        object.__setattr__(self, "base", base)


UNCHANGEABLE = None  # a key with one valid value (`version`), or none valid besides its default
MIXING = ("augment.mixup", "augment.cutmix", "augment.cutmix_minmax")
QAT_REFUSED = ("ema", "augment.")
TRAINERS = {"teacher", "student", "qat"}

KEY_READERS: dict[str, Case | None] = {
    "version": UNCHANGEABLE,
    "name": Case("other", {"export", "qat"}),  # written into the ONNX metadata
    "seed": Case(1, TRAINERS),
    "device": Case("cpu", TRAINERS),
    **{f"data.{k}": Case(v, {"data"}) for k, v in {
        "kind": "idx", "path": "other-folder", "input_size": 16, "channels": 3, "val_fraction": 0.25,
        "test_fraction": 0.15, "mean": [0.5], "std": [0.5]}.items()},
    "data.seed": Case(1, {"data", "teacher", "student", "qat"}),  # the split, and the student's share
    "data.augment": Case("crop", TRAINERS),
    "data.train_fraction": Case(0.5, TRAINERS),  # the teacher: only with unlabeled samples (FULL has them)
    # how images are read, not what they hold: the cache and the draft decode give the same pixels
    "data.workers": Case(0, set(), "images"),
    "data.cache": Case("uint8", set(), "images"),
    "data.cache_dir": Case("shared-cache", set(), "images"),
    "data.on_bad_image": Case("skip", {"data"}, "images"),
    **{f"data.synthetic.{k}": Case(v, {"synthetic"}, "synth") for k, v in {
        "method": "deepinversion", "count": 128, "seed": 1, "settings": {"rounds": 3}}.items()},
    "distill.synthetic_fraction": Case(0.25, {"student"}, "synth"),
    "data.classes": Case(["a", "b", "c", "d"], {"data"}, "noreal"),  # the names; the teacher follows data/summary.json
    "data.synthetic.holdout": Case(8, {"synthetic"}, "noreal"),  # which images train and which choose
    # what the real labels may do: without them the teacher is not tuned, val.npz and calib.npz are synthetic,
    # the student's val score is agreement and the INT8 gate agreement with the FP32 student
    "data.use": Case("report", {"data", "teacher", "synthetic", "student", "quantize"}, "synth_loaded"),
    "data.shards": Case("other-shards", {"data"}, "shards"),
    **{f"data.train_transform.{k}": Case(v, TRAINERS - {"qat"}, "timm") for k, v in {  # SINGLE has no QAT
        "scale": [0.5, 1.0], "ratio": [0.9, 1.1], "hflip": 0.0, "vflip": 0.5, "color_jitter": 0.2,
        "auto_augment": "rand-m9-mstd0.5", "interpolation": "bicubic", "re_prob": 0.25, "re_mode": "pixel",
        "re_count": 2}.items()},
    "teacher.model": Case("resnet34", {"teacher"}, "single"),
    "teacher.pretrained": Case(True, {"teacher"}, "single"),
    "teacher.checkpoint": Case("teacher.pth", {"teacher"}, "single"),
    "teacher.finetune": Case(True, {"teacher"}, "single"),
    "teacher.trust_checkpoint": Case(True, set(), "loaded"),  # allows a load; the weights are the file's
    "teacher.recipe": Case("strong", {"teacher"}, "single"),
    **{f"teacher.train.{k}": Case(TRAIN_VALUES[k], {"teacher"}, "single") for k in TRAIN_KEYS},
    "teacher.train.ema_decay": Case(0.99, {"teacher"}, "ema_single"),
    **{f"teacher.train.augment.{k}": UNCHANGEABLE for k in AUGMENT_REFUSED},
    "teachers[*].model": Case("resnet34", {"teacher"}),
    "teachers[*].pretrained": Case(True, {"teacher"}),
    "teachers[*].checkpoint": Case("teacher.pth", {"teacher"}),
    "teachers[*].finetune": Case(True, {"teacher"}),
    "teachers[*].trust_checkpoint": Case(True, set(), "loaded_teachers"),
    "teachers[*].recipe": Case("strong", {"teacher"}),
    **{f"teachers[*].train.{k}": Case(TRAIN_VALUES[k], {"teacher"}) for k in TRAIN_KEYS},
    "teachers[*].train.ema_decay": Case(0.99, {"teacher"}, "ema_full"),
    **{f"teachers[*].train.augment.{k}": UNCHANGEABLE for k in AUGMENT_REFUSED},
    "teachers[*].weight": Case(3.0, {"student", "qat"}),  # soft targets, not the teachers themselves
    "student.model": Case("resnet10t", {"student"}),
    "student.width": Case(0.5, {"student"}),
    "student.depth": Case(1.0, {"student"}),
    "student.init": Case("teacher", {"student"}, "single"),
    "student.input_size": Case(16, {"data", "student"}, "single"),  # the student's own view of every sample
    "student.channels": Case(3, {"data", "student"}, "single"),
    "student.quantization": Case("none", {"qat", "tensorrt"}),  # the Jetson INT8 file: QAT export or PTQ
    # the search measures (search) and ranks (choose); the student stage reads only its choice, as a file
    **{f"student.search.{k}": Case(v, {"search"}, "search") for k, v in {
        "widths": [0.25], "depths": [0.5], "models": ["mobilenetv3_small_050"], "input_sizes": [32],
        "precisions": ["fp32"], "margin": 0.8, "latency_table": "table.json",
        "hosts": {"host-cpu": "pi@pi5"}}.items()},
    "student.search.max_candidates": Case(30, set(), "search"),  # a limit on the grid, not the result
    **{f"student.search.{k}": Case(v, {"choose"}, "search") for k, v in {
        "proxy_epochs": 1, "proxy_fraction": 0.5, "per_target": False}.items()},
    "distill.recipe": Case("function_matching", {"student", "qat"}),  # qat: its losses come from the recipe
    "distill.losses": Case([{"kind": "dkd"}], {"student", "qat"}),
    **{f"distill.train.{k}": Case(TRAIN_VALUES[k], {"student"}) for k in TRAIN_KEYS if k not in MIXING},
    # mixing with unlabeled samples (FULL) needs teacher-only losses: the single-teacher base
    **{f"distill.train.{k}": Case(TRAIN_VALUES[k], {"student"}, "single") for k in MIXING},
    "distill.train.ema_decay": Case(0.99, {"student"}, "ema_single"),
    **{f"distill.train.augment.{k}": UNCHANGEABLE for k in AUGMENT_REFUSED},
    **{f"distill.qat.{k}": Case(TRAIN_VALUES[k], {"qat"}) for k in TRAIN_KEYS if not k.startswith(QAT_REFUSED)},
    # QAT fine-tunes a quantizer-wrapped student without a weight average or augment views: refused there
    **{f"distill.qat.{k}": UNCHANGEABLE for k in ("ema", "ema_decay",
                                                  *(f"augment.{k}" for k in (*AUGMENT_VALUES, *AUGMENT_REFUSED)))},
    "distill.teacher_cache": Case(False, {"student", "qat"}),
    # the K-view replay cache needs per-sample views (timm here); search proxies distil with it too
    "distill.replay_views": Case(4, {"student"}, "timm"),
    "distill.replay_topk": Case(3, {"student"}, "replay"),
    "distill.unlabeled_fraction": Case(0.5, TRAINERS),
    "distill.scheme": Case("online", {"student"}, "single"),
    "distill.peers": Case(3, {"student"}, "online"),
    "distill.peer_temperature": Case(2.0, {"student"}, "online"),
    "distill.assistants": Case([{"width": 0.75}], {"student"}),
    "distill.generations": Case(2, {"student"}),
    "export.opset": Case(17, {"export", "qat"}),
    "export.exporter": Case("torchscript", {"export"}),
    "export.simplify": Case(False, {"export", "qat"}),
    "export.dynamic_batch": Case(False, {"export", "qat"}),
    "export.parity.samples": Case(64, {"export", "qat"}),
    "export.parity.atol": Case(1e-3, {"export"}),
    "export.parity.min_top1_agreement": Case(0.9, {"export"}),
    "quantize.enabled": Case(False, {"data", "quantize", "qat"}),  # calibration samples, the INT8 file, QAT's calibration
    "quantize.calibration": Case("other-calib.yaml", {"data"}),  # the samples reach the others as data/calib.npz
    "quantize.method": Case("entropy", {"quantize", "tensorrt"}),
    "quantize.per_channel": Case(False, {"quantize"}),
    "quantize.max_int8_drop": Case(0.05, {"quantize", "tensorrt"}),
    "quantize.fallbacks": Case(False, {"quantize", "tensorrt"}),  # the Jetson PTQ file follows it too (#11 item 6)
    "targets": Case(["rpi5", "jetson-orin-nano"], {"export", "qat", "quantize", "tensorrt", "bench"}),
    **{f"bench.{k}": Case(v, {"bench"}) for k, v in {
        "warmup_s": 0.5, "min_iterations": 50, "min_seconds": 1.0, "batch_sizes": [1], "rounds": 3}.items()},
}

# Reads that depend on other settings, beyond the one case per key above.
CONDITIONAL = [
    ("student.width, zskt: the generator is trained against the initialised student",
     SYNTH_ZSKT, "student.width", 0.75, {"student", "synthetic"}),
    ("seed, zskt: the initialised student's weights",
     SYNTH_ZSKT, "seed", 1, {"teacher", "student", "synthetic"}),
    ("targets, quantize off: whether a Jetson PTQ file needs calibration samples",
     {**SINGLE, "quantize": {"enabled": False}}, "targets", ["rpi5", "jetson-orin-nano"],
     {"data", "export", "tensorrt", "bench"}),
    ("teacher.model, imagefolder: preprocessing follows the teacher's timm config",
     {**SINGLE, "data": {"kind": "imagefolder", "path": "data-folder"}}, "teacher.model", "resnet34",
     {"data", "teacher"}),
    ("data.train_fraction without unlabeled samples: the teacher trains on the whole split",
     SINGLE, "data.train_fraction", 0.5, {"student"}),
    ("teacher.model, search: derived candidates are shaped from the teacher",
     SEARCH, "teacher.model", "resnet34", {"teacher", "search"}),
    ("distill.train.epochs, search: the proxy runs use the student's schedule, shortened",
     SEARCH, "distill.train.epochs", 3, {"student", "choose"}),
    ("quantize.enabled, search: the precisions the search may choose",
     SEARCH, "quantize.enabled", False, {"data", "quantize", "search"}),
    ("export.opset, search: how candidates are exported",
     SEARCH, "export.opset", 17, {"export", "search"}),
    ("student.search on: the search and choose stages run (the student stage reads their choice as a file)",
     {**SINGLE, "targets": ["host-cpu"]}, "student", {"search": {"models": ["resnet10t"]}}, {"search", "choose"}),
    ("distill.replay_views, search: the proxy runs distil with the replay cache",
     {**SEARCH, "data": {"kind": "imagefolder", "path": "data-folder", "augment": "timm"}},
     "distill.replay_views", 2, {"student", "choose"}),
    ("student.search.proxy_fraction without proxy runs: FLOPs rank, nothing trains",
     {**SEARCH, "student": {"search": {"widths": [0.5], "depths": [1.0], "proxy_epochs": 0}}},
     "student.search.proxy_fraction", 0.5, set()),
]


def schema_leaves(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        nested = _model_in(field.annotation)
        item = _list_item_model(field.annotation)
        if nested is not None:
            out += schema_leaves(nested, path + ".")
        elif name in PER_ITEM_LISTS and item is not None:
            out += schema_leaves(item, path + "[*].")
        else:
            out.append(path)
    return out


def _model_in(annotation) -> type[BaseModel] | None:
    """The model of `X` or `X | None`; None for anything else (lists, unions of models, scalars)."""
    if typing.get_origin(annotation) is list:
        return None
    options = [a for a in (typing.get_args(annotation) or (annotation,)) if a is not type(None)]
    if len(options) == 1 and isinstance(options[0], type) and issubclass(options[0], BaseModel):
        return options[0]
    return None


def _list_item_model(annotation) -> type[BaseModel] | None:
    for option in typing.get_args(annotation) or (annotation,):
        if typing.get_origin(option) is list:
            return _model_in(typing.get_args(option)[0])
    return None


def _set(data: dict, key: str, value) -> dict:
    data = copy.deepcopy(data)
    node, parts = data, key.split(".")
    for part in parts[:-1]:
        if part.endswith("[*]"):
            node = node[part[:-3]][-1]
        else:
            node = node.setdefault(part, {})
    node[parts[-1]] = value
    return data


def _stage_reads(folder, data: dict, n: int) -> dict:
    path = folder / f"config{n}.yaml"
    path.write_text(yaml.safe_dump(data))
    ctx = RunContext(load_config(path), folder / "run", ui=UI(quiet=True))
    return {s.name: (ctx.config_values(s.reads(ctx)), s.facts(ctx)) for s in STAGES}


def changed_stages(folder, base: dict, key: str, value) -> set[str]:
    before, after = _stage_reads(folder, base, 0), _stage_reads(folder, _set(base, key, value), 1)
    return {name for name in before if before[name] != after[name]}


@pytest.fixture
def folder(tmp_path):
    """What the configs point at: a data folder, a teacher checkpoint, another calibration manifest, a latency
    table."""
    from PIL import Image

    for name in ("data-folder", "other-folder"):
        (tmp_path / name / "class0").mkdir(parents=True)
        for i in range(3):  # an imagefolder base lists them (the data stage's key covers the listing)
            Image.new("L", (8, 8), 40 * i).save(tmp_path / name / "class0" / f"{i}.png")
    for name in ("data", "other"):  # the same images as tar shards: a webdataset base lists their headers
        write_shards(tmp_path / f"{name}-folder", tmp_path / f"{name}-shards", per_shard=2)
    (tmp_path / "teacher.pth").write_bytes(b"weights")
    (tmp_path / "other-calib.yaml").write_text("split: train\nsamples: 128\nseed: 1\n")
    (tmp_path / "table.json").write_text("{}")  # student.search.latency_table: read when the search runs
    return tmp_path


def test_every_config_key_is_classified():
    leaves = schema_leaves(CompressConfig)
    missing = [key for key in leaves if key not in KEY_READERS]
    stale = [key for key in KEY_READERS if key not in leaves]
    assert not missing, (
        f"config key(s) {missing} are not classified. Add each to KEY_READERS in {__file__}: "
        '"<key>": Case(<a valid new value>, {<stages whose result it changes>}), and declare the key in '
        "those stages' `reads` (edgekd/pipeline/*_stages.py) so their cache keys cover it.")
    assert not stale, f"KEY_READERS lists {stale}, which the config schema no longer has: remove them."


@pytest.mark.parametrize("key", [k for k, case in KEY_READERS.items() if case is not UNCHANGEABLE])
def test_changing_a_key_reruns_exactly_its_readers(folder, key):
    case = KEY_READERS[key]
    changed = changed_stages(folder, BASES[case.base], key, case.value)
    assert "report" in changed, "the report embeds the whole config: every key must re-run it"
    assert changed - {"report"} == case.readers, (
        f"changing {key} re-runs {sorted(changed - {'report'})}, but KEY_READERS says {sorted(case.readers)}: "
        "fix the stages' `reads` declarations, or the table if the stages' needs changed.")


@pytest.mark.parametrize("why, base, key, value, readers", CONDITIONAL, ids=[c[0].split(":")[0] for c in CONDITIONAL])
def test_reads_that_depend_on_other_settings(folder, why, base, key, value, readers):
    assert changed_stages(folder, base, key, value) - {"report"} == readers, why


def test_the_stage_list_matches_the_records_order():
    assert tuple(s.name for s in STAGES) == STAGE_ORDER
