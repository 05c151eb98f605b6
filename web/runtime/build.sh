#!/usr/bin/env bash
# Build the TVM web (wasm) runtime pieces from the INSTALLED apache-tvm wheel's own sources,
# plus the project's replacements for the 9 headers the wheel does not ship
# (web/runtime/include/).  Output, laid out as tvm.contrib.tvmjs.create_tvmjs_wasm expects:
#
#   $WSD_WASM_RUNTIME/web/dist/wasm/{wasm_runtime,tvmjs_support,webgpu_runtime}.bc
#
# so link with TVM_HOME=$WSD_WASM_RUNTIME.  Default WSD_WASM_RUNTIME:
# ~/.cache/wsd/wasm-runtime/<tvm version>.  The three files are wasm OBJECT files with the
# .bc names create_tvmjs_wasm looks for (Debian's emscripten 3.1.6 is LLVM 14 and cannot read
# the LLVM 22 bitcode TVM itself emits, so everything is exchanged as wasm objects).
#
# Idempotent: does nothing when the outputs exist, are newer than every input and were built
# with the same settings.  Prints the output directory (TVM_HOME) as the last line of stdout.
#
# Env: WSD_WASM_RUNTIME (output dir), WSD_WASM_OPT (default -O2), PYTHON (default python3),
#      WSD_WASM_FORCE=1 (rebuild).  Exit status 77: emscripten unavailable and not installable.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${PYTHON:-python3}"
OPT="${WSD_WASM_OPT:--O2}"
log() { echo "[wasm-runtime] $*" >&2; }
trap 'log "failed (exit $?) at line $LINENO: $BASH_COMMAND"' ERR

# locate the installed packages without importing them (importing tvm costs seconds)
read -r TVM_DIR FFI_DIR TVM_VER FFI_VER < <("$PY" - <<'PYEOF'
import importlib.metadata as md, importlib.util as iu
def where(name):
    spec = iu.find_spec(name)
    if spec is None:
        raise SystemExit(f"python package {name} is not installed")
    return list(spec.submodule_search_locations)[0]
print(where("tvm"), where("tvm_ffi"), md.version("apache-tvm"), md.version("apache-tvm-ffi"))
PYEOF
)
OUT="${WSD_WASM_RUNTIME:-$HOME/.cache/wsd/wasm-runtime/$TVM_VER}"
DIST="$OUT/web/dist/wasm"
UNITS=(wasm_runtime tvmjs_support webgpu_runtime)

# ---- (a) toolchain --------------------------------------------------------------------------
# Debian's emscripten runs its JS tools with the distro's node modules.
export NODE_PATH="${NODE_PATH:+$NODE_PATH:}/usr/share/nodejs"
if ! command -v emcc >/dev/null 2>&1; then
  log "emcc not found; installing Debian's emscripten"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; fi
  fi
  if ! command -v apt-get >/dev/null 2>&1 || { [ "$(id -u)" != 0 ] && [ -z "$SUDO" ]; }; then
    log "cannot install emscripten (no apt-get or no root)"; exit 77
  fi
  if ! $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y emscripten >&2; then
    $SUDO apt-get update >&2 || true
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y emscripten >&2 \
      || { log "apt-get install emscripten failed"; exit 77; }
  fi
fi
EMCC_VER="$(emcc --version 2>/dev/null | sed -n 1p || true)"  # sed reads all: no SIGPIPE under pipefail
[ -n "$EMCC_VER" ] || { log "emcc does not run"; exit 77; }
# emscripten keeps its system-library cache next to the install; use a private one when that
# is not writable (non-root).
if [ -z "${EM_CACHE:-}" ]; then
  EM_ROOT="$(dirname "$(readlink -f "$(command -v emcc)")")"
  if [ ! -w "$EM_ROOT/cache" ] && [ ! -w "/usr/share/emscripten/cache" ]; then
    export EM_CACHE="$HOME/.cache/wsd/emscripten-cache"
    mkdir -p "$EM_CACHE"
  fi
