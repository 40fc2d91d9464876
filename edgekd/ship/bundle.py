"""Build a bundle for one target from a run directory (workstation side).

A bundle is a directory:

    manifest.json            what is in it, with the SHA-256 of every other file
    SHA256SUMS               the same hashes, `sha256sum -c` format (manifest.json included)
    student.int8.arm64.onnx  the model files for the target (INT8 files typed for its CPU) ...
    student.int8.arm64.onnx.json   ... each with its sidecar, when the run has one
    golden/inputs.npy        the first N test samples, preprocessed, float32 (N, C, H, W)
    golden/labels.npy        their labels
    golden/<name>.npy        each model's outputs on them through ONNX Runtime here
    data/test.npz            the run's preprocessed test split (what its report's accuracy is
                             on), so the device measures accuracy on the same samples
                             (`edgekd bench MODEL --data data/test.npz`) with no dataset tooling.
                             A run without real labelled data (data.kind: synthetic) has none: its
                             golden inputs are held-out synthetic images, the manifest's `test` is
                             null and no accuracy is measured on the device

`edgekd verify` on the device recomputes the outputs and compares them.
Needs numpy, onnx and onnxruntime (the `ort` extra), never torch.

What goes in is checked first (docs/security.md): report.json must be what the
last report stage wrote, from the stage records as they are now (`current_report`),
so an interrupted re-run cannot ship a report about other files; every file shipped
is a regular file inside the run directory (no absolute path, `..` or symlink on
the way) whose SHA-256 is the one its stage recorded; two artifacts cannot share a
file name or a golden-output name.
"""

from __future__ import annotations

import difflib
import json
import re
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgekd import __version__
from edgekd.artifacts import contained, sha256_file, sidecar_path
from edgekd.errors import ConfigError, DataError
from edgekd.pipeline.records import TEST_FILE, VAL_FILE, current_artifacts
from edgekd.rundir import RECORDS
from edgekd.ship.verify import BUNDLE_FORMAT, CHECKSUMS, DEVICE, MANIFEST

if TYPE_CHECKING:  # pragma: no cover
    from edgekd.targets import TargetProfile

# data.kind: synthetic: the golden inputs are held-out synthetic images, their labels the teacher's argmax
NO_REAL_GOLDEN = "held-out synthetic images (data/val.npz of the run; labels: the teacher's argmax, not ground truth)"
GOLDEN_SAMPLES = 128  # int8's device check needs >= 64 (edgekd.tolerances.DEVICE_INT8_RULE)
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")  # artifact names become golden/<name>.npy
# Keys the exporter may use for preprocessing and labels, in ONNX metadata_props or the sidecar.
_PREPROCESS_KEYS = ("edgekd.preprocess", "preprocess")
_LABEL_KEYS = ("edgekd.classes", "classes", "labels")


def select_artifacts(report: dict, target: "TargetProfile", names: list[str] | None = None,
                     recorded: list[dict] | None = None) -> list[dict]:
    """The artifacts to ship to `target`, each with what the report says of it.

    `recorded`: the run's current artifacts as its stage records list them
    (edgekd.pipeline.records.current_artifacts), never a listing of the folder.
    By name when `names` is given; otherwise the student ONNX files the records
    say serve the target: for an onnxruntime target its FP32/INT8 files, for a
    tensorrt target the TensorRT-ready ONNX variants prepared for its engine
    builds (engines are built on the device, from ONNX). Without `recorded`
    (a report alone), the report's own entries are used the same way.
    """
    reported = {a["name"]: a for a in (report.get("artifacts") or []) + tensorrt_artifacts(report, target)}
    if recorded is None:
        artifacts = list(reported.values())
        serves = lambda a: _default_pick(a, target)  # noqa: E731
    else:
        artifacts = [{**reported.get(a["name"], {}), **a} for a in recorded]
        serves = lambda a: target.name in a["targets"] and a["model"] == "student"  # noqa: E731
    if names:
        by_name = {a["name"]: a for a in artifacts}
        chosen = [_by_name(by_name, n) for n in names]
    else:
        chosen = [a for a in artifacts if serves(a)]
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
    if a.get("targets") and target.name not in a["targets"]:  # e.g. an INT8 file typed for other targets' CPUs
        return False
    if target.runtime == "onnxruntime":
        return a.get("runtime") == "onnxruntime" and a.get("precision") in target.precisions
    return a.get("runtime") == "tensorrt"


def onnx_info(path: Path) -> dict:
    """Inputs, outputs, opset and metadata_props of an ONNX file (weights not loaded)."""
    import onnx

    from edgekd.onnxtools.read import load_onnx

    model = load_onnx(path)
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


