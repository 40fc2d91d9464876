"""Candidates: the grid expanded to named students, built, counted and exported for timing.

    expand_grid(search, "resnet18", precisions=["fp32", "int8"], default_input_size=224)
        -> [Candidate("resnet18-w0.5-d1-224px-fp32", model="resnet18", width=0.5, depth=1, ...), ...]
    describe_architectures(candidates, teacher_arch, teacher_kwargs) -> {arch_name: Architecture}
    prepare_candidates(candidates, teacher_arch, teacher_kwargs, folder, calib_x, opset=17)
        -> [PreparedCandidate(candidate, architecture, path to its .onnx / .int8.onnx), ...]

A candidate is one architecture (a derived student or a named timm model) at one
input size in one precision; its precisions share one FP32 export, the INT8 file
is quantized from it. Weights are random: latency does not depend on them.
Files are reused on a re-run when their record says they were made the same way.

Workstation side: torch and timm are imported inside the functions that build
models, so the torch-free device side may import `Candidate` from here.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from edgekd.artifacts import sha256_file, write_json_atomic
from edgekd.errors import DataError, ModelError
from edgekd.search.profile import METADATA_KEY

if TYPE_CHECKING:  # pragma: no cover
    from edgekd.quantize.schemes import Int8Scheme
    from edgekd.search.config import SearchConfig

RECORD_FORMAT = "edgekd.search-candidate/2"  # /2: one INT8 file per scheme
CALIB_SAMPLES = 64  # enough for INT8 scales to be realistic; latency does not depend on their accuracy


@dataclass(frozen=True)
class Candidate:
    name: str  # unique: architecture, input size and precision
    model: str  # the timm model: the teacher's name for a derived student, else the named model
    width: float | None  # derived students only
    depth: float | None
    input_size: int
    precision: str

    @property
    def derived(self) -> bool:
        return self.width is not None

    @property
    def arch_name(self) -> str:
        """The name without the precision: what is built, exported and proxy-distilled once."""
        return self.name.rsplit("-", 1)[0]

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Architecture:
    """One architecture at one input size, as built: shared by its precisions."""

    arch_name: str
    arch: str  # timm create_model name (derived MobileNet/EfficientNet: edgekd_mbconv)
    kwargs: dict
    arch_id: str  # hash of (arch, kwargs): two names for one network share it
    input_size: int
    channels: int
    params: int
    flops: int  # at batch 1 and input_size, 2 per multiply-add


@dataclass(frozen=True)
class PreparedCandidate:
    candidate: Candidate
    architecture: Architecture
    path: Path  # its ONNX file: FP32 (also what an FP16 TensorRT engine is built from), or INT8 (QDQ) quantized from it
    scheme: str | None = None  # INT8 only: the Int8Scheme key its file was quantized with (the target's)

    @property
    def name(self) -> str:
        return self.candidate.name


# ------------------------------------------------------------------ the grid
def arch_name(model: str, width: float | None, depth: float | None, input_size: int) -> str:
    shape = f"-w{width:g}-d{depth:g}" if width is not None else ""
    return f"{model}{shape}-{input_size}px"


def expand_grid(search: "SearchConfig", teacher_model: str, precisions: list[str], default_input_size: int) -> list[Candidate]:
    """Every (architecture, input size, precision) of the grid, derived students first."""
    shapes = [(teacher_model, w, d) for w in search.widths for d in search.depths]
    shapes += [(m, None, None) for m in search.models]
    out = []
    for size in search.input_sizes or [default_input_size]:
        for model, width, depth in shapes:
            base = arch_name(model, width, depth, size)
            out += [Candidate(f"{base}-{p}", model, width, depth, size, p) for p in precisions]
    return out


def architectures_of(candidates: list[Candidate]) -> list[Candidate]:
    """One candidate per architecture name (the first precision of each), in grid order."""
    seen: dict[str, Candidate] = {}
    for c in candidates:
        seen.setdefault(c.arch_name, c)
    return list(seen.values())


def candidate_spec(candidate: Candidate, teacher_arch: str, teacher_kwargs: dict) -> tuple[str, dict]:
    """(timm arch, kwargs) of a candidate, exactly as the student stage would build it."""
    from edgekd.config import StudentConfig
    from edgekd.models.student import student_spec

    cfg = StudentConfig(width=candidate.width, depth=candidate.depth) if candidate.derived else StudentConfig(
        model=candidate.model)
    try:
        return student_spec(cfg, teacher_arch, dict(teacher_kwargs))
    except ModelError as exc:
        raise ModelError(f"student.search candidate {candidate.arch_name}: {exc.message}", exc.hint) from None


def arch_id(arch: str, kwargs: dict) -> str:
    text = json.dumps({"arch": arch, "kwargs": kwargs}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ------------------------------------------------------------------ build and count
def describe_architectures(candidates: list[Candidate], teacher_arch: str, teacher_kwargs: dict) -> dict[str, Architecture]:
    """Build each architecture once (random weights) and count its parameters and FLOPs."""
    return {c.arch_name: _build(c, teacher_arch, teacher_kwargs)[1] for c in architectures_of(candidates)}


def _build(c: Candidate, teacher_arch: str, teacher_kwargs: dict, seed: int = 0):
    import torch

    from edgekd.models.io import build
    from edgekd.models.stats import count_flops, count_params

    arch, kwargs = candidate_spec(c, teacher_arch, teacher_kwargs)
    torch.manual_seed(seed)
    model = build(arch, kwargs).eval()
    channels = int(kwargs.get("in_chans", 3))
    try:
        flops = count_flops(model, (channels, c.input_size, c.input_size))
    except (RuntimeError, ValueError, AssertionError) as exc:  # timm asserts on a fixed img_size (ViT)
        raise ModelError(f"student.search candidate {c.arch_name} does not run on {c.input_size}x{c.input_size} "
                         f"inputs: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}.",
                         "Drop that input size or that model from student.search.") from None
    info = Architecture(c.arch_name, arch, kwargs, arch_id(arch, kwargs), c.input_size, channels,
                        count_params(model), flops)
    return model, info


# ------------------------------------------------------------------ export and quantize
def prepare_candidates(
    candidates: list[Candidate],
    teacher_arch: str,
    teacher_kwargs: dict,
    folder: str | Path,
    calib_x: np.ndarray | None,
    *,
    opset: int,
    exporter: str = "auto",
    dynamic_batch: bool = True,
    schemes: "list[Int8Scheme] | None" = None,
    log: Callable[[str], None] | None = None,
) -> list[PreparedCandidate]:
    """Export every architecture to `folder/<arch_name>.onnx` and, for INT8 candidates, quantize it once per
    INT8 scheme in `schemes` (the targets' types, edgekd.quantize.schemes; default: this machine's) to
    `<arch_name>.int8.<scheme key>.onnx`, calibrated on `calib_x` (N, C, H, W) resized to each input size.
    An INT8 candidate is prepared once per scheme (measure_candidates gives each target its own); FP16
    candidates (TensorRT) are the FP32 file, which the engine builder lowers.

    Export follows the pipeline's rules (`edgekd.export.export_onnx`: opset, exporter, BN folding,
    checks); INT8 is `edgekd.quantize.quantize_int8` with its defaults and the scheme. A file is reused when
    its record (`<arch_name>.json`) shows the same architecture, opset, exporter, scheme and file hashes.
    """
    if calib_x is None and any(c.precision == "int8" for c in candidates):
        raise DataError("student.search measures INT8 candidates, which need calibration samples, and none were "
                        "given.", "Pass the run's calibration split (data/calib.npz `x`).")
    if schemes is None:
        from edgekd.quantize.ort_int8 import host_scheme

        schemes = [host_scheme()]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    settings = {"opset": opset, "exporter": exporter, "dynamic_batch": dynamic_batch}
    wanted: dict[str, set[str]] = {}
    for c in candidates:
        wanted.setdefault(c.arch_name, set()).update(file_variants(c.precision, schemes))
    by_variant = {variant_of("int8", s.key): s for s in schemes}
    files: dict[str, tuple[Architecture, dict[str, Path]]] = {}
    for first in architectures_of(candidates):
        files[first.arch_name] = _prepare_one(first, wanted[first.arch_name], by_variant, teacher_arch,
                                              teacher_kwargs, folder, calib_x, settings, log or (lambda _: None))
    out = []
    for c in candidates:
        info, paths = files[c.arch_name]
        for variant in file_variants(c.precision, schemes):
            out.append(PreparedCandidate(c, info, paths[variant], variant.split(".", 1)[1] if "." in variant else None))
    return out


def variant_of(precision: str, scheme_key: str | None = None) -> str:
    """A candidate file's variant: "fp32" (the export; FP16 engines are built from it) or "int8.<scheme>"."""
    return f"int8.{scheme_key}" if precision == "int8" else "fp32"