fi

# ---- (c) up to date? -------------------------------------------------------------------------
SETTINGS="tvm=$TVM_VER tvm_ffi=$FFI_VER emcc=$EMCC_VER opt=$OPT tvm_dir=$TVM_DIR ffi_dir=$FFI_DIR"
INPUTS=("$TVM_DIR/web/emcc" "$TVM_DIR/src/runtime" "$TVM_DIR/include" "$FFI_DIR/include"
        "$FFI_DIR/src" "$HERE/include" "$HERE/build.sh")
up_to_date() {
  [ "${WSD_WASM_FORCE:-0}" = 1 ] && return 1
  [ -f "$OUT/build-settings.txt" ] && [ "$(cat "$OUT/build-settings.txt")" = "$SETTINGS" ] || return 1
  local u
  for u in "${UNITS[@]}"; do
    [ -f "$DIST/$u.bc" ] || return 1
    [ -z "$(find "${INPUTS[@]}" -newer "$DIST/$u.bc" -print -quit 2>/dev/null)" ] || return 1
  done
}
if up_to_date; then
  log "up to date: $DIST"
  echo "$OUT"
  exit 0
fi

# ---- (b) stage a source tree shaped like TVM's repository, then compile ----------------------
# The runtime sources reach headers through relative paths (../../support/x.h,
# 3rdparty/tvm-ffi/src/...), so they are compiled from a copy laid out like the TVM repo.
STAGE="$OUT/stage"
rm -rf "$STAGE"
mkdir -p "$STAGE/web" "$STAGE/src" "$STAGE/include/tvm" "$STAGE/3rdparty/tvm-ffi/3rdparty" "$DIST"
cp -r "$TVM_DIR/web/emcc" "$STAGE/web/emcc"
cp -r "$TVM_DIR/src/runtime" "$STAGE/src/runtime"
cp -r "$TVM_DIR/include/tvm/." "$STAGE/include/tvm/"
cp -r "$FFI_DIR/include" "$FFI_DIR/src" "$STAGE/3rdparty/tvm-ffi/"
cp -r "$FFI_DIR/3rdparty/dlpack" "$STAGE/3rdparty/tvm-ffi/3rdparty/dlpack"
# the project's own headers
cp -r "$HERE/include/tvm/support" "$STAGE/include/tvm/support"
cp -r "$HERE/include/src/support" "$STAGE/src/support"
cp -r "$HERE/include/3rdparty/compiler-rt" "$STAGE/3rdparty/compiler-rt"
find "$STAGE" -name __pycache__ -prune -exec rm -rf {} +

CFLAGS=(-I"$STAGE" -I"$STAGE/include" -I"$STAGE/3rdparty/tvm-ffi/include"
        -I"$STAGE/3rdparty/tvm-ffi/3rdparty/dlpack/include" -I"$STAGE/3rdparty/compiler-rt"
        "$OPT" -std=c++17 -Wno-ignored-attributes)

log "compiling ${UNITS[*]} with $EMCC_VER ($OPT) into $DIST"
start=$(date +%s)
pids=()
for u in "${UNITS[@]}"; do
  (
    t0=$(date +%s)
    emcc "${CFLAGS[@]}" -c -o "$DIST/$u.bc.tmp" "$STAGE/web/emcc/$u.cc" > "$DIST/$u.log" 2>&1 \
      || { log "FAILED $u (see $DIST/$u.log)"; tail -n 40 "$DIST/$u.log" >&2; exit 1; }
    mv "$DIST/$u.bc.tmp" "$DIST/$u.bc"
    log "$u: $(( $(date +%s) - t0 )) s"
  ) &
  pids+=($!)
done
fail=0
for p in "${pids[@]}"; do wait "$p" || fail=1; done
[ "$fail" = 0 ] || exit 1
echo "$SETTINGS" > "$OUT/build-settings.txt"
log "done in $(( $(date +%s) - start )) s"
echo "$OUT"
