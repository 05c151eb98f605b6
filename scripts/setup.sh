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

# WebGPU-native verification (`wsd verify --target webgpu-native`, tests/numerics/
# test_webgpu_native.py): wgpu-py comes with the test extra (pinned in pyproject.toml); it
# needs a Vulkan driver, and on a machine without a GPU that is Mesa's lavapipe (CPU).
# Installed only when absent.
for pkg in libvulkan1 mesa-vulkan-drivers; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        apt-get update -qq && apt-get install -y -qq --no-install-recommends libvulkan1 mesa-vulkan-drivers
        break
    fi
done
