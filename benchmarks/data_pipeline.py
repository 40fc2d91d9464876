"""The streaming data layer on a real-looking ImageFolder: decode rate, memory, the uint8 cache.

    nice -n 10 python benchmarks/data_pipeline.py [--sizes 2000 10000] [--work /tmp/edgekd-data-bench]

Writes an ImageFolder of N JPEGs (and some PNGs) of mixed sizes made from Fashion-MNIST
(apt-get install dataset-fashion-mnist), upscaled and tinted to RGB: short sides 160-640 px,
aspect 3:4..4:3, and a few 12 MP "phone photos". Then, per section:

  decode   images/s through the DataLoader (decode + eval transform at 224 px) with 0, 1, 2
           workers, with and without PIL draft mode, on the first N
  stream   peak memory of iterating the whole dataset once at 224 px (default workers), per N,
           in a fresh process: its own peak RSS and the peak PSS of it plus its workers
  cache    build the uint8 cache (images/s), build it again (no decode), then iterate the cache
           with the image folder moved away: proof that no JPEG is read

Results: benchmarks/results/data_pipeline.md and .json, with the machine they ran on.
Sections are entries of SECTIONS (name -> function(context) -> dict): phase 2 adds the
`edgekd compress` runs as one more.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edgekd.bench.sysinfo import machine_info  # noqa: E402
from edgekd.data import Preprocess  # noqa: E402

FASHION = Path("/usr/share/datasets/fashion-mnist")
PRE = Preprocess(224, 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bilinear", 0.875, 255.0)
PHONE = (4032, 3024)
MiB = 1 << 20


# ---------------------------------------------------------------- the dataset


def write_imagefolder(root: Path, n: int, seed: int = 0, png_share: float = 0.1, phone_share: float = 0.005) -> dict:
    """ROOT/<class>/<i>.jpg|png from the first n Fashion-MNIST training images; kept when complete."""
    from PIL import Image

    from edgekd.data.sources import FASHION_CLASSES, load_idx

    done = root / "complete.json"
    if done.is_file():
        return json.loads(done.read_text())
    raw = load_idx(FASHION)
    rng = np.random.default_rng(seed)
    sizes, phones, pngs, total = [], 0, 0, 0
    for i in range(n):
        label = int(raw.train_y[i])
        folder = root / FASHION_CLASSES[label].replace("/", "-")
        folder.mkdir(parents=True, exist_ok=True)
        phone = rng.random() < phone_share
        if phone:
            w, h = PHONE
        else:
            short, aspect = int(rng.integers(160, 641)), rng.uniform(0.75, 4 / 3)
            w, h = (round(short * aspect), short) if aspect >= 1 else (short, round(short / aspect))
        tint = rng.uniform(0.5, 1.0, 3)
        grey = Image.fromarray(raw.train_x[i]).resize((w, h), Image.BICUBIC)
        rgb = (np.asarray(grey, dtype=np.float32)[..., None] * tint).astype(np.uint8)
        png = not phone and rng.random() < png_share
        path = folder / f"{i:06d}.{'png' if png else 'jpg'}"
        Image.fromarray(rgb).save(path, **({} if png else {"quality": 90}))
        sizes.append(min(w, h))
        phones, pngs, total = phones + phone, pngs + png, total + path.stat().st_size
    stats = {"images": n, "phone_photos": phones, "png": pngs, "bytes": total,
             "short_side_px": {"min": min(sizes), "median": float(np.median(sizes)), "max": max(sizes)}}
    done.write_text(json.dumps(stats))
    return stats


# ---------------------------------------------------------------- measurements


def decode_rates(root: Path, workers_list=(0, 1, 2), limit: int = 2000) -> list[dict]:
    """images/s through make_loader (decode + eval transform), draft on and off. Wall-clock rates
    suffer from whatever else runs on the machine; the in-process row also gives CPU ms per image."""
    from edgekd.data.datasets import FileSource, SampleDataset
    from edgekd.data.listing import list_imagefolder
    from edgekd.data.loader import make_loader
    from edgekd.data.transforms import eval_transform
    from edgekd.data.u8cache import cache_side

    files = list_imagefolder(root).folders["all"]
    files = files.subset(np.arange(min(limit, len(files))))
    rows = []
    for draft in (True, False):
        dataset = SampleDataset(FileSource(files, 3, cache_side(PRE) if draft else None), eval_transform(PRE))
        for workers in workers_list:
            loader = make_loader(dataset, 64, train=False, workers=workers)
            started, cpu = time.perf_counter(), time.process_time()
            count = sum(len(batch[0]) for batch in loader)
            seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
            rows.append({"draft": draft, "workers": workers, "images": count, "seconds": round(seconds, 2),
                         "images_per_s": round(count / seconds, 1), "load_average": os.getloadavg()[0],
                         "cpu_ms_per_image": round(cpu / count * 1e3, 2) if workers == 0 else None})
            print(f"  decode draft={draft} workers={workers}: {count / seconds:.0f} images/s", flush=True)
    return rows


def phone_photo_ms(root: Path, repeats: int = 3) -> dict:
    """CPU ms to decode + eval-transform one 12 MP photo, draft on and off (in this process)."""
    from edgekd.data.decode import load_image
    from edgekd.data.transforms import eval_transform
    from edgekd.data.u8cache import cache_side

    from PIL import Image

    photos = [p for p in sorted(root.rglob("*.jpg")) if Image.open(p).size == PHONE][:5]
    tf, out = eval_transform(PRE), {"photos": len(photos)}
    for name, side in (("draft", cache_side(PRE)), ("no_draft", None)):
        started = time.process_time()
        for _ in range(repeats):
            for path in photos:
                tf(load_image(path, 3, side))
        out[f"{name}_cpu_ms"] = round((time.process_time() - started) / (repeats * len(photos)) * 1e3, 1)
    return out


def stream_once(root: Path, source: str, cache_root: Path | None) -> dict:
    """In this process: iterate every image once at 224 px (eval transform, default workers)."""
    from edgekd.data.datasets import FileSource, SampleDataset, U8Source
    from edgekd.data.listing import list_imagefolder
    from edgekd.data.loader import default_workers, make_loader
    from edgekd.data.transforms import eval_transform
    from edgekd.data.u8cache import cache_path, cache_side
    from edgekd.data.u8store import U8Store

    imports_rss = _self_peak_rss()  # torch and the data layer, before any image
    started = time.perf_counter()
    if source == "cache":  # the folder itself may be gone: open the store by the name recorded for it
        store = U8Store(Path(os.environ["EDGEKD_BENCH_STORE"]))
        dataset, listed = SampleDataset(U8Source(store), eval_transform(PRE)), None
    else:
        listed = list_imagefolder(root).folders["all"]
        dataset = SampleDataset(FileSource(listed, 3, cache_side(PRE)), eval_transform(PRE))
    count, checksum = 0, 0.0
    for x, _, _ in make_loader(dataset, 64, train=False):
        count += len(x)
        checksum += float(x[:, :, 0, 0].sum())
    seconds = time.perf_counter() - started
    file_list_bytes = sum(a.nbytes for a in (listed.blob, listed.offsets, listed.labels, listed.sizes,
                                             listed.mtimes)) if listed is not None else 0
    return {"images": count, "seconds": round(seconds, 2), "images_per_s": round(count / seconds, 1),
            "workers": default_workers(), "main_peak_rss_mib": round(_self_peak_rss() / MiB, 1),
            "main_rss_after_imports_mib": round(imports_rss / MiB, 1),
            "file_list_mib": round(file_list_bytes / MiB, 2), "cache_path": str(cache_path(listed, PRE, cache_root))
            if listed is not None and cache_root else None}


def stream_in_fresh_process(root: Path, source: str, store: Path | None = None) -> dict:
    """stream_once in a child; this process samples the PSS and RSS of the child and its workers."""
    result, peaks = _run_sampled([sys.executable, __file__, "_stream", str(root), source],
                                 EDGEKD_BENCH_STORE=str(store or ""))
    return {**result, "tree_peak_pss_mib": round(peaks["pss"] / MiB, 1),
            "tree_peak_rss_sum_mib": round(peaks["rss"] / MiB, 1)}


def cache_pass(root: Path, cache_root: Path) -> dict:
    """Build the uint8 cache, build it again, then stream it with the image folder moved away."""
    from edgekd.data.listing import list_imagefolder
    from edgekd.data.u8cache import build_u8_cache, cache_summary
    from edgekd.ui import UI

    shutil.rmtree(cache_root, ignore_errors=True)  # measure a cold build
    files = list_imagefolder(root).folders["all"]
    started = time.perf_counter()
    store = build_u8_cache(files, PRE, cache_root, ui=UI())
    build_s = time.perf_counter() - started
    started = time.perf_counter()
    again = build_u8_cache(list_imagefolder(root).folders["all"], PRE, cache_root)
    reuse_s = time.perf_counter() - started
    hidden = root.with_name(root.name + ".moved-away")
    root.rename(hidden)  # nothing can decode a JPEG from here on
    try:
        streamed = stream_in_fresh_process(root, "cache", store.path)
    finally:
        hidden.rename(root)
    return {"build_s": round(build_s, 1), "build_images_per_s": round(len(files) / build_s, 1),
            "rebuild_same_identity_s": round(reuse_s, 2), "same_store": again.path == store.path,
            "store": cache_summary(store), "stream_with_folder_moved_away": streamed}


# ---------------------------------------------------------------- sections and results


def section_decode(ctx: dict) -> dict:
    root = ctx["roots"][min(ctx["sizes"])]
    return {"rows": decode_rates(root), "phone_photo": phone_photo_ms(root)}


def section_stream(ctx: dict) -> dict:
    return {str(n): stream_in_fresh_process(ctx["roots"][n], "files") for n in ctx["sizes"]}


def section_cache(ctx: dict) -> dict:
    n = max(ctx["sizes"])
    return {"n": n, **cache_pass(ctx["roots"][n], ctx["work"] / "cache")}


# Tiny compute so the data path dominates: a random test_resnet teacher (no training: the issue's "teacher
# from a checkpoint"), the student on 5% of the training split for one epoch with the live teacher (no
# full-split logit pass), 5% val and test splits; every image is still listed, checked and decoded once.
COMPRESS_CONFIG = """
version: 1
name: bench-{n}
data: {{kind: imagefolder, path: {root}, input_size: 224, channels: 3, val_fraction: 0.05, test_fraction: 0.05,
        train_fraction: 0.05, cache: {cache}, cache_dir: {cache_dir}}}
