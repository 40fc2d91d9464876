"""Stages that need torch: data, teacher, student (distillation)."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import torch

from edgekd.artifacts import checkpoint_file, sha256_file
from edgekd.config import (FEATURE_LOSS_KINDS, DistillConfig, StudentConfig, TeacherConfig, assistant_student,
                           check_single_process, config_dict, needs_calibration)
from edgekd.data import StudentSplit, stratified_subsample, student_split
from edgekd.data.calib import load_manifest, select
from edgekd.data.paired import PAIRED_AUGMENTS, PairedSplit
from edgekd.data.transforms import PairedTrainTransform
from edgekd.distill.losses import DistillObjective, build_objective, cross_entropy
from edgekd.distill.replay import ReplayTeacher
from edgekd.distill.schemes import EnsembleTeacher, Link, chain_summary, plan_chain, run_chain, train_peers
from edgekd.distill.trainer import TrainResult, eval_batches, predict_batches, split_accuracy, train
from edgekd.errors import DataError
from edgekd.models.io import build, load_model, read_checkpoint, save_checkpoint
from edgekd.models.prune import init_from_teacher
from edgekd.models.student import student_spec
from edgekd.models.teacher import build_teacher
from edgekd.pipeline import search_stage, synthetic_train
from edgekd.pipeline.context import RunContext, at_input_size, other_input_sizes, searched_view_dir
from edgekd.pipeline.engine import Stage
from edgekd.pipeline.records import (CALIB_FILE, STUDENT_CHECKPOINT, SUMMARY_FILE, TEACHER_CHECKPOINT,
                                     TEACHER_TEST_FILE, TEACHER_VAL_FILE, TEST_FILE, TRANSFER_FILE, VAL_FILE, Artifact)
from edgekd.ui import format_fields

# ---------------------------------------------------------------- data

DATA_KEYS = ("kind", "path", "input_size", "channels", "val_fraction", "test_fraction", "seed", "mean", "std")
# data/test.npz is what every reported accuracy is scored on, here and on devices (a bundle carries it),
# and data/val.npz what the INT8 gate and parity checks choose on: each the whole split, unless that is
# more than this many samples or bytes, then a stratified subset (the data summary says which).
TEST_FILE_MAX_SAMPLES = 10_000
TEST_FILE_MAX_BYTES = 256 * 2**20


def _data_reads(ctx: RunContext) -> list[str]:
    c = ctx.config
    reads = [f"data.{key}" for key in DATA_KEYS]
    if ctx.own_student_view or other_input_sizes(c):  # the student's files (val, test, calib) are its own view's
        reads += ["student.input_size", "student.channels"]
    if other_input_sizes(c):  # and each other searched input size's (data/student-<S>px/)
        reads.append("student.search.input_sizes")
    if c.data.kind in ("imagefolder", "webdataset"):  # normalisation and resizing follow the teacher's timm config
        reads += ["teacher.model", "data.on_bad_image"] + (["data.shards"] if c.data.kind == "webdataset" else [])
    if not c.data.real:  # the classes as configured; normalisation from the teacher's timm config
        return reads + ["teacher.model", "data.classes"]
    if not c.data.real_choices:  # data.use: report: the test split only (val and calib: the synthetic stage)
        return reads + ["data.use"]
    reads.append("quantize.enabled")
    if not c.quantize.enabled:  # a TensorRT post-training INT8 build may still need calibration samples
        reads += ["targets", "student.quantization"]
    if needs_calibration(c, ctx.targets):
        reads.append("quantize.calibration")
    return reads


def _data_outputs(ctx: RunContext) -> list[str]:
    if not ctx.config.data.real:  # data.kind: synthetic: the synthetic stage writes val.npz and calib.npz
        return [SUMMARY_FILE]
    if not ctx.config.data.real_choices:  # data.use: report: the real test split only
        return [TEST_FILE, SUMMARY_FILE]
    calibrated = needs_calibration(ctx.config, ctx.targets)
    return ([VAL_FILE, TEST_FILE, SUMMARY_FILE] + ([CALIB_FILE] if calibrated else [])
            + ([TEACHER_VAL_FILE, TEACHER_TEST_FILE] if ctx.own_student_view else [])
            + [f for size in other_input_sizes(ctx.config) for f in _searched_files(size, calibrated)])


def _data_facts(ctx: RunContext) -> dict:
    """The dataset's identity, so a moved, added, changed or removed file re-runs the data stage and,
    through data/summary.json, every stage that reads it. imagefolder: the listing (path, size, mtime,
    label per file) and the preprocessing, a stat per file; idx: its files' sizes and mtimes; digits is
    built in (the config names it whole)."""
    c = ctx.config.data
    if c.kind in ("imagefolder", "webdataset"):  # webdataset: per sample its member, size, shard mtime, label
        return {"dataset": ctx.data.fingerprint()}
    if c.kind == "idx":
        files = sorted(c.path.glob("*-ubyte*")) if c.path.is_dir() else []
        return {"dataset": [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]}
    return {}


def rows_for_test_file(labels: np.ndarray, sample_bytes: int, seed: int) -> np.ndarray:
    """The rows data/test.npz (or val.npz) keeps of its split: all, or a stratified subset within the caps."""
    cap = min(TEST_FILE_MAX_SAMPLES, max(1, TEST_FILE_MAX_BYTES // max(1, sample_bytes)))
    return stratified_subsample(labels, cap, seed)


def run_data(ctx: RunContext) -> dict:
    data, student, out = ctx.data, ctx.student_data, ctx.run_dir
    (out / VAL_FILE).parent.mkdir(parents=True, exist_ok=True)
    if not ctx.config.data.real:
        return _no_real_data(ctx)
    data.check(ctx.ui)  # imagefolder: every image decoded once (or cached), bad ones listed, before any training
    views = [(student, VAL_FILE, TEST_FILE)]
    if student is not data:  # the student's own view: checked too, and the teacher's files written beside
        student.check(ctx.ui)
        check_same_samples(data, student)
        views.append((data, TEACHER_VAL_FILE, TEACHER_TEST_FILE))
    real_choices = ctx.config.data.real_choices  # data.use: report: val.npz and calib.npz are synthetic
    searched = _searched_views(ctx) if real_choices else {}
    rows = _eval_rows([view for view, _, _ in views] + list(searched.values()), ctx.config.data.seed,
                      ("val", "test") if real_choices else ("test",))
    files = [_write_eval_files(ctx, view, rows, val, test, with_val=real_choices) for view, val, test in views]
    outputs = [*([VAL_FILE] if real_choices else []), TEST_FILE, SUMMARY_FILE]
    summary = {**data.summary(), **files[0], "fingerprint": data.fingerprint()}
    if student is not data:
        outputs += [TEACHER_VAL_FILE, TEACHER_TEST_FILE]
        summary["student_view"] = {"preprocess": student.preprocess.to_dict(), "fingerprint": student.fingerprint(),
                                   "teacher_files": files[1]}
    calibrated = real_choices and needs_calibration(ctx.config, ctx.targets)
    if calibrated:
        summary["calibration"] = _write_calibration(ctx, student, CALIB_FILE)
        outputs.append(CALIB_FILE)
    if searched:
        summary["searched_views"] = {}
        for size, view in searched.items():
            summary["searched_views"][str(size)] = _write_searched_view(ctx, data, size, view, rows, calibrated)
            outputs += _searched_files(size, calibrated)
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    splits = summary["splits"]
    return {"outputs": outputs, "dataset": data.summary(),
            "summary": f"{splits['train']} train / {splits['val']} val / {splits['test']} test images, "
                       f"{data.num_classes} classes" + _view_note(data, student)}


def _write_calibration(ctx: RunContext, view, path: str) -> dict:
    """`view`'s calibration samples (the manifest's split and rows) to `path`; the summary's entry."""
    manifest = load_manifest(ctx.config.quantize.calibration)
    pool = view.train if manifest.split == "train" else view.val  # what INT8 files will be fed
    idx = select(pool.labels, manifest)
    pool.save_npz(ctx.run_dir / path, idx, ui=ctx.ui, indices=idx)
    return {"manifest": str(ctx.config.quantize.calibration), "split": manifest.split, "samples": int(len(idx)),
            "seed": manifest.seed}


