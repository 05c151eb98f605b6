"""Launch headless Chromium with several flag sets and record what its WebGPU offers.

For each variant (a list of command-line flags and a page URL kind) this starts Chromium, drives
it over the DevTools protocol, runs scripts/webgpu_probe.js in a page (navigator.gpu,
requestAdapter() with several option sets, adapter info/features/limits, a tiny compute check),
reads chrome://gpu's text (the shadow root of its <info-view> element: feature status, GL and
Vulkan info, Dawn's adapter list) and writes everything to one JSON file. Every variant runs,
whatever the earlier ones gave: the point is to compare them.

The DevTools protocol goes over a pipe (--remote-debugging-pipe: fd 3 in, fd 4 out, messages
separated by NUL bytes), so this needs only the Python standard library: no Playwright (whose
driver is a node program) and no websocket client. The GPU machine has neither node nor network.

    python3 scripts/browser_probe.py --chromium PREFIX/usr/lib/chromium/chromium \\
        --out probe.json [--mode gpu|swiftshader] [--variants a,b] [--log-dir DIR]

Chromium's own environment comes from WSD_BROWSER_LD_LIBRARY_PATH (set as LD_LIBRARY_PATH for
Chromium only: this Python must keep the system's libraries) plus this process's environment
(VK_DRIVER_FILES, FONTCONFIG_FILE ...). scripts/gpu_browser.sh sets them.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

sys.path.insert(0, str(HERE.parent))  # wsd: its flag sets (stdlib-only module)
from wsd.checks.browser_run import CHROMIUM_FLAGS  # noqa: E402
from wsd.checks.browser_run import QUIET as RUN_QUIET  # noqa: E402

# The runner's quiet flags (no network there either), headless, with Chromium's own log.
QUIET = ["--headless=new", *RUN_QUIET, "--disable-default-apps", "--disable-breakpad",
         "--disable-dev-shm-usage", "--enable-logging=stderr", "--v=0"]

# The runner's GPU flag set, with the toggles for shader-f16 on NVIDIA and unsafe APIs.
FACTS = [f for f in CHROMIUM_FLAGS["gpu"] if f != "--headless=new"] + [
    "--enable-dawn-features=vulkan_enable_f16_on_nvidia,allow_unsafe_apis"]


def _replace(flags, prefix, new):
    """flags with the one starting with prefix replaced by new (or dropped if new is None)."""
    out = [f for f in flags if not f.startswith(prefix)]
    return out + ([new] if new else [])


def gpu_variants(pci: dict) -> dict:
    """name -> (flags, page kind 'http' | 'file'). The first is the main candidate."""
    ids = []
    if pci.get("vendor") and pci.get("device"):
        ids = [f"--gpu-testing-vendor-id={pci['vendor']}",
               f"--gpu-testing-device-id={pci['device']}"]
    return {
        "facts-http": (FACTS, "http"),
        # Chrome read the PCI ids as 0x0000 there: tell it the real ones
        "facts-pci-ids-http": (FACTS + ids, "http"),
        # developer features (unquantized timestamps), WebGPU's own feature flags, the old
        # name of the unsafe-API toggle, and a high-performance default adapter
        "facts-dev-features-http": (
            _replace(FACTS, "--enable-features=",
                     "--enable-features=Vulkan,VulkanFromANGLE,WebGPUService,"
                     "WebGPUDeveloperFeatures")
            + ["--enable-webgpu-developer-features",
               "--disable-dawn-features=disallow_unsafe_apis",
               "--use-webgpu-power-preference=default-high-performance"], "http"),
        # last time's setting, to see whether the page's origin was the difference
        "facts-file": (FACTS, "file"),
        # what public reports use for headless Chromium on NVIDIA Linux
        "public-minimal-http": (["--use-angle=vulkan", "--enable-features=Vulkan",
                                 "--disable-vulkan-surface", "--enable-unsafe-webgpu"], "http"),
        # shader-f16 without the NVIDIA toggle (Dawn hides it on drivers < 615.71)
        "facts-no-f16-toggle-http": (_replace(FACTS, "--enable-dawn-features=",
                                              "--enable-dawn-features=allow_unsafe_apis"),
                                     "http"),
        "facts-use-gl-angle-http": (FACTS + ["--use-gl=angle"], "http"),
        # Dawn's compatibility-mode adapter (OpenGL ES through ANGLE)
        "facts-compat-adapter-http": (FACTS + ["--use-webgpu-adapter=compat"], "http"),
        # the GPU process's own sandbox kept (only --no-sandbox)
        "facts-gpu-sandbox-http": (_replace(FACTS, "--disable-gpu-sandbox", None), "http"),
    }


SWIFTSHADER = CHROMIUM_FLAGS["swiftshader"]


def swiftshader_variants(pci: dict) -> dict:
    """The CPU machine's WebGPU (tests/web/test_browser.py's flags), for testing this script."""
    return {"swiftshader-http": (SWIFTSHADER, "http"), "swiftshader-file": (SWIFTSHADER, "file")}


class Cdp:
    """A DevTools-protocol client over Chromium's --remote-debugging-pipe."""

    def __init__(self, proc, to_chrome: int, from_chrome: int):
        self.proc, self.w, self.r = proc, to_chrome, from_chrome
        self.buf = b""
        self.next_id = 0
        self.events: list[dict] = []

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer from Chromium")
            ready, _, _ = select.select([self.r], [], [], min(left, 1.0))
            if not ready:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"Chromium exited with {self.proc.returncode}")
                continue
            chunk = os.read(self.r, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self.buf += chunk
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 30.0) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            answer = self._read_message(deadline)
            if answer.get("id") == self.next_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})
            self.events.append(answer)

    def evaluate(self, session: str, expression: str, timeout: float = 30.0):
        """The expression's value (awaited when it is a promise), or raises with the exception."""
        res = self.call("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                             "returnByValue": True}, session,
                        timeout=timeout)
        if "exceptionDetails" in res:
            d = res["exceptionDetails"]
            raise RuntimeError(d.get("exception", {}).get("description") or d.get("text"))
        return res.get("result", {}).get("value")


