#!/usr/bin/env bash
# Prepare, on this (CPU, Debian 12, networked) machine, everything the GPU machine needs to run
# real browsers' WebGPU on its NVIDIA GPU: Debian 12's chromium, chromium-common and every
# library package they load, plus the Deno binary of web/node_modules (Deno's WebGPU is wgpu).
# The GPU machine has no network and no apt sources for these, and one device call carries at
# most 64 MiB of working tree, so the payload is one tar, split into numbered parts:
#
#   .browser/part1/payload.part  .browser/part1/MANIFEST
#   .browser/part2/payload.part  .browser/part2/MANIFEST   ...
#
# Each device call carries one part folder (`carry: [".browser/partN"]`) and runs
# `bash scripts/gpu_browser.sh receive N`; the last one then runs `install` and `probe`
# (docs/VERIFY.md, "Browsers on the GPU machine"). MANIFEST (the same in every part) holds the
# sha256 of each part and of the whole tar, so a part from another build is refused there.
#
#   bash scripts/browser_carry.sh              # idempotent: downloads only what is missing
#   bash scripts/browser_carry.sh --pack-only  # only tar + split + MANIFEST of $BROWSER_DIR/stage
#
# Environment: PART_MIB (default 54: the 64 MiB limit minus the ~3 MiB tracked tree and room
# for it to grow; 54 gives 3 parts), WITH_PLAYWRIGHT=1 (also Playwright's cp312 wheels: 4 parts),
# APT_STATE (private apt lists, default /tmp/wsd-browser-apt), BROWSER_DIR (default .browser:
# keep it inside the repo and ignored, since `carry` names it).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUTDIR=${BROWSER_DIR:-$ROOT/.browser}
PART_MIB=${PART_MIB:-54}
PART_SIZE=${PART_SIZE:-${PART_MIB}M}  # split -b syntax; tests use small parts
STATE=${APT_STATE:-/tmp/wsd-browser-apt}
STAGE=$OUTDIR/stage       # what the tar holds: debs/, deno/, PACKAGES
DEBS=$STAGE/debs
SCAN=$OUTDIR/scan         # debs unpacked here to run ldd on their ELF files
DENO_SRC=$ROOT/web/node_modules/@deno/linux-x64-glibc/deno

# A private apt state (lists and cache) as in the device README's loader recipe: the system's
# own lists and locks are not touched, and amd64 is forced whatever this machine is.
APT=(apt-get -q -o "Dir::State::Lists=$STATE/lists" -o "Dir::Cache=$STATE/cache"
     -o APT::Architecture=amd64 -o APT::Architectures=amd64 -o APT::Sandbox::User=root)

# Never carried: the GPU machine (Ubuntu 24.04, glibc 2.39) has newer ones, and an older glibc
# on LD_LIBRARY_PATH would break every program started with it. Everything else that ldd names
# is carried, even where Ubuntu surely has it: a few MiB buy independence from its base image.
EXCLUDE=" libc6 libgcc-s1 libstdc++6 "
# Loaded with dlopen, so ldd cannot see them:
#   libdbus-1-3      (facts.md: needed on the H200), libpci3 + pci.ids (Chrome's GPU info
#   collection reads PCI ids through libpci; without it Chrome reported vendor/device 0x0000
#   there, which may be why requestAdapter() returned null), libvulkan1 (for Deno/wgpu; Chromium
#   ships its own libvulkan.so.1), the GL/EGL loaders of the device README's recipe (ANGLE on
#   EGL, if a variant uses the system GL), fontconfig's config + one font family (pages render
#   text; the GPU machine may have no /etc/fonts).
EXTRA=(libdbus-1-3 libpci3 pci.ids libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0
       libgles2 libgbm1 libdrm2 fontconfig-config fonts-dejavu-core)

