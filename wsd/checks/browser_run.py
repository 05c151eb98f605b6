"""Measure the web app in a real WebGPU engine: one JSON per run (issue 16).

    python -m wsd.checks.browser_run --bundle DIR --engine chromium|deno [--adapter gpu|swiftshader|
        lavapipe] [--dawn-features LIST] [--disable-robustness] [--reference PNG]
        [--settings JSON] [--runs N] [--compare-native BENCH.json] --out FILE.json
    python -m wsd.checks.browser_run --write-deno-script FILE.js   # Deno's script, for --deno-script

chromium: the page itself (Playwright driving Chromium, a fresh profile): cold load, N
generations through window.wsd.generate, then a reload in the same profile (the warm load,
weights from Cache Storage). deno: web/src/engine.js without a page (web/test/measure.js) on
Deno's WebGPU (wgpu), the warm load being a second process with the same Deno state.

The same module launches Chromium and serves bundles for tests/web (test_browser.py,
conftest.py), so the tests and the GPU machine's measurements run the same code.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository (wsd/checks/ is two down)
WEB = ROOT / "web"
CHROMIUM = os.environ.get("WSD_CHROMIUM", "/usr/bin/chromium")
DENO = os.environ.get("WSD_DENO", str(WEB / "node_modules" / ".bin" / "deno"))
LAVAPIPE_ICD = "/usr/share/vulkan/icd.d/lvp_icd.x86_64.json"
# Vulkan loader variables that pick the driver; recorded with each run
VULKAN_ENV = ("VK_DRIVER_FILES", "VK_ICD_FILENAMES", "VK_LOADER_DEBUG")

# No network on build machines: keep Chromium from calling home (facts.md).
QUIET = ["--no-sandbox", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-quic"]
# Chromium's WebGPU per adapter. "gpu" is the known recipe for NVIDIA on Linux, headless;
# the SwiftShader flags must never be in it (they replace the real adapter).
CHROMIUM_FLAGS = {
    "swiftshader": ["--enable-unsafe-webgpu", "--enable-features=Vulkan",
                    "--use-vulkan=swiftshader", "--use-webgpu-adapter=swiftshader"],
    # What showed Dawn's NVIDIA adapter in chrome://gpu on the H200 (facts.md, 2026-12-05):
    # without --use-vulkan=native --enable-gpu the GPU process does not touch the GPU, and
    # without --ignore-gpu-blocklist requestAdapter() never answered (scripts/browser_probe.py
    # tries variants of it)
    "gpu": ["--headless=new", "--disable-gpu-sandbox", "--use-angle=vulkan",
            "--use-vulkan=native", "--enable-gpu", "--enable-features=Vulkan,VulkanFromANGLE",
            "--disable-vulkan-surface", "--enable-unsafe-webgpu", "--ignore-gpu-blocklist"],
    "no-webgpu": ["--disable-features=WebGPU,Vulkan", "--disable-gpu"],
}
WEBGPU = CHROMIUM_FLAGS["swiftshader"]
ADAPTERS = {"chromium": ("gpu", "swiftshader"), "deno": ("gpu", "lavapipe")}
# The bars against `wsd generate` of the same dtype and settings
SSIM_BARS = {"float16": 0.98, "float32": 0.99}
LOAD_TIMEOUT_MS = 600_000
SHARD_PREFIX = "/params/"
CHROME_GPU_CHARS = 20_000  # of chrome://gpu's report, kept when the page found no adapter


class BrowserRunError(RuntimeError):
    """The run cannot start (no engine, bad options); failures inside a run are recorded."""


# --------------------------------------------------------------------------- shared helpers

@contextmanager
def serving(directory):
    """`wsd serve DIR` on a free port in this process: yields (base URL, request log), the
    log being a list of (path, status) in arrival order."""
    from wsd.web.serve import make_server

    log: list[tuple[str, int]] = []
    server = make_server(directory, port=0, quiet=True,
                         on_request=lambda path, code: log.append((path, code)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", log
    finally:
        server.shutdown()
        server.server_close()


def shard_bytes_served(bundle, requests) -> int:
    """Bytes of weight shards among `requests` ((path, status) of `serving`'s log) that the
    server sent in full (status 200)."""
    from wsd.web.serve import resolve_inside

    root = Path(bundle).resolve()
    total = 0
    for path, status in requests:
        if status == 200 and path.startswith(SHARD_PREFIX) and path.endswith(".bin"):
            file = resolve_inside(root, path)
            total += file.stat().st_size if file else 0
    return total


def vulkan_env(env) -> dict:
    """The Vulkan loader's driver choice in `env` (recorded with each run)."""
    return {k: env[k] for k in VULKAN_ENV if env.get(k)}


def engine_version(executable) -> str | None:
    """The first line of `executable --version`, or None when it does not answer."""
    try:
        out = subprocess.run([str(executable), "--version"], capture_output=True, text=True,
                             timeout=60).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.splitlines()[0] if out else None


def decode_png(data_url: str):
    import numpy as np
    from PIL import Image

    assert data_url.startswith("data:image/png;base64,"), data_url[:40]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))))


