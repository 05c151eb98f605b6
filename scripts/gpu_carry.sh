#!/usr/bin/env bash
# Prepare, on this (CPU, networked) machine, the Python wheels and Vulkan/GL loader debs that the
# GPU machine needs for wsd and carries in ignored folders (it has no network; its image is
# Ubuntu 24.04 with Python 3.12 at /opt/torch/.venv: torch, transformers and the packages of
# /work/.library/device/KINDS.md). One device call carries at most 64 MiB of working tree, the
# tracked tree (~3 MiB) included, so the 96 MiB apache-tvm wheel travels in two parts:
#
#   .tvmwheel1/part.aa   first part of the TVM wheel     call `gpu_check.sh stage1`
#   .tvmwheel2/part.ab   the rest                        call `gpu_check.sh install`, with
#   .whl/*.whl           wsd's runtime wheels the image lacks or pins differently (--no-deps,
#                        into /tmp/site), and .whl/perf/ (pytest-benchmark, gpu_perf.sh install)
#   .wgpuwhl/*.whl       wgpu-py and its needs           webgpu calls (scripts/webgpu_env.sh),
#   .gl/*.deb            Vulkan/GL loaders               with .gl
#   .extrawhl/*.whl      optional: what a bare torch+transformers venv lacks but the image has
#                        (scipy, scikit-image + needs, Pillow, pytest + needs, requests +
#                        needs); carry it only where
#                        `python3 -c "import scipy, skimage, PIL, pytest, requests"` fails there
#
# The split point balances the two TVM calls: part.aa takes half of (wheel + .whl/), so the
# install call, which also carries .whl/, is no larger than stage1. Each folder holds a MANIFEST
# (sha256 and size of each file; for the TVM parts also of the whole wheel). gpu_check.sh joins
# `/tmp/tvmparts/part.*` in name order, so nothing else in .tvmwheel*/ may be named part.*.
#
#   bash scripts/gpu_carry.sh            # idempotent: downloads only what is missing, drops
#                                        # files of other versions, re-splits only on change
#   bash scripts/gpu_carry.sh --check    # only the sizes, the per-call table and the check
#
# The check at the end reads Requires-Dist of every carried wheel (markers evaluated for
# CPython 3.12 on Linux x86_64) and tells what each set leaves unmet: (a) the image as
# KINDS.md lists it (versions where its pip-list row gives them), (b) a bare torch +
# transformers venv (their requirement closure, read from this machine's installed torch and
# transformers: a stand-in for torch 2.11 / transformers 5.x), with and without .extrawhl/.
# It fails when (a), or (b) with .extrawhl/ (when made), leaves anything unmet.
#
# Environment: PYTHON (default python3, needs `packaging`), GPU_CARRY_CACHE (the full TVM wheel
# and the private apt state; default /tmp/wsd-gpu-carry), LIMIT_MIB (per-call budget checked,
# default 63 of the 64 MiB), NO_EXTRA=1 (skip .extrawhl/).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
CACHE=${GPU_CARRY_CACHE:-/tmp/wsd-gpu-carry}
STATE=$CACHE/apt
LIMIT_MIB=${LIMIT_MIB:-63}

# Pins. TVM, apache-tvm-ffi, regex and wgpu must equal pyproject.toml's (checked below);
# diffusers 0.42.1 and open_clip_torch (vocabulary file only, --no-deps) as in facts.md.
TVM_VERSION=0.27.0.post1
WHL=(apache-tvm-ffi==0.1.14.post1 diffusers==0.42.1 regex==2026.5.9 open_clip_torch==3.3.0
     ml_dtypes==0.7.0 psutil==7.2.2)
