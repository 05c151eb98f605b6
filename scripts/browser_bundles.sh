#!/usr/bin/env bash
# Compiled SD v1.5 web bundles for the GPU machine, prepared here (it has no emscripten and no
# node, and 2-4 GB of weights cannot travel there): `wsd build --model sd15 --target webgpu`
# for each dtype, then everything but the weight shards (model.wasm, the app, the config, the
# tokenizer and params/tensor-cache.json) into .browser/bundles/sd15-<dtype>/, and Deno's
# measuring script (wsd.checks.browser_run --write-deno-script) beside them. On the GPU machine,
# `gpu_browser.sh weights DTYPE` writes the shards there with `wsd build --weights-only`
# (the same random weights: the preset's seed), so the bundle is the one built here.
#
#   bash scripts/browser_bundles.sh [float16 [float32]]     (default: float16 float32)
#
# Idempotent: a bundle is rebuilt only when wsd's sources changed since (the build is minutes
# on 2 cores). The folder is ignored by git; carry `.browser/bundles` in the call that runs
# `gpu_browser.sh weights`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEST=.browser/bundles
WORK=${WSD_BUNDLE_WORK:-/tmp/wsd-bundles}
mkdir -p "$DEST" "$WORK"

# What the bundles depend on: wsd's sources and the web app's.
stamp=$(cat $(git ls-files wsd web/src web/app web/package-lock.json | sort) | sha256sum | cut -c1-16)

for dtype in "${@:-float16 float32}"; do
    for d in $dtype; do
        out=$DEST/sd15-$d
        if [ -f "$out/STAMP" ] && [ "$(cat "$out/STAMP")" = "$stamp" ]; then
            echo "$out: up to date"
            continue
        fi
        "$PY" -m wsd.cli build --model sd15 --target webgpu --dtype "$d" --out "$WORK/sd15-$d"
        rm -rf "$out" && mkdir -p "$out/params"
        (cd "$WORK/sd15-$d" && cp -r $(ls | grep -v '^params$') "$OLDPWD/$out/")
        cp "$WORK/sd15-$d/params/tensor-cache.json" "$out/params/"
        echo "$stamp" >"$out/STAMP"
        echo "$out: $(du -sh "$out" | cut -f1) (without the weight shards)"
    done
done
"$PY" -m wsd.checks.browser_run --write-deno-script "$DEST/measure.js"
du -sh "$DEST"