def _searched_views(ctx: RunContext) -> dict:
    """{size: the student's data at that size} for each student.search.input_sizes entry other than the
    configured student's input: the search may choose it, and then the student's val, test and calib files
    are these (data/student-<S>px/, RunContext.at_input_size)."""
    return {size: at_input_size(ctx, size).student_data for size in other_input_sizes(ctx.config)}


def _searched_files(size: int, calibrated: bool) -> list[str]:
    folder = searched_view_dir(size)
    return [f"{folder}/val.npz", f"{folder}/test.npz"] + ([f"{folder}/calib.npz"] if calibrated else [])


def _write_searched_view(ctx: RunContext, data, size: int, view, rows: dict, calibrated: bool) -> dict:
    """One searched input size's files, row for row the same samples as the teacher's; its summary entry."""
    folder = searched_view_dir(size)
    if view is not data:
        view.check(ctx.ui)
        check_same_samples(data, view)
    entry = {"dir": folder, "preprocess": view.preprocess.to_dict(), "fingerprint": view.fingerprint(),
             **_write_eval_files(ctx, view, rows, f"{folder}/val.npz", f"{folder}/test.npz")}
    if calibrated:
        entry["calibration"] = _write_calibration(ctx, view, f"{folder}/calib.npz")
    return entry


def _eval_rows(views: list, seed: int, splits=("val", "test")) -> dict[str, np.ndarray]:
    """Per split, the rows data/val.npz and data/test.npz keep: one choice for every view (capped by the
    largest view's sample size), so row i of the teacher's file and of the student's is the same sample."""
    sample_bytes = max(4 * int(np.prod(view.input_shape)) for view in views)
    return {split: rows_for_test_file(getattr(views[0], split).labels, sample_bytes, seed) for split in splits}


def _write_eval_files(ctx: RunContext, view, rows: dict, val_path: str, test_path: str, with_val: bool = True) -> dict:
    classes, files = np.array(view.classes), {}
    for split, path in (("val", val_path), ("test", test_path))[0 if with_val else 1:]:
        (ctx.run_dir / path).parent.mkdir(parents=True, exist_ok=True)
        getattr(view, split).save_npz(ctx.run_dir / path, rows[split], ui=ctx.ui, classes=classes)
        files[f"{split}_file"] = {"path": path, "samples": int(len(rows[split])),
                                  "of": int(len(getattr(view, split).labels))}
    return files


def check_same_samples(teacher_view, student_view) -> None:
    """Row i of every split must be the same sample in both views: the teacher's outputs reach the student by
    index. Both are read from one file list with one seed; a difference is a bug, never a silent mismatch."""
    for split in ("train", "val", "test"):
        a, b = getattr(teacher_view, split).labels, getattr(student_view, split).labels
        if len(a) != len(b) or not np.array_equal(a, b):
            raise DataError(f"The student's view of the {split} split ({len(b)} samples) does not line up with the "
                            f"teacher's ({len(a)}): row i must be the same sample in both.",
                            "This is a bug: report it, with data.kind and the skipped images, if any.")


def _view_note(data, student) -> str:
    if student is data:
        return ""
    t, s = data.preprocess, student.preprocess
    return f"; teacher sees {t.input_size} px x{t.channels}, student {s.input_size} px x{s.channels}"


