#!/usr/bin/env bash
# Installs everything wsd needs on a fresh Debian/Python machine. Idempotent: rerunning it
# installs nothing that is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# PyTorch: the CPU wheel. An unpinned torch would pull gigabytes of CUDA packages, so it is
# installed first and on its own; anything later that asks for torch finds it satisfied.
if ! "$PY" -c "import torch" 2>/dev/null; then
    "$PY" -m pip install --quiet "torch==2.13.0"
fi

# wsd itself, TVM (with the apache-tvm-ffi version its ABI needs), diffusers, test tools.
# pip checks every pin (a few seconds when all are met) and fixes what drifted.
"$PY" -m pip install --quiet -e ".[test]"

# The official CLIP BPE vocabulary ships in open_clip_torch; --no-deps keeps torchvision
# (which has no CPU build here) out. wsd reads the file without importing the package.
if ! "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('open_clip') is None)"; then
    "$PY" -m pip install --quiet --no-deps open_clip_torch
fi

# Debian packages, installed only when absent (one apt run for all that are missing).
apt_missing() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
}
# - Vulkan loader + Mesa's lavapipe (a CPU Vulkan driver): WebGPU-native verification
#   (wgpu-py, `wsd verify --target webgpu-native`) and the fp16 end-to-end test (Deno's wgpu).
# - chromium: the browser tests (Playwright drives Debian's Chromium; WebGPU on SwiftShader).
# - firefox-esr: the Firefox check of the page.
apt_missing libvulkan1 mesa-vulkan-drivers chromium firefox-esr
# node/npm for the web app's packages: Debian's only where none is on PATH (a NodeSource
# nodejs carries its own npm and conflicts with Debian's npm package).
command -v npm > /dev/null || apt_missing nodejs npm

# The web app's npm packages (web/package.json, versions locked in package-lock.json:
# tvmjs from the same TVM release as the wheel, web-tokenizers, esbuild, deno,
# puppeteer-core). Installed only when the lock file is newer than the install.
if [ ! -f web/node_modules/.package-lock.json ] || [ web/package-lock.json -nt web/node_modules/.package-lock.json ]; then
    # npm ci: exactly what the lock says, and the lock left as it is (npm install rewrote it
    # where its npm wrote entries differently). The lock is committed as npm 11 writes it,
    # with every platform's entries of deno's optional binaries, which npm ci needs.
    (cd web && npm ci --no-audit --no-fund --loglevel=error)
fi

# TVM's wasm runtime for web bundles, compiled with emscripten from the wheel's own sources
# (web/runtime/build.sh installs emscripten if needed; does nothing when up to date).
bash web/runtime/build.sh > /dev/null
