"""The page as people use it, in headless Chromium (Playwright, WebGPU on SwiftShader) on the
tiny fp32 bundle: the image at a readable size, the history (IndexedDB, across a reload),
the download carrying the settings as `wsd generate` writes them, an input image by file
picker, drop and paste with its strength, cancelling a generation, clearing the history.

One loaded page serves the module (SwiftShader compiles the shaders in about two minutes),
reloaded once; the tests run in file order and build on each other's history. Screenshots
of each state land in artifacts/web/page-*.png.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.web.conftest import ARTIFACTS, serving
from wsd.checks.browser_run import LOAD_TIMEOUT_MS, launch, wait_ready

pytest.importorskip("playwright.sync_api", reason="pip install playwright")
Image = pytest.importorskip("PIL.Image")
PngInfo = pytest.importorskip("PIL.PngImagePlugin").PngInfo

ROOT = Path(__file__).resolve().parents[2]
STEP_MS = 600_000  # one generation on SwiftShader: seconds, but the machine may be busy
FIRST = {"prompt": "a red barn", "negative": "blurry", "steps": "2", "guidance": "7.5",
         "scheduler": "ddim", "seed": "42"}
SECOND = {**FIRST, "prompt": "a blue lake", "seed": "7", "scheduler": "euler"}


def parameters(form: dict, **extra) -> dict:
    """What the page's PNG must carry for form values `form` (the keys of `wsd generate`)."""
    return {"prompt": form["prompt"], "negative_prompt": form["negative"], "model": "tiny",
            "scheduler": form["scheduler"], "steps": int(form["steps"]),
            "guidance_scale": float(form["guidance"]), "seed": int(form["seed"]),
            "dtype": "float32", "target": "webgpu", **extra}


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"page-{name}.png"), full_page=True)


def history_titles(page) -> list[str]:
    return page.eval_on_selector_all("#history .thumb", "bs => bs.map(b => b.title)")


def fill(page, form: dict) -> None:
    for key, value in form.items():
        if key == "scheduler":
            page.select_option("#scheduler", value)
        else:
            page.fill(f"#{key}", value)


UNTIL_DONE = ("document.getElementById('status').textContent.startsWith('Done')"
              " || !document.getElementById('error').hidden")


def no_input_image(page) -> None:
    if page.is_visible("#init-remove"):
        page.click("#init-remove")


def generate_from_form(page, form: dict) -> None:
    no_input_image(page)
    fill(page, form)
    page.click("#generate")
    page.wait_for_function(UNTIL_DONE, timeout=STEP_MS)
    assert page.is_hidden("#error"), page.inner_text("#error")
    page.wait_for_function("!document.getElementById('generate').disabled")


