"""Check a shipped bundle on the device (torch-free: numpy + onnxruntime).

    edgekd verify BUNDLE_DIR

1. manifest.json must exist and every file it lists must have its SHA-256.
2. Each model must load in ONNX Runtime.
3. Each model's outputs on the golden inputs (computed on the workstation)
   must match the golden outputs within the tolerance of its precision.

Tolerances, elementwise, with scale = max |golden output| of that model:

    fp32  |out - golden| <= max(1e-4 * scale, 1e-5) + 1e-3 * |golden|
          (x86 AVX and ARM NEON kernels sum in different orders)
    fp16  |out - golden| <= max(1e-2 * scale, 1e-3) + 1e-2 * |golden|
    int8  |out - golden| <= max(0.1 * scale, 1e-3), and top-1 agrees on
          >= 75% of samples (int8 kernels differ between CPUs in how an
          intermediate requantization rounds, moving outputs by a few
          quantization steps)

The floors keep near-zero outputs (an untrained head) from demanding
bit-exact results.

Any failure raises VerifyError naming the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekd.artifacts import sha256_file
from edgekd.errors import RuntimeBackendError, VerifyError

MANIFEST = "manifest.json"
CHECKSUMS = "SHA256SUMS"  # the same hashes in `sha256sum -c` form, for a device without edgekd
BUNDLE_FORMAT = "edgekd.bundle/1"


@dataclass(frozen=True)
class Tolerance:
    atol_scale: float  # absolute tolerance as a fraction of max |golden| ...
    atol_floor: float  # ... but never below this
    rtol: float
    min_top1: float  # fraction of samples whose argmax must agree

    def as_dict(self) -> dict:
        return {"atol_scale": self.atol_scale, "atol_floor": self.atol_floor, "rtol": self.rtol,
                "min_top1": self.min_top1}


TOLERANCES = {
    "fp32": Tolerance(atol_scale=1e-4, atol_floor=1e-5, rtol=1e-3, min_top1=0.0),
    "fp16": Tolerance(atol_scale=1e-2, atol_floor=1e-3, rtol=1e-2, min_top1=0.0),
    "int8": Tolerance(atol_scale=0.1, atol_floor=1e-3, rtol=0.0, min_top1=0.75),
}


@dataclass
class ModelCheck:
    name: str
    file: str
    precision: str
    max_abs_diff: float
    allowed_abs_diff: float  # the bound at the worst element
    top1_agreement: float


@dataclass
class VerifyResult:
    bundle: str
    files_checked: int
    models: list[ModelCheck] = field(default_factory=list)
    unlisted_files: list[str] = field(default_factory=list)  # present but not in the manifest


def read_manifest(bundle: str | Path) -> dict:
    path = Path(bundle) / MANIFEST
    if not path.is_file():
        raise VerifyError(
            f"{bundle} has no {MANIFEST}: it is not a complete edgekd bundle.",
            "Ship it again with `edgekd ship`; an interrupted copy is left under a `.partial` name.",
        )
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise VerifyError(f"{MANIFEST} in {bundle} is not valid JSON ({exc.msg}).", "Ship the bundle again.") from None
    if manifest.get("format") != BUNDLE_FORMAT:
        raise VerifyError(
            f"{MANIFEST} in {bundle} has format {manifest.get('format')!r}, expected {BUNDLE_FORMAT!r}.",
            "Verify it with the edgekd version that shipped it, or ship it again.",
        )
    return manifest


def check_hashes(bundle: str | Path, files: dict[str, str]) -> list[str]:
    """Raise VerifyError at the first missing or changed file; return unlisted files."""
    bundle = Path(bundle)
    for rel, expected in sorted(files.items()):
        path = bundle / rel
        if not path.is_file():
            raise VerifyError(f"{rel}: listed in the manifest but missing from {bundle}.", "Ship the bundle again.")
        got = sha256_file(path)
        if got != expected:
            raise VerifyError(
                f"{rel}: SHA-256 mismatch (manifest {expected[:12]}…, file {got[:12]}…); the file was "
                "changed or damaged after shipping.",
                "Ship the bundle again; do not edit files inside a bundle.",
            )
    listed = set(files) | {MANIFEST, CHECKSUMS}
    return sorted(
        str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file() and str(p.relative_to(bundle)) not in listed
    )


def compare(output: np.ndarray, golden: np.ndarray, precision: str) -> tuple[bool, float, float, float]:
    """(ok, max |diff|, allowed |diff| at that element, top-1 agreement) under TOLERANCES[precision]."""
    tol = TOLERANCES[precision]
    if output.shape != golden.shape:
        return False, float("inf"), 0.0, 0.0
    scale = float(np.abs(golden).max()) if golden.size else 0.0
    allowed = max(tol.atol_scale * scale, tol.atol_floor) + tol.rtol * np.abs(golden)
    diff = np.abs(output.astype(np.float64) - golden.astype(np.float64))
    worst = int(np.argmax(diff - allowed)) if diff.size else 0
    top1 = float((output.argmax(axis=-1) == golden.argmax(axis=-1)).mean()) if golden.ndim > 1 else 1.0
    ok = bool(np.all(diff <= allowed)) and top1 >= tol.min_top1
    return ok, float(diff.max(initial=0.0)), float(allowed.flat[worst]) if diff.size else 0.0, top1


def verify_bundle(bundle: str | Path, hashes_only: bool = False, threads: int | None = None) -> VerifyResult:
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    unlisted = check_hashes(bundle, manifest["files"])
    result = VerifyResult(str(bundle), len(manifest["files"]), unlisted_files=unlisted)
    if hashes_only:
        return result
    golden = manifest["golden"]
    inputs = _load_npy(bundle, golden["inputs"])
    if threads is None:
        threads = (manifest.get("target") or {}).get("threads")
    for model in manifest["models"]:
        result.models.append(_check_model(bundle, model, inputs, threads))
    return result


def _check_model(bundle: Path, model: dict, inputs: np.ndarray, threads: int | None) -> ModelCheck:
    from edgekd.runtime.ort import import_ort, make_session, predict

    import_ort()  # a missing runtime is the device's problem, not the bundle's: RuntimeBackendError
    try:
        session = make_session(bundle / model["file"], threads=threads)
    except RuntimeBackendError as exc:
        raise VerifyError(f"{model['file']}: does not load in ONNX Runtime: {exc.message}", exc.hint) from None
    output = predict(session, inputs)
    golden = _load_npy(bundle, model["golden_outputs"])
    precision = model["precision"] if model["precision"] in TOLERANCES else "fp32"
    ok, max_diff, allowed, top1 = compare(output, golden, precision)
    if not ok:
        raise VerifyError(
            f"{model['file']}: outputs on the golden inputs differ from the workstation's beyond the "
            f"{precision} tolerance (max |diff| {max_diff:.3g}, allowed {allowed:.3g} there; "
            f"top-1 agreement {top1:.0%}, needed {TOLERANCES[precision].min_top1:.0%}).",
            "Check that this device's onnxruntime version is supported; if it is, report it with the bundle.",
        )
    return ModelCheck(model["name"], model["file"], precision, max_diff, allowed, top1)


def _load_npy(bundle: Path, rel: str) -> np.ndarray:
    try:
        return np.load(bundle / rel, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise VerifyError(f"{rel}: cannot be read as a .npy array ({exc}).", "Ship the bundle again.") from None
