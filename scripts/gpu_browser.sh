#!/usr/bin/env bash
# Real browsers' WebGPU on the GPU machine (Ubuntu 24.04, root, no network, no /dev/dri, NVIDIA
# driver 580): Debian 12's Chromium and Deno, from the payload that scripts/browser_carry.sh
# prepares here in .browser/partN/ (one part per device call: a call carries at most 64 MiB).
#
#   gpu_browser.sh receive N [DIR]   copy part N (default .browser/partN) to $ROOT/parts and
#                                    check its sha256 against the part's MANIFEST
#   gpu_browser.sh install           reassemble the parts (sha256 of the whole tar), unpack every
#                                    deb with `dpkg -x` into $ROOT/prefix (never into /), Deno
#                                    into $ROOT/libexec; write $ROOT/env.sh and the wrappers
#                                    $ROOT/bin/chromium and $ROOT/bin/deno (they set
#                                    LD_LIBRARY_PATH for themselves only); print the versions
#   gpu_browser.sh probe [ARGS]      scripts/browser_probe.py: headless Chromium, every flag
#                                    variant, -> $OUT/browser-probe.json, logs and chrome://gpu
#                                    texts -> $OUT/browser-logs.tar.gz (ARGS go to the probe,
#                                    e.g. --variants facts-http,facts-file)
#   gpu_browser.sh deno-probe        scripts/webgpu_probe.js in Deno (wgpu) -> $OUT/deno-probe.json
#   gpu_browser.sh finish N          receive N, install, deno-probe, probe: the last call
#   gpu_browser.sh status            which parts are here
#
# Then SD v1.5 in the browsers (issue 16's runs), with wsd installed (gpu_check.sh stage1 and
# install), the Vulkan loader and wgpu (.gl/, .wgpuwhl/: scripts/webgpu_env.sh), the install
# above with Playwright (browser_carry.sh WITH_PLAYWRIGHT=1) and the compiled bundles
# (scripts/browser_bundles.sh here, carried as .browser/bundles):
#   gpu_browser.sh weights DTYPE     the sd15 bundle's weight shards, written here by
#                                    `wsd build --weights-only` into $ROOT/bundle-DTYPE
#   gpu_browser.sh reference DTYPE   the image of `wsd generate --target cuda` (a CUDA build:
#                                    ~6 min for fp16, a call of its own) and diffusers' fp32
#                                    image, same settings -> $ROOT/ref-*.png (and $OUT)
#   gpu_browser.sh native DTYPE      `wsd bench --target webgpu-native` of the same build (the
#                                    GPU time per call, for the host overhead ratio)
#   gpu_browser.sh measure DTYPE [NAMES]   wsd.checks.browser_run on the GPU, one JSON
#                                    browser-gpu-<name>-<dtype>-<date>.json each in $OUT (for
#                                    docs/results); NAMES from chromium, chromium-norobust
#                                    (Dawn's robustness checks off), deno (default: all)
#
# Environment: WSD_BROWSER_ROOT (default /tmp/wsd-browser: /tmp survives between back-to-back
# calls while the machine stays warm), OUT (default $ROOT/out), WSD_BROWSER_ADAPTER=gpu (the
# NVIDIA Vulkan driver) or swiftshader (Chromium's CPU Vulkan and, for Deno, Mesa lavapipe: the
# CPU machine's check of this script).
#
# The libraries stay off this shell's LD_LIBRARY_PATH on purpose: Debian's libssl, libexpat,
# libz ... in front of the system's would be loaded by python3 too.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
ROOT=${WSD_BROWSER_ROOT:-/tmp/wsd-browser}
PREFIX=$ROOT/prefix
OUT=${OUT:-$ROOT/out}
PY=${PYTHON:-python3}
ADAPTER=${WSD_BROWSER_ADAPTER:-gpu}
NVIDIA_ICD=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
NVIDIA_EGL=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
LAVAPIPE_ICD=/usr/share/vulkan/icd.d/lvp_icd.x86_64.json
mkdir -p "$ROOT/parts" "$OUT"

