"""The synthetic stage (`data.synthetic`): transfer images generated from the teacher, on disk.

Between the teacher and the student: the teacher's checkpoint and the data's preprocessing
(data/summary.json: input size, channels, mean/std) plus `data.synthetic` decide the images, so
they are this stage's key, and edgekd.synth's own cache key (teacher weights + method + settings
+ seed + count + shape) names the store folder under <run dir>/synthetic/. A generation that was
interrupted continues from its last written batch when the stage runs again (edgekd.synth
resumes a `.partial` store with the same key); a complete store with the key is reused.

Outputs: synthetic/transfer.json (what the student stage reads: the store's path, key, count,
label histogram) and the store's index.json / labels.npy. images.u8 itself is not hashed
(gigabytes at 224 px): U8Store checks its size against index.json when it is opened.
Without `data.synthetic` the stage does nothing.
"""

from __future__ import annotations

import json
import shutil

import torch

from edgekd.artifacts import write_text_atomic
from edgekd.models.io import build, load_model
from edgekd.pipeline.context import RunContext
from edgekd.pipeline.engine import Stage
from edgekd.pipeline.records import CALIB_FILE, SUMMARY_FILE, TEACHER_CHECKPOINT, TRANSFER_FILE, VAL_FILE

SYNTHETIC_DIR = "synthetic"
STORE_FILES = ("index.json", "labels.npy")  # hashed as the stage's outputs (images.u8: size-checked on open)


def _reads(ctx: RunContext) -> list[str]:
    synthetic = ctx.config.data.synthetic
    if synthetic is None:
        return []
    reads = ["data.synthetic", "device"]
    if not ctx.config.data.real_choices:  # it writes the held-out val file and the calibration samples too
        reads += ["data.kind", "data.use", "quantize.enabled", "quantize.calibration", "targets",
                  "student.quantization"]
    if synthetic.uses_student:  # zskt / competition read the initialised student: its shape and seed
        reads += ["seed", "student.model", "student.width", "student.depth"]
    return reads


def _inputs(ctx: RunContext) -> list[str]:
    return [SUMMARY_FILE, TEACHER_CHECKPOINT] if ctx.config.data.synthetic is not None else []


def _facts(ctx: RunContext) -> dict:
    if ctx.config.data.synthetic is None:
        return {}
    from edgekd.synth.generate import ALGORITHM_VERSION

    return {"algorithm_version": ALGORITHM_VERSION}


def _outputs(ctx: RunContext) -> list[str]:
    if ctx.config.data.synthetic is None:
        return []
    return [TRANSFER_FILE, *_store_files(transfer_summary(ctx)), *_held_out_files(ctx)]


def _held_out_files(ctx: RunContext) -> list[str]:
    """data.kind: synthetic: this stage writes data/val.npz (held-out images) and data/calib.npz."""
    if ctx.config.data.real_choices:
        return []
    from edgekd.config import needs_calibration

    return [VAL_FILE] + ([CALIB_FILE] if needs_calibration(ctx.config, ctx.targets) else [])


def _store_files(summary: dict | None) -> list[str]:
    return [f"{summary['path']}/{name}" for name in STORE_FILES] if summary else []


def transfer_summary(ctx: RunContext) -> dict | None:
    """synthetic/transfer.json as the last synthetic stage wrote it (None: not yet, or no data.synthetic)."""
    path = ctx.run_dir / TRANSFER_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def run_synthetic(ctx: RunContext) -> dict:
    synthetic = ctx.config.data.synthetic
    if synthetic is None:
        return {"outputs": [], "summary": "off: no data.synthetic"}
    from edgekd.synth import cache_key, generate_transfer_set

    pre, settings = ctx.data.preprocess, synthetic.parsed()
    teacher = load_model(ctx.run_dir / TEACHER_CHECKPOINT).to(ctx.device).eval()
    student = _fresh_student(ctx) if synthetic.uses_student else None
    args = dict(count=synthetic.count, shape=(pre.channels, pre.input_size, pre.input_size), mean=pre.mean,
                std=pre.std, seed=synthetic.seed, student=student)
    folder = ctx.run_dir / SYNTHETIC_DIR
    if ctx.force:  # --force: this set is made again (other configs' sets stay)
        stem = f"{synthetic.method}-{cache_key(teacher, settings, **args)[:16]}"
        for old in (folder / stem, folder / f"{stem}.partial"):
            shutil.rmtree(old, ignore_errors=True)
    result = generate_transfer_set(teacher, settings, cache_dir=folder, ui=ctx.ui, **args)
    summary = {**result.summary(), "path": str(result.path.relative_to(ctx.run_dir)),
               "settings": settings.model_dump(mode="json"), "seed": synthetic.seed,
               "shape": list(args["shape"]), "mean": list(pre.mean), "std": list(pre.std)}
    if not ctx.config.data.real_choices:  # no real validation split: held-out synthetic images stand in for choices
        from edgekd.pipeline.synthetic_train import write_held_out

        summary["held_out"] = write_held_out(ctx, result.path)
    write_text_atomic(ctx.run_dir / TRANSFER_FILE, json.dumps(summary, indent=2))
    how = ("reused from an earlier run" if result.reused else
           f"resumed after {result.resumed_from} on disk" if result.resumed_from else "generated")
    return {"outputs": [TRANSFER_FILE, *_store_files(summary), *_held_out_files(ctx)], "transfer_set": summary,
            "summary": f"{result.count} {synthetic.method} images {how} ({result.seconds:.1f} s) in {summary['path']}"}


def _fresh_student(ctx: RunContext) -> torch.nn.Module:
    """The student as the student stage initialises it (its seed, before training): zskt trains a proxy copy."""
    from edgekd.models.io import read_checkpoint
    from edgekd.models.student import student_spec

    teacher = read_checkpoint(ctx.run_dir / TEACHER_CHECKPOINT)
    arch, kwargs = student_spec(ctx.config.student, teacher["arch"], teacher["arch_kwargs"])
    torch.manual_seed(ctx.config.seed)
    return build(arch, kwargs).to(ctx.device)


SYNTHETIC = Stage("synthetic", "generate transfer images from the teacher", run_synthetic, _reads, _inputs,
                  _outputs, facts=_facts)
