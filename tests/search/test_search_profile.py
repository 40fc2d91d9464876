"""`edgekd profile` is device side: it runs with numpy + onnxruntime, never importing torch or timm."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_profile_and_the_search_package_import_no_torch(prepared, tmp_path):
    code = (
        "import sys, json\n"
        "from pathlib import Path\n"
        "from edgekd.search.profile import items_from, measure_items, probe\n"
        "from edgekd.bench.measure import BenchSettings\n"
        "import edgekd.search\n"
        f"items = items_from([Path({str(prepared[0].path)!r})])\n"
        "quick = BenchSettings(warmup_s=0.01, min_iterations=3, min_seconds=0.01, batch_sizes=(1,), rounds=1)\n"
        "entries = measure_items(items, threads=1, settings=quick)\n"
        "heavy = sorted(m for m in ('torch', 'timm', 'torchvision') if m in sys.modules)\n"
        "print(json.dumps({'heavy': heavy, 'probe': probe(), 'entry': entries[0]}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["heavy"] == []
    assert result["probe"]["runtime"]["name"] == "onnxruntime" and result["probe"]["runtime"]["version"]
    entry = result["entry"]
    assert (entry["name"], entry["precision"], entry["input_size"]) == (prepared[0].name, "fp32", 32)
    assert entry["arch_id"] == prepared[0].architecture.arch_id and entry["latency_ms"]["p50"] > 0
