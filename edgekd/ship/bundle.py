"""Build a bundle for one target from a run directory (workstation side).

A bundle is a directory:

    manifest.json            what is in it, with the SHA-256 of every other file
    SHA256SUMS               the same hashes, `sha256sum -c` format (manifest.json included)
    student.int8.arm64.onnx  the model files for the target (INT8 files typed for its CPU) ...
    student.int8.arm64.onnx.json   ... each with its sidecar, when the run has one
    golden/inputs.npy        first N validation samples, preprocessed, float32 (N, C, H, W)
    golden/labels.npy        their labels
    golden/<name>.npy        each model's outputs on them through ONNX Runtime here
    data/val.npz             the whole preprocessed validation split, so the device can
                             measure accuracy (`edgekd bench MODEL --data data/val.npz`)
                             with no dataset tooling

`edgekd verify` on the device recomputes the outputs and compares them.
Needs numpy, onnx and onnxruntime (the `ort` extra), never torch.
"""

from __future__ import annotations

import difflib
import json
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgekd import __version__
from edgekd.artifacts import read_sidecar, sha256_file
from edgekd.errors import ConfigError, DataError
from edgekd.ship.verify import BUNDLE_FORMAT, CHECKSUMS, MANIFEST, TOLERANCES

if TYPE_CHECKING:  # pragma: no cover
    from edgekd.targets import TargetProfile

GOLDEN_SAMPLES = 8
# Keys the exporter may use for preprocessing and labels, in ONNX metadata_props or the sidecar.
_PREPROCESS_KEYS = ("edgekd.preprocess", "preprocess")
_LABEL_KEYS = ("edgekd.classes", "classes", "labels")


def select_artifacts(report: dict, target: "TargetProfile", names: list[str] | None = None) -> list[dict]:
    """The report's artifacts to ship to `target`.

    By name when `names` is given; otherwise the student ONNX files meant for
    the target's runtime: runtime == target.runtime for an onnxruntime
    target; for a tensorrt target, the TensorRT-ready ONNX variants the
    report's `tensorrt.builds` prepared for it (engines are built on the
    device, from ONNX).
    """
    artifacts = (report.get("artifacts") or []) + tensorrt_artifacts(report, target)
    if names:
        by_name = {a["name"]: a for a in artifacts}
        chosen = [_by_name(by_name, n) for n in names]
    else:
        chosen = [a for a in artifacts if _default_pick(a, target)]
    if not chosen:
        raise ConfigError(
            f"The report lists no student ONNX artifact for target {target.name!r} "
            f"(runtime {target.runtime}, precisions {', '.join(target.precisions)}).",
            f"Pick one with --artifact NAME; the report has: {', '.join(a['name'] for a in artifacts) or 'none'}.",
        )
    for a in chosen:
        if not str(a["path"]).endswith(".onnx"):
            raise ConfigError(
                f"Artifact {a['name']!r} is {a['path']}, not an ONNX file.",
                "Bundles carry ONNX files; TensorRT engines are built on the device from them.",
            )
    return chosen


def tensorrt_artifacts(report: dict, target: "TargetProfile") -> list[dict]:
    """Report-like artifact entries for the ONNX files prepared for `target`'s engine builds."""
    builds = (report.get("tensorrt") or {}).get("builds") or []
    return [{"name": f"student-{b['precision']}-trt", "model": "student", "runtime": "tensorrt",
             "precision": b["precision"], "path": b["onnx"], "build_command": b["commands"][0]}
            for b in builds if b["target"] == target.name]


def _by_name(by_name: dict, name: str) -> dict:
    if name not in by_name:
        close = difflib.get_close_matches(name, list(by_name), n=1)
        hint = f"Did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"The report has no artifact named {name!r}.", f"{hint}Known: {', '.join(by_name)}.")
    return by_name[name]


def _default_pick(a: dict, target: "TargetProfile") -> bool:
    if a.get("model") != "student" or not str(a.get("path", "")).endswith(".onnx"):
        return False
    if "targets" in a and target.name not in a["targets"]:  # an INT8 file typed for other targets' CPUs
        return False
    if target.runtime == "onnxruntime":
        return a.get("runtime") == "onnxruntime" and a.get("precision") in target.precisions
    return a.get("runtime") == "tensorrt"


