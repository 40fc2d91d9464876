#!/usr/bin/env bash
# Build an arm64 Debian chroot, run through qemu-user, holding a venv with the
# aarch64 onnxruntime and numpy wheels from PyPI. scripts/arm_parity.py runs
# exported .onnx files inside it to show they give the same outputs on aarch64
# (Raspberry Pi 4/5) as on the workstation.
#
# Idempotent: every step checks whether it is already done and skips it.
# Needs root (apt-get, mount, chroot) and about 1 GiB of disk; ~6 minutes cold.
#
# Environment:
#   EDGEKD_ARM_ROOT     chroot directory          (default /opt/edgekd-arm64)
#   EDGEKD_ARM_SUITE    Debian suite              (default: the host's, from apt sources)
#   EDGEKD_ARM_MIRROR   Debian mirror URL         (default: the host's, from apt sources)
#   EDGEKD_ARM_ORT      onnxruntime version pin   (default: the host's onnxruntime version,
#                                                  so only the CPU architecture differs)
set -Eeuo pipefail

ROOT="${EDGEKD_ARM_ROOT:-/opt/edgekd-arm64}"
VENV=/opt/venv   # path inside the chroot
STEP="start"

say()  { printf '[arm_env] %s\n' "$*"; }
skip() { printf '[arm_env] %s: already done, skipping\n' "$*"; }
fail() { printf '[arm_env] FAILED at step "%s": %s\n' "$STEP" "$*" >&2; exit 1; }
trap 'fail "command exited with status $? (line $LINENO); fix the cause and re-run, finished steps are skipped"' ERR

step_preflight() {
    STEP="preflight"
    [ "$(id -u)" -eq 0 ] || fail "must run as root (apt-get, mount and chroot need it)"
    case "$(uname -m)" in
        x86_64|amd64) ;;
        aarch64|arm64) fail "this host is already aarch64: run onnxruntime natively, no chroot needed" ;;
        *) fail "untested host architecture $(uname -m)" ;;
    esac
}

step_host_packages() {
    STEP="host packages (qemu-user-static debootstrap binfmt-support)"
    if command -v qemu-aarch64-static >/dev/null && command -v debootstrap >/dev/null \
        && command -v update-binfmts >/dev/null; then
        skip "$STEP"; return
    fi
    say "$STEP: apt-get install"
    apt-get update -q || fail "apt-get update failed: is the Debian mirror reachable?"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q qemu-user-static debootstrap binfmt-support \
        || fail "apt-get install failed"
}

step_binfmt() {
    STEP="binfmt_misc"
    if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
        say "$STEP: mounting binfmt_misc"
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc \
            || fail "cannot mount binfmt_misc (a container needs --privileged, or mount it on the host)"
    fi
    if grep -qx enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null; then
        skip "$STEP qemu-aarch64 handler"; return
    fi
    say "$STEP: enabling the qemu-aarch64 handler"
    update-binfmts --enable qemu-aarch64 || fail "update-binfmts --enable qemu-aarch64 failed"
    grep -qx enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 \
        || fail "qemu-aarch64 handler still not enabled in /proc/sys/fs/binfmt_misc"
}

# The host's Debian suite and mirror, read from deb822 (*.sources) or one-line
# (sources.list) files: only the Debian mirror the host already uses is reachable.
host_suite_mirror() {
    local suite="" mirror="" f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -e "$f" ] || continue
        # first stanza whose URI is a plain Debian archive (not -security/-updates)
        read -r mirror suite < <(awk '
            /^URIs:/    { uri=$2 }
            /^Suites:/  { s=$2 }
            /^$/        { if (uri ~ /debian\/?$/ && s !~ /-/) { print uri, s; exit } uri=""; s="" }
            END         { if (uri ~ /debian\/?$/ && s !~ /-/) print uri, s }' "$f" | head -n1) || true
        [ -n "$suite" ] && break
    done
    if [ -z "$suite" ] && [ -e /etc/apt/sources.list ]; then
        read -r mirror suite < <(awk '$1=="deb" && $2 ~ /debian\/?$/ && $3 !~ /-/ { print $2, $3; exit }' \
            /etc/apt/sources.list) || true
    fi
    SUITE="${EDGEKD_ARM_SUITE:-$suite}"
    MIRROR="${EDGEKD_ARM_MIRROR:-$mirror}"
    [ -n "$SUITE" ] && [ -n "$MIRROR" ] \
        || fail "cannot find a Debian suite/mirror in /etc/apt/sources.list*; set EDGEKD_ARM_SUITE and EDGEKD_ARM_MIRROR"
}

