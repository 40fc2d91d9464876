"""Check a shipped bundle on the device (torch-free: numpy, plus onnxruntime and onnx for golden runs).

    edgekd verify BUNDLE_DIR

1. manifest.json must exist and every file it lists must have its SHA-256.
2. Each model must load in ONNX Runtime.
3. Each model's outputs on the golden inputs (computed on the workstation)
   must match the golden outputs within the "device" tolerance of its
   precision (edgekd.tolerances; int8 also needs >= 64 golden samples and
   top-1 agreement on >= 97% of them).

A TensorRT bundle carries the ONNX files its engines are built from; on a
device without onnxruntime its golden outputs are not run here (the result
says so): hashes are checked, and the engine is checked where it is built.

A bundle is data from elsewhere and is trusted for nothing (docs/security.md):
every path the manifest names must be a plain relative path that stays inside
the bundle with no symlink on the way, every file that is read must be a hashed
`files` entry, symlinks are never followed (one found is reported as unlisted),
an ONNX file's external data is refused, and no message says anything about a
file outside the bundle. Any failure raises VerifyError naming the file.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekd.artifacts import contained
from edgekd.errors import RuntimeBackendError, VerifyError
from edgekd.tolerances import TOLERANCES, Comparison
from edgekd.tolerances import compare as compare_outputs

MANIFEST = "manifest.json"
CHECKSUMS = "SHA256SUMS"  # the same hashes in `sha256sum -c` form, for a device without edgekd
BUNDLE_FORMAT = "edgekd.bundle/1"
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
DEVICE = TOLERANCES["device"]
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class ModelCheck:
    name: str
    file: str
    precision: str
    max_abs_diff: float
    allowed_abs_diff: float  # the bound at the worst element
    top1_agreement: float
    samples: int = 0


@dataclass
class VerifyResult:
    bundle: str
    files_checked: int
    models: list[ModelCheck] = field(default_factory=list)
    unlisted_files: list[str] = field(default_factory=list)  # present but not in the manifest (never read)
    golden_skipped: str | None = None  # why the models were not run here, when they were not


def _refuse(rel, why: str) -> VerifyError:
    shown = rel if isinstance(rel, str) and len(rel) <= 200 else f"{str(rel)[:200]}…"
    return VerifyError(f"{MANIFEST} names {shown!r}, {why}: refused (a bundle only reads its own files).",
                       "Ship the bundle again with `edgekd ship`; do not edit manifest.json.")


def bundle_file(bundle: Path, rel) -> Path:
    """The regular file `rel` names inside `bundle` (edgekd.artifacts.contained), or VerifyError."""
    try:
        return contained(bundle, rel)
    except FileNotFoundError:
        raise VerifyError(f"{rel}: listed in the manifest but missing from {bundle}.", "Ship the bundle again.") from None
    except ValueError as why:
        raise _refuse(rel, f"which {why}") from None


def open_file(bundle: Path, rel: str):
    """A bundle file opened for reading, never through a symlink (checked, and O_NOFOLLOW)."""
    return os.fdopen(os.open(bundle_file(bundle, rel), os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)), "rb")


def read_bytes(bundle: Path, rel: str) -> bytes:
    with open_file(bundle, rel) as f:
        return f.read()


def read_manifest(bundle: str | Path) -> dict:
    bundle = Path(bundle)
    path = bundle / MANIFEST
    if not path.is_file() and not path.is_symlink():
        raise VerifyError(
            f"{bundle} has no {MANIFEST}: it is not a complete edgekd bundle.",
            "Ship it again with `edgekd ship`; an interrupted copy is left under a `.partial` name.",
        )
    size = bundle_file(bundle, MANIFEST).stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise VerifyError(f"{MANIFEST} in {bundle} is {size / 2**20:.0f} MiB; a manifest is a few KiB.",
                          "Ship the bundle again.")
    try:
        manifest = json.loads(read_bytes(bundle, MANIFEST))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise VerifyError(f"{MANIFEST} in {bundle} is not valid JSON ({type(exc).__name__}).", "Ship the bundle again.") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise VerifyError(
            f"{MANIFEST} in {bundle} has format {str(found)[:40]!r}, expected {BUNDLE_FORMAT!r}.",
            "Verify it with the edgekd version that shipped it, or ship it again.",
        )
    _check_layout(manifest)
    return manifest


def _check_layout(manifest: dict) -> None:
    """The manifest's parts this verifier reads have the types it expects (else VerifyError, not a crash)."""
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) and _SHA256.match(v)
                                              for k, v in files.items()):
        raise VerifyError(f"{MANIFEST}: `files` must map each path to its SHA-256.", "Ship the bundle again.")
    golden, models = manifest.get("golden"), manifest.get("models")
    if not isinstance(golden, dict) or not isinstance(models, list) or not all(isinstance(m, dict) for m in models):
        raise VerifyError(f"{MANIFEST}: `golden` and `models` are missing or malformed.", "Ship the bundle again.")
    for model in models:
        if not all(isinstance(model.get(k), str) for k in ("name", "file", "precision", "golden_outputs")):
            raise VerifyError(f"{MANIFEST}: a `models` entry lacks name, file, precision or golden_outputs.",
                              "Ship the bundle again.")


def _listed(manifest: dict, rel) -> str:
    """`rel` if it is a hashed `files` entry: nothing else in the bundle is ever read."""
    if not isinstance(rel, str) or rel not in manifest["files"]:
        raise _refuse(rel, "which is not a hashed entry of its `files`")
    return rel