def launch(chromium: str, flags: list[str], profile: Path, log):
    """Start Chromium with the DevTools pipe on fds 3/4; returns (process, Cdp)."""
    to_chrome_r, to_chrome_w = os.pipe()
    from_chrome_r, from_chrome_w = os.pipe()

    def child_fds():  # runs in the child before exec: the pipe ends become fds 3 and 4
        a, b = os.dup(to_chrome_r), os.dup(from_chrome_w)  # above 4, whatever the originals
        os.dup2(a, 3)
        os.dup2(b, 4)  # os.dup2 makes them inheritable; the other pipe fds close on exec

    env = dict(os.environ)
    if os.environ.get("WSD_BROWSER_LD_LIBRARY_PATH"):
        env["LD_LIBRARY_PATH"] = os.environ["WSD_BROWSER_LD_LIBRARY_PATH"]
    cmd = [chromium, "--remote-debugging-pipe", f"--user-data-dir={profile}", *flags,
           "about:blank"]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                            preexec_fn=child_fds, close_fds=False, start_new_session=True)
    for fd in (to_chrome_r, from_chrome_w):
        os.close(fd)
    return proc, Cdp(proc, to_chrome_w, from_chrome_r)


def stop(proc, cdp):
    try:
        cdp.call("Browser.close", timeout=5)
    except Exception:
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    for fd in (cdp.w, cdp.r):
        try:
            os.close(fd)
        except OSError:
            pass


def open_page(cdp: Cdp) -> str:
    """A session attached to the browser's first page (flat sessions)."""
    targets = cdp.call("Target.getTargets")["targetInfos"]
    pages = [t for t in targets if t["type"] == "page"]
    target = pages[0]["targetId"] if pages else cdp.call(
        "Target.createTarget", {"url": "about:blank"})["targetId"]
    return cdp.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]


