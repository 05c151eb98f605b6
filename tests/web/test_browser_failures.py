"""What breaks at full size, provoked on the tiny bundle in headless Chromium (SwiftShader):
a storage quota too small for the weights (the page must say so and still load them), and a
shader the browser's WGSL compiler rejects (the error must name the kernel). A lost GPU
device is provoked in test_browser.py, on its loaded page.

Each test stops as soon as its case is decided, before SwiftShader has compiled every shader.
"""

from __future__ import annotations

import json
import re
import shutil
from urllib.parse import urlsplit

import pytest

from tests.web.conftest import serving
from tests.web.test_browser import launch, wait_ready

CACHE_ENTRIES = "caches.open('wsd-weights-v1').then(c => c.keys()).then(k => k.length)"


def test_storage_quota_too_small(playwright, tiny_bundle, tmp_path):  # noqa: F811
    """A site quota far below the weights: a warning that names the quota, nothing cached,
    and the weights still load."""
    with serving(tiny_bundle) as (url, _):
        context = launch(playwright, tmp_path / "profile")
        page = context.new_page()
        page.goto("about:blank")
        origin = "{0.scheme}://{0.netloc}".format(urlsplit(url))
        cdp = context.new_cdp_session(page)
        cdp.send("Storage.overrideQuotaForOrigin", {"origin": origin, "quotaSize": 4096})
        page.goto(url)
        page.wait_for_function("window.wsd && window.wsd.timeline && window.wsd.timeline.shaders")
        weights = page.evaluate("window.wsd.progress.weights")
        shown = page.inner_text("#warning")
        cached = page.evaluate(CACHE_ENTRIES)
        context.close()
    if weights.get("cacheWarning") is None and cached:
        pytest.skip("this Chromium ignores Storage.overrideQuotaForOrigin")
    warning = weights["cacheWarning"]
    # Chromium 156's storage.estimate() does not reflect the override, so the refused
    # cache.put says it; a browser whose estimate does is stopped before the download.
    assert ("refused to store params_shard_0.bin (QuotaExceededError" in warning
            or "storage quota for this site leaves" in warning), warning
    assert "will be downloaded again next time" in warning
    assert warning in shown
    assert cached == 0
    assert weights["loaded"] == weights["total"] == weights["fetched"] > 0


def test_buffer_over_the_adapter_limit_named_before_download(playwright, tiny_bundle,  # noqa: F811
                                                            tmp_path):
    """A bundle whose largest buffer exceeds what the adapter allows (as SD v1.5 fp32's
    256 MiB binding exceeds WebGPU's default): the limit is named and no weight is fetched."""
    big = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, big)
    config = json.loads((big / "wsd-config.json").read_text())
    need = 1 << 40  # 1 TiB: beyond any adapter
    config["requirements"].update(max_buffer_bytes=need, max_storage_binding_bytes=need)
    (big / "wsd-config.json").write_text(json.dumps(config))
    with serving(big) as (url, log):
        context = launch(playwright, tmp_path / "profile")
        page = context.new_page()
        page.goto(url)
        ready = wait_ready(page)
        context.close()
    if "no GPU adapter" in ready.get("error", ""):
        pytest.skip(ready["error"])
    error = ready["error"]
    assert "this GPU adapter cannot run the model" in error, error
    assert "needs maxBufferSize >= 1048576 MiB, the adapter offers" in error
    assert "needs maxStorageBufferBindingSize >= 1048576 MiB" in error
    assert not [path for path, _ in log if path.startswith("/params/")]


def corrupt_first_kernel(wasm: bytes) -> tuple[bytes, str]:
    """model.wasm with one WGSL kernel made invalid (a misspelt keyword, same length, so the
    module stays valid wasm); returns it and the kernel's name."""
    start = wasm.index(b"@compute")
    name = re.compile(rb"fn (\w+)\(").search(wasm, start).group(1).decode()
    bad = wasm.index(b"{ return; }", start)
    return wasm[:bad] + b"{ retrun; }" + wasm[bad + len(b"{ return; }"):], name


def test_shader_error_names_the_kernel(playwright, tiny_bundle, tmp_path):  # noqa: F811
    bad = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bad)
    wasm, kernel = corrupt_first_kernel((bad / "model.wasm").read_bytes())
    (bad / "model.wasm").write_bytes(wasm)
    with serving(bad) as (url, _):
        context = launch(playwright, tmp_path / "profile")
        page = context.new_page()
        page.goto(url)
        ready = wait_ready(page)
        shown = page.inner_text("#error")
        context.close()
    if "no GPU adapter" in ready.get("error", ""):
        pytest.skip(ready["error"])
    error = ready["error"]
    assert f"cannot compile the GPU shader of kernel '{kernel}'" in error, error
    assert re.search(r"line \d+:\d+: \S", error), error  # where, in the compiler's words
    assert shown == error


QUOTA_CASES = """
import { quotaProblem } from "./web/src/weights.js";
const estimate = (quota, usage) => ({ estimate: async () => ({ quota, usage }) });
const MIB = 1 << 20;
console.log(JSON.stringify([
  await quotaProblem(100 * MIB, estimate(1000 * MIB, 950 * MIB)),
  await quotaProblem(10 * MIB, estimate(1000 * MIB, 950 * MIB)),
  await quotaProblem(10 * MIB, undefined),
  await quotaProblem(10 * MIB, { estimate: async () => { throw new Error("no"); } }),
]));
"""


def test_quota_estimate_decides_before_download(tmp_path):
    """quotaProblem (weights.js) from a storage estimate: too little room is named in MiB;
    enough room, no estimate or a failing one is no problem."""
    import json
    import subprocess

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    from tests.web.conftest import ROOT

    script = ROOT / f".quota-{tmp_path.name}.mjs"  # beside web/: its relative import resolves
    script.write_text(QUOTA_CASES)
    try:
        out = subprocess.run([node, str(script)], capture_output=True, text=True, check=True)
    finally:
        script.unlink()
    short, enough, absent, failing = json.loads(out.stdout)
    assert short == ("the browser's storage quota for this site leaves 50.0 MiB free and the "
                     "weights need 100.0 MiB more")
    assert enough is None and absent is None and failing is None