teacher: {{model: test_resnet, train: {{epochs: 0}}}}
student: {{width: 0.5}}
distill:
  teacher_cache: false
  train: {{epochs: 1, batch_size: 32, lr: 0.01, warmup_epochs: 0}}
quantize: {{max_int8_drop: 1.0}}
targets: [host-cpu]
bench: {{warmup_s: 0.02, min_iterations: 3, min_seconds: 0.02, batch_sizes: [1], rounds: 1}}
"""
OLD_COMPRESS_PEAK_GIB = {300: 3.4, 500: 5.0, 2000: 9.1}  # issue #13, this machine, the in-memory data layer


def compress_run(root: Path, n: int, work: Path, cache: str) -> dict:
    """`edgekd compress` (tiny models, 1 epoch each, 224 px) in a fresh process: its own peak RSS, the
    peak PSS of it and its children (DataLoader workers, bench processes), wall time per stage, data wait."""
    run_dir, config = work / f"run-{n}-{cache}", work / f"bench-{n}-{cache}.yaml"
    shutil.rmtree(run_dir, ignore_errors=True)
    config.write_text(COMPRESS_CONFIG.format(n=n, root=root, cache=cache, cache_dir=work / f"cache-{n}"))
    code = ("import json, resource, sys; from pathlib import Path; from edgekd.pipeline.compress import compress; "
            "from edgekd.ui import UI; compress(Path(sys.argv[1]), out=Path(sys.argv[2]), ui=UI(quiet=True)); "
            "print(json.dumps({'peak_rss': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))")
    started = time.perf_counter()
    out, peaks = _run_sampled([sys.executable, "-c", code, str(config), str(run_dir)])
    wall = time.perf_counter() - started
    stages = {}
    for record in sorted((run_dir / ".edgekd").glob("*.json")):
        body = json.loads(record.read_text())
        if "seconds" in body:
            stages[record.stem] = round(body["seconds"], 1)
    waits = {name: [json.loads(line).get("data_wait") for line in (run_dir / f"{name}.metrics.jsonl").read_text().splitlines()]
             for name in ("teacher", "student") if (run_dir / f"{name}.metrics.jsonl").is_file()}
    return {"n": n, "cache": cache, "wall_s": round(wall, 1), "main_peak_rss_mib": round(out["peak_rss"] / MiB, 1),
            "tree_peak_pss_mib": round(peaks["pss"] / MiB, 1), "tree_peak_rss_sum_mib": round(peaks["rss"] / MiB, 1),
            "stage_seconds": stages, "data_wait": waits, "load_average": os.getloadavg()[0]}


def _run_sampled(cmd: list[str], **env_extra: str) -> tuple[dict, dict]:
    """Run `cmd` (its last stdout line is JSON) while sampling the PSS/RSS of its process tree."""
    env = {**os.environ, "PYTHONPATH": str(REPO), **env_extra}
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    peaks = {"pss": 0, "rss": 0}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            pss, rss = _tree_memory(child.pid)
            peaks["pss"], peaks["rss"] = max(peaks["pss"], pss), max(peaks["rss"], rss)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    out, _ = child.communicate()
    stop.set()
    sampler.join()
    if child.returncode:
        raise SystemExit(f"{cmd[:3]} failed ({child.returncode})")
    return json.loads(out.strip().splitlines()[-1]), peaks


def section_compress(ctx: dict) -> dict:
    """Per N: a cold run (no cache), then a run with data.cache: uint8 (built once, then read per sample)."""
    earlier = (ctx.get("previous") or {}).get("compress", {}).get("rows", [])
    rows = [row for row in earlier if row["n"] not in ctx["sizes"]]  # --merge: keep the other sizes' rows
    for n in ctx["sizes"]:
        for cache in ctx.get("compress_caches", ("none", "uint8")):
            print(f"  compress N={n} cache={cache}", flush=True)
            rows.append(compress_run(ctx["roots"][n], n, ctx["work"], cache))
            ctx["checkpoint"]("compress", {"rows": rows, "old_peak_gib": OLD_COMPRESS_PEAK_GIB})
    return {"rows": rows, "old_peak_gib": OLD_COMPRESS_PEAK_GIB}


SECTIONS = {"decode": section_decode, "stream": section_stream, "cache": section_cache, "compress": section_compress}


def _tree_memory(pid: int) -> tuple[int, int]:
    """(sum of PSS, sum of RSS) in bytes of `pid` and its descendants (Linux /proc)."""
    pids, frontier = {pid}, [pid]
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    while frontier:
        for child in parents.get(frontier.pop(), []):
            pids.add(child)
            frontier.append(child)
    pss = rss = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith(("Pss:", "Rss:")):
                    kib = int(line.split()[1]) * 1024
                    pss, rss = (pss + kib, rss) if line.startswith("Pss:") else (pss, rss + kib)
        except OSError:
            continue
    return pss, rss


def cpu_flags() -> list[str]:
    """The SIMD flags that decoding and resizing can use (Linux /proc/cpuinfo)."""
    try:
        line = next(x for x in Path("/proc/cpuinfo").read_text().splitlines() if x.startswith("flags"))
    except (OSError, StopIteration):
        return []
    wanted = ("sse4_2", "avx", "avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni")
    return [f for f in line.split(":", 1)[1].split() if f in wanted]


def _self_peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def write_results(result: dict, out: Path) -> None:
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(render(result))
    print(out.with_suffix(".md").read_text())


def render(r: dict) -> str:
    m = r["machine"]
    lines = ["# Streaming data layer: decode rate, memory, uint8 cache", "",
             f"Reproduce: `nice -n 10 python {r.get('command') or 'benchmarks/data_pipeline.py --sizes ' + ' '.join(map(str, r['sizes']))}`. "
             f"Machine: {m['cpu']} ({' '.join(m.get('cpu_flags', []))}), {m['usable_cores']} usable cores, {m['memory_mb']} MB RAM, {m['os']}; "
             f"torch {m['versions'].get('torch')}. {r['note']}", "",
             "Datasets: " + "; ".join(f"N={n}: {d['bytes'] / MiB:.0f} MiB, {d['png']} PNG, {d['phone_photos']} "
                                     f"12 MP photos, short side {d['short_side_px']['min']}-{d['short_side_px']['max']} px"
                                     for n, d in r["datasets"].items()) + ".", ""]
    if "decode" in r["sections"]:
        dec = r["sections"]["decode"]
        rows = dec["rows"]
        lines += [f"## Decode + eval transform at 224 px (first {rows[0]['images']:,} images)", "",
                  "Wall-clock images/s through make_loader (batch 64); the load average (1 min) when each row "
                  "ran shows how much of the 2 cores others were using.", "",
                  "| workers | draft: images/s | no draft: images/s | draft speed-up | load avg |",
                  "|---:|---:|---:|---:|---:|"]
        for w in sorted({row["workers"] for row in rows}):
            d = next(x for x in rows if x["workers"] == w and x["draft"])
            f = next(x for x in rows if x["workers"] == w and not x["draft"])
            lines.append(f"| {w} | {d['images_per_s']:.0f} | {f['images_per_s']:.0f} | "
                         f"{d['images_per_s'] / f['images_per_s']:.2f}x | {d['load_average']:.1f} / {f['load_average']:.1f} |")
        d0 = next(x for x in rows if x["workers"] == 0 and x["draft"])["cpu_ms_per_image"]
        f0 = next(x for x in rows if x["workers"] == 0 and not x["draft"])["cpu_ms_per_image"]
        ph = dec["phone_photo"]
        lines += ["", f"CPU time per image, in process: {d0:.1f} ms with draft mode, {f0:.1f} ms without "
                  f"(most images here are below 2 x 256 px, where draft changes nothing). A 12 MP phone photo "
                  f"({ph['photos']} measured): {ph['draft_cpu_ms']:.0f} ms with draft mode, "
                  f"{ph['no_draft_cpu_ms']:.0f} ms without ({ph['no_draft_cpu_ms'] / ph['draft_cpu_ms']:.1f}x).", ""]
    if "stream" in r["sections"]:
        lines += ["## Peak memory of one pass over the whole dataset at 224 px (fresh process, default workers)", "",
                  "| N | workers | images/s | main process peak RSS (after imports) | process + workers peak PSS | "
                  "file list |", "|---:|---:|---:|---:|---:|---:|"]
        for n, s in r["sections"]["stream"].items():
            lines.append(f"| {int(n):,} | {s['workers']} | {s['images_per_s']:.0f} | {s['main_peak_rss_mib']:.0f} MiB "
                         f"({s.get('main_rss_after_imports_mib', 0):.0f} MiB) | {s['tree_peak_pss_mib']:.0f} MiB | "
                         f"{s['file_list_mib']:.2f} MiB |")
        lines += ["", "After imports the process holds torch (CPU build) and this layer; the rest of the peak is "
                  "batches in flight (workers x prefetch x 38 MiB at batch 64). PSS splits pages shared "
                  "between the process and its forked workers instead of counting them in each.", ""]
    if "cache" in r["sections"]:
        c = r["sections"]["cache"]
        s = c["stream_with_folder_moved_away"]
        lines += ["## uint8 cache", "",
                  f"- Build for N={c['n']:,}: {c['build_s']:.0f} s ({c['build_images_per_s']:.0f} images/s), "
                  f"{c['store']['bytes'] / MiB:.0f} MiB on disk ({c['store']['shape']} uint8 per image).",
                  f"- Second build with the same identity: {c['rebuild_same_identity_s']:.2f} s (listing + hash), "
                  f"same store: {c['same_store']}, no image decoded.",
                  f"- Streaming the cache at 224 px with the image folder moved away (so no JPEG can be read): "
                  f"{s['images']:,} images, {s['images_per_s']:.0f} images/s, main peak RSS {s['main_peak_rss_mib']:.0f} MiB, "
                  f"process + workers peak PSS {s['tree_peak_pss_mib']:.0f} MiB.", ""]
    if "compress" in r["sections"]:
        c = r["sections"]["compress"]
        old = ", ".join(f"{v} GiB at {int(k):,}" for k, v in c["old_peak_gib"].items())
        lines += ["## Whole `edgekd compress` at 224 px (tiny compute: see COMPRESS_CONFIG)", "",
                  f"Before phase 2 (every image held as float32 in RAM), peak memory of the whole run was {old} "
                  "training images. Now:", "",
                  "| N | data.cache | wall | main process peak RSS | process tree peak PSS | data wait (teacher, student) | "
                  "stage seconds | load avg |", "|---:|---|---:|---:|---:|---|---|---:|"]
        for row in c["rows"]:
            waits = ", ".join(f"{name} {max(v):.0%}" for name, v in row["data_wait"].items() if v and None not in v)
            stages = ", ".join(f"{k} {v:.0f}" for k, v in row["stage_seconds"].items())
            lines.append(f"| {row['n']:,} | {row['cache']} | {row['wall_s']:.0f} s | {row['main_peak_rss_mib']:.0f} MiB | "
                         f"{row['tree_peak_pss_mib']:.0f} MiB | {waits} | {stages} | {row['load_average']:.1f} |")
        lines += ["", "The tree's PSS counts the DataLoader workers and the bench stage's measuring processes, "
                  "sharing pages fairly. Data wait: the share of training-step time spent waiting for the next batch. "
                  "The run: a random test_resnet teacher (not trained), a width-0.5 student distilled for one epoch "
                  "on 5% of the training split with the live teacher, 5% val and test splits, input 224 px; every "
                  "image is listed, checked (decoded) once by the data stage. What the main process holds besides "
                  "torch and the models are the bounded files it loads: data/val.npz and data/test.npz (the INT8 gate, "
                  "parity, bench), each capped at 256 MiB of inputs (445 images at 224 px: reached at N=10,000 with "
                  "5% splits, 101 images at N=2,000) and calib.npz (250 images); none grows past its cap with N.", ""]
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_stream":
        print(json.dumps(stream_once(Path(sys.argv[2]), sys.argv[3], None)))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 10000])
    parser.add_argument("--work", type=Path, default=Path("/tmp/edgekd-data-bench"))
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "data_pipeline")
    parser.add_argument("--note", default="")
    parser.add_argument("--caches", nargs="+", default=["none", "uint8"], choices=["none", "uint8"],
                        help="compress: which data.cache settings to run per N")
    parser.add_argument("--merge", action="store_true",
                        help="keep the other sections of an existing result (rerun or add some sections)")
    args = parser.parse_args()
    roots = {n: args.work / f"fmnist-{n}" for n in args.sizes}
    datasets = {n: write_imagefolder(root, n) for n, root in roots.items()}
    ctx = {"sizes": args.sizes, "roots": roots, "work": args.work, "compress_caches": tuple(args.caches)}
    command = " ".join(["benchmarks/data_pipeline.py", *(a.replace(f"{REPO}/", "") for a in sys.argv[1:])])
    result = {"machine": {**machine_info(), "cpu_flags": cpu_flags()}, "command": command, "sizes": args.sizes, "datasets": datasets, "note": args.note,
              "preprocess": PRE.to_dict(), "sections": {}}
    previous = args.out.with_suffix(".json")
    if args.merge and previous.is_file():
        before = json.loads(previous.read_text())
        result["sections"], ctx["previous"] = before["sections"], before["sections"]
        result["sizes"] = sorted(set(before.get("sizes", [])) | set(args.sizes))
        result["datasets"] = {**before.get("datasets", {}), **{str(n): d for n, d in datasets.items()}}
    def checkpoint(name: str, partial: dict) -> None:  # a long section saves what it has measured so far
        write_results({**result, "sections": {**result["sections"], name: partial}}, args.out)

    ctx["checkpoint"] = checkpoint
    for name in args.sections:
        print(f"section {name}", flush=True)
        result["sections"][name] = SECTIONS[name](ctx)
    write_results(result, args.out)


if __name__ == "__main__":
    main()
