"""The GPU machine's browser scripts, checked on the CPU machine (docs/VERIFY.md, "Browsers on
the GPU machine"): scripts/browser_carry.sh's packing (tar, split, MANIFEST), then
scripts/gpu_browser.sh's receive / install on a small fake payload (sha256 checks, missing and
corrupt parts refused, debs unpacked into the prefix, the wrappers), and
scripts/browser_probe.py driving this machine's Chromium (SwiftShader) over the DevTools pipe.

The real payload (Debian's chromium and ~100 library debs, 160 MiB) needs the network and a
few minutes: that run is documented in VERIFY.md, not repeated here.
"""

from __future__ import annotations

import json
import lzma
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"
CHROMIUM = os.environ.get("WSD_CHROMIUM_BINARY", "/usr/lib/chromium/chromium")


def _fake_deb(tmp: Path, name: str, files: dict[str, str]) -> Path:
    """A minimal .deb holding `files` (path -> shell script text), built with dpkg-deb."""
    root = tmp / f"deb-{name}"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: 1.0\nArchitecture: amd64\nMaintainer: wsd\n"
        f"Description: fake {name} for the script test\n")
    for path, text in files.items():
        f = root / path
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
        f.chmod(0o755)
    deb = tmp / f"{name}_1.0_amd64.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(root), str(deb)], check=True,
                   capture_output=True)
    return deb


@pytest.fixture
def fake_payload(tmp_path):
    """BROWSER_DIR with a fake Chromium + Deno, packed into several small parts."""
    if subprocess.run(["which", "dpkg-deb"], capture_output=True).returncode:
        pytest.skip("dpkg-deb not available")
    browser_dir = tmp_path / "browser"
    stage = browser_dir / "stage"
    (stage / "debs").mkdir(parents=True)
    (stage / "deno").mkdir()
    deb = _fake_deb(tmp_path, "chromium", {
        "usr/lib/chromium/chromium": "#!/bin/sh\necho \"Chromium 0.0 LD=$LD_LIBRARY_PATH\"\n",
        # filler so that the tar splits into several parts
        "usr/share/filler": os.urandom(40_000).hex()})
    deb.rename(stage / "debs" / deb.name)
    (stage / "deno" / "deno.xz").write_bytes(
        lzma.compress(b"#!/bin/sh\necho deno 0.0 fake\n"))
    (stage / "PACKAGES").write_text("chromium 1.0\n")
    env = dict(os.environ, BROWSER_DIR=str(browser_dir), PART_SIZE="24K")
    proc = subprocess.run(["bash", str(SCRIPTS / "browser_carry.sh"), "--pack-only"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    return browser_dir


def _gpu_browser(args, root: Path, out: Path, check=True):
    env = dict(os.environ, WSD_BROWSER_ROOT=str(root), OUT=str(out),
               WSD_BROWSER_ADAPTER="swiftshader")
    proc = subprocess.run(["bash", str(SCRIPTS / "gpu_browser.sh"), *args],
                          capture_output=True, text=True, env=env)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_pack_receive_install(fake_payload, tmp_path):
    manifest = (fake_payload / "MANIFEST").read_text().split("\n")
    n = int(next(ln for ln in manifest if ln.startswith("parts ")).split()[1])
    assert n >= 3  # 80 KB of filler in 24 KB parts
    for i in range(1, n + 1):  # every part carries the same MANIFEST
        assert (fake_payload / f"part{i}" / "MANIFEST").read_text() == "\n".join(manifest)
    root, out = tmp_path / "gpu", tmp_path / "out"

    # install refuses while a part is missing
    for i in range(1, n):
        _gpu_browser(["receive", str(i), str(fake_payload / f"part{i}")], root, out)
    proc = _gpu_browser(["install"], root, out, check=False)
    assert proc.returncode != 0 and f"part {n} missing" in proc.stderr

    # a corrupt part is refused and not kept
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "MANIFEST").write_text((fake_payload / f"part{n}" / "MANIFEST").read_text())
    data = bytearray((fake_payload / f"part{n}" / "payload.part").read_bytes())
    data[0] ^= 1
    (bad / "payload.part").write_bytes(bytes(data))
    proc = _gpu_browser(["receive", str(n), str(bad)], root, out, check=False)
    assert proc.returncode != 0 and "sha256" in proc.stderr
    assert not (root / "parts" / f"part{n}").exists()

    # the last part: install unpacks the debs into the prefix and writes the wrappers
    _gpu_browser(["receive", str(n), str(fake_payload / f"part{n}")], root, out)
    proc = _gpu_browser(["install"], root, out)
    assert (root / "prefix" / "usr" / "lib" / "chromium" / "chromium").exists()
    # the wrapper sets LD_LIBRARY_PATH for Chromium alone, the prefix's folders first
    assert f"Chromium 0.0 LD={root}/prefix/usr/lib/chromium:" in proc.stdout
    assert "deno 0.0 fake" in proc.stdout
    env_sh = (root / "env.sh").read_text()
    assert "WSD_BROWSER_LD_LIBRARY_PATH=" in env_sh and "\nexport LD_LIBRARY_PATH" not in env_sh
    assert (out / "browser-packages.txt").read_text() == "chromium 1.0\n"


def test_receive_drops_parts_of_another_build(fake_payload, tmp_path):
    root, out = tmp_path / "gpu", tmp_path / "out"
    _gpu_browser(["receive", "1", str(fake_payload / "part1")], root, out)
    other = tmp_path / "other"
    other.mkdir()
    (other / "payload.part").write_bytes(b"x")
    import hashlib
    sha = hashlib.sha256(b"x").hexdigest()
    (other / "MANIFEST").write_text(f"tar {'0' * 64} 1\nparts 2\npart 2 {sha} 1\n")
    proc = _gpu_browser(["receive", "2", str(other)], root, out)
    assert "another build" in proc.stdout
    assert not (root / "parts" / "part1").exists() and (root / "parts" / "part2").exists()


def test_probe_swiftshader(tmp_path):
    """browser_probe.py on this machine's Chromium: the DevTools pipe, the page over http and
    file://, chrome://gpu's text, and a compute dispatch read back."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium binary at {CHROMIUM} (apt install chromium)")
    out = tmp_path / "probe.json"
    proc = subprocess.run(
        ["python3", str(SCRIPTS / "browser_probe.py"), "--chromium", CHROMIUM, "--mode",
         "swiftshader", "--out", str(out), "--log-dir", str(tmp_path / "logs")],
        capture_output=True, text=True, timeout=600)
    assert out.exists(), proc.stderr[-3000:]
    report = json.loads(out.read_text())
    print(proc.stdout)
    assert [v["name"] for v in report["variants"]] == ["swiftshader-http", "swiftshader-file"]
    for v in report["variants"]:
        p = v["probe"]
        assert p["hasNavigatorGpu"] and p["isSecureContext"], v
        default = next(r for r in p["requests"] if r["name"] == "default")
        assert default["adapter"], default  # up to 4 tries (SwiftShader's flaky first request)
        assert default["adapter"]["info"]["architecture"] == "swiftshader"
        assert "maxStorageBufferBindingSize" in default["adapter"]["limits"]
        assert p["compute"]["ok"], p["compute"]
        assert any(a["status"] for a in v["gpu_page"]["dawn_adapters"]), v["gpu_page"]
        assert any(s.startswith("WebGPU:") for s in v["gpu_page"]["feature_status"])
    assert report["variants"][1]["url"].startswith("file://")
    assert proc.returncode == 0