def run_file(run_dir: Path, rel, what: str) -> Path:
    """A regular file inside the run directory (edgekd.artifacts.contained), or DataError naming `what`."""
    try:
        return contained(run_dir, rel)
    except FileNotFoundError:
        raise DataError(f"{what} ({str(rel)[:200]}) is missing from {run_dir}.",
                        "Re-run `edgekd compress`, which writes it.") from None
    except ValueError as why:
        raise DataError(f"{what}: {str(rel)[:200]!r} {why}; only regular files inside the run directory are "
                        "shipped.", "Ship a run directory as `edgekd compress` wrote it.") from None


def _record(run_dir: Path, name: str) -> dict:
    path = run_file(run_dir, f"{RECORDS}/{name}.json", f"the {name} stage's record")
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError:
        record = None
    if not isinstance(record, dict) or not isinstance(record.get("outputs"), dict):
        raise DataError(f"{path} is not a stage record.", "Re-run `edgekd compress`.")
    return record


def current_report(run_dir: Path) -> tuple[dict, dict[str, str]]:
    """(report.json, {file: SHA-256} of every file the stages it reports on wrote).

    report.json must be what the last report stage wrote, and every record and file that stage
    read must be unchanged since: otherwise a later run changed artifacts (and was interrupted
    before its report), and the report describes other files than the ones that would ship."""
    from edgekd.report.merge import load_report

    stale = "Re-run `edgekd compress` to finish the run (finished stages are reused), then ship."
    record = _record(run_dir, "report")
    report_path = run_file(run_dir, "report.json", "report.json")
    if sha256_file(report_path) != record["outputs"].get("report.json"):
        raise DataError(f"{report_path} is not the one the report stage wrote (it was changed or replaced).", stale)
    inputs = record.get("inputs")
    if not isinstance(inputs, dict):
        raise DataError(f"{report_path} was written by an edgekd that did not record what it was made from.", stale)
    produced: dict[str, str] = {}
    for rel, digest in inputs.items():
        path = run_file(run_dir, rel, "an input of the report stage")
        if sha256_file(path) != digest:
            raise DataError(f"report.json is stale: {rel} changed after it was written (a later run stopped "
                            "before writing its report).", stale)
        if rel.startswith(f"{RECORDS}/"):
            produced.update(_record(run_dir, Path(rel).stem)["outputs"])
    produced.update(_record(run_dir, "data")["outputs"])  # data/test.npz
    return load_report(report_path), produced


def _shipped_file(run_dir: Path, rel, what: str, produced: dict[str, str]) -> Path:
    """`rel` inside the run directory, with the SHA-256 its stage recorded."""
    path = run_file(run_dir, rel, what)
    if produced.get(rel) != sha256_file(path):
        raise DataError(f"{rel} ({what}) is not the file its stage wrote (changed since, or not written by "
                        "`edgekd compress`).", "Re-run `edgekd compress`, then ship.")
    return path


def _check_names(chosen: list[dict]) -> None:
    """Artifact names become golden/<name>.npy and files keep their names: both must be safe and unique."""
    names, files = {}, {}
    for a in chosen:
        if not isinstance(a.get("name"), str) or not _SAFE_NAME.match(a["name"]):
            raise DataError(f"Artifact name {str(a.get('name'))[:100]!r} in report.json is not a plain name "
                            "(letters, digits, '.', '_', '-').", "Ship a report.json written by `edgekd compress`.")
        file = Path(str(a["path"])).name
        for seen, key, kind in ((names, a["name"], "name"), (files, file, "file name")):
            if key in seen:
                raise ConfigError(f"Artifacts {seen[key]!r} and {a['name']!r} have the same {kind} {key!r}; in one "
                                  "bundle one would overwrite the other.", "Ship them to separate bundles (--artifact).")
            seen[key] = a["name"]


def golden_count(chosen: list[dict], asked: int | None, available: int, source: str = TEST_FILE) -> int:
    """How many golden samples travel: `asked` (default GOLDEN_SAMPLES), at most what `source` (test.npz; without
    real data the held-out val.npz) holds, and never fewer than the device check of the chosen precisions needs."""
    need = max(DEVICE.get(a.get("precision") or "fp32", DEVICE["fp32"]).min_samples for a in chosen)
    n = min(GOLDEN_SAMPLES if asked is None else asked, available)
    if asked is not None and asked < need:
        raise ConfigError(f"--golden {asked} is too few: the device check of an int8 model needs at least {need} "
                          "samples to tell a broken file from rounding.", f"Use --golden {max(need, GOLDEN_SAMPLES)}.")
    if n < need:
        raise DataError(f"{source} holds {available} samples; the device check of an int8 model needs at least "
                        f"{need}.",
                        "Use a larger test split (data.test_fraction; without real data: data.synthetic.holdout).")
    return n