def check_hashes(bundle: str | Path, files: dict[str, str]) -> list[str]:
    """Raise VerifyError at the first unsafe, missing or changed file; return unlisted ones (and symlinks)."""
    from edgekd.artifacts import sha256_stream

    bundle = Path(bundle)
    for rel, expected in sorted(files.items()):
        with open_file(bundle, rel) as f:
            got = sha256_stream(f)
        if got != expected:
            raise VerifyError(
                f"{rel}: SHA-256 mismatch (manifest {expected[:12]}…, file {got[:12]}…); the file was "
                "changed or damaged after shipping.",
                "Ship the bundle again; do not edit files inside a bundle.",
            )
    listed = set(files) | {MANIFEST, CHECKSUMS}
    found = []
    for folder, dirs, names in os.walk(bundle):  # never descends into a symlinked folder
        here = Path(folder)
        links = [d for d in dirs if (here / d).is_symlink()]
        found += [str((here / n).relative_to(bundle)) for n in names + links]
    return sorted(rel for rel in found if rel not in listed)


def compare(output: np.ndarray, golden: np.ndarray, precision: str) -> Comparison:
    """`output` against the workstation's `golden` under the device tolerance of `precision`."""
    return compare_outputs(output, golden, DEVICE.get(precision, DEVICE["fp32"]))


def verify_bundle(bundle: str | Path, hashes_only: bool = False, threads: int | None = None) -> VerifyResult:
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    unlisted = check_hashes(bundle, manifest["files"])
    result = VerifyResult(str(bundle), len(manifest["files"]), unlisted_files=unlisted)
    models = manifest["models"]
    for model in models:  # every file a model check reads is hashed, whether or not it runs here
        _listed(manifest, model["file"])
        _listed(manifest, model["golden_outputs"])
    if hashes_only:
        return result
    result.golden_skipped = _cannot_run(manifest)
    if result.golden_skipped:
        return result
    inputs = _load_npy(bundle, _listed(manifest, manifest["golden"].get("inputs")))
    if threads is None:
        threads = (manifest.get("target") or {}).get("threads")
    for model in models:
        result.models.append(_check_model(bundle, model, inputs, threads))
    return result


def _cannot_run(manifest: dict) -> str | None:
    """Why the golden outputs cannot be run here (None: they can). Only a TensorRT bundle may skip them:
    an ONNX Runtime bundle on a device without onnxruntime is a RuntimeBackendError."""
    try:
        from edgekd.runtime.ort import import_ort

        import_ort()
        import onnx  # noqa: F401  (checks each model for external data before it is loaded)
    except (RuntimeBackendError, ImportError):
        if manifest.get("runtime") != "tensorrt":
            raise RuntimeBackendError("Running the golden outputs needs onnxruntime and onnx, which are not both "
                                      "installed here.", 'pip install "edgekd[ort]", or pass --hashes-only.') from None
        return ("onnxruntime is not installed here, so the ONNX files' golden outputs were not run; the hashes "
                "match. Build the engine on this device (`edgekd build MODEL.onnx --target T`) and check it with "
                "`edgekd bench-engine ENGINE --val data/test.npz`.")
    return None


def _check_model(bundle: Path, model: dict, inputs: np.ndarray, threads: int | None) -> ModelCheck:
    from edgekd.runtime.ort import make_session, predict

    path = bundle_file(bundle, model["file"])
    _refuse_external_data(path, model["file"])
    try:
        session = make_session(path, threads=threads)
    except RuntimeBackendError as exc:
        raise VerifyError(f"{model['file']}: does not load in ONNX Runtime: {exc.message}", exc.hint) from None
    output = predict(session, inputs)
    golden = _load_npy(bundle, model["golden_outputs"])
    precision = model["precision"] if model["precision"] in DEVICE else "fp32"
    tol = DEVICE[precision]
    check = compare(output, golden, precision)
    if check.samples < tol.min_samples:
        raise VerifyError(f"{model['file']}: {check.samples} golden samples cannot judge an {precision} model "
                          f"(at least {tol.min_samples} are needed).",
                          f"Ship the bundle again with --golden {max(tol.min_samples, 128)}.")
    if not check.passed:
        raise VerifyError(
            f"{model['file']}: outputs on the golden inputs differ from the workstation's beyond the "
            f"{precision} tolerance (max |diff| {check.max_abs_diff:.3g}, allowed {check.allowed_abs_diff:.3g} "
            f"there; top-1 agreement {check.top1_agreement:.1%} on {check.samples} samples, needed "
            f"{tol.min_top1:.0%}).",
            "Check that this device's onnxruntime version is supported; if it is, report it with the bundle.",
        )
    return ModelCheck(model["name"], model["file"], precision, check.max_abs_diff, check.allowed_abs_diff,
                      check.top1_agreement, check.samples)


def _refuse_external_data(path: Path, rel: str) -> None:
    """A bundle's ONNX files are self-contained (ship refuses others): external data would make
    ONNX Runtime read a file the manifest does not hash."""
    from edgekd.onnxtools.read import load_onnx, uses_external_data

    try:
        proto = load_onnx(path)
    except RuntimeBackendError as exc:
        raise VerifyError(f"{rel}: {exc.message}", exc.hint) from None
    if uses_external_data(proto):
        raise VerifyError(f"{rel} keeps tensors in external files, which the manifest does not cover: refused.",
                          "Ship it again with `edgekd ship` (bundles carry self-contained ONNX files).")


def _load_npy(bundle: Path, rel: str) -> np.ndarray:
    import io

    try:
        return np.load(io.BytesIO(read_bytes(bundle, rel)), allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise VerifyError(f"{rel}: cannot be read as a .npy array ({exc}).", "Ship the bundle again.") from None