def png_with_parameters(params: dict | None, size=(64, 48), color=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    info = PngInfo()
    if params is not None:
        info.add_text("parameters", json.dumps(params))
    Image.new("RGB", size, color).save(out, format="PNG", pnginfo=info)
    return out.getvalue()


@pytest.fixture(scope="module")
def app(playwright, tiny_bundle, tmp_path_factory):
    """The page with the tiny fp32 bundle loaded: (page, page errors)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with serving(tiny_bundle) as (url, _):
        context = launch(playwright, tmp_path_factory.mktemp("chromium-page-profile"))
        context.set_default_timeout(LOAD_TIMEOUT_MS)
        page = context.new_page()
        errors = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto(url)
        shot(page, "loading")
        ready = wait_ready(page)
        if "error" in ready and "no GPU adapter" in ready["error"]:
            pytest.skip(f"Chromium found no WebGPU adapter: {ready['error']}")
        assert "error" not in ready, ready["error"]
        yield page, errors
        assert not errors, errors
        context.close()


def test_png_text_chunk_read_by_pillow(tmp_path):
    """png.js (node, no browser): tEXt chunks written by encodePNG and withText are what
    Pillow reads as info; readText reads Pillow's."""
    if shutil.which("node") is None:
        pytest.skip("no node")
    (tmp_path / "pillow.png").write_bytes(png_with_parameters({"seed": 2**64 - 1}))
    script = f"""
      import {{ encodePNG, withText, readText }} from {json.dumps(str(ROOT / "web/src/png.js"))};
      import {{ readFileSync, writeFileSync }} from "fs";
      const rgba = new Uint8ClampedArray(2 * 3 * 4).fill(255);
      const text = {{ parameters: "caf\\u00e9" }};
      writeFileSync("{tmp_path}/a.png", await encodePNG(rgba, 2, 3, text));
      writeFileSync("{tmp_path}/b.png", withText(await encodePNG(rgba, 2, 3), {{ k: "v", w: "" }}));
      console.log(JSON.stringify(readText(readFileSync("{tmp_path}/pillow.png"))));
    """
    (tmp_path / "t.mjs").write_text(script)
    out = subprocess.run(["node", str(tmp_path / "t.mjs")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"parameters": '{"seed": 18446744073709551615}'}
    a, b = Image.open(tmp_path / "a.png"), Image.open(tmp_path / "b.png")
    a.load(), b.load()
    assert a.info == {"parameters": "café"} and a.size == (3, 2)
    assert b.info == {"k": "v", "w": ""}


def test_generate_shows_a_readable_image_and_a_history_entry(app):
    page, _ = app
    assert history_titles(page) == []
    generate_from_form(page, FIRST)
    # 128x128 shown 4x (512 CSS px) with crisp pixels
    size = page.evaluate("""(() => { const i = document.getElementById('image');
      const c = getComputedStyle(i);
      return {natural: i.naturalWidth, width: c.width, rendering: c.imageRendering,
              viewport: window.innerWidth}; })()""")
    assert size["natural"] == 128
    assert size["width"] == "512px" and size["rendering"] == "pixelated", size
    titles = history_titles(page)
    assert len(titles) == 1 and "seed 42" in titles[0] and "a red barn" in titles[0], titles
    assert page.get_attribute("#history .thumb", "aria-current") == "true"
    assert page.is_visible("#download")
    shot(page, "generated")


def test_second_generation_then_restore_the_first(app):
    page, _ = app
    generate_from_form(page, SECOND)
    titles = history_titles(page)
    assert len(titles) == 2 and "seed 7" in titles[0] and "seed 42" in titles[1], titles
    shown = page.get_attribute("#image", "src")
    page.fill("#prompt", "something else")
    page.fill("#seed", "123")
    page.click("#history li:nth-child(2) .thumb")
    got = {key: page.input_value(f"#{key}") for key in FIRST}
    assert got == FIRST
    assert page.get_attribute("#image", "src") != shown
    assert page.get_attribute("#history li:nth-child(2) .thumb", "aria-current") == "true"
    shot(page, "history-restored")


def test_download_carries_the_settings(app, tmp_path):
    page, _ = app
    page.click("#history li:nth-child(2) .thumb")  # the first image (seed 42)
    with page.expect_download() as download:
        page.click("#download")
    path = tmp_path / "download.png"
    download.value.save_as(path)
    assert download.value.suggested_filename == "wsd-42.png"
    image = Image.open(path)
    assert image.size == (128, 128)
    assert json.loads(image.info["parameters"]) == parameters(FIRST)
    # The API's PNG too: a 64-bit seed stays exact, a non-ASCII prompt survives (as \\u escapes)
    seed = 2**64 - 1
    url = page.evaluate("s => window.wsd.generate(s)",
                        {"prompt": "café ☕", "negativePrompt": "", "steps": 1,
                         "guidanceScale": 1, "scheduler": "ddim", "seed": str(seed)})
    data = page.evaluate("u => fetch(u).then(r => r.arrayBuffer())"
                         ".then(b => Array.from(new Uint8Array(b)))", url)
    text = Image.open(io.BytesIO(bytes(data))).info["parameters"]
    assert text.isascii()
    assert json.loads(text) == {"prompt": "café ☕", "negative_prompt": "", "model": "tiny",
                                "scheduler": "ddim", "steps": 1, "guidance_scale": 1.0,
                                "seed": seed, "dtype": "float32", "target": "webgpu"}
    assert len(history_titles(page)) == 3


SPY = """() => {
  window.__calls = [];
  const real = window.wsd.generate;
  window.__realGenerate = real;
  window.wsd.generate = (o) => {
    window.__calls.push({keys: Object.keys(o).sort(), strength: o.strength,
                         image: o.image instanceof Blob ? {type: o.image.type, size: o.image.size}
                           : null});
    return real(o);
  };
}"""


def _generate_with_image(page, refused: str | None) -> dict:
    """Press Generate with the chosen image: what window.wsd.generate was given, and how it
    ended: `refused`, the start of the engine's message shown under the form (a picture of
    another size than the 128x128 bundle's: both sizes named) and nothing added to the
    history; else an image to image result, added to the history."""
    before = len(history_titles(page))
    page.evaluate(SPY)
    try:
        page.click("#generate")
        page.wait_for_function(UNTIL_DONE, timeout=STEP_MS)
        page.wait_for_function("!document.getElementById('generate').disabled")
    finally:
        page.evaluate("() => { window.wsd.generate = window.__realGenerate; }")
    calls = page.evaluate("window.__calls")
    assert len(calls) == 1, calls
    error = page.inner_text("#error") if page.is_visible("#error") else None
    if refused is not None:
        assert error is not None and error.startswith(refused), error
        assert "built for 128x128" in error and len(history_titles(page)) == before
    else:
        assert error is None, error
        assert len(history_titles(page)) == before + 1
    return {**calls[0], "error": error}


def test_image_by_file_picker_with_strength_and_reuse(app, tmp_path):
    page, _ = app
    cli_params = parameters({**FIRST, "prompt": "from the cli", "seed": "1234"})
    path = tmp_path / "input.png"
    path.write_bytes(png_with_parameters({**cli_params, "seed": 2**63 + 5}))
    page.set_input_files("#init-file", str(path))
    page.wait_for_selector("#init-chosen", state="visible")
    assert page.evaluate("document.getElementById('init-thumb').naturalWidth") == 64
    # its settings are offered; taking them fills the form (the 64-bit seed exactly)
    page.wait_for_selector("#reuse", state="visible")
    assert "from the cli" in page.inner_text("#reuse-text")
    page.click("#reuse-apply")
    assert page.input_value("#prompt") == "from the cli"
    assert page.input_value("#seed") == str(2**63 + 5)
    assert page.is_hidden("#reuse")
    assert page.input_value("#strength") == "0.8" and page.is_enabled("#strength")
    page.fill("#strength", "0.35")
    assert page.inner_text("#strength-value") == "0.35"
    shot(page, "image-input")
    page.fill("#steps", "2")
    call = _generate_with_image(page, refused="the image is 64x48")
    assert "image" in call["keys"] and "strength" in call["keys"], call
    assert call["strength"] == 0.35 and call["image"] == {"type": "image/png",
                                                          "size": path.stat().st_size}
    shot(page, "image-input-generate")
    page.click("#init-remove")
    assert page.is_hidden("#init-chosen") and page.is_disabled("#strength")
    # without an image, no image keys: the page generates as before
    page.evaluate(SPY)
    try:
        fill(page, FIRST)
        page.click("#generate")
        page.wait_for_function(UNTIL_DONE, timeout=STEP_MS)
    finally:
        page.evaluate("() => { window.wsd.generate = window.__realGenerate; }")
    assert page.is_hidden("#error"), page.inner_text("#error")
    keys = page.evaluate("window.__calls[0].keys")
    assert "image" not in keys and "strength" not in keys and "signal" in keys


def _synthetic(page, event: str, png: bytes, name: str) -> None:
    page.evaluate("""([event, bytes, name]) => {
      const file = new File([new Uint8Array(bytes)], name, {type: 'image/png'});
      const data = new DataTransfer();
      data.items.add(file);
      const target = document.getElementById(event === 'paste' ? 'prompt' : 'dropzone');
      if (event === 'paste') {
        target.dispatchEvent(new ClipboardEvent('paste', {clipboardData: data, bubbles: true,
                                                          cancelable: true}));
      } else {
        for (const type of ['dragenter', 'dragover', 'drop']) {
          target.dispatchEvent(new DragEvent(type, {dataTransfer: data, bubbles: true,
                                                    cancelable: true}));
        }
      }
    }""", [event, list(png), name])


def _check_native_img2img(page, last: dict, png: bytes) -> None:
    """The page's image against wsd's native img2img of the same picture and settings."""
    import numpy as np
    from PIL import Image

    from tests.numerics.test_generate import setup_for
    from tests.web.conftest import decode_png, ssim

    ours = decode_png(page.get_attribute("#image", "src"))[..., :3]
    native = setup_for("tiny", "llvm").pipe.generate(
        last["prompt"], last["negativePrompt"], last["scheduler"], last["steps"],
        last["guidanceScale"], int(last["seed"]), image=Image.open(io.BytesIO(png)),
        strength=last["strength"])
    score = ssim(ours, native)
    print(f"chromium img2img vs native: SSIM {score:.5f}")
    assert score >= 0.99 and np.abs(ours.astype(int) - native).mean() < 2.0


@pytest.mark.parametrize("event", ["drop", "paste"])
def test_image_by_drop_and_paste(app, event):
    page, _ = app
    no_input_image(page)
    page.fill("#prompt", "typed")
    png = png_with_parameters(None, size=(128 + len(event), 128), color=(10, 120, 200))
    _synthetic(page, event, png, f"{event}.png")
    page.wait_for_selector("#init-chosen", state="visible")
    width = page.evaluate("""new Promise(r => { const i = document.getElementById('init-thumb');
      i.complete && i.naturalWidth ? r(i.naturalWidth) : i.onload = () => r(i.naturalWidth); })""")
    assert width == 128 + len(event)
    assert page.is_hidden("#reuse")  # no settings in it: nothing offered
    assert page.input_value("#prompt") == "typed"  # the paste did not go into the text
    page.fill("#strength", "0.6")
    shot(page, f"image-{event}")
    call = _generate_with_image(page, refused=None)  # rounds down to 128x128: image to image
    last = page.evaluate("window.wsd.last.settings")
    assert last["strength"] == 0.6 and last["image"]["resized"] is True
    if event == "paste":  # Chromium's image to image is the native one (Lanczos resize too)
        _check_native_img2img(page, last, png)
    assert call["strength"] == 0.6 and call["image"] == {"type": "image/png", "size": len(png)}
    page.click("#init-remove")
    assert page.is_hidden("#init-chosen")


def test_cancel_between_steps(app):
    page, _ = app
    before = history_titles(page)
    no_input_image(page)
    fill(page, {**FIRST, "steps": "200", "seed": "5"})
    assert page.is_disabled("#cancel")
    page.click("#generate")
    page.wait_for_function("document.getElementById('status').textContent"
                           ".startsWith('Denoising: step')"
                           " || !document.getElementById('error').hidden", timeout=STEP_MS)
    assert page.is_hidden("#error"), page.inner_text("#error")
    page.click("#cancel")
    page.wait_for_function("document.getElementById('status').textContent"
                           ".startsWith('Cancelled')", timeout=STEP_MS)
    shot(page, "cancelled")
    assert page.is_hidden("#error"), page.inner_text("#error")
    assert page.is_disabled("#cancel") and page.is_enabled("#generate")
    assert history_titles(page) == before
    steps = page.evaluate("window.wsd.progress.denoise")
    assert steps["step"] < 200, steps
    # no tvmjs scope left open (tensors of the cancelled generation freed)
    assert page.evaluate("window.wsd.engine.tvm.ctx.autoDisposeScope.length") == 0
    # the engine is ready for the next one, and the API rejects a cancelled call by name
    generate_from_form(page, {**FIRST, "steps": "1", "seed": "6"})
    assert len(history_titles(page)) == len(before) + 1
    error = page.evaluate("""() => { const c = new AbortController(); c.abort();
      return window.wsd.generate({steps: 1, signal: c.signal}).then(() => 'resolved',
                                                           e => e.name + ': ' + e.message); }""")
    assert error == "AbortError: the generation was cancelled"


OTHER_BUNDLE = """bytes => new Promise((resolve, reject) => {
  const r = indexedDB.open('wsd-history', 1);
  r.onsuccess = () => {
    const tx = r.result.transaction('images', 'readwrite');
    tx.objectStore('images').add({created: 1, png: new Blob([new Uint8Array(bytes)],
        {type: 'image/png'}), parameters: '{}', settings: {prompt: 'old one',
        negativePrompt: '', steps: 3, guidanceScale: 2, scheduler: 'pndm', seed: '9'},
      model: 'some-other-model', configHash: '0000000000000000', dtype: 'float16',
      width: 64, height: 48});
    tx.oncomplete = () => { r.result.close(); resolve(); };
    tx.onerror = () => reject(tx.error);
  };
  r.onerror = () => reject(r.error);
})"""


@pytest.mark.slow  # a second page load: ~105 s on SwiftShader
def test_history_survives_a_reload(app):
    """Reloaded, the page lists the stored images before the model is ready, and labels an
    image of another bundle (stored here as an older page would have)."""
    page, _ = app
    titles = history_titles(page)
    page.evaluate(OTHER_BUNDLE, list(png_with_parameters(None, size=(64, 48))))
    page.reload()
    page.wait_for_function(f"document.querySelectorAll('#history .thumb').length === "
                           f"{len(titles) + 1}")
    assert history_titles(page)[:-1] == titles
    assert "old one" in history_titles(page)[-1]
    ready = wait_ready(page)
    assert "error" not in ready, ready
    labels = page.eval_on_selector_all("#history .other", "s => s.map(x => x.textContent)")
    assert labels == ["other model: some-other-model"]
    page.click("#history li:last-child .thumb")
    assert page.input_value("#prompt") == "old one" and page.input_value("#seed") == "9"
    assert "another bundle" in page.inner_text("#status")
    shot(page, "reloaded")
    generate_from_form(page, {**FIRST, "steps": "1", "seed": "8"})
    assert len(history_titles(page)) == len(titles) + 2


def test_history_bounded_and_quota_handled(app):
    """At most 50 images are stored (the oldest go first); a store the browser refuses
    (quota) leaves the image in the page's history, with a message (records added through
    the page's History directly: 50 generations would take too long)."""
    page, _ = app
    result = page.evaluate("""async () => {
      const h = window.wsd.historyStore;
      const first = h.entries.length;
      const record = (i, bytes) => ({created: Date.now(), png: new Blob([new Uint8Array(bytes)],
        {type: 'image/png'}), parameters: '{}', settings: {prompt: `bulk ${i}`,
        negativePrompt: '', steps: 1, guidanceScale: 1, scheduler: 'ddim', seed: String(i)},
        model: 'tiny', configHash: 'x', dtype: 'float32', width: 1, height: 1});
      const problems = [];
      for (let i = 0; i < 55; i++) problems.push(await h.add(record(i, 16)));
      const count = () => new Promise(res => { const r = indexedDB.open('wsd-history', 1);
        r.onsuccess = () => { const q = r.result.transaction('images').objectStore('images')
          .getAll(); q.onsuccess = () => { r.result.close(); res(q.result.map(
            e => e.settings.prompt)); }; }; });
      return {first, problems: problems.filter(Boolean), kept: h.entries.length,
              stored: await count(), newest: h.entries[0].settings.prompt};
    }""")
    assert result["problems"] == [] and result["kept"] == 50, result
    assert len(result["stored"]) == 50
    assert result["stored"][0] == "bulk 5" and result["stored"][-1] == "bulk 54"
    assert result["newest"] == "bulk 54"
    # a store the browser refuses (as a full quota does): the page says so, keeps the image
    page.evaluate("""() => { window.__add = IDBObjectStore.prototype.add;
      IDBObjectStore.prototype.add = function () {
        throw new DOMException('the quota has been exceeded', 'QuotaExceededError'); }; }""")
    try:
        generate_from_form(page, {**FIRST, "steps": "1", "seed": "11"})
    finally:
        page.evaluate("() => { IDBObjectStore.prototype.add = window.__add; }")
    warning = page.inner_text("#warning")
    assert "the browser refused to store this image in the history (QuotaExceededError" in warning
    titles = history_titles(page)
    assert len(titles) == 50 and "seed 11" in titles[0], titles[:2]
    assert page.evaluate("window.wsd.history[0].id") is None
    shot(page, "history-full")
    generate_from_form(page, {**FIRST, "steps": "1", "seed": "12"})  # stored again
    assert page.evaluate("typeof window.wsd.history[0].id") == "number"


def test_controls_are_labelled(app):
    page, _ = app
    unlabelled = page.evaluate("""() => [...document.querySelectorAll(
        'input, select, textarea, button')].filter(e => {
      if (e.tagName === 'BUTTON') return !(e.textContent.trim() || e.getAttribute('aria-label'));
      return !(e.labels && e.labels.length) && !e.getAttribute('aria-label');
    }).map(e => e.id || e.outerHTML.slice(0, 60))""")
    assert unlabelled == []


def test_clear_history_asks_first(app):
    page, _ = app
    n = len(history_titles(page))
    assert n > 0
    page.once("dialog", lambda d: d.dismiss())
    page.click("#clear-history")
    assert len(history_titles(page)) == n
    page.once("dialog", lambda d: d.accept())
    page.click("#clear-history")
    page.wait_for_function("document.querySelectorAll('#history .thumb').length === 0")
    assert page.is_visible("#history-empty") and page.is_disabled("#clear-history")
    stored = page.evaluate("""new Promise(res => { const r = indexedDB.open('wsd-history', 1);
      r.onsuccess = () => { const q = r.result.transaction('images').objectStore('images')
        .count(); q.onsuccess = () => { r.result.close(); res(q.result); }; }; })""")
    assert stored == 0
    shot(page, "cleared")
