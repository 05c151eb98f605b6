"""Stage "web app": the page that runs a web bundle (web/app/*, web/src/*.js), bundled with
esbuild, offline, into the bundle directory next to model.wasm:

    out_dir/index.html, style.css   the page (web/app/)
    out_dir/app.js                  web/src/app.js and what it imports (the engine, samplers,
                                    torch.randn port, tvmjs, web-tokenizers) in one ES module

The npm packages come from web/package.json (tvmjs pinned to the wheel's TVM release);
`npm ci` installs them once (scripts/setup.sh does it), after which no network is needed.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WEB = ROOT / "web"
NODE_MODULES = WEB / "node_modules"
PAGE_FILES = ("index.html", "style.css")
REQUIRED_PACKAGES = ("@mlc-ai/web-runtime", "@mlc-ai/web-tokenizers", "esbuild")


class WebAppError(RuntimeError):
    """The app cannot be bundled here (no node/npm, packages missing)."""


def ensure_packages() -> None:
    """Install web/package.json's packages if any is missing (idempotent)."""
    if all((NODE_MODULES / p).is_dir() for p in REQUIRED_PACKAGES):
        return
    if shutil.which("npm") is None:
        raise WebAppError("npm is not installed; it is needed to bundle the web app "
                          "(Debian: apt install nodejs npm; then bash scripts/setup.sh)")
    cmd = ["npm", "ci", "--no-audit", "--no-fund"]  # as package-lock.json says; never rewrites it
    proc = subprocess.run(cmd, cwd=WEB, capture_output=True, text=True)
    if proc.returncode != 0:
        raise WebAppError(f"`{' '.join(cmd)}` in {WEB} failed (offline, and the packages not "
                          f"installed yet?):\n{proc.stderr[-2000:]}")


def bundle_script(entry, outfile) -> None:
    """esbuild: `entry` and everything it imports -> one ES module for browsers (and Deno)."""
    ensure_packages()
    cmd = [str(NODE_MODULES / ".bin" / "esbuild"), str(entry), "--bundle", "--format=esm",
           "--target=es2022", "--minify", "--legal-comments=eof", f"--outfile={outfile}",
           # tvmjs and web-tokenizers carry node-only branches they never take in a browser
           "--platform=browser", "--log-level=warning",
           *(f"--external:{m}" for m in ("perf_hooks", "fs", "path", "crypto", "url", "ws",
                                         "module"))]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise WebAppError(f"esbuild failed:\n{proc.stderr[-3000:]}")


def build_app(out_dir, log=print) -> list[str]:
    """Bundle the app into out_dir; returns the file names written."""
    out = Path(out_dir)
    bundle_script(WEB / "src" / "app.js", out / "app.js")
    for name in PAGE_FILES:
        shutil.copyfile(WEB / "app" / name, out / name)
    log(f"  app              {(out / 'app.js').stat().st_size / (1 << 20):8.2f} MiB "
        f"(app.js, {', '.join(PAGE_FILES)})")
    return ["app.js", *PAGE_FILES]