def file_variants(precision: str, schemes: "list[Int8Scheme]") -> list[str]:
    return [variant_of("int8", s.key) for s in schemes] if precision == "int8" else [variant_of(precision)]


def _prepare_one(c: Candidate, variants: set[str], schemes: dict, teacher_arch, teacher_kwargs, folder: Path,
                 calib_x, settings: dict, log) -> tuple[Architecture, dict[str, Path]]:
    arch, kwargs = candidate_spec(c, teacher_arch, teacher_kwargs)
    paths = {v: folder / f"{c.arch_name}.{v}.onnx" if v != "fp32" else folder / f"{c.arch_name}.onnx"
             for v in {"fp32", *variants}}
    made_with = {v: _scheme_record(schemes[v]) if v in schemes else None for v in paths}
    record_path = folder / f"{c.arch_name}.json"
    reused = _reusable(record_path, arch_id(arch, kwargs), settings, paths, made_with)
    if reused is not None:
        return reused, paths
    model, info = _build(c, teacher_arch, teacher_kwargs)
    log(f"exporting candidate {c.arch_name} ({info.params / 1e6:.2f} M params, {info.flops / 1e6:.0f} MFLOPs)")
    _export(model, info, paths["fp32"], settings)
    for variant in sorted(v for v in paths if v in schemes):
        _quantize(paths["fp32"], paths[variant], calib_x, info, schemes[variant])
    write_json_atomic(record_path, {
        "format": RECORD_FORMAT, "architecture": asdict(info), "settings": settings,
        "files": {v: {"file": path.name, "sha256": sha256_file(path), "made_with": made_with[v]}
                  for v, path in paths.items()},
    })
    return info, paths