# collect: download, trim, resolve the closure, Deno -> $STAGE (skipped with --pack-only)
collect() {
    rm -rf "$SCAN"
    mkdir -p "$STATE/lists/partial" "$STATE/cache/archives/partial" "$DEBS" "$SCAN"
    # apt-get update again only when the lists are older than a day (idempotent and quick).
    if [ -z "$(find "$STATE/lists" -maxdepth 1 -name '*_Packages*' -mtime -1 2>/dev/null)" ]; then
        "${APT[@]}" update >/dev/null
    fi

    have_deb() { compgen -G "$DEBS/${1}_*.deb" >/dev/null; }

    download() {  # download PKG...: the candidate .deb of each missing one into $DEBS
        local p missing=()
        for p in "$@"; do have_deb "$p" || missing+=("$p"); done
        [ ${#missing[@]} -eq 0 ] && return 0
        (cd "$DEBS" && "${APT[@]}" download "${missing[@]}" >/dev/null)
    }

    # chromium-common without Vulkan's validation layer and mock driver (23 MiB + 0.5 MiB unpacked,
    # ~7 MiB of the deb; only Dawn's backend validation would load them) and docs: that brings the
    # payload from 4 parts to 3. Rebuilt as a deb so that install stays `dpkg -x` for every deb.
    trim_common() {
        local deb dir
        deb=$(compgen -G "$DEBS/chromium-common_*.deb") || return 0
        [ -e "$OUTDIR/trimmed.$(basename "$deb")" ] && return 0
        dir=$(mktemp -d)
        dpkg-deb -R "$deb" "$dir"
        rm -rf "$dir"/usr/lib/chromium/libVkLayer_khronos_validation.so* \
            "$dir"/usr/lib/chromium/libVkICD_mock_icd.so* "$dir/usr/share/doc" "$dir/usr/share/man"
        dpkg-deb --root-owner-group -Zxz -z6 -b "$dir" "$deb.new" >/dev/null
        mv "$deb.new" "$deb"
        rm -rf "$dir"
        touch "$OUTDIR/trimmed.$(basename "$deb")"
    }

    # pkg_of PATH: sets PKG to the installed package that owns a library path (merged /usr: a file
    # may be registered under /lib or /usr/lib, and ldd may print either, or a symlink to it).
    declare -A PKG_OF=()
    pkg_of() {
        local f=$1 cand alt real out
        # no $(...) around calls of it: the cache must outlive the call
        if [ -n "${PKG_OF[$f]:-}" ]; then PKG=${PKG_OF[$f]}; return 0; fi
        real=$(readlink -f "$f")
        for cand in "$f" "$real"; do
            for alt in "$cand" "${cand/#\/usr\/lib\//\/lib\/}" "${cand/#\/lib\//\/usr\/lib\/}"; do
                if out=$(dpkg -S "$alt" 2>/dev/null); then
                    out=$(echo "${out%%: /*}" | cut -d, -f1 | sed 's/:amd64$//')
                    PKG_OF[$f]=$out
                    PKG=$out
                    return 0
                fi
            done
        done
        return 1
    }

    # Resolve the library closure: unpack every carried deb, run ldd on each ELF file in it (with
    # the unpacked libraries first on the path, as on the GPU machine), map each library found on
    # this system to its package, and repeat until no package is new. ldd prints the transitive
    # closure, so two or three rounds suffice.
    declare -A PKGS=()
    for p in chromium chromium-common "${EXTRA[@]}"; do PKGS[$p]=1; done
    declare -A UNPACKED=() SCANNED=()
    round=0
    while :; do
        round=$((round + 1))
        download "${!PKGS[@]}"
        trim_common
        # only the set's debs (an earlier run may have left others, which would hide libraries)
        for p in "${!PKGS[@]}"; do
            [ -n "${UNPACKED[$p]:-}" ] && continue
            dpkg -x "$(compgen -G "$DEBS/${p}_*.deb" | head -1)" "$SCAN"
            UNPACKED[$p]=1
        done
        libpath=$SCAN/usr/lib/chromium:$SCAN/usr/lib/x86_64-linux-gnu:$SCAN/lib/x86_64-linux-gnu
        libpath=$libpath:$SCAN/usr/lib/x86_64-linux-gnu/pulseaudio
        declare -A NEW=()
        missing=()
        while IFS= read -r -d '' f; do
            # each file once: a later round only adds files (ldd's closure needs no rescan)
            [ -n "${SCANNED[$f]:-}" ] && continue
            SCANNED[$f]=1
            [ "$(head -c 4 "$f" 2>/dev/null)" = $'\x7fELF' ] || continue
            while read -r line; do
                case "$line" in
                *"=> not found"*) missing+=("${f#$SCAN}: ${line%% *}") ;;
                *"=> /"*)
                    lib=$(echo "$line" | sed -E 's/.*=> (\/[^ ]+).*/\1/')
                    case "$lib" in "$SCAN"/*) continue ;; esac  # already carried
                    if pkg_of "$lib"; then
                        [ -z "${PKGS[$PKG]:-}" ] && [[ "$EXCLUDE" != *" $PKG "* ]] && NEW[$PKG]=1
                    else
                        missing+=("${f#$SCAN}: $lib (no package owns it here)")
                    fi
                    ;;
                esac
            done < <(LD_LIBRARY_PATH=$libpath ldd "$f" 2>/dev/null || true)
        done < <(find "$SCAN" -type f \( -name '*.so*' -o -perm -u+x \) -print0)
        if [ ${#missing[@]} -gt 0 ]; then
            printf 'unresolved: %s\n' "${missing[@]}" | sort -u >&2
            echo "browser_carry: libraries above are found neither in the carried debs nor on" \
                 "this machine (apt install chromium here, then run again)" >&2
            exit 1
        fi
        echo "round $round: ${#PKGS[@]} packages, ${#NEW[@]} new: ${!NEW[*]}"
        [ ${#NEW[@]} -eq 0 ] && break
        for p in "${!NEW[@]}"; do PKGS[$p]=1; done
        unset NEW
    done

    rm -rf "$SCAN"  # ~400 MiB unpacked; rebuilt on every run anyway

    # Only the resolved set travels (an earlier run may have left other debs).
    for deb in "$DEBS"/*.deb; do
        name=$(dpkg-deb -f "$deb" Package)
        [ -n "${PKGS[$name]:-}" ] || { echo "dropping $(basename "$deb")"; rm -f "$deb"; }
    done
    for deb in "$DEBS"/*.deb; do
        echo "$(dpkg-deb -f "$deb" Package) $(dpkg-deb -f "$deb" Version)"
    done | sort >"$STAGE/PACKAGES.new"
    mv "$STAGE/PACKAGES.new" "$STAGE/PACKAGES"

    # Deno: the npm package's linux-x64 binary (the one tests/web/test_fp16_wgpu.py runs), xz'd
    # (95 MiB -> about a third). Recompressed only when the binary changed.
    mkdir -p "$STAGE/deno"
    if [ ! -x "$DENO_SRC" ]; then
        echo "browser_carry: no $DENO_SRC (npm install in web/)" >&2
        exit 1
    fi
    deno_sum=$(sha256sum "$DENO_SRC" | cut -d' ' -f1)
    if [ "$(cat "$STAGE/deno/deno.sha256" 2>/dev/null)" != "$deno_sum" ]; then
        xz -T2 -6 -c "$DENO_SRC" >"$STAGE/deno/deno.xz.new"
        mv "$STAGE/deno/deno.xz.new" "$STAGE/deno/deno.xz"
        echo "$deno_sum" >"$STAGE/deno/deno.sha256"
    fi
    "$DENO_SRC" --version | head -1 >"$STAGE/deno/VERSION"

    # Optional: Playwright for Python (cp312 wheels, its node driver inside: ~51 MiB, one more
    # part), for drivers that use it (wsd.checks.browser_run) instead of scripts/browser_probe.py.
    if [ "${WITH_PLAYWRIGHT:-0}" = 1 ]; then
        mkdir -p "$STAGE/wheels"
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
            --implementation cp --platform manylinux_2_28_x86_64 \
            --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            --platform manylinux1_x86_64 -d "$STAGE/wheels" \
            "playwright==${PLAYWRIGHT_VERSION:-1.65.2}" "greenlet==${GREENLET_VERSION:-3.5.6}"
    else
        rm -rf "$STAGE/wheels"
    fi
}

[ "${1:-}" = --pack-only ] || collect


# One deterministic tar (sorted names, fixed times and owners: the same inputs give the same
# sha256, so a rerun does not invalidate parts already carried), split into parts.
tar_sum_old=$(sed -n 's/^tar \([0-9a-f]*\).*/\1/p' "$OUTDIR/MANIFEST" 2>/dev/null || true)
tmp_tar=$OUTDIR/payload.tar
tar -C "$STAGE" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf "$tmp_tar" .
tar_sum=$(sha256sum "$tmp_tar" | cut -d' ' -f1)
if [ "$tar_sum" != "$tar_sum_old" ] || ! compgen -G "$OUTDIR/part1/payload.part" >/dev/null; then
    rm -rf "$OUTDIR"/part[0-9]*
    split -b "$PART_SIZE" -d -a 2 "$tmp_tar" "$OUTDIR/chunk."
    n=0
    for chunk in "$OUTDIR"/chunk.*; do
        n=$((n + 1))
        mkdir -p "$OUTDIR/part$n"
        mv "$chunk" "$OUTDIR/part$n/payload.part"
    done
    {
        echo "tar $tar_sum $(stat -c %s "$tmp_tar")"
        echo "parts $n"
        for i in $(seq 1 "$n"); do
            echo "part $i $(sha256sum "$OUTDIR/part$i/payload.part" | cut -d' ' -f1)" \
                 "$(stat -c %s "$OUTDIR/part$i/payload.part")"
        done
    } >"$OUTDIR/MANIFEST"
    for i in $(seq 1 "$n"); do cp "$OUTDIR/MANIFEST" "$OUTDIR/part$i/MANIFEST"; done
fi
rm -f "$tmp_tar"

# What will travel per call: the tracked tree (plus untracked, not ignored files) and one part.
tree_kib=$(git ls-files -z --cached --others --exclude-standard \
           | du -ck --files0-from=- 2>/dev/null | tail -1 | cut -f1)
echo "packages: $(wc -l <"$STAGE/PACKAGES") debs, $(du -sh "$DEBS" | cut -f1)" \
     "(listed in $STAGE/PACKAGES)"
echo "deno: $(cat "$STAGE/deno/VERSION" 2>/dev/null), $(du -h "$STAGE/deno/deno.xz" | cut -f1) xz"
cat "$OUTDIR/MANIFEST"
echo "working tree without .browser: $((tree_kib / 1024)) MiB"
for d in "$OUTDIR"/part*/; do
    kib=$(du -sk "$d" | cut -f1)
    total=$(((kib + tree_kib) / 1024))
    echo "$(basename "$d"): $((kib / 1024)) MiB, with the tree ${total} MiB of 64"
    [ "$total" -lt 63 ] || { echo "browser_carry: $d too large: lower PART_MIB" >&2; exit 1; }
done