def navigate(cdp: Cdp, session: str, url: str, ready: str, timeout: float) -> None:
    """Go to url and wait until the expression `ready` is truthy."""
    nav = cdp.call("Page.navigate", {"url": url}, session)
    if nav.get("errorText"):
        raise RuntimeError(f"navigate {url}: {nav['errorText']}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if cdp.evaluate(session, ready, timeout=10):
                return
        except RuntimeError:
            pass  # the page is still loading (execution context replaced)
        time.sleep(0.25)
    raise TimeoutError(f"{url}: not ready after {timeout} s ({ready})")


# chrome://gpu renders into <info-view>'s shadow root; its Dawn section fills in later.
GPU_PAGE_TEXT = """(() => {
  const v = document.querySelector('info-view');
  if (!v || !v.shadowRoot) return '';
  return Array.from(v.shadowRoot.children).map(e => e.innerText || e.textContent || '')
    .join('\\n');
})()"""


def read_gpu_page(cdp: Cdp, session: str, timeout: float = 25.0) -> str:
    navigate(cdp, session, "chrome://gpu", "document.readyState === 'complete'", 20)
    deadline, text, last = time.monotonic() + timeout, "", None
    while time.monotonic() < deadline:
        text = cdp.evaluate(session, GPU_PAGE_TEXT) or ""
        # done once the Dawn info is in and the text stopped changing for one poll
        if "Dawn" in text and text == last:
            break
        last = text
        time.sleep(1.0)
    return text


def _section(lines: list[str], start: str, stops: tuple[str, ...], limit: int) -> list[str]:
    """The non-empty lines after the line `start` up to the first line in `stops`."""
    if start not in lines:
        return []
    out = []
    for ln in lines[lines.index(start) + 1:]:
        if ln in stops:
            break
        if ln:
            out.append(ln[:400])
    return out[:limit]


def gpu_page_summary(text: str) -> dict:
    """What says most on chrome://gpu: the feature status (is WebGPU hardware accelerated?),
    the GPU and GL renderer lines, the problems list, each Dawn adapter with its WebGPU status
    (Available / Blocklisted - why), and the log messages."""
    lines = [ln.strip() for ln in text.splitlines()]
    dawn = []
    for i, ln in enumerate(lines):
        if ln == "[WebGPU Status]":
            header = next((h for h in reversed(lines[:i]) if h), "")
            status = next((s for s in lines[i + 1:] if s), "")
            dawn.append({"adapter": header, "status": status})
    return {
        "feature_status": _section(lines, "Graphics Feature Status", ("Version Information",), 40),
        "gpu": [ln[:400] for ln in lines if ln.startswith(("GPU0", "GPU1", "GL_RENDERER",
                                                             "GL_VENDOR", "Display type",
                                                             "Skia Backend", "Driver vendor",
                                                             "Driver version"))],
        "problems": _section(lines, "Problems Detected", ("ANGLE Features", "Dawn Info"), 40),
        "dawn_adapters": dawn,
        "log_messages": _section(lines, "Log Messages", (), 80),
    }


def run_variant(chromium, name, flags, kind, page_dir: Path, http_url, log_dir: Path,
                tries: int, read_gpu: bool, timeout: float) -> dict:
    url = f"{http_url}probe.html" if kind == "http" else (page_dir / "probe.html").as_uri()
    result = {"name": name, "flags": flags, "url": url}
    profile = Path(tempfile.mkdtemp(prefix=f"chromium-{name}-"))
    log_path = log_dir / f"{name}.log"
    t0 = time.monotonic()
    with open(log_path, "wb") as log:
        proc, cdp = launch(chromium, QUIET + flags, profile, log)
        try:
            session = open_page(cdp)
            cdp.call("Page.enable", session=session)
            navigate(cdp, session, url, "typeof window.wsdProbe === 'function'", 30)
            try:
                result["probe"] = cdp.evaluate(session, f"window.wsdProbe({tries})",
                                               timeout=timeout)
            except Exception as e:  # noqa: BLE001 - recorded, the next step still runs
                result["probe_error"] = f"{type(e).__name__}: {e}"
            if read_gpu:
                try:
                    text = read_gpu_page(cdp, session)
                    result["gpu_page"] = gpu_page_summary(text)
                    result["gpu_page_chars"] = len(text)
                    (log_dir / f"{name}.chrome-gpu.txt").write_text(text)
                except Exception as e:  # noqa: BLE001
                    result["gpu_page_error"] = f"{type(e).__name__}: {e}"
        except Exception as e:  # noqa: BLE001
            result["error"] = f"{type(e).__name__}: {e}"
        finally:
            stop(proc, cdp)
            result["returncode"] = proc.returncode
    result["seconds"] = round(time.monotonic() - t0, 1)
    tail = log_path.read_bytes()[-6000:].decode(errors="replace")
    result["log_tail"] = tail
    shutil.rmtree(profile, ignore_errors=True)
    return result


def write_page(page_dir: Path) -> None:
    """probe.html with webgpu_probe.js inlined: a module script from a file:// page is blocked
    by CORS (origin null), an inline one is not, so http and file pages run the same code."""
    code = (HERE / "webgpu_probe.js").read_text().replace("export async function probe",
                                                          "async function probe")
    page_dir.mkdir(parents=True, exist_ok=True)
    (page_dir / "probe.html").write_text(
        "<!doctype html><meta charset=utf-8><title>wsd webgpu probe</title>\n"
        f"<script type=module>\n{code}\nwindow.wsdProbe = probe;\n</script>\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(directory: Path):
    """python -m http.server on 127.0.0.1 (a separate process: no threads here, because the
    Chromium launch forks with a preexec function)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind",
                             "127.0.0.1", "--directory", str(directory)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"http://127.0.0.1:{port}/"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("http.server did not start")


def host_info() -> dict:
    """What the machine says about its GPU outside Chromium: nvidia-smi, the Vulkan ICD file,
    and whether /sys shows PCI display devices (Chrome's GPU info reads PCI ids from there)."""
    info: dict = {}
    if shutil.which("nvidia-smi"):
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,pci.device_id,"
                            "pci.bus_id", "--format=csv,noheader"],
                           capture_output=True, text=True)
        info["nvidia_smi"] = q.stdout.strip() or q.stderr.strip()
    for var in ("VK_DRIVER_FILES", "VK_ICD_FILENAMES", "__EGL_VENDOR_LIBRARY_FILENAMES"):
        path = os.environ.get(var)
        info[var] = path
        if path and Path(path).is_file():
            info[f"{var}_content"] = Path(path).read_text()[:2000]
    pci = []
    for dev in sorted(Path("/sys/bus/pci/devices").glob("*")):
        try:
            cls = (dev / "class").read_text().strip()
            if cls.startswith("0x03"):  # display controllers (0x0300 VGA, 0x0302 3D)
                pci.append({"slot": dev.name, "class": cls,
                            "vendor": (dev / "vendor").read_text().strip(),
                            "device": (dev / "device").read_text().strip()})
        except OSError:
            continue
    info["sys_pci_display"] = pci
    info["dev_dri"] = sorted(os.listdir("/dev/dri")) if os.path.isdir("/dev/dri") else None
    return info


def pci_ids(info: dict) -> dict:
    """Vendor and device id of the GPU: from /sys if visible, else nvidia-smi's pci.device_id
    (0xDDDDVVVV)."""
    for d in info.get("sys_pci_display", []):
        if d["vendor"].lower() == "0x10de":
            return {"vendor": d["vendor"], "device": d["device"]}
    smi = info.get("nvidia_smi", "")
    for field in smi.split(","):
        field = field.strip().lower()
        if field.startswith("0x") and len(field) == 10:
            return {"vendor": "0x" + field[6:], "device": "0x" + field[2:6]}
    return {}


def summary_line(r: dict) -> str:
    p = r.get("probe") or {}
    reqs = {q["name"]: q for q in p.get("requests", [])}
    d = reqs.get("default", {})
    a = d.get("adapter") or {}
    info = a.get("info") or {}
    who = "/".join(str(info.get(k)) for k in ("vendor", "architecture", "description")
                   if info.get(k)) or None
    f16 = "shader-f16" in (a.get("features") or [])
    page = r.get("gpu_page") or {}
    status = [ln for ln in page.get("feature_status", []) if ln.startswith("WebGPU:")]
    dawn = [f"{x['adapter'][:60]}: {x['status'][:40]}" for x in page.get("dawn_adapters", [])]
    return (f"{r['name']}: navigator.gpu={p.get('hasNavigatorGpu')} default adapter={who} "
            f"(attempts {d.get('attempts')}{', ' + d['error'] if d.get('error') else ''}) "
            f"shader-f16={f16} compute={(p.get('compute') or {}).get('ok')} {status} "
            f"dawn={dawn} {r.get('error') or r.get('probe_error') or ''} [{r['seconds']} s]")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--chromium", required=True)
    ap.add_argument("--out", required=True, help="the JSON file to write")
    ap.add_argument("--mode", choices=["gpu", "swiftshader"], default="gpu")
    ap.add_argument("--variants", default="", help="comma-separated names (default: all)")
    ap.add_argument("--log-dir", default="", help="Chromium's stderr per variant, chrome://gpu")
    ap.add_argument("--tries", type=int, default=4, help="requestAdapter tries per option set")
    ap.add_argument("--gpu-page", choices=["all", "first", "none"], default="all",
                    help="read chrome://gpu in every variant, the first only, or none")
    ap.add_argument("--timeout", type=float, default=100, help="seconds for one page's probe "
                    "(the page's own budget is 45 s of requests + 20 s of compute)")
    ap.add_argument("--budget", type=float, default=480,
                    help="start no variant after this many seconds (a device call: 600 s)")
    args = ap.parse_args(argv)

    info = host_info()
    pci = pci_ids(info)
    table = (gpu_variants if args.mode == "gpu" else swiftshader_variants)(pci)
    names = [n for n in args.variants.split(",") if n] or list(table)
    unknown = [n for n in names if n not in table]
    if unknown:
        ap.error(f"unknown variants {unknown}; known: {list(table)}")
    version = subprocess.run(
        [args.chromium, "--version"], capture_output=True, text=True,
        env=dict(os.environ, LD_LIBRARY_PATH=os.environ.get("WSD_BROWSER_LD_LIBRARY_PATH", "")))
    work = Path(tempfile.mkdtemp(prefix="wsd-probe-"))
    log_dir = Path(args.log_dir) if args.log_dir else work / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    write_page(work / "page")
    report = {"chromium": args.chromium, "version": (version.stdout or version.stderr).strip(),
              "mode": args.mode, "host": info, "pci_ids": pci, "quiet_flags": QUIET,
              "variants": []}
    server, http_url = serve(work / "page")
    t_start = time.monotonic()
    try:
        for i, name in enumerate(names):
            flags, kind = table[name]
            if time.monotonic() - t_start > args.budget:
                report["variants"].append({"name": name, "flags": flags, "skipped": "budget"})
                print(f"{name}: skipped (--budget {args.budget} s spent)", flush=True)
                continue
            read_gpu = args.gpu_page == "all" or (args.gpu_page == "first" and i == 0)
            r = run_variant(args.chromium, name, flags, kind, work / "page", http_url, log_dir,
                            args.tries, read_gpu, args.timeout)
            report["variants"].append(r)
            print(summary_line(r), flush=True)
            # written after every variant: a call cut off at its limit still returns the rest
            Path(args.out).write_text(json.dumps(report, indent=1))
    finally:
        server.terminate()
        server.wait()
    found = [r["name"] for r in report["variants"]
             if any(q.get("adapter") for q in (r.get("probe") or {}).get("requests", []))]
    report["variants_with_adapter"] = found
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"variants with an adapter: {found or 'none'}; report {args.out}")
    return 0 if found else 1


if __name__ == "__main__":
    sys.exit(main())