def _scheme_record(scheme) -> dict:
    """What an INT8 file's types follow from (not the wording of why)."""
    return {k: v for k, v in scheme.as_dict().items() if k != "reason"}


def _reusable(record_path: Path, expected_id: str, settings: dict, paths: dict[str, Path],
              made_with: dict[str, dict | None]) -> Architecture | None:
    """The recorded Architecture when every needed file is there, unchanged, made with `settings` (and each
    INT8 file with its scheme)."""
    if not record_path.is_file():
        return None
    try:
        record = json.loads(record_path.read_text())
    except json.JSONDecodeError:
        return None
    files = record.get("files", {})
    if (record.get("format") != RECORD_FORMAT or record.get("settings") != settings
            or (record.get("architecture") or {}).get("arch_id") != expected_id):
        return None
    for variant, path in paths.items():
        known = files.get(variant)
        if (known is None or known.get("made_with") != made_with[variant] or not path.is_file()
                or sha256_file(path) != known["sha256"]):
            return None
    return Architecture(**record["architecture"])


def _export(model, info: Architecture, path: Path, settings: dict) -> None:
    from edgekd.export import export_onnx

    shape = (1, info.channels, info.input_size, info.input_size)
    export_onnx(model, path, input_shape=shape, opset=settings["opset"], exporter=settings["exporter"],
                dynamic_batch=settings["dynamic_batch"], metadata={METADATA_KEY: file_metadata(info)})


def file_metadata(info: Architecture) -> dict:
    """What `edgekd profile` reads back from an ONNX file's metadata (with onnxruntime alone)."""
    return {"arch_name": info.arch_name, "arch_id": info.arch_id, "input_size": info.input_size}


def _quantize(fp32: Path, out: Path, calib_x: np.ndarray, info: Architecture, scheme) -> None:
    from edgekd.quantize import quantize_int8

    samples = resize_samples(calib_x[:CALIB_SAMPLES], info.channels, info.input_size)
    # its batches are whole: none dropped
    quantize_int8(fp32, out, samples, batch_size=min(16, len(samples)), scheme=scheme)


def resize_samples(x: np.ndarray, channels: int, size: int) -> np.ndarray:
    """(N, C, H, W) float32 samples at `size` x `size` (bilinear, antialiased when shrinking)."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 4 or x.shape[1] != channels or len(x) == 0:
        raise DataError(f"Calibration samples have shape {x.shape}; candidates take (N, {channels}, H, W).",
                        "Pass samples preprocessed as for the student, with its channel count.")
    if x.shape[2:] == (size, size):
        return x
    import torch
    from torch.nn import functional as F

    with torch.no_grad():
        out = F.interpolate(torch.from_numpy(x), size=(size, size), mode="bilinear", align_corners=False,
                            antialias=size < x.shape[2])
    return out.numpy()