manifest_field() {  # manifest_field FILE KEY [N]: the line's fields after the key
    awk -v k="$2" -v n="${3:-}" '$1 == k && (n == "" || $2 == n)' "$1"
}

receive() {
    local n=$1 src=${2:-$REPO/.browser/part$1} want got
    [ -f "$src/payload.part" ] && [ -f "$src/MANIFEST" ] || {
        echo "receive: no $src/payload.part + MANIFEST (carry .browser/part$n)" >&2; return 1; }
    # Parts of another build (another MANIFEST) are of no use with this one: start over.
    if [ -f "$ROOT/parts/MANIFEST" ] && ! cmp -s "$ROOT/parts/MANIFEST" "$src/MANIFEST"; then
        echo "receive: part $n is from another build than the parts here: dropping those"
        rm -f "$ROOT"/parts/*
    fi
    cp "$src/MANIFEST" "$ROOT/parts/MANIFEST"
    want=$(manifest_field "$src/MANIFEST" part "$n" | cut -d' ' -f3)
    [ -n "$want" ] || { echo "receive: MANIFEST has no part $n" >&2; return 1; }
    cp "$src/payload.part" "$ROOT/parts/part$n.tmp"
    got=$(sha256sum "$ROOT/parts/part$n.tmp" | cut -d' ' -f1)
    if [ "$got" != "$want" ]; then
        rm -f "$ROOT/parts/part$n.tmp"
        echo "receive: part $n sha256 $got, MANIFEST says $want" >&2
        return 1
    fi
    mv "$ROOT/parts/part$n.tmp" "$ROOT/parts/part$n"
    status
}

status() {
    local total i have=() missing=()
    [ -f "$ROOT/parts/MANIFEST" ] || { echo "no parts received in $ROOT/parts"; return 0; }
    total=$(manifest_field "$ROOT/parts/MANIFEST" parts | cut -d' ' -f2)
    for i in $(seq 1 "$total"); do
        if [ -f "$ROOT/parts/part$i" ]; then have+=("$i"); else missing+=("$i"); fi
    done
    echo "parts of $total here: ${have[*]:-none}; missing: ${missing[*]:-none}"
}

libpath() {  # the prefix's library folders, Chromium's own first (its libvulkan.so.1, ANGLE)
    local p=$PREFIX a=x86_64-linux-gnu
    echo "$p/usr/lib/chromium:$p/usr/lib/$a:$p/lib/$a:$p/usr/lib/$a/pulseaudio:$p/usr/lib/$a/nss"
}

install() {
    local total i sum want deb
    [ -f "$ROOT/parts/MANIFEST" ] || { echo "install: receive the parts first" >&2; return 1; }
    total=$(manifest_field "$ROOT/parts/MANIFEST" parts | cut -d' ' -f2)
    for i in $(seq 1 "$total"); do
        [ -f "$ROOT/parts/part$i" ] || { status; echo "install: part $i missing (the" \
            "machine went back between calls? then receive every part again)" >&2; return 1; }
    done
    want=$(manifest_field "$ROOT/parts/MANIFEST" tar | cut -d' ' -f2)
    rm -rf "$ROOT/payload" "$PREFIX" "$ROOT/libexec"
    mkdir -p "$ROOT/payload" "$PREFIX" "$ROOT/libexec" "$ROOT/bin"
    sum=$(for i in $(seq 1 "$total"); do cat "$ROOT/parts/part$i"; done | sha256sum)
    sum=${sum%% *}
    [ "$sum" = "$want" ] || { echo "install: tar sha256 $sum, MANIFEST says $want" >&2; return 1; }
    for i in $(seq 1 "$total"); do cat "$ROOT/parts/part$i"; done | tar -x -C "$ROOT/payload"
    for deb in "$ROOT"/payload/debs/*.deb; do dpkg -x "$deb" "$PREFIX"; done
    echo "unpacked $(ls "$ROOT"/payload/debs/*.deb | wc -l) debs into $PREFIX" \
         "($(du -sh "$PREFIX" | cut -f1))"
    if command -v xz >/dev/null; then
        xz -dc "$ROOT/payload/deno/deno.xz" >"$ROOT/libexec/deno"
    else  # Ubuntu images may lack xz-utils; Python has lzma
        "$PY" -c 'import lzma, shutil, sys
shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
            "$ROOT/payload/deno/deno.xz" "$ROOT/libexec/deno"
    fi
    chmod +x "$ROOT/libexec/deno"

    # Playwright (browser_carry.sh WITH_PLAYWRIGHT=1): its wheels into $ROOT/site
    if compgen -G "$ROOT/payload/wheels/*.whl" >/dev/null; then
        # cp312 wheels: the GPU machine's Python; elsewhere pip may refuse them (not fatal)
        if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$ROOT/site" "$ROOT"/payload/wheels/*.whl; then
            echo "Playwright installed in $ROOT/site (PYTHONPATH=$ROOT/site)"
        else
            echo "install: the Playwright wheels did not install (see above)" >&2
        fi
    fi

    # fontconfig: the prefix's fonts only (the machine may have no /etc/fonts at all)
    mkdir -p "$ROOT/fontcache"
    cat >"$ROOT/fonts.conf" <<EOF
<?xml version="1.0"?>
<!DOCTYPE fontconfig SYSTEM "fonts.dtd">
<fontconfig>
  <dir>$PREFIX/usr/share/fonts</dir>
  <cachedir>$ROOT/fontcache</cachedir>
</fontconfig>
EOF
    # env.sh: what the wrappers and the probe need; LD_LIBRARY_PATH only under its own name
    {
        echo "export WSD_BROWSER_LD_LIBRARY_PATH=$(libpath)"
        echo "export FONTCONFIG_FILE=$ROOT/fonts.conf"
        echo "export XDG_RUNTIME_DIR=$ROOT/xdg"
        echo "export WSD_CHROMIUM=$ROOT/bin/chromium WSD_DENO=$ROOT/bin/deno"
    } >"$ROOT/env.sh"
    mkdir -p "$ROOT/xdg" && chmod 700 "$ROOT/xdg"
    # Wrappers for any driver of these programs (browser_probe.py, Playwright, wsd.checks.browser_run
    # via WSD_CHROMIUM / WSD_DENO): `exec` keeps the DevTools pipe's fds 3 and 4 open.
    cat >"$ROOT/bin/chromium" <<EOF
#!/bin/sh
. "$ROOT/env.sh"
export LD_LIBRARY_PATH="\$WSD_BROWSER_LD_LIBRARY_PATH"
exec "$PREFIX/usr/lib/chromium/chromium" "\$@"
EOF
    cat >"$ROOT/bin/deno" <<EOF
#!/bin/sh
. "$ROOT/env.sh"
export LD_LIBRARY_PATH="\$WSD_BROWSER_LD_LIBRARY_PATH"
exec "$ROOT/libexec/deno" "\$@"
EOF
    chmod +x "$ROOT/bin/chromium" "$ROOT/bin/deno"
    # What the GPU machine lacks that the carried set did not bring (should be nothing), and
    # what comes from outside the prefix (should be glibc, libgcc_s and libstdc++ alone)
    LD_LIBRARY_PATH=$(libpath) ldd "$PREFIX/usr/lib/chromium/chromium" >"$ROOT/ldd.txt" || true
    grep "not found" "$ROOT/ldd.txt" || echo "ldd: every library of chromium found"
    echo "from outside the prefix:" $(grep "=> /" "$ROOT/ldd.txt" | grep -v "=> $PREFIX/" \
        | awk '{print $1}' | sort)
    # not fatal: the probes still run and say more (Deno's does not need Chromium)
    "$ROOT/bin/chromium" --version || echo "install: chromium --version failed" >&2
    "$ROOT/bin/deno" --version | head -1 || echo "install: deno --version failed" >&2
    cat "$ROOT/payload/PACKAGES" >"$OUT/browser-packages.txt"
}

adapter_env() {  # the Vulkan driver for the chosen adapter, and the env.sh of install
    [ -f "$ROOT/env.sh" ] || { echo "run install first" >&2; return 1; }
    # shellcheck disable=SC1091
    . "$ROOT/env.sh"
    if [ "$ADAPTER" = gpu ]; then
        [ -f "$NVIDIA_ICD" ] && export VK_DRIVER_FILES=$NVIDIA_ICD
        [ -f "$NVIDIA_EGL" ] && export __EGL_VENDOR_LIBRARY_FILENAMES=$NVIDIA_EGL
    elif [ -f "$LAVAPIPE_ICD" ]; then  # only Deno uses it: Chromium's SwiftShader is its own
        export VK_DRIVER_FILES=$LAVAPIPE_ICD
    fi
    return 0
}

probe() {
    local mode=gpu rc=0
    [ "$ADAPTER" = gpu ] || mode=swiftshader
    adapter_env
    rm -rf "$ROOT/logs"
    "$PY" "$REPO/scripts/browser_probe.py" --chromium "$ROOT/bin/chromium" --mode "$mode" \
        --out "$OUT/browser-probe.json" --log-dir "$ROOT/logs" "$@" || rc=$?
    tar -czf "$OUT/browser-logs.tar.gz" -C "$ROOT" logs
    echo "probe: exit $rc (1: no variant found an adapter); $OUT/browser-probe.json"
    return 0
}

deno_probe() {
    local rc=0
    adapter_env
    mkdir -p "$ROOT/deno-dir"
    # stdout: the JSON; stderr (wgpu's warnings) to a log beside it
    DENO_DIR=$ROOT/deno-dir NO_COLOR=1 RUST_LOG=${RUST_LOG:-wgpu_hal=warn,wgpu_core=warn} \
        timeout 300 "$ROOT/bin/deno" run --allow-read --allow-env \
        "$REPO/scripts/webgpu_probe.js" 3 >"$OUT/deno-probe.json" 2>"$OUT/deno-probe.log" \
        || rc=$?
    echo "deno-probe: exit $rc; $OUT/deno-probe.json"
    "$PY" - "$OUT/deno-probe.json" <<'EOF' || tail -20 "$OUT/deno-probe.log"
import json, sys
d = json.load(open(sys.argv[1]))
for r in d.get("requests", []):
    info = (r.get("adapter") or {}).get("info", {})
    f16 = "shader-f16" in (r.get("adapter") or {}).get("features", [])
    print(f"  {r['name']}: {info.get('description') or info.get('device')!r} shader-f16={f16}"
          f" {r.get('error', '')}")
print("  compute:", d.get("compute"))
EOF
    return 0
}

# The run's settings: the issue's 20-step 512x512 image with a fixed seed and prompt, as
# window.wsd.generate takes them and as `wsd generate` does.
PROMPT="a photograph of an astronaut riding a horse"
SEED=42
STEPS=20
GUIDANCE=7.5
SCHEDULER=pndm
SETTINGS="{\"prompt\": \"$PROMPT\", \"steps\": $STEPS, \"guidanceScale\": $GUIDANCE,"
SETTINGS+=" \"scheduler\": \"$SCHEDULER\", \"seed\": $SEED}"

wsd_env() {  # wsd and its wheels (gpu_check.sh install), Playwright, the GPU's Vulkan driver
    export PYTHONPATH=/tmp/site:$ROOT/site:$REPO PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
    export WSD_CACHE=${WSD_CACHE:-/tmp/wsd-cache}
    adapter_env
}

weights() {
    local dtype=$1
    wsd_env
    "$PY" -m wsd.cli build --target webgpu --weights-only \
        --from "$REPO/.browser/bundles/sd15-$dtype" --model sd15 --out "$ROOT/bundle-$dtype"
}

reference() {
    local dtype=$1
    wsd_env
    "$PY" -m wsd.cli generate --model sd15 --target cuda --dtype "$dtype" --prompt "$PROMPT" \
        --scheduler "$SCHEDULER" --steps "$STEPS" --guidance-scale "$GUIDANCE" --seed "$SEED" \
        --out "$ROOT/ref-wsd-cuda-$dtype.png"
    cp "$ROOT/ref-wsd-cuda-$dtype.png" "$OUT/"
    if [ ! -f "$ROOT/ref-diffusers-fp32.png" ]; then
        "$PY" -c 'import sys
from PIL import Image
from wsd.models import load_model
from wsd.checks.reference import Reference, Settings
prompt, scheduler, steps, guidance, seed, out = sys.argv[1:]
settings = Settings(prompt, "", scheduler, int(steps), float(guidance), int(seed))
image = Reference(load_model("sd15"), "cuda").image(settings, 512, 512)
Image.fromarray(image).save(out)' "$PROMPT" "$SCHEDULER" "$STEPS" "$GUIDANCE" "$SEED" \
            "$ROOT/ref-diffusers-fp32.png"
    fi
    cp "$ROOT/ref-diffusers-fp32.png" "$OUT/"
}

native() {  # `wsd bench --target webgpu-native` of the bundle's build: the GPU time per call
    local dtype=$1
    wsd_env
    # wgpu-py and the Vulkan loader (scripts/webgpu_env.sh; /tmp/site is on PYTHONPATH)
    # shellcheck disable=SC1091
    (cd "$REPO" && source scripts/webgpu_env.sh && webgpu_env) || echo "native: webgpu_env failed" >&2
    VK_DRIVER_FILES=$NVIDIA_ICD "$PY" -m wsd.cli bench --model sd15 --target webgpu-native \
        --dtype "$dtype" --parts unet,vae --json "$OUT/bench-webgpu-native-$dtype.json"
    cp "$OUT/bench-webgpu-native-$dtype.json" "$ROOT/"
}

# The engines `measure` runs: name -> wsd.checks.browser_run arguments
declare -A ENGINES=(
    [chromium]="--engine chromium --dawn-features vulkan_enable_f16_on_nvidia"
    [chromium-norobust]="--engine chromium --dawn-features vulkan_enable_f16_on_nvidia --disable-robustness"
    [deno]="--engine deno --deno-script $REPO/.browser/bundles/measure.js"
)

measure() {  # measure DTYPE [NAMES]: one wsd.checks.browser_run JSON per engine (default: all)
    local dtype=$1 names=${2:-chromium,chromium-norobust,deno} day name rc native=()
    day=$(date -u +%F)
    wsd_env
    [ -f "$ROOT/bench-webgpu-native-$dtype.json" ] \
        && native=(--compare-native "$ROOT/bench-webgpu-native-$dtype.json")
    for name in ${names//,/ }; do
        rc=0
        # shellcheck disable=SC2086  # ENGINES' entries are word lists
        timeout 420 "$PY" -m wsd.checks.browser_run --bundle "$ROOT/bundle-$dtype" ${ENGINES[$name]} \
            --adapter gpu --settings "$SETTINGS" --runs 3 \
            --reference "$ROOT/ref-wsd-cuda-$dtype.png" \
            --diffusers-reference "$ROOT/ref-diffusers-fp32.png" "${native[@]}" \
            --save-image "$OUT/$name-$dtype.png" \
            --out "$OUT/browser-gpu-$name-$dtype-$day.json" || rc=$?
        echo "$name ($dtype): exit $rc"
    done
    return 0
}

case "${1:-}" in
receive) shift; receive "$@" ;;
weights) weights "$2" ;;
reference) reference "$2" ;;
native) native "$2" ;;
measure) measure "$2" "${3:-}" ;;
status) status ;;
install) install ;;
probe) shift; probe "$@" ;;
deno-probe) deno_probe ;;
finish)
    # Deno first (seconds); the Chromium variants get what is left of a 600 s call (a hung
    # GPU process costs a variant up to ~2 min; the JSON is rewritten after each variant).
    shift
    receive "$1"
    install
    deno_probe
    probe --budget "${PROBE_BUDGET:-420}"
    ;;
*)
    sed -n '2,43p' "$0"
    exit 2
    ;;
esac