def ssim(a, b) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(a, b, channel_axis=2, data_range=255))


def image_psnr(image, reference) -> float:
    """PSNR of two uint8 images, dB (inf when equal); also wsd bench's image figure."""
    import numpy as np

    mse = float(np.mean((image.astype(np.float64) - reference.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def compare_to_reference(image, reference_png) -> dict:
    """SSIM and PSNR of an RGB(A) image against a PNG file (RGB, uint8)."""
    import numpy as np
    from PIL import Image

    expected = np.asarray(Image.open(reference_png).convert("RGB"))
    rgb = image[..., :3]
    if rgb.shape != expected.shape:
        raise BrowserRunError(f"the image is {rgb.shape[1]}x{rgb.shape[0]}, the reference "
                              f"{reference_png} {expected.shape[1]}x{expected.shape[0]}")
    score = image_psnr(rgb, expected)
    return {"ssim": ssim(rgb, expected), "psnr": None if math.isinf(score) else score,
            "max_abs_diff": int(np.abs(rgb.astype(int) - expected).max())}


# --------------------------------------------------------------------------- Chromium

def chromium_flags(adapter: str = "swiftshader", dawn_features=(), extra=()) -> list[str]:
    """Command-line switches for Chromium with WebGPU on `adapter` (a CHROMIUM_FLAGS key)."""
    flags = QUIET + CHROMIUM_FLAGS[adapter]
    if dawn_features:
        flags = flags + ["--enable-dawn-features=" + ",".join(dawn_features)]
    return flags + list(extra)


def launch(playwright, profile, webgpu: bool = True, flags: list[str] | None = None):
    """A persistent context in `profile` (a fresh directory: empty Cache Storage), with
    `flags` (default: WebGPU on SwiftShader, or WebGPU off)."""
    if flags is None:
        flags = chromium_flags("swiftshader" if webgpu else "no-webgpu")
    return playwright.chromium.launch_persistent_context(
        str(profile), executable_path=CHROMIUM, headless=True, args=flags)


def wait_ready(page) -> dict:
    """window.wsd.ready's value, or {"error": message} when it rejects."""
    page.wait_for_function("window.wsd !== undefined")
    return page.evaluate("window.wsd.ready.then(r => r, e => ({error: e.message}))")


def _chrome_gpu_text(context) -> str:
    """chrome://gpu's report (inside its info-view's shadow root): why there is no adapter."""
    page = context.new_page()
    try:
        page.goto("chrome://gpu")
        page.wait_for_timeout(3000)
        return page.evaluate("document.querySelector('info-view')?.shadowRoot?.textContent"
                             " ?? document.body.innerText") or ""
    except Exception as err:  # diagnosis only: never hide the run's own error
        return f"chrome://gpu unreadable: {err}"
    finally:
        page.close()


def run_chromium(bundle, flags: list[str], settings: dict, runs: int,
                 timeout_ms: int = LOAD_TIMEOUT_MS) -> dict:
    """The page in Chromium: cold load, `runs` generations, reload. Returns the raw
    measurements (build_report reads them); "error" set where the page failed."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        raise BrowserRunError(f"no Chromium at {CHROMIUM} (apt install chromium, or set "
                              "WSD_CHROMIUM)")
    raw: dict = {"engine_version": engine_version(CHROMIUM), "flags": flags,
                 "console_errors": [], "vulkan_env": vulkan_env(os.environ)}
    errors = raw["console_errors"]
    with sync_playwright() as playwright, serving(bundle) as (url, log), \
            tempfile.TemporaryDirectory(prefix="wsd-chromium-profile-") as profile:
        context = launch(playwright, profile, flags=flags)
        context.set_default_timeout(timeout_ms)
        try:
            page = context.new_page()
            page.on("console", lambda m: errors.append(f"console.error: {m.text}")
                    if m.type == "error" else None)
            page.on("pageerror", lambda err: errors.append(f"pageerror: {err}"))
            start = time.perf_counter()
            page.goto(url)
            raw["ready"] = wait_ready(page)
            raw["cold_wall_ms"] = (time.perf_counter() - start) * 1e3
            raw["user_agent"] = page.evaluate("navigator.userAgent")
            if "error" in raw["ready"]:
                raw["error"] = raw["ready"]["error"]
                raw["chrome_gpu"] = _chrome_gpu_text(context)[:CHROME_GPU_CHARS]
                return raw
            raw["runs"] = []
            for _ in range(runs):
                raw["png"] = page.evaluate("s => window.wsd.generate(s)", settings)
                raw["runs"].append(page.evaluate("window.wsd.last"))
            before = len(log)
            start = time.perf_counter()
            page.reload()
            raw["warm"] = wait_ready(page)
            raw["warm_wall_ms"] = (time.perf_counter() - start) * 1e3
            raw["warm_shard_bytes"] = shard_bytes_served(bundle, log[before:])
            if "error" in raw["warm"]:
                raw["error"] = f"reload: {raw['warm']['error']}"
        except Exception as err:  # a timeout or a crashed page: keep what was measured
            raw["error"] = f"{type(err).__name__}: {err}"
        finally:
            context.close()
    return raw


# --------------------------------------------------------------------------- Deno

def deno_env(adapter: str, state_dir: Path) -> dict:
    """Deno's environment: lavapipe by its ICD; "gpu" keeps the caller's Vulkan variables
    (on the GPU machine VK_DRIVER_FILES names NVIDIA's ICD)."""
    env = dict(os.environ, XDG_RUNTIME_DIR=str(state_dir), DENO_DIR=str(state_dir / "deno"),
               NO_COLOR="1")
    if adapter == "lavapipe":
        if not Path(LAVAPIPE_ICD).exists():
            raise BrowserRunError("Mesa lavapipe not installed (apt install "
                                  "mesa-vulkan-drivers)")
        env.pop("VK_DRIVER_FILES", None)
        env["VK_ICD_FILENAMES"] = LAVAPIPE_ICD
    return env


def _deno_job(script: Path, url: str, env: dict, job: dict, timeout_s: float):
    """One Deno process of measure.js: (its JSON result, stderr lines, wall ms)."""
    args = [DENO, "run", "--allow-net", "--allow-env", "--location", url, str(script),
            json.dumps(job)]
    start = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout_s)
    wall_ms = (time.perf_counter() - start) * 1e3
    stderr = [line for line in proc.stderr.splitlines() if line.strip()]
    lines = proc.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        result = {"error": f"deno exited {proc.returncode} without a result: "
                           f"{' | '.join(stderr[-5:])}"}
    return result, stderr, wall_ms


def run_deno(bundle, adapter: str, settings: dict, runs: int, script: Path | None = None,
             timeout_s: float = 1800) -> dict:
    """The engine in Deno: one process loads and generates `runs` times, a second one (same
    Deno state, hence the same Cache Storage) only loads: the warm reload."""
    from wsd.web.app import bundle_script

    if not Path(DENO).exists():
        raise BrowserRunError(f"no Deno at {DENO} (npm install in web/, or set WSD_DENO)")
    raw: dict = {"engine_version": engine_version(DENO), "console_errors": []}
    with tempfile.TemporaryDirectory(prefix="wsd-deno-") as tmp, \
            serving(bundle) as (url, log):
        state = Path(tmp)
        if script is None:
            script = state / "measure.js"
            bundle_script(WEB / "test" / "measure.js", script)
        env = deno_env(adapter, state)
        raw["vulkan_env"] = vulkan_env(env)
        raw["flags"] = ["run", "--allow-net", "--allow-env", "--location", url]
        # the cold process also generates: its wall time is no load time (the page's is)
        cold, stderr, _ = _deno_job(script, url, env, {"settings": settings, "runs": runs},
                                    timeout_s)
        raw["console_errors"] += stderr
        if "error" in cold:
            raw["error"] = cold["error"]
            return raw
        raw.update(ready=cold["ready"], runs=cold["runs"], png=cold["png"],
                   user_agent=cold.get("userAgent"))
        before = len(log)
        warm, stderr, raw["warm_wall_ms"] = _deno_job(script, url, env, {"loadOnly": True},
                                                      timeout_s)
        raw["console_errors"] += stderr
        raw["warm_shard_bytes"] = shard_bytes_served(bundle, log[before:])
        raw["warm"] = warm.get("ready", warm)
        if "error" in warm:
            raw["error"] = f"reload: {warm['error']}"
    return raw


def run_deno_jobs(bundle, adapter: str, jobs: list[dict], timeout_s: float = 1800) -> dict:
    """One Deno process: load the bundle, then generate once with each settings of `jobs`
    (e.g. image-to-image cases, images as data URLs); {"ready", "jobs": [{"png", "settings"}
    or {"error"}]} or {"error"} when loading fails. Each job's JSON goes on Deno's command
    line: keep the whole under 128 KiB (Linux's limit on one argument)."""
    from wsd.web.app import bundle_script

    if not Path(DENO).exists():
        raise BrowserRunError(f"no Deno at {DENO} (npm install in web/, or set WSD_DENO)")
    with tempfile.TemporaryDirectory(prefix="wsd-deno-") as tmp, \
            serving(bundle) as (url, _):
        state = Path(tmp)
        script = state / "measure.js"
        bundle_script(WEB / "test" / "measure.js", script)
        result, stderr, _ = _deno_job(script, url, deno_env(adapter, state), {"jobs": jobs},
                                      timeout_s)
    result["console_errors"] = stderr
    return result


# --------------------------------------------------------------------------- the report

def _median(values) -> float | None:
    return statistics.median(values) if values else None


def _ratio(a, b) -> float | None:
    return a / b if a and b else None


def _run_figures(last: dict) -> dict:
    """One generation's figures from window.wsd.last (timings absent: only its total)."""
    t = last.get("timings") or {}
    return {"image_ms": t.get("totalMs", last.get("ms")), "step_ms": _median(t.get("stepMs")),
            "step_host_ms": _median(t.get("stepHostMs")), "encode_ms": t.get("encodeMs"),
            "decode_ms": t.get("decodeMs"), "steps": len(t.get("stepMs") or []) or None}


def _load_figures(ready: dict, wall_ms: float | None) -> dict:
    """A load's figures from window.wsd.ready: the page's own time to ready, the stages and
    the weights' download/cache figures (null where the page does not report them)."""
    load = ready.get("load") or {}
    weights = load.get("weights") or ready.get("weights")
    return {"ready_ms": ready.get("loadMs"), "wall_ms": wall_ms,
            "stages_ms": load.get("stagesMs"), "weights": weights}


def native_comparison(bench_json, dtype: str, step_ms: float | None,
                      decode_ms: float | None) -> dict:
    """The UNet step's and decode's GPU times from a `wsd bench --target webgpu-native --json`
    report (rows "unet (...)" and "vae (...)" of `dtype`: medians of GPU time) and the
    browser's figures over them."""
    report = json.loads(Path(bench_json).read_text())
    rows = {r["name"].split()[0]: r for r in report.get("rows", [])
            if r.get("dtype") == dtype and r.get("kind") == "model"}
    unet, vae = rows.get("unet", {}), rows.get("vae", {})
    unet_ms, vae_ms = unet.get("tvm_ms"), vae.get("tvm_ms")
    return {"bench": str(bench_json), "target": report.get("target"),
            "device": report.get("device"), "date": report.get("date"),
            "unet_row": unet.get("name"), "unet_step_gpu_ms": unet_ms,
            "unet_step_host_encode_ms": unet.get("tvm_encode_ms"),
            "decode_gpu_ms": vae_ms,
            "host_overhead_ratio": _ratio(step_ms, unet_ms),
            "decode_ratio": _ratio(decode_ms, vae_ms)}


def build_report(raw: dict, *, engine: str, adapter: str, bundle, settings: dict, runs: int,
                 reference=None, diffusers_reference=None, compare_native=None,
                 command: str = "") -> dict:
    """The JSON of one run (issue 16 item 4) from run_chromium's / run_deno's measurements."""
    ready = raw.get("ready") or {}
    lasts = raw.get("runs") or []
    per_run = [_run_figures(last) for last in lasts]
    final = per_run[-1] if per_run else {}
    dtype = ready.get("dtype")
    report = {
        "measured_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": command,
        "engine": engine, "engine_version": raw.get("engine_version"),
        "user_agent": raw.get("user_agent"),
        "adapter_mode": adapter, "flags": raw.get("flags"),
        "vulkan_env": raw.get("vulkan_env"),
        "gpu": ready.get("adapter"), "adapter_info": ready.get("adapterInfo"),
        "kernel_set": ready.get("kernelSet"),
        "bundle": str(bundle), "model": ready.get("model"), "dtype": dtype,
        "height": ready.get("height"), "width": ready.get("width"),
        "settings": settings, "runs": runs,
        "reference": str(reference) if reference else None, "ssim": None, "psnr": None,
        "max_abs_diff": None, "ssim_bar": SSIM_BARS.get(dtype), "vs_diffusers": None,
        "step_ms": final.get("step_ms"), "step_host_ms": final.get("step_host_ms"),
        "image_ms": final.get("image_ms"), "encode_ms": final.get("encode_ms"),
        "decode_ms": final.get("decode_ms"), "steps": final.get("steps"),
        "per_run": per_run,
        "gpu_memory": (lasts[-1].get("gpuMemory") if lasts else None) or ready.get("gpuMemory"),
        "cold_load": _load_figures(ready, raw.get("cold_wall_ms")) if ready else None,
        "warm_reload": None, "native": None, "host_overhead_ratio": None,
        "console_errors": raw.get("console_errors", []), "error": raw.get("error"),
    }
    warm = raw.get("warm")
    if warm and "error" not in warm:
        figures = _load_figures(warm, raw.get("warm_wall_ms"))
        report["warm_reload"] = {**figures, "shard_bytes_served": raw.get("warm_shard_bytes"),
                                 "fetched_bytes": (figures["weights"] or {}).get("fetchedBytes")}
    if raw.get("chrome_gpu"):
        report["chrome_gpu"] = raw["chrome_gpu"]
    if reference and raw.get("png"):
        report.update(compare_to_reference(decode_png(raw["png"]), reference))
    if diffusers_reference and raw.get("png"):
        report["vs_diffusers"] = {"reference": str(diffusers_reference),
                                  **compare_to_reference(decode_png(raw["png"]),
                                                         diffusers_reference)}
    if compare_native and dtype:
        report["native"] = native_comparison(compare_native, dtype, report["step_ms"],
                                             report["decode_ms"])
        report["host_overhead_ratio"] = report["native"]["host_overhead_ratio"]
    return report


def measure(bundle, engine: str, adapter: str = "gpu", settings: dict | None = None,
            runs: int = 1, dawn_features=(), extra_flags=(), reference=None,
            diffusers_reference=None, compare_native=None, deno_script=None,
            command: str = "", save_image=None) -> dict:
    """Run the bundle in `engine` and return the report (build_report)."""
    if adapter not in ADAPTERS[engine]:
        raise BrowserRunError(f"--adapter {adapter} is not one of {engine}'s: "
                              f"{', '.join(ADAPTERS[engine])}")
    if not (Path(bundle) / "wsd-config.json").is_file():
        raise BrowserRunError(f"{bundle} is not a web bundle (wsd build --target webgpu "
                              f"--out {bundle})")
    settings = dict(settings or {})
    if engine == "chromium":
        raw = run_chromium(bundle, chromium_flags(adapter, dawn_features, extra_flags),
                           settings, runs)
    else:
        if dawn_features or extra_flags:
            raise BrowserRunError("--dawn-features and --chromium-flag are Chromium's")
        raw = run_deno(bundle, adapter, settings, runs, deno_script)
    if save_image and raw.get("png"):
        Path(save_image).write_bytes(base64.b64decode(raw["png"].split(",", 1)[1]))
    return build_report(raw, engine=engine, adapter=adapter, bundle=bundle, settings=settings,
                        runs=runs, reference=reference,
                        diffusers_reference=diffusers_reference,
                        compare_native=compare_native, command=command)


def _settings_arg(value: str) -> dict:
    """--settings: a JSON object, or the path of a file holding one."""
    text = value if value.lstrip().startswith("{") else Path(value).read_text()
    settings = json.loads(text)
    if not isinstance(settings, dict):
        raise argparse.ArgumentTypeError("--settings must be a JSON object")
    return settings


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="python -m wsd.checks.browser_run",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", help="a web bundle (wsd build --target webgpu --out DIR)")
    parser.add_argument("--engine", choices=tuple(ADAPTERS))
    parser.add_argument("--adapter", default="gpu",
                        choices=sorted({a for pair in ADAPTERS.values() for a in pair}), help="gpu (default), swiftshader "
                        "(Chromium's software adapter) or lavapipe (Deno on Mesa's)")
    parser.add_argument("--dawn-features", default="", help="comma-separated Dawn toggles for "
                        "Chromium's --enable-dawn-features, e.g. vulkan_enable_f16_on_nvidia")
    parser.add_argument("--disable-robustness", action="store_true",
                        help="add Dawn's disable_robustness (no bounds checks)")
    parser.add_argument("--chromium-flag", action="append", default=[],
                        help="one more Chromium switch, written --chromium-flag=--SWITCH "
                        "(repeatable; recorded in flags)")
    parser.add_argument("--settings", type=_settings_arg, default={},
                        help="generate() settings: a JSON object or a file holding one "
                        "(prompt, negativePrompt, steps, guidanceScale, scheduler, seed)")
    parser.add_argument("--runs", type=int, default=3, help="generations (the figures are "
                        "the last one's; default 3); 0: the cold load and the warm reload only")
    parser.add_argument("--reference", help="PNG of `wsd generate` with the same settings: "
                        "SSIM and PSNR against it")
    parser.add_argument("--diffusers-reference", help="PNG of diffusers fp32 with the same "
                        "settings: SSIM and PSNR against it too (vs_diffusers)")
    parser.add_argument("--compare-native", help="`wsd bench --target webgpu-native --json` "
                        "file of the same build: host_overhead_ratio over its UNet GPU time")
    parser.add_argument("--deno-script", help="a prebuilt bundle of web/test/measure.js "
                        "(default: bundled now with esbuild)")
    parser.add_argument("--write-deno-script", metavar="FILE", help="only bundle "
                        "web/test/measure.js into FILE (for machines without esbuild) and exit")
    parser.add_argument("--save-image", help="write the last generated PNG here")
    parser.add_argument("--out", help="the JSON to write, e.g. "
                        "docs/results/browser-gpu-chromium-DATE.json")
    args = parser.parse_args(argv)
    if args.write_deno_script:
        from wsd.web.app import bundle_script

        bundle_script(WEB / "test" / "measure.js", args.write_deno_script)
        return 0
    missing = [f"--{n}" for n in ("bundle", "engine", "out") if not getattr(args, n)]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)}")
    if args.runs < 0:
        parser.error(f"--runs must be 0 or more, got {args.runs}")
    features = [f for f in args.dawn_features.split(",") if f]
    if args.disable_robustness and "disable_robustness" not in features:
        features.append("disable_robustness")
    try:
        report = measure(args.bundle, args.engine, args.adapter, args.settings,
                         runs=args.runs, dawn_features=features,
                         extra_flags=args.chromium_flag, reference=args.reference,
                         diffusers_reference=args.diffusers_reference,
                         compare_native=args.compare_native, deno_script=args.deno_script,
                         command=shlex.join(["python", "-m", "wsd.checks.browser_run", *argv]),
                         save_image=args.save_image)
    except BrowserRunError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    summary = {k: report[k] for k in ("gpu", "dtype", "ssim", "step_ms", "image_ms",
                                      "host_overhead_ratio", "error")}
    summary["warm_shard_bytes"] = (report["warm_reload"] or {}).get("shard_bytes_served")
    print(json.dumps(summary))
    return 1 if report["error"] else 0


if __name__ == "__main__":
    sys.exit(main())