PERF=(pytest-benchmark==5.2.3 py-cpuinfo==9.0.0)
WGPU=(wgpu==0.32.0 cffi==2.0.0 pycparser==3.0 rendercanvas==2.7.2)
EXTRA=(scipy==1.17.1 scikit-image==0.26.0 imageio==2.38.2 tifffile==2026.3.3 lazy-loader==0.6
       pillow==13.0.0 pytest==9.0.3 pluggy==1.6.0 iniconfig==2.3.0 pygments==2.20.0
       requests==2.34.2 urllib3==2.7.0 idna==3.20 charset-normalizer==3.4.7 certifi==2026.5.20)
# The device README's loader recipe (Debian's packages; `dpkg -x` into / by webgpu_env).
GL=(libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)

PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
           --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
PIP_DL=("$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12
        --implementation cp "${PLATFORMS[@]}")
APT=(apt-get -q -o "Dir::State::Lists=$STATE/lists" -o "Dir::Cache=$STATE/cache"
     -o APT::Architecture=amd64 -o APT::Architectures=amd64 -o APT::Sandbox::User=root)

die() { echo "gpu_carry: $*" >&2; exit 1; }

# The pins that pyproject.toml and gpu_check.sh also name must agree.
pins_agree() {
    local p
    for p in "apache-tvm==$TVM_VERSION" "${WHL[0]}" "${WHL[2]}" "${WGPU[0]}"; do
        grep -q "\"$p\"" pyproject.toml || die "pyproject.toml does not pin $p (update the pins here)"
    done
    grep -q "apache_tvm-$TVM_VERSION-" scripts/gpu_check.sh \
        || die "scripts/gpu_check.sh joins another TVM version than $TVM_VERSION"
}

norm() { echo "$1" | tr 'A-Z' 'a-z' | sed -E 's/[-_.]+/_/g'; }

