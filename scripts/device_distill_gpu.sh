#!/usr/bin/env bash
# Issue #14's GPU preset (benchmarks/distill_fashion_mnist.py --preset gpu) on a lent device machine,
# for a session whose task has one (the device tool's `status`: can_start_another). That machine has
# torch, timm and onnx but not pydantic, and no internet: the wheels and Fashion-MNIST travel in .device/.
#
#   here, once:   bash scripts/device_distill_gpu.sh --prepare          (~20 MB into .device/, git-ignored)
#   smoke here:   EDGEKD_DEVICE_ARGS="--device cpu --smoke" bash scripts/device_distill_gpu.sh --run
#   there:        run(command="bash scripts/device_distill_gpu.sh --run", carry=[".device"], timeout_s=600)
#
# --run trains the rows it is given (default: all) into /tmp/edgekd-fm-work, which stays on the machine
# while it is warm (30 s after a call): a second call right after the first, with the remaining rows,
# reuses the finished ones. Results (json, md, log) land in $OUT (here: .device/out).
set -euo pipefail
cd "$(dirname "$0")/.."

PY_TAG=3.12  # the device image's python3
WHEELS=(pydantic==2.13.4 pydantic-core==2.46.4 annotated-types==0.7.0 typing-inspection==0.4.2 typing-extensions==4.16.0)

prepare() {
    grep -qx '/.device/' .git/info/exclude 2>/dev/null || echo '/.device/' >> .git/info/exclude
    mkdir -p .device/whl .device/fashion-mnist
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_TAG" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .device/whl "${WHEELS[@]}"
    local data=/usr/share/datasets/fashion-mnist
    [ -f "$data/train-images-idx3-ubyte.gz" ] || { echo "no Fashion-MNIST at $data: apt-get install dataset-fashion-mnist" >&2; exit 2; }
    cp "$data"/*-ubyte.gz .device/fashion-mnist/
    du -sh .device
}

run() {
    local out=${OUT:-.device/out} rows=()
    [ $# -gt 0 ] && rows=(--rows "$@")
    mkdir -p "$out"
    if python3 -c 'import pydantic' 2>/dev/null; then :; else
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .device/whl/*.whl
        export PYTHONPATH=/tmp/site
    fi
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | tee "$out/gpu.txt" || true
    # shellcheck disable=SC2086  # EDGEKD_DEVICE_ARGS is a list of flags
    python3 benchmarks/distill_fashion_mnist.py ${EDGEKD_DEVICE_ARGS:---device cuda} --preset gpu \
        --data .device/fashion-mnist --work /tmp/edgekd-fm-work --out "$out" "${rows[@]}" 2>&1 | tee "$out/log.txt"
}

case "${1:-}" in
    --prepare) prepare ;;
    --run) shift; run "$@" ;;
    *) echo "usage: $0 --prepare | --run [ROW ...]" >&2; exit 2 ;;
esac