step_debootstrap() {
    STEP="debootstrap first stage"
    if [ -e "$ROOT/.edgekd-stage1-done" ] || [ -e "$ROOT/.edgekd-stage2-done" ]; then
        skip "$STEP"; return
    fi
    host_suite_mirror
    say "$STEP: arm64 $SUITE from $MIRROR into $ROOT"
    mkdir -p "$ROOT"
    debootstrap --arch=arm64 --foreign --variant=minbase \
        --include=python3,python3-venv,python3-pip,ca-certificates "$SUITE" "$ROOT" "$MIRROR" \
        || fail "debootstrap --foreign failed (see above, and $ROOT/debootstrap/debootstrap.log if it exists; a half-made $ROOT can be removed)"
    touch "$ROOT/.edgekd-stage1-done"   # a failed run leaves no marker and is redone
}

step_qemu_binary() {
    STEP="copy qemu-aarch64-static into the chroot"
    if cmp -s /usr/bin/qemu-aarch64-static "$ROOT/usr/bin/qemu-aarch64-static"; then
        skip "$STEP"; return
    fi
    say "$STEP"
    cp /usr/bin/qemu-aarch64-static "$ROOT/usr/bin/"
}

step_second_stage() {
    STEP="debootstrap second stage"
    if [ -e "$ROOT/.edgekd-stage2-done" ]; then
        skip "$STEP"; return
    fi
    say "$STEP (runs arm64 dpkg under qemu; a few minutes)"
    chroot "$ROOT" /debootstrap/debootstrap --second-stage \
        || fail "second stage failed (see $ROOT/debootstrap/debootstrap.log)"
    touch "$ROOT/.edgekd-stage2-done"
}

step_network_files() {
    STEP="copy resolv.conf and CA bundle"
    say "$STEP (refreshed every run: the host's may change)"
    cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
    mkdir -p "$ROOT/etc/ssl/certs"
    cp -L /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ca-certificates.crt"
}

step_venv() {
    STEP="python venv"
    if [ -x "$ROOT$VENV/bin/python" ]; then
        skip "$STEP"; return
    fi
    say "$STEP: python3 -m venv $VENV (inside the chroot)"
    chroot "$ROOT" python3 -m venv "$VENV" || fail "python3 -m venv failed inside the chroot"
}

# Default pin: the host's onnxruntime version, so a difference in outputs comes
# from the CPU architecture and its kernels, not from a different ORT release.
ort_requirement() {
    local v="${EDGEKD_ARM_ORT:-}"
    if [ -z "$v" ] && command -v python3 >/dev/null; then
        v="$(python3 -c 'import onnxruntime; print(onnxruntime.__version__)' 2>/dev/null || true)"
    fi
    if [ -n "$v" ]; then echo "onnxruntime==$v"; else echo "onnxruntime"; fi
}

step_wheels() {
    STEP="pip install onnxruntime numpy (aarch64 wheels)"
    local req; req="$(ort_requirement)"
    local want="${req#onnxruntime==}"; [ "$want" = onnxruntime ] && want=""
    local have
    have="$(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin chroot "$ROOT" "$VENV/bin/python" -c 'import numpy, onnxruntime; print(onnxruntime.__version__)' 2>/dev/null || true)"
    if [ -n "$have" ] && { [ -z "$want" ] || [ "$have" = "$want" ]; }; then
        skip "$STEP (onnxruntime $have)"; return
    fi
    say "$STEP: $req numpy (PyPI, emulated pip; a few minutes)"
    # A clean environment: the host's PIP_* variables and pip config point at
    # local wheel folders that do not exist inside the chroot; only PyPI is used.
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root PIP_CONFIG_FILE=/dev/null \
        PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
        chroot "$ROOT" "$VENV/bin/pip" install --only-binary=:all: "$req" numpy \
        || fail "pip install failed (no aarch64 wheel for $req on this Python? set EDGEKD_ARM_ORT)"
}

step_check() {
    STEP="check"
    local out
    out="$(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin chroot "$ROOT" "$VENV/bin/python" -c \
        'import platform, numpy, onnxruntime; print(platform.machine(), "python", platform.python_version(), "onnxruntime", onnxruntime.__version__, "numpy", numpy.__version__)' 2>/dev/null)" \
        || fail "the venv python cannot import onnxruntime and numpy"
    case "$out" in
        aarch64*) say "ready: $ROOT -> $out" ;;
        *) fail "expected platform.machine() == aarch64 inside the chroot, got: $out" ;;
    esac
}

step_preflight
step_host_packages
step_binfmt
step_debootstrap
step_qemu_binary
step_second_stage
step_network_files
step_venv
step_wheels
step_check
