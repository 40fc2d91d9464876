"""List an ImageFolder without decoding anything: paths, labels, classes, sizes, mtimes.

Layouts (torchvision's ImageFolder, plus named splits):
    ROOT/<class>/.../<image>                       one pool; splits are carved (edgekd.data.splits)
    ROOT/train/<class>/... + ROOT/val/... [+ ROOT/test/...]   the folders are the splits

A `FileList` keeps its relative paths in one UTF-8 byte array with offsets, not a Python
list of strings: DataLoader workers forked from the training process touch a list's
per-object refcounts and so copy its pages, one copy per worker, growing with N
(pytorch/pytorch#13246). Arrays of plain numbers are never written, so never copied.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekd.data.sources import IMAGE_SUFFIXES
from edgekd.errors import DataError
from edgekd.ui import progress_of

SPLIT_FOLDERS = ("train", "val", "test")
LAYOUT_HINT = ("An imagefolder dataset is ROOT/<class>/<images>, or ROOT/train/<class>/... with "
               "ROOT/val/<class>/... and optionally ROOT/test/<class>/....")


@dataclass(frozen=True)
class FileList:
    """N image files under `root`: relative paths (UTF-8 in `blob`, file i is blob[offsets[i]:offsets[i+1]]),
    class index, size in bytes and mtime in ns per file. Sorted by class, then path."""

    root: Path
    classes: tuple[str, ...]
    blob: np.ndarray  # uint8, all relative paths back to back
    offsets: np.ndarray  # int64, N + 1
    labels: np.ndarray  # int64, N
    sizes: np.ndarray  # int64, N
    mtimes: np.ndarray  # int64 ns, N

    def __len__(self) -> int:
        return len(self.labels)

    def relpath(self, i: int) -> str:
        return self.blob[self.offsets[i] : self.offsets[i + 1]].tobytes().decode()

    def path(self, i: int) -> Path:
        return self.root / self.relpath(i)

    def subset(self, rows: np.ndarray) -> "FileList":
        """The files at `rows` (in that order), packed into a new blob."""
        rows = np.asarray(rows, dtype=np.int64)
        starts, lengths = self.offsets[rows], self.offsets[rows + 1] - self.offsets[rows]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        blob = self.blob[np.arange(offsets[-1]) + np.repeat(starts - offsets[:-1], lengths)]
        return FileList(self.root, self.classes, blob, offsets, self.labels[rows], self.sizes[rows], self.mtimes[rows])


@dataclass(frozen=True)
class Listing:
    root: Path
    classes: tuple[str, ...]
    folders: dict[str, FileList]  # "all" for a flat layout; else "train", "val" and/or "test"

    @property
    def split_folders(self) -> bool:
        return "all" not in self.folders


def list_imagefolder(root: Path, ui=None) -> Listing:
    """List ROOT in either layout; DataError (with the fix) for anything training would trip on later."""
    root = Path(root)
    if not root.is_dir():
        what = "no longer exists" if not root.exists() else "is not a folder"
        raise DataError(f"The dataset folder {str(root)!r} {what}.",
                        "Point data.path at the ImageFolder root (moved or unmounted since the last run?).")
    subdirs = _subdirs(root)
    if "train" in subdirs and set(subdirs) <= set(SPLIT_FOLDERS):
        folders = {name: list_classes(root, name, ui) for name in SPLIT_FOLDERS if name in subdirs}
        _check_same_classes(root, folders)
    else:
        folders = {"all": list_classes(root, None, ui)}
    return Listing(root, next(iter(folders.values())).classes, folders)


def list_classes(root: Path, split: str | None, ui=None) -> FileList:
    """ROOT[/split]/<class>/**/<image>: every class folder must hold at least one image."""
    base = root / split if split else root
    classes = _subdirs(base)
    if not classes:
        raise DataError(f"{base} has no class folders.", LAYOUT_HINT)
    parts, empty = [], []
    with progress_of(ui, f"listing {base}", len(classes), "folders") as advance:
        for label, name in enumerate(classes):
            found = sorted(_scan(base / name, prefix=f"{split}/{name}" if split else name))
            empty += [] if found else [name]
            parts.append(_pack(root, classes, *zip(*found), [label] * len(found)) if found else None)
            advance(1, files=sum(len(part) for part in parts if part is not None))
    if empty and len(empty) == len(classes):
        raise DataError(f"No images under {base} (looked for {', '.join(sorted(IMAGE_SUFFIXES))}).",
                        "Check data.path; " + LAYOUT_HINT)
    if empty:
        raise DataError(f"{len(empty)} class folder(s) under {base} hold no images: {_names(empty)}.",
                        "Add images to them or remove the folders (each folder is a class).")
    return _concat(parts)


def summarise(classes, splits: dict[str, np.ndarray]) -> dict:
    """Images per class per split, from label arrays (a FileList's `labels`, or an array source's):
    {"classes": [...], "splits": {"train": {"images": n, "per_class": {class: n}}, ...}}. Label -1
    (a sample used without its label) counts in `images` and in no class."""
    out = {}
    for name, labels in splits.items():
        labels = np.asarray(labels)
        per_class = np.bincount(labels[labels >= 0], minlength=len(classes))
        out[name] = {"images": int(len(labels)), "per_class": {c: int(n) for c, n in zip(classes, per_class)}}
    return {"classes": list(classes), "splits": out}


def format_summary(summary: dict) -> str:
    """A plain table for `edgekd validate`: one row per class, one column per split, totals last."""
    splits = summary["splits"]
    width = max([5] + [len(c) for c in summary["classes"]])
    lines = [f"{'class':<{width}}" + "".join(f"{name:>9}" for name in splits)]
    for c in summary["classes"]:
        lines.append(f"{c:<{width}}" + "".join(f"{s['per_class'][c]:>9,}" for s in splits.values()))
    lines.append(f"{'total':<{width}}" + "".join(f"{s['images']:>9,}" for s in splits.values()))
    return "\n".join(lines)


def check_unchanged(files: FileList) -> None:
    """DataError listing every file that vanished or changed (size or mtime) since `files` was listed."""
    missing, changed = [], []
    for i in range(len(files)):
        try:
            st = os.stat(files.path(i))
        except FileNotFoundError:
            missing.append(files.relpath(i))
            continue
        if st.st_size != files.sizes[i] or st.st_mtime_ns != files.mtimes[i]:
            changed.append(files.relpath(i))
    if missing or changed:
        parts = [f"{len(missing)} vanished ({_names(missing)})"] if missing else []
        parts += [f"{len(changed)} changed ({_names(changed)})"] if changed else []
        raise DataError(f"Files under {files.root} changed since they were listed: {'; '.join(parts)}.",
                        "Re-run: the data stage lists the folder again and re-runs what depends on it.")


def _scan(folder: Path, prefix: str):
    """(relative path, size, mtime_ns) of every image file below `folder`, hidden entries skipped."""
    try:
        with os.scandir(folder) as it:
            entries = [(e.name, e.path, e.is_dir()) for e in it if not e.name.startswith(".")]
        for name, path, is_dir in entries:
            if is_dir:
                yield from _scan(Path(path), f"{prefix}/{name}")
            elif Path(name).suffix.lower() in IMAGE_SUFFIXES:
                st = os.stat(path)
                yield f"{prefix}/{name}", st.st_size, st.st_mtime_ns
    except OSError as exc:
        raise DataError(f"Cannot read {exc.filename or folder}: {exc.strerror}.",
                        "Fix its permissions or remove it from the dataset folder.") from None


def _subdirs(folder: Path) -> list[str]:
    try:
        with os.scandir(folder) as entries:
            return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
    except OSError as exc:
        raise DataError(f"Cannot list {folder}: {exc.strerror}.", "Check that the folder is readable.") from None


def _check_same_classes(root: Path, folders: dict[str, FileList]) -> None:
    reference = folders["train"].classes
    for name, files in folders.items():
        if files.classes != reference:
            only_train = sorted(set(reference) - set(files.classes))
            only_here = sorted(set(files.classes) - set(reference))
            raise DataError(
                f"{root}/train and {root}/{name} have different class folders: "
                f"only in train: {_names(only_train) or '-'}; only in {name}: {_names(only_here) or '-'}.",
                "Give every split the same class folders (an empty split folder is an error too).")


def _concat(parts: list[FileList]) -> FileList:
    """One FileList of per-class lists (listing keeps one class's Python strings at a time)."""
    first = parts[0]
    offsets = [parts[0].offsets] + [p.offsets[1:] + shift for p, shift in
                                     zip(parts[1:], np.cumsum([len(p.blob) for p in parts[:-1]]))]
    join = lambda name: np.concatenate([getattr(p, name) for p in parts])  # noqa: E731
    return FileList(first.root, first.classes, join("blob"), np.concatenate(offsets), join("labels"),
                    join("sizes"), join("mtimes"))


def _pack(root, classes, relpaths, sizes, mtimes, labels) -> FileList:
    encoded = [p.encode() for p in relpaths]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    blob = np.frombuffer(b"".join(encoded), dtype=np.uint8)
    as_int = lambda values: np.asarray(values, dtype=np.int64).reshape(-1)  # noqa: E731
    return FileList(Path(root), tuple(classes), blob, offsets, as_int(labels), as_int(sizes), as_int(mtimes))


def _names(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")