# wheel_of DIR NAME==VERSION: prints the wheel of that pin in DIR, if any
wheel_of() {
    local dir=$1 name ver f base
    name=$(norm "${2%%==*}")
    ver=${2##*==}
    for f in "$dir"/*.whl; do
        [ -e "$f" ] || continue
        base=$(basename "$f")
        if [ "$(norm "${base%%-*}")" = "$name" ] && [ "$(echo "$base" | cut -d- -f2)" = "$ver" ]
        then echo "$f"; return 0; fi
    done
    return 1
}

# wheels DIR PIN...: download each pinned wheel that DIR lacks, drop every other wheel
wheels() {
    local dir=$1 p f keep
    shift
    mkdir -p "$dir"
    local missing=()
    for p in "$@"; do wheel_of "$dir" "$p" >/dev/null || missing+=("$p"); done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "downloading into ${dir#$ROOT/}: ${missing[*]}"
        "${PIP_DL[@]}" -d "$dir" "${missing[@]}" 2>&1 | grep -v "^WARNING: Location" || true
        for p in "${missing[@]}"; do
            wheel_of "$dir" "$p" >/dev/null || die "no cp312 manylinux x86_64 wheel for $p"
        done
    fi
    for f in "$dir"/*.whl; do
        [ -e "$f" ] || continue
        keep=
        for p in "$@"; do [ "$(wheel_of "$dir" "$p")" = "$f" ] && keep=1 && break; done
        [ -n "$keep" ] || { echo "dropping ${f#$ROOT/} (not pinned here; two versions of one package stop pip)"; rm -f "$f"; }
    done
    manifest "$dir" '*.whl'
}

# manifest DIR GLOB: DIR/MANIFEST with "sha256 bytes name" of each file matching GLOB
manifest() {
    local dir=$1 f
    (cd "$dir" && for f in $2; do
        [ -e "$f" ] && echo "$(sha256sum "$f" | cut -d' ' -f1) $(stat -c %s "$f") $f"
    done) >"$dir/MANIFEST"
}

debs() {  # the loader debs of $GL into .gl/ (private apt state, amd64 whatever this machine is)
    local dir=$ROOT/.gl p deb missing=()
    mkdir -p "$dir" "$STATE/lists/partial" "$STATE/cache/archives/partial"
    for p in "${GL[@]}"; do compgen -G "$dir/${p}_*.deb" >/dev/null || missing+=("$p"); done
    if [ ${#missing[@]} -gt 0 ]; then
        if [ -z "$(find "$STATE/lists" -maxdepth 1 -name '*_Packages*' -mtime -1 2>/dev/null)" ]
        then "${APT[@]}" update >/dev/null; fi
        echo "downloading into .gl: ${missing[*]}"
        (cd "$dir" && "${APT[@]}" download "${missing[@]}" >/dev/null)
    fi
    for deb in "$dir"/*.deb; do
        p=$(dpkg-deb -f "$deb" Package)
        [[ " ${GL[*]} " == *" $p "* ]] || { echo "dropping .gl/$(basename "$deb")"; rm -f "$deb"; }
    done
    manifest "$dir" '*.deb'
}

# The full TVM wheel: from the cache, else rebuilt from the parts (if their MANIFEST vouches for
# it), else downloaded. Prints its path.
tvm_wheel() {
    local dir=$CACHE/tvm w sum
    mkdir -p "$dir"
    w=$(wheel_of "$dir" "apache-tvm==$TVM_VERSION") && { echo "$w"; return 0; }
    sum=$(sed -n 's/^wheel \([0-9a-f]*\) [0-9]* \([^ ]*\) .*$/\1 \2/p' .tvmwheel1/MANIFEST 2>/dev/null || true)
    if [ -n "$sum" ] && [ -e .tvmwheel1/part.aa ] && [ -e .tvmwheel2/part.ab ]; then
        cat .tvmwheel1/part.aa .tvmwheel2/part.ab >"$dir/${sum#* }"
        if [ "$(sha256sum "$dir/${sum#* }" | cut -d' ' -f1)" = "${sum%% *}" ]; then
            echo "$dir/${sum#* }"; return 0
        fi
        rm -f "$dir/${sum#* }"
    fi
    echo "downloading apache-tvm==$TVM_VERSION (~96 MiB)" >&2
    "${PIP_DL[@]}" -d "$dir" "apache-tvm==$TVM_VERSION" 2>&1 | grep -v "^WARNING: Location" >&2 || true
    wheel_of "$dir" "apache-tvm==$TVM_VERSION" || die "no apache-tvm==$TVM_VERSION wheel"
}

# split_tvm WHEEL: part.aa (.tvmwheel1) + part.ab (.tvmwheel2), balanced against .whl/
split_tvm() {
    local w=$1 size whl_bytes n sum want have
    size=$(stat -c %s "$w")
    whl_bytes=$(du -sb .whl | cut -f1)
    n=$(((size + whl_bytes + 1) / 2))
    [ "$n" -ge $(((size + 1) / 2)) ] || n=$(((size + 1) / 2))
    [ "$n" -lt "$size" ] || die ".whl/ is larger than the TVM wheel: rethink the split"
    sum=$(sha256sum "$w" | cut -d' ' -f1)
    want="wheel $sum $size $(basename "$w") split $n"
    have=$(grep '^wheel ' .tvmwheel1/MANIFEST 2>/dev/null || true)
    if [ "$want" = "$have" ] && [ "$have" = "$(grep '^wheel ' .tvmwheel2/MANIFEST 2>/dev/null)" ] \
        && [ "$(stat -c %s .tvmwheel1/part.aa 2>/dev/null)" = "$n" ] \
        && [ "$(stat -c %s .tvmwheel2/part.ab 2>/dev/null)" = "$((size - n))" ]; then
        return 0
    fi
    echo "splitting $(basename "$w") at byte $n"
    rm -rf .tvmwheel1 .tvmwheel2
    mkdir -p .tvmwheel1 .tvmwheel2
    head -c "$n" "$w" >.tvmwheel1/part.aa
    tail -c +"$((n + 1))" "$w" >.tvmwheel2/part.ab
    [ "$(cat .tvmwheel1/part.aa .tvmwheel2/part.ab | sha256sum | cut -d' ' -f1)" = "$sum" ] \
        || die "the parts do not join to the wheel"
    for d in .tvmwheel1 .tvmwheel2; do
        {
            echo "$want"
            echo "$(sha256sum .tvmwheel1/part.aa | cut -d' ' -f1) $n part.aa (.tvmwheel1)"
            echo "$(sha256sum .tvmwheel2/part.ab | cut -d' ' -f1) $((size - n)) part.ab (.tvmwheel2)"
        } >"$d/MANIFEST"
    done
}

pins_agree
if [ "${1:-}" != --check ]; then
    wheels "$ROOT/.whl" "${WHL[@]}"
    wheels "$ROOT/.whl/perf" "${PERF[@]}"
    wheels "$ROOT/.wgpuwhl" "${WGPU[@]}"
    if [ "${NO_EXTRA:-0}" = 1 ]; then rm -rf "$ROOT/.extrawhl"; else wheels "$ROOT/.extrawhl" "${EXTRA[@]}"; fi
    debs
    split_tvm "$(tvm_wheel)"
else
    tvm_wheel >/dev/null  # for the check below: from the cache, else joined from the parts
fi

for d in .tvmwheel1 .tvmwheel2 .whl .wgpuwhl .gl; do [ -d "$d" ] || die "no $d (run without --check)"; done
for d in .tvmwheel1 .tvmwheel2 .whl .wgpuwhl .gl .extrawhl; do
    [ ! -d "$d" ] || git check-ignore -q "$d" || die "$d is not ignored by git (.gitignore)"
done

# Sizes, and what each call carries: the tracked tree (+ untracked, not ignored files) travels
# with every call.
kib() { du -sk "$@" | awk '{s += $1} END {print s}'; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }
tree_kib=$(git ls-files -z --cached --others --exclude-standard \
           | du -ck --files0-from=- 2>/dev/null | tail -1 | cut -f1)
echo
echo "folder         MiB  files (listed with sha256 in each folder's MANIFEST)"
for d in .tvmwheel1 .tvmwheel2 .whl .whl/perf .wgpuwhl .gl .extrawhl; do
    [ -d "$d" ] || continue
    printf '%-12s %5s  %s\n' "$d" "$(mib "$(kib "$d")")" \
        "$(find "$d" -maxdepth 1 -type f ! -name MANIFEST -printf '%f\n' | sed -E 's/-py3-.*|-cp3.*|_amd64.deb//' | sort | tr '\n' ' ')"
done
echo "tracked tree $(mib "$tree_kib")"
echo
over=0
call() {  # call COMMAND FOLDER...
    local c=$1 k
    shift
    k=$(($(kib "$@") + tree_kib))
    printf '%-46s carry %-26s %5s MiB with the tree\n' "$c" "$(printf '"%s",' "$@" | sed 's/,$//; s/^/[/; s/$/]/')" "$(mib "$k")"
    [ "$k" -lt $((LIMIT_MIB * 1024)) ] || { echo "  over $LIMIT_MIB MiB" >&2; over=1; }
}
call "bash scripts/gpu_check.sh stage1" .tvmwheel1
call "bash scripts/gpu_check.sh install" .tvmwheel2 .whl
call "gpu_perf.sh webgpu / device_wgsl_bench.sh" .gl .wgpuwhl
[ -d .extrawhl ] && call "pip install ... .extrawhl/*.whl (optional)" .extrawhl
[ "$over" = 0 ] || die "a call carries more than $LIMIT_MIB MiB"

# Requires-Dist of every carried wheel against the carried set + the image / a bare venv.
echo
"$PY" - "$CACHE/tvm" <<'EOF'
import email.parser, glob, importlib.metadata as md, re, sys, zipfile
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name as canon
from packaging.version import Version

ENV = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
       "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}

def wheels(pattern):
    out = {}
    for w in sorted(glob.glob(pattern)):
        with zipfile.ZipFile(w) as z:
            meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
            m = email.parser.Parser().parsestr(z.read(meta).decode())
        out[canon(m["Name"])] = (m["Version"], m.get_all("Requires-Dist") or [])
    return out

def needs(reqs):
    for r in map(Requirement, reqs):
        if r.marker is None or r.marker.evaluate(ENV):
            yield r

core = {}
for p in [sys.argv[1] + "/*.whl", ".whl/*.whl", ".whl/perf/*.whl", ".wgpuwhl/*.whl"]:
    core.update(wheels(p))
extra = wheels(".extrawhl/*.whl")

# (a) The image, as /work/.library/device/KINDS.md lists it (2026-11-17); versions from its
# pip-list row where given, else None (name only).
kinds = open("/work/.library/device/KINDS.md").read() if glob.glob("/work/.library/device/KINDS.md") else ""
image = {}
m = re.search(r"Packages: (.*?)\.\s*$", kinds, re.M)
for n in (m.group(1).split(", ") if m else []):
    image[canon(n)] = None
m = re.search(r"filtered by the names it asked for: (.*?) \|", kinds)
for item in (m.group(1).split(", ") if m else []):
    n, v = item.rsplit(" ", 1)
    image[canon(n)] = v
if not image:
    print("KINDS.md not found: (a) skipped")

# (b) A bare torch + transformers venv: their requirement closure, read from what is installed
# here (this machine's torch/transformers stand in for the GPU machine's).
def closure(roots):
    have, todo = {}, list(roots)
    while todo:
        n = canon(todo.pop())
        if n in have:
            continue
        try:
            d = md.distribution(n)
        except md.PackageNotFoundError:
            have[n] = None
            continue
        have[n] = d.version
        todo += [r.name for r in needs(d.requires or [])]
    return have
bare = closure(["torch", "transformers"])
# CUDA torch's extra needs (nvidia-*, triton) do not matter to the carried wheels.

# Declared but never imported on Python 3.12: diffusers imports importlib_metadata only
# `if sys.version_info < (3, 8)` (diffusers/utils/import_utils.py), else the standard library's.
NOT_IMPORTED = {("diffusers", "importlib-metadata")}

def unmet(carried, avail):
    pool = {n: v for n, (v, _) in carried.items()}
    for n, v in avail.items():
        pool.setdefault(n, v)
    out = []
    for name, (ver, reqs) in sorted(carried.items()):
        if name in {"open-clip-torch"}:  # installed --no-deps for its vocabulary file only
            continue
        for r in needs(reqs):
            n = canon(r.name)
            if (name, n) in NOT_IMPORTED:
                continue
            if n not in pool:
                out.append(f"{name} {ver}: {r} (absent)")
            elif pool[n] is not None and r.specifier and not r.specifier.contains(Version(pool[n]), prereleases=True):
                out.append(f"{name} {ver}: {r} (have {pool[n]})")
    return out

print("carried wheels:", ", ".join(f"{n} {v}" for n, (v, _) in sorted({**core, **extra}.items())))
fail = False
for label, carried, avail, must in [
    ("(a) image (KINDS.md) + .whl .whl/perf .wgpuwhl + TVM", core, image, bool(image)),
    ("(b) bare torch+transformers venv + the same", core, bare, False),
    ("(b') bare venv + the same + .extrawhl", {**core, **extra}, bare, bool(extra)),
]:
    if label.startswith("(b')") and not extra:
        print(label + ": no .extrawhl (NO_EXTRA=1)")
        continue
    u = unmet(carried, avail)
    print(f"{label}: {'all Requires-Dist met' if not u else str(len(u)) + ' unmet'}")
    for line in u:
        print("   ", line)
    fail |= must and bool(u)
print("(skipped: open_clip_torch's needs, since only its vocabulary file is read; diffusers'"
      " importlib_metadata, imported on Python < 3.8 only; unknown image versions count as met)")
sys.exit(1 if fail else 0)
EOF