def onnx_info(path: Path) -> dict:
    """Inputs, outputs, opset and metadata_props of an ONNX file (weights not loaded)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    init = {i.name for i in model.graph.initializer}
    return {
        "inputs": [_value_info(v) for v in model.graph.input if v.name not in init],
        "outputs": [_value_info(v) for v in model.graph.output],
        "opset": next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None),
        "metadata": {p.key: p.value for p in model.metadata_props},
        "external_data": any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer),
    }


def _value_info(v) -> dict:
    import onnx

    t = v.type.tensor_type
    shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
    dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name if t.elem_type else None
    return {"name": v.name, "shape": shape, "dtype": dtype}


def _first(sources: list[dict], keys: tuple[str, ...]):
    """First value under any of `keys` in `sources`; metadata_props values are JSON text."""
    for source in sources:
        for key in keys:
            if key in source and source[key] not in (None, ""):
                value = source[key]
                if isinstance(value, str):
                    try:
                        return json.loads(value)
                    except json.JSONDecodeError:
                        return value
                return value
    return None


def _golden_inputs(run_dir: Path, n: int) -> tuple[np.ndarray, np.ndarray, list | None]:
    val = run_dir / "data" / "val.npz"
    if not val.is_file():
        raise DataError(f"{val} does not exist; golden inputs come from it.", "Re-run `edgekd compress`, which writes it.")
    with np.load(val, allow_pickle=False) as npz:
        x = np.ascontiguousarray(npz["x"][:n], dtype=np.float32)
        y = np.asarray(npz["y"][:n], dtype=np.int64)
        classes = [str(c) for c in npz["classes"]] if "classes" in npz.files else None
    if len(x) == 0:
        raise DataError(f"{val} holds no samples.", "Re-run `edgekd compress`.")
    return x, y, classes


def build_bundle(
    run_dir: str | Path,
    target: "TargetProfile",
    out_dir: str | Path,
    artifacts: list[str] | None = None,
    golden_samples: int = GOLDEN_SAMPLES,
) -> Path:
    """Write a complete bundle into `out_dir` (created; must not exist). manifest.json comes last."""
    from edgekd.bench.sysinfo import versions
    from edgekd.report.merge import load_report

    run_dir, out = Path(run_dir), Path(out_dir)
    chosen = select_artifacts(load_report(run_dir / "report.json"), target, artifacts)
    x, y, classes = _golden_inputs(run_dir, golden_samples)
    (out / "golden").mkdir(parents=True)
    np.save(out / "golden" / "inputs.npy", x)
    np.save(out / "golden" / "labels.npy", y)
    (out / "data").mkdir()
    shutil.copyfile(run_dir / "data" / "val.npz", out / "data" / "val.npz")
    models, sources = [], []
    for artifact in chosen:
        entry, found = _add_model(run_dir, out, artifact, x, target.threads)
        models.append(entry)
        sources += found
    _write_manifest(out, {
        "format": BUNDLE_FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "edgekd_version": __version__,
        "run": run_dir.resolve().name,
        "target": target.model_dump(),
        "runtime": target.runtime,
        "preprocess": _first(sources, _PREPROCESS_KEYS),
        "labels": _first(sources, _LABEL_KEYS) or classes,
        "golden": {"inputs": "golden/inputs.npy", "labels": "golden/labels.npy", "samples": int(len(x))},
        "validation": "data/val.npz",
        "models": models,
        "versions": versions(),
    })
    return out


def _add_model(run_dir: Path, out: Path, a: dict, x: np.ndarray, threads: int) -> tuple[dict, list[dict]]:
    """Copy one ONNX (+ sidecar), save its golden outputs; its manifest entry and metadata sources."""
    from edgekd.runtime.ort import make_session, predict

    src = run_dir / a["path"]
    if not src.is_file():
        raise DataError(f"{src} (artifact {a['name']!r}) is listed in report.json but missing.", "Re-run the export.")
    info, side = onnx_info(src), read_sidecar(src)
    if info["external_data"]:
        raise DataError(f"{src.name} keeps its weights in external files.", "Export it as one self-contained file.")
    shutil.copy2(src, out / src.name)
    if side:
        shutil.copy2(src.with_name(src.name + ".json"), out / (src.name + ".json"))
    golden = f"golden/{a['name']}.npy"
    np.save(out / golden, predict(make_session(src, threads=threads), x))
    precision = a.get("precision") or side.get("precision") or "fp32"
    entry = {
        "name": a["name"],
        "file": src.name,
        "sidecar": src.name + ".json" if side else None,
        "model": a.get("model"),
        "precision": precision,
        "opset": info["opset"],
        "inputs": info["inputs"],
        "outputs": info["outputs"],
        "golden_outputs": golden,
        "tolerance": TOLERANCES.get(precision, TOLERANCES["fp32"]).as_dict(),
        "reported": {"accuracy": a.get("accuracy"), "latency_ms": a.get("latency_ms")},
    }
    return entry, [info["metadata"], side]


def _write_manifest(out: Path, manifest: dict) -> None:
    """Hash every file, then write manifest.json, then SHA256SUMS (which also covers the manifest)."""
    files = {str(p.relative_to(out)): sha256_file(p) for p in sorted(out.rglob("*")) if p.is_file()}
    manifest["files"] = files
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    sums = {**files, MANIFEST: sha256_file(out / MANIFEST)}
    (out / CHECKSUMS).write_text("".join(f"{h}  {rel}\n" for rel, h in sorted(sums.items())))