def _golden_inputs(test: Path, n: int | None, chosen: list[dict]) -> tuple[np.ndarray, np.ndarray, list | None]:
    with np.load(test, allow_pickle=False) as npz:
        available = len(npz["y"])
        if available == 0:
            raise DataError(f"{test} holds no samples.", "Re-run `edgekd compress`.")
        n = golden_count(chosen, n, available, f"{test.parent.name}/{test.name}")
        x = np.ascontiguousarray(npz["x"][:n], dtype=np.float32)
        y = np.asarray(npz["y"][:n], dtype=np.int64)
        classes = [str(c) for c in npz["classes"]] if "classes" in npz.files else None
    return x, y, classes


def build_bundle(
    run_dir: str | Path,
    target: "TargetProfile",
    out_dir: str | Path,
    artifacts: list[str] | None = None,
    golden_samples: int | None = None,
) -> Path:
    """Write a complete bundle into `out_dir` (created; must not exist). manifest.json comes last."""
    from edgekd.bench.sysinfo import versions

    run_dir, out = Path(run_dir), Path(out_dir)
    report, produced = current_report(run_dir)
    recorded = [a.to_dict() for a in current_artifacts(run_dir, present=False)]
    chosen = select_artifacts(report, target, artifacts, recorded=recorded)
    _check_names(chosen)
    real = report["dataset"].get("real_data", True)  # data.kind: synthetic: no test split, nothing scored
    # the student's test file: data/test.npz, or the searched input size's the search chose (report dataset)
    student_test = (report["dataset"].get("test_file") or {}).get("path") or TEST_FILE
    test = (_shipped_file(run_dir, student_test, "the test split", produced) if real else
            _shipped_file(run_dir, VAL_FILE, "the held-out synthetic images", produced))
    x, y, classes = _golden_inputs(test, golden_samples, chosen)
    (out / "golden").mkdir(parents=True)
    np.save(out / "golden" / "inputs.npy", x)
    np.save(out / "golden" / "labels.npy", y)
    if real:
        (out / "data").mkdir()
        shutil.copyfile(test, out / TEST_FILE)
    models, sources = [], []
    for artifact in chosen:
        entry, found = _add_model(run_dir, out, artifact, x, target.threads, produced)
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
        "golden": {"inputs": "golden/inputs.npy", "labels": "golden/labels.npy", "samples": int(len(x)),
                   **({} if real else {"from": NO_REAL_GOLDEN})},
        "test": TEST_FILE if real else None,
        **({} if real else {"accuracy": "unmeasured (no real labelled data): no test split ships"}),
        "models": models,
        "versions": versions(),
    })
    return out


def _add_model(run_dir: Path, out: Path, a: dict, x: np.ndarray, threads: int,
               produced: dict[str, str]) -> tuple[dict, list[dict]]:
    """Copy one ONNX (+ sidecar), save its golden outputs; its manifest entry and metadata sources."""
    from edgekd.runtime.ort import make_session, predict

    src = _shipped_file(run_dir, a["path"], f"artifact {a['name']!r}", produced)
    side_src = _sidecar(run_dir, a, produced)
    info = onnx_info(src)
    side = _read_json(side_src) if side_src else {}
    if info["external_data"]:
        raise DataError(f"{src.name} keeps its weights in external files.", "Export it as one self-contained file.")
    shutil.copyfile(src, out / src.name)
    if side_src:
        shutil.copyfile(side_src, out / (src.name + ".json"))
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
        "tolerance": DEVICE.get(precision, DEVICE["fp32"]).as_dict(),
        "reported": {"accuracy": a.get("accuracy"), "latency_ms": a.get("latency_ms")},
    }
    return entry, [info["metadata"], side]


def _sidecar(run_dir: Path, a: dict, produced: dict[str, str]) -> Path | None:
    """The artifact's sidecar, when it has one, held to the same rules as the artifact."""
    rel = str(sidecar_path(a["path"]))
    if not (run_dir / rel).exists() and not (run_dir / rel).is_symlink():
        return None
    return _shipped_file(run_dir, rel, f"the sidecar of {a['name']!r}", produced)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        data = None
    if not isinstance(data, dict):
        raise DataError(f"{path} is not a JSON object.", "Re-export the artifact.")
    return data


def _write_manifest(out: Path, manifest: dict) -> None:
    """Hash every file, then write manifest.json, then SHA256SUMS (which also covers the manifest)."""
    files = {str(p.relative_to(out)): sha256_file(p) for p in sorted(out.rglob("*")) if p.is_file()}
    manifest["files"] = files
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    sums = {**files, MANIFEST: sha256_file(out / MANIFEST)}
    (out / CHECKSUMS).write_text("".join(f"{h}  {rel}\n" for rel, h in sorted(sums.items())))