def _no_real_data(ctx: RunContext) -> dict:
    """data.kind: synthetic: only the summary (classes, preprocessing); no split has a real image."""
    summary = {**ctx.data.summary(), "fingerprint": ctx.data.fingerprint()}
    (ctx.run_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    return {"outputs": [SUMMARY_FILE], "dataset": ctx.data.summary(),
            "summary": f"no real images (data.kind: synthetic), {ctx.data.num_classes} classes: every image is "
                       "generated from the teacher by the synthetic stage"}


DATA = Stage("data", "list, split and check the dataset", run_data, _data_reads, lambda ctx: [], _data_outputs,
             facts=_data_facts)

# ---------------------------------------------------------------- teacher

# Every teacher key that decides the weights; an ensemble `weight` is the student's, and `trust_checkpoint`
# only allows a load (a file it lets through gives the same weights as any other load of it).
TEACHER_KEYS = tuple(k for k in TeacherConfig.model_fields if k != "trust_checkpoint")


def _teacher_reads(ctx: RunContext) -> list[str]:
    c = ctx.config
    reads = ["seed", "device", *c.data.augment_keys]
    reads += [f"teachers[*].{key}" if c.teachers else f"teacher.{key}" for key in TEACHER_KEYS]
    if c.distill.unlabeled_fraction > 0:  # the teacher trains without the withheld labels
        reads += ["data.train_fraction", "data.seed", "distill.unlabeled_fraction"]
    return reads + _no_real_choices_reads(c)


def _no_real_choices_reads(c) -> list[str]:
    """data.kind: synthetic / data.use: report: no real label trains or chooses (the teacher is used as
    loaded, val scores are agreement with the teacher): the keys that say so."""
    return [] if c.data.real_choices else ["data.kind", "data.use"]


def _teacher_inputs(ctx: RunContext) -> list[str]:
    # An absolute path joins to itself under run_dir: the key follows the checkpoint's content.
    checkpoints = [cfg.checkpoint for cfg, _, _ in _teacher_entries(ctx.config)]
    return [SUMMARY_FILE] + [str(path) for path in checkpoints if path]


def _teacher_entries(config) -> list[tuple]:
    """(config, checkpoint file, training name) per teacher: the primary is teacher.safetensors, the others
    teachers/<i>.safetensors."""
    if not config.teachers:
        return [(config.teacher, TEACHER_CHECKPOINT, "teacher")]
    return [(cfg, TEACHER_CHECKPOINT, "teacher") if i == 0 else (cfg, checkpoint_file(f"teachers/{i}"), f"teacher.{i}")
            for i, cfg in enumerate(config.teachers)]


def teacher_files(config) -> list[str]:
    """Run-directory checkpoints of every teacher, the primary first."""
    return [path for _, path, _ in _teacher_entries(config)]


def run_teacher(ctx: RunContext) -> dict:
    entries = _teacher_entries(ctx.config)
    results = [_one_teacher(ctx, cfg, path, name, seed=ctx.config.seed + i)
               for i, (cfg, path, name) in enumerate(entries)]
    reference = Artifact("teacher-pytorch", "teacher", "pytorch", "fp32", TEACHER_CHECKPOINT)  # serves no target
    if len(results) == 1:
        return {**results[0], "artifacts": [reference.to_dict()]}
    primary = {k: v for k, v in results[0].items() if k not in ("outputs", "summary")}
    listed = [{"path": path, "model": cfg.model, "val_accuracy": r["val_accuracy"]}
              for (cfg, path, _), r in zip(entries, results)]
    return {"outputs": [o for r in results for o in r["outputs"]], **primary, "teachers": listed,
            "artifacts": [reference.to_dict()], "summary": f"{len(results)} teachers: " + "; ".join(r["summary"] for r in results)}


def _one_teacher(ctx: RunContext, cfg, path: str, name: str, seed: int) -> dict:
    data = ctx.data
    torch.manual_seed(seed)  # before the build: random initial weights are part of what the seed decides
    init = build_teacher(cfg, data.num_classes, data.preprocess.channels)
    if not ctx.config.data.real_choices:
        return _unlabelled_teacher(ctx, cfg, path, init)
    should_train = cfg.finetune if cfg.finetune is not None else init.needs_training
    result = None
    if should_train and cfg.train.epochs > 0:
        torch.manual_seed(seed)
        loss = cross_entropy(cfg.train.label_smoothing)
        result = _fit(ctx, init.model, name, cfg.train, loss, teacher=None, seed=seed, train_xy=_teacher_train_xy(ctx))
        init.model.load_state_dict(result.best_state)
    accuracy = _val_accuracy(ctx, init.model)
    metrics = {"val_accuracy": accuracy, "source": init.source, "trained": result is not None,
               **(_train_metrics(result) if result else {})}
    warning = chance_warning(accuracy, data.num_classes, len(data.val_y), f"teacher {path}")
    if warning:
        ctx.ui.warn(warning)
        metrics["warnings"] = [warning]
    _save(ctx, path, init.model, init.arch, init.arch_kwargs, {"teacher": config_dict(cfg)}, metrics)
    how = f"trained {result.epochs_run} epochs" if result else f"loaded from {init.source}"
    return {"outputs": [path], "summary": f"{init.arch} {how}, val accuracy {accuracy:.4f}", **metrics}


NOT_FINETUNED = ("not fine-tuned: there is no real labelled data (data.kind: synthetic), so the teacher is used as "
                 "loaded and its accuracy is unmeasured")
NOT_FINETUNED_REPORT = ("not fine-tuned: data.use: report keeps the real labels for the report's test accuracy only, "
                        "so the teacher is used as loaded")


def _unlabelled_teacher(ctx: RunContext, cfg, path: str, init) -> dict:
    """data.kind: synthetic: the loaded teacher as it is (nothing to train or score it on). A classifier that
    does not match data.classes would need training: refused."""
    from edgekd.errors import ModelError

    if init.head_reset:
        raise ModelError(f"teacher {cfg.model} from {init.source} has no classifier for the {ctx.data.num_classes} "
                         "classes of data.classes, and data.kind: synthetic has no labelled images to train one on.",
                         "Set data.classes to the teacher's own class count (or names, in its output order).")
    real = ctx.config.data.real
    metrics = {"val_accuracy": None, **({} if real else {"accuracy": "unmeasured (no real labelled data)"}),
               "source": init.source, "trained": False, "finetune": NOT_FINETUNED_REPORT if real else NOT_FINETUNED}
    _save(ctx, path, init.model, init.arch, init.arch_kwargs, {"teacher": config_dict(cfg)}, metrics)
    return {"outputs": [path], "summary": f"{init.arch} loaded from {init.source}, {NOT_FINETUNED}", **metrics}


def chance_warning(accuracy: float, classes: int, samples: int, what: str) -> str | None:
    """A sentence when `accuracy` is not clearly above guessing: within three standard errors of
    chance (1 / classes) on `samples` validation images, or less than 5 points above it."""
    chance = 1.0 / classes
    margin = max(0.05, 3 * (chance * (1 - chance) / max(1, samples)) ** 0.5)
    if accuracy >= chance + margin:
        return None
    return (f"{what} is at or near chance: val accuracy {accuracy:.4f} vs {chance:.4f} for guessing among {classes} "
            "classes. A student distilled from it learns little; train it longer (teacher.train.epochs, lr) "
            "or give a trained teacher.checkpoint.")


def _teacher_train_xy(ctx: RunContext):
    """All of the training split except the samples the student stage uses without labels:
    those labels are withheld from every stage (`distill.unlabeled_fraction`)."""
    if ctx.config.distill.unlabeled_fraction == 0:
        return None
    data = ctx.data
    keep = np.setdiff1d(np.arange(len(data.train_y)), _student_split(ctx).unlabeled_rows)
    return data.train.take(keep)


TEACHER = Stage("teacher", "build and train the teacher", run_teacher, _teacher_reads, _teacher_inputs,
                lambda ctx: teacher_files(ctx.config), distributed=True)

# ---------------------------------------------------------------- student


# quantization: the QAT stage's; search: the search stages' (their choice arrives as search/choice.json)
STUDENT_KEYS = tuple(k for k in StudentConfig.model_fields if k not in ("quantization", "search"))
DISTILL_KEYS = tuple(k for k in DistillConfig.model_fields if k != "qat")  # qat: the QAT stage's


def _student_reads(ctx: RunContext) -> list[str]:
    c = ctx.config
    reads = ["seed", "device", *c.data.augment_keys, "data.seed", "data.train_fraction",
             *(f"student.{key}" for key in STUDENT_KEYS), *(f"distill.{key}" for key in DISTILL_KEYS)]
    if c.teachers:  # the ensemble's weights shape the soft targets; the teachers' files are inputs
        reads.append("teachers[*].weight")
    return reads + _no_real_choices_reads(c)


def _student_outputs(ctx: RunContext) -> list[str]:
    """student.safetensors, and a chain's earlier links: assistants/<i>.safetensors, generations/<g>.safetensors."""
    d = ctx.config.distill
    return ([STUDENT_CHECKPOINT] + [checkpoint_file(f"assistants/{i}") for i in range(1, len(d.assistants) + 1)]
            + [checkpoint_file(f"generations/{g}") for g in range(1, d.generations)])


def _student_split(ctx: RunContext) -> StudentSplit:
    c = ctx.config
    return student_split(ctx.data.train_y, c.data.train_fraction, c.distill.unlabeled_fraction, c.data.seed)


def student_train_xy(ctx: RunContext, split: StudentSplit):
    """The student's training split (its own view): `data.train_fraction` of the training split, withheld labels
    set to -1."""
    data = ctx.student_data
    y = data.train_y[split.rows].copy()
    y[split.unlabeled] = -1
    return data.train.take(split.rows, labels=y)


def run_student(ctx: RunContext) -> dict:
    check_single_process(ctx.config, ctx.dist.world_size)
    if ctx.config.distill.scheme == "online":
        return _run_online(ctx)
    return _run_chain(ctx)


STUDENT = Stage("student", "distil the student from the teacher", run_student, _student_reads,
                lambda ctx: [SUMMARY_FILE, *teacher_files(ctx.config), *search_stage.choice_files(ctx),
                             *([TRANSFER_FILE] if ctx.config.data.synthetic else [])],
                _student_outputs, distributed=True)


def _student_arch(ctx: RunContext) -> tuple[str, dict]:
    """The student's (arch, kwargs): named, or derived from the primary teacher's checkpoint."""
    teacher_ckpt = read_checkpoint(ctx.run_dir / TEACHER_CHECKPOINT)
    return student_spec(ctx.config.student, teacher_ckpt["arch"], student_base_kwargs(ctx, teacher_ckpt["arch_kwargs"]))


def student_base_kwargs(ctx: RunContext, teacher_kwargs: dict) -> dict:
    """The teacher's create_model kwargs as a student derives from them: its input channels (and a ViT's
    img_size) are the student's own view's."""
    pre = ctx.student_data.preprocess
    return {**teacher_kwargs, "in_chans": pre.channels,
            **({"img_size": pre.input_size} if "img_size" in teacher_kwargs else {})}


def _load_teacher(ctx: RunContext) -> torch.nn.Module:
    """teacher.safetensors, or with several `teachers:` their weighted ensemble (edgekd.distill.schemes)."""
    c = ctx.config
    models = [load_model(ctx.run_dir / path) for path in teacher_files(c)]
    if len(models) == 1:
        return models[0].to(ctx.device)
    return EnsembleTeacher(models, [t.weight for t in c.teachers]).to(ctx.device).eval()


def _link_file(link: Link, last: bool) -> str:
    if last:
        return STUDENT_CHECKPOINT
    return checkpoint_file(f"assistants/{link.index}" if link.role == "assistant" else f"generations/{link.index}")


def _run_chain(ctx: RunContext) -> dict:
    """teacher -> [assistants] -> student -> [born-again generations]; one link without those keys."""
    c = ctx.config
    teacher_ckpt = read_checkpoint(ctx.run_dir / TEACHER_CHECKPOINT)  # read once: every link derives from it

    def derived(student_cfg):
        return student_spec(student_cfg, teacher_ckpt["arch"], student_base_kwargs(ctx, teacher_ckpt["arch_kwargs"]))

    assistants = [derived(assistant_student(c, a)) for a in c.distill.assistants]
    links = plan_chain(derived(search_stage.chosen_student(ctx)), assistants, c.distill.generations, c.seed)
    files = [_link_file(link, last=i == len(links) - 1) for i, link in enumerate(links)]
    # what each link's teacher is, as files: their content names the logit cache
    sources = [teacher_files(c)] + [[f] for f in files[:-1]]

    def distil(link: Link, student, teacher):
        i = links.index(link)
        return _distil_link(ctx, link, student, teacher, sources[i], files[i])

    results = run_chain(_load_teacher(ctx), links, distil)
    final = results[-1]
    metrics = dict(final.info)
    if c.teachers and len(c.teachers) > 1:
        metrics["teacher_ensemble"] = [{"path": f, "weight": t.weight} for f, t in zip(teacher_files(c), c.teachers)]
    summary = (f"{final.link.arch} {metrics['params'] / 1e3:.0f}K params ({metrics['init']}), "
               + (f"val accuracy {final.val_accuracy:.4f}" if c.data.real_choices else
                  f"agreement with the teacher on held-out synthetic images {final.val_accuracy:.4f}"
                  + ("" if c.data.real else " (accuracy unmeasured: no real labelled data)")))
    if len(results) > 1:
        metrics["chain"] = chain_summary(results)
        summary += "; chain " + " -> ".join(f"{r.link.name} {r.val_accuracy:.4f}" for r in results)
    _save(ctx, STUDENT_CHECKPOINT, final.model, final.link.arch, final.link.kwargs,
          {"student": config_dict(c.student), "distill": config_dict(c.distill)}, metrics, data=ctx.student_data)
    return {"outputs": files, "arch": final.link.arch, "arch_kwargs": final.link.kwargs, "summary": summary, **metrics}


def _distil_link(ctx: RunContext, link: Link, student, teacher, teacher_source: list[str],
                 out: str, split: StudentSplit | None = None, train_cfg=None) -> tuple[float, dict]:
    """One full distillation (distill.losses, distill.train) of `student` from `teacher`.

    Links before the last are saved to `out` with the stage key: a chain interrupted in a
    later link reuses them instead of retraining (the trainer resumes the link it was in).
    `split` and `train_cfg` replace the student's rows and distill.train (the search's proxy runs).
    """
    c, pre = ctx.config, ctx.student_data.preprocess
    if out != STUDENT_CHECKPOINT and (done := _finished_link(ctx, out)) is not None:
        student.load_state_dict(done["state_dict"])
        ctx.ui.info(f"{link.name}: reused {out} (finished earlier in this stage)")
        return done["metrics"]["val_accuracy"], done["metrics"]
    teacher.to(ctx.device).eval()
    init = _init_student(ctx, student, teacher, link.role) if link.role in ("student", "proxy") else {"init": "random"}
    objective = build_objective(c.distill.losses, student=student, teacher=teacher,
                                input_shape=(pre.channels, pre.input_size, pre.input_size),
                                label_smoothing=c.distill.train.label_smoothing)
    split = split or _student_split(ctx)
    train_cfg = train_cfg or c.distill.train
    train_xy, synthetic = synthetic_train.student_training(ctx, student_train_xy(ctx, split))
    paired = _paired_split(ctx, objective, train_xy, split, train_cfg)
    teacher_fn, cache_note = _teacher_source(ctx, teacher, objective, teacher_source, rows=split.rows,
                                             train_cfg=train_cfg, seed=link.seed, paired=paired)
    train_xy = paired or train_xy
    try:
        result = _fit(ctx, student, link.name, train_cfg, objective, teacher=teacher_fn, seed=link.seed,
                      train_xy=train_xy, data=ctx.student_data)
    finally:
        objective.close()  # hooks off: the saved and exported student is the plain timm model
    replay = isinstance(teacher_fn, ReplayTeacher)
    if replay:  # what the cache cost (or that it was reused), known once the training filled it
        cache_note = teacher_fn.note()
    student.load_state_dict(result.best_state)
    accuracy = _val_accuracy(ctx, student, ctx.student_data)
    metrics = {**_val_score(ctx, accuracy), "params": sum(p.numel() for p in student.parameters()),
               "teacher_cache": cache_note,
               "teacher_outputs": teacher_fn.summary() if replay else _outputs(teacher_fn, cache_note),
               **init, "losses": objective.describe(),
               "loss_params": sum(p.numel() for p in objective.parameters()), "student_data": split.summary(),
               **({"synthetic": synthetic} if synthetic else {}), **_train_metrics(result)}
    if out != STUDENT_CHECKPOINT:
        _save(ctx, out, student, link.arch, link.kwargs, {"link": link.name, "distill": config_dict(c.distill)},
              {**metrics, "stage_key": ctx.stage_key}, data=ctx.student_data)
    return accuracy, metrics


def _paired_split(ctx: RunContext, objective: DistillObjective, train_xy, split: StudentSplit,
                  train_cfg) -> PairedSplit | None:
    """With its own view and inputs that change every step (data.augment crop/crop_flip/timm, train.augment),
    the student's training split paired with the teacher's view of the same rows: one shift/flip per row for
    both (edgekd.data.paired), mixed alike (edgekd.data.mixing), which the trainer hands the live teacher."""
    augment = ctx.config.data.augment
    changing = augment in PAIRED_AUGMENTS or augment == "timm" or train_cfg.augment is not None
    if not (ctx.own_student_view and changing and objective.needs_teacher and ctx.config.data.synthetic is None):
        return None
    return PairedSplit(train_xy, ctx.data.train.take(split.rows),
                       pictures=_paired_pictures(ctx) if augment == "timm" else None)


def _paired_pictures(ctx: RunContext) -> tuple:
    """data.augment timm with two views: the source of the larger view (its pictures at its resolution and
    channels) and the transform making both views of one timm crop (edgekd.data.transforms)."""
    teacher, student = ctx.data.preprocess, ctx.student_data.preprocess
    transform = PairedTrainTransform(ctx.config.data.train_transform, teacher, student)
    master = ctx.data if transform.master is teacher else ctx.student_data
    return master.train.dataset.source, transform


def distil_subset(ctx: RunContext, arch: str, kwargs: dict, *, fraction: float, train_cfg, name: str,
                  out: str) -> tuple[float, dict]:
    """Distil a fresh (arch, kwargs) student from the run's teacher(s) on a seeded, class-stratified `fraction`
    of the student's training rows with `train_cfg`, under work/<name>; saved to `out`. (val accuracy, metrics).
    The student search's proxy run (edgekd.pipeline.search_stage), the full run's losses and data otherwise."""
    split = _student_split(ctx)
    keep = stratified_subsample(ctx.data.train_y[split.rows], max(1, round(len(split.rows) * fraction)),
                                ctx.config.data.seed)
    subset = StudentSplit(split.rows[keep], split.unlabeled[keep], split.of)
    torch.manual_seed(ctx.config.seed)  # the full run's initial weights
    student = build(arch, kwargs)
    link = Link(name, "proxy", 1, arch, kwargs, ctx.config.seed)
    return _distil_link(ctx, link, student, _load_teacher(ctx), teacher_files(ctx.config), out, subset, train_cfg)


def _finished_link(ctx: RunContext, out: str) -> dict | None:
    """A link this same stage finished before it was interrupted (same key); never under --force."""
    path = ctx.run_dir / out
    if ctx.force or not path.is_file():
        return None
    ckpt = read_checkpoint(path)
    return ckpt if ckpt["metrics"].get("stage_key") == ctx.stage_key else None


def _run_online(ctx: RunContext) -> dict:
    """Deep mutual learning: `peers` students trained together; the best by val accuracy is the student.

    No teacher is used: teacher.safetensors only gives a derived student its architecture.
    """
    c, data = ctx.config, ctx.data
    arch, kwargs = _student_arch(ctx)
    peers = []
    for k in range(c.distill.peers):  # same architecture, seed + k: different initial weights
        torch.manual_seed(c.seed + k)
        peers.append(build(arch, kwargs))
    cfg, work = c.distill.train, ctx.run_dir / "work" / "peers"
    split = _student_split(ctx)  # data.train_fraction (unlabeled samples are refused for online)
    with ctx.ui.progress("peer epochs", cfg.epochs) as advance:
        result = train_peers(peers, student_train_xy(ctx, split), data.val, cfg, work,
                             key=ctx.stage_key, seed=c.seed, temperature=c.distill.peer_temperature,
                             augment=c.data.augment, device=ctx.device, progress=advance)
    if result.resumed_from_epoch:
        ctx.ui.info(f"resumed peer training from epoch {result.resumed_from_epoch} checkpoint")
    shutil.copyfile(work / "metrics.jsonl", ctx.run_dir / "student.metrics.jsonl")
    (work / "last.pt").unlink(missing_ok=True)
    accuracies = []
    for peer, state in zip(peers, result.best_states):
        peer.load_state_dict(state)
        accuracies.append(_val_accuracy(ctx, peer))
    best = max(range(len(peers)), key=accuracies.__getitem__)
    t = c.distill.peer_temperature
    metrics = {"val_accuracy": accuracies[best], "params": sum(p.numel() for p in peers[best].parameters()),
               "teacher_cache": "off: scheme online uses no teacher", "init": "random",
               "losses": f"ce + {t * t:g}*kl(mean of the other peers at T={t:g})", "scheme": "online", "student_data": split.summary(),
               "peers": [{"peer": k, "seed": c.seed + k, "val_accuracy": a, "best_epoch": e}
                         for k, (a, e) in enumerate(zip(accuracies, result.best_epochs))],
               "best_peer": best, "epochs": result.epochs_run, "best_epoch": result.best_epochs[best],
               "seconds_per_epoch": round(result.seconds_per_epoch, 3), "resumed_from_epoch": result.resumed_from_epoch}
    _save(ctx, STUDENT_CHECKPOINT, peers[best], arch, kwargs,
          {"student": config_dict(c.student), "distill": config_dict(c.distill)}, metrics)
    peer_text = ", ".join(f"{a:.4f}" for a in accuracies)
    return {"outputs": [STUDENT_CHECKPOINT], "arch": arch, "arch_kwargs": kwargs, **metrics,
            "summary": f"{arch}: {len(peers)} peers trained online (val accuracy {peer_text}); "
                       f"peer {best} is the student"}


CALIBRATION_IMAGES = 512  # BatchNorm re-estimation after pruning: a few batches suffice


def _init_student(ctx: RunContext, student: torch.nn.Module, teacher: torch.nn.Module, role: str = "student") -> dict:
    """Random init, the teacher pruned into the student (its accuracy before training is recorded), or for the
    searched student its proxy run's weights (edgekd.pipeline.search_stage: the proxy is continued, not repeated)."""
    start = search_stage.proxy_start(ctx) if role == "student" else None
    if start is not None:
        student.load_state_dict(start.pop("state_dict"))
        return start
    if ctx.config.student.init != "teacher":
        return {"init": "random"}
    student.to(ctx.device)
    train = ctx.student_data.train  # BatchNorm statistics of what the student will see
    calibration = torch.from_numpy(train.stack(np.arange(min(CALIBRATION_IMAGES, len(train)))))
    family = init_from_teacher(student, teacher, calibration=calibration)
    accuracy = _val_accuracy(ctx, student, ctx.student_data)
    ctx.ui.info(f"student initialised from the pruned teacher ({family}): val accuracy {accuracy:.4f} before training")
    return {"init": f"teacher ({family}: pruned, BatchNorm recalibrated)", "init_val_accuracy": accuracy}


def _teacher_source(ctx: RunContext, teacher: torch.nn.Module, objective: DistillObjective,
                    files: list[str] = (TEACHER_CHECKPOINT,), rows: np.ndarray | None = None, train_cfg=None,
                    seed: int = 0, paired: PairedSplit | None = None):
    """No teacher when every loss is teacher-free (ce, tfkd); cached teacher logits when
    inputs repeat exactly every epoch and every loss reads logits only; else the live
    teacher (its hooks record what feature losses read).

    files: the checkpoints that compute the logits (one teacher, an ensemble, or the
    previous link of a chain); their content names the cache.

    rows: the training-split indices the student trains on (`data.train_fraction`); the
    trainer's batch indices point into them, the cache covers the whole split.

    Under torchrun the cache is computed sharded: each rank runs the teacher on its
    stride of the training set, the strides are gathered, rank 0 writes the file, and
    every rank reads it back (each indexes it with its own shard's indices).

    train_cfg: the training's TrainConfig; its `augment` (fresh views, maybe mixed, every step) needs
    the live teacher, on exactly the tensor the student gets, unless distill.replay_views = K: then a
    ReplayTeacher (edgekd.distill.replay) whose file the trainer fills once with the logits of K seeded
    views per sample (`seed`: the training's, which seeds the views).

    paired: the student's own view with data.augment crop/crop_flip or train.augment (edgekd.data.paired):
    the trainer hands the live teacher its view of the batch's rows, shifted, flipped and mixed as the
    student's.
    """
    teacher.eval()
    if not objective.needs_teacher:
        kinds = ", ".join(dict.fromkeys(objective.kinds))
        return None, f"off: no loss reads the teacher ({kinds}), it does not run"
    augment = ctx.config.data.augment
    fresh_views = train_cfg is not None and train_cfg.augment is not None
    to_split = (lambda idx: idx) if rows is None else _index_map(rows)
    deterministic = augment == "none" and not fresh_views and ctx.config.data.synthetic is None
    replayable = ctx.config.distill.replay_views and (fresh_views or augment == "timm")
    if train_cfg is not None and replayable and ctx.config.data.synthetic is None:
        return _replay_teacher(ctx, teacher, list(files), rows, train_cfg, seed), "replay"
    if ctx.config.distill.teacher_cache and deterministic and not objective.needs_teacher_internals:
        path = ctx.run_dir / "cache" / f"teacher_logits.{_cache_tag(ctx, list(files))}.npy"
        if not ctx.dist.broadcast_object(path.is_file()):  # one answer on every rank: all join, or none
            _write_teacher_cache(ctx, teacher, path)
        ctx.dist.barrier()  # the file is complete before any rank reads it
        cached = torch.from_numpy(np.load(path)).to(ctx.device)
        return (lambda idx, _inputs: cached[to_split(idx).to(ctx.device)]), f"on: logits computed once ({path.name})"

    own_view = ctx.own_student_view and ctx.config.data.synthetic is None
    teacher_train = ctx.data.train if own_view else None

    def live(idx, inputs):
        # paired: `inputs` is already the teacher's view of the rows, same geometry and mixing (the trainer's);
        # else with its own view the student's batch is the student's: the teacher reads its view of the rows
        if own_view and paired is None:
            inputs = torch.from_numpy(teacher_train.stack(to_split(idx).cpu().numpy())).to(ctx.device)
        with torch.no_grad():
            return teacher(inputs).float()

    if not ctx.config.distill.teacher_cache:
        why = "off in config"
    elif ctx.config.data.synthetic is not None:
        why = "off: synthetic transfer images (data.synthetic) are not in the cached training split"
    elif fresh_views:
        why = ("off: distill.train.augment draws new views every step; the teacher runs live on the same "
               + ("mixed " if train_cfg.mixing else "") + "batch as the student"
               + (" (its own view of the rows, in the same geometry" + (" and mixing)" if train_cfg.mixing else ")")
                  if paired is not None else ""))
    elif augment != "none":
        why = f"off: augmentation {augment!r} changes inputs every epoch" + (
            ("; the teacher reads its own view of each batch, cut from the same timm crop as the student's"
             if augment == "timm" else "; the teacher reads its own view of each batch, shifted and flipped as "
             "the student's") if paired is not None else "")
    else:  # caching every tapped map would cost N x (sum of C*H*W) floats: 1.9 GB for resnet18 on Fashion-MNIST
        kinds = sorted({k for k in objective.kinds if k in FEATURE_LOSS_KINDS})
        why = f"off: {', '.join(kinds)} read teacher internals every step (only logits are cached)"
    return live, why


def _outputs(teacher_fn, note: str) -> dict:
    """How the teacher's outputs reached the loss: none (no loss reads it), cached (logits once), live."""
    return {"mode": "none" if teacher_fn is None else "cached" if note.startswith("on:") else "live"}


def _replay_teacher(ctx: RunContext, teacher: torch.nn.Module, files: list[str], rows, train_cfg,
                    seed: int) -> ReplayTeacher:
    """The K-view replay cache of this training, named after everything its logits depend on: the
    teacher checkpoints and dataset identity (_cache_tag), the sample transform (data.augment and
    data.train_transform, train.augment), K, the views' seed, the student's rows, what shapes a step
    (batch size: mixed rows pair within a batch; amp: the teacher's precision; with mixing under
    torchrun the world size), and what a row holds (distill.replay_topk)."""
    c = ctx.config
    samples = len(ctx.data.train_y) if rows is None else len(rows)
    what = {"base": _cache_tag(ctx, files), "views": c.distill.replay_views, "seed": seed,
            "data_augment": c.data.augment, "train_transform": config_dict(c.data.train_transform)
            if c.data.augment == "timm" else None, "augment": config_dict(train_cfg.augment)
            if train_cfg.augment is not None else None, "batch_size": train_cfg.batch_size, "amp": train_cfg.amp,
            "rows": hashlib.sha256(np.asarray(rows if rows is not None else np.arange(samples),
                                              dtype=np.int64).tobytes()).hexdigest()}
    if c.distill.replay_topk:  # what a row holds (absent for full logits: earlier files keep their names)
        what["top_k"] = c.distill.replay_topk
    if train_cfg.mixing and ctx.dist.enabled:  # mixed rows pair within a rank's batch: they depend on the ranks
        what["world_size"] = ctx.dist.world_size
    tag = hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return ReplayTeacher(teacher, ctx.run_dir / "cache" / f"teacher_replay.{tag}.npy", c.distill.replay_views,
                         samples, device=ctx.device, ui=ctx.ui if ctx.dist.is_main else None,
                         top_k=c.distill.replay_topk or None)


def _write_teacher_cache(ctx: RunContext, teacher: torch.nn.Module, path) -> None:
    dist = ctx.dist
    ui = ctx.ui if dist.is_main else None
    batches = eval_batches(ctx.data.train, dist)  # this rank's stride of the training split, in order
    logits = dist.gather_strided(_predict_with_progress(teacher, batches, ctx.device, ui).numpy())
    if dist.is_main:
        path.parent.mkdir(exist_ok=True)
        np.save(path.with_suffix(".partial.npy"), logits)
        path.with_suffix(".partial.npy").replace(path)


def _index_map(rows: np.ndarray):
    rows_t = torch.from_numpy(rows)
    return lambda idx: rows_t[idx]


def _cache_tag(ctx: RunContext, files: list[str]) -> str:
    """Names the logit cache after what the logits are of: the checkpoints that compute them (one
    teacher's content, or an ensemble's checkpoints and weights), the dataset's identity (its files and
    preprocessing: the transform the cached inputs went through) and its train split's order."""
    digests = [sha256_file(ctx.run_dir / f) for f in files]
    weights = [t.weight for t in ctx.config.teachers] if len(digests) > 1 else None
    what = {"teacher": digests, "weights": weights, "dataset": ctx.data.fingerprint(), "transform": "eval"}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def _predict_with_progress(model, batches, device, ui):
    """Logits of one in-order pass, with a progress bar (rate, ETA) on rank 0."""
    if ui is None:
        return predict_batches(model, batches, device=device)
    with ui.progress("teacher logits", len(batches), unit="images") as advance:
        return predict_batches(model, batches, device=device, progress=advance)


# ---------------------------------------------------------------- shared


def _fit(ctx: RunContext, model, name: str, cfg, loss_fn, teacher, seed: int | None = None,
         train_xy=None, data=None) -> TrainResult:
    """`data`: the view `model` reads (ctx.data, the teacher's, unless given: ctx.student_data)."""
    data = ctx.data if data is None else data
    train_xy = train_xy or data.train
    val_xy = data.val
    work = ctx.run_dir / "work" / name

    def steps(epoch: int, images: int):  # within the epoch: images done, rate, ETA
        return ctx.ui.progress(f"{name} epoch {epoch + 1}/{cfg.epochs}", images, unit="images")

    def epoch_done(epoch: int, **fields):
        ctx.ui.info(f"{name} epoch {epoch}/{cfg.epochs}: {format_fields(fields)}")

    result = train(model, train_xy, val_xy, cfg, loss_fn, work, key=ctx.stage_key,
                   seed=ctx.config.seed if seed is None else seed, augment=ctx.config.data.augment, teacher=teacher,
                   device=ctx.device, progress=epoch_done, step_progress=steps, dist=ctx.dist)
    if result.resumed_from_epoch:
        ctx.ui.info(f"resumed {name} training from epoch {result.resumed_from_epoch} checkpoint")
    for note in result.notes:
        ctx.ui.info(note)
    ctx.dist.barrier()  # every rank is past reading last.pt before rank 0 removes it
    if ctx.dist.is_main:
        shutil.copyfile(work / "metrics.jsonl", ctx.run_dir / f"{name}.metrics.jsonl")
        (work / "last.pt").unlink(missing_ok=True)  # done: the epoch checkpoint has served its purpose
    return result


def _train_metrics(result: TrainResult) -> dict:
    return {"epochs": result.epochs_run, "best_epoch": result.best_epoch,
            "seconds_per_epoch": round(result.seconds_per_epoch, 3), "resumed_from_epoch": result.resumed_from_epoch,
            "best_weights": result.best_weights, **({"notes": result.notes} if result.notes else {})}


def _val_score(ctx: RunContext, score: float) -> dict:
    """What a score on the val split is: an accuracy, or (data.kind: synthetic, val holds held-out synthetic
    images labelled by the teacher's argmax) the student's agreement with the teacher, never called accuracy."""
    if ctx.config.data.real_choices:
        return {"val_accuracy": score}
    unmeasured = {} if ctx.config.data.real else {"accuracy": "unmeasured (no real labelled data)"}
    return {"val_accuracy": None, "val_teacher_agreement": score, **unmeasured}


def _val_accuracy(ctx: RunContext, model, data=None) -> float:
    """On the validation split of `data`, the view `model` reads (default ctx.data, the teacher's)."""
    model.to(ctx.device)
    view = ctx.data if data is None else data
    return split_accuracy(model, view.val, device=ctx.device)  # the whole split, streamed


def _save(ctx: RunContext, name: str, model, arch: str, kwargs: dict, config: dict, metrics: dict,
          data=None) -> None:
    """`data`: the view `model` reads, whose preprocessing the checkpoint carries (default ctx.data)."""
    data = ctx.data if data is None else data
    if not ctx.dist.is_main:  # torchrun: rank 0 writes, the others hold the same weights
        return
    (ctx.run_dir / name).parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(ctx.run_dir / name, model.cpu(), arch, kwargs, preprocess=data.preprocess.to_dict(),
                    classes=data.classes, config=config, metrics=metrics)
