"""web/src/image_input.js against PIL and wsd/runtime/image.py: its PNG decoder gives PIL's
pixels (RGB, RGBA, gray, palette, every row filter), its Lanczos resize gives PIL's
Image.resize(..., LANCZOS), and prepareImage gives prepare_image's float32 pixels (or the
same refusal for a wrong size). Run through node (no GPU)."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsd.runtime.image import prepare_image

NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed")

MODULE = (Path(__file__).resolve().parents[2] / "web" / "src" / "image_input.js").as_uri()

DRIVER = """
import * as m from %(module)s;
const jobs = JSON.parse(await new Promise((resolve) => {
  let s = ""; process.stdin.on("data", (d) => { s += d; }); process.stdin.on("end", () => resolve(s));
}));
const b64 = (a) => Buffer.from(a.buffer, a.byteOffset, a.byteLength).toString("base64");
const out = [];
for (const job of jobs) {
  try {
    if (job.op === "decode") {
      const r = await m.readImage(job.url);
      out.push({ width: r.width, height: r.height, rgba: b64(r.rgba), record: r.record });
    } else if (job.op === "resize") {
      const src = Buffer.from(job.rgb, "base64");
      const r = m.resizeLanczos(new Uint8Array(src), job.w, job.h, job.ow, job.oh);
      out.push({ rgb: b64(r) });
    } else if (job.op === "prepare") {
      const r = await m.prepareImage(job.url, job.lw, job.lh);
      out.push({ pixels: b64(r.pixels), record: r.record });
    }
  } catch (err) {
    out.push({ error: err.message });
  }
}
console.log(JSON.stringify(out));
"""


def run_js(jobs: list[dict], tmp_path: Path) -> list[dict]:
    driver = tmp_path / "driver.mjs"
    driver.write_text(DRIVER % {"module": json.dumps(MODULE)})
    proc = subprocess.run([NODE, str(driver)], input=json.dumps(jobs), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_image(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    """A deterministic picture with smooth gradients, edges and noise (resizing has work)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    r = 127.5 + 127.5 * np.sin(x / 7.0 + y / 13.0)
    g = np.where((x // 16 + y // 16) % 2 == 0, 230.0, 25.0)
    b = 255.0 * x / max(width - 1, 1)
    rgb = np.stack([r, g, b], -1) + rng.normal(0, 12, (height, width, 3))
    image = Image.fromarray(np.clip(rgb, 0, 255).round().astype(np.uint8), "RGB")
    return image if mode == "RGB" else image.convert(mode)


test_image.__test__ = False  # a helper, not a test


def data_url(image: Image.Image, **save) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG", **save)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def unb64(text: str, dtype=np.uint8) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=dtype)


def test_png_decoder_matches_pil(tmp_path):
    base = test_image(37, 23, seed=1)
    rgba = base.copy()
    rgba.putalpha(Image.fromarray(np.arange(37 * 23, dtype=np.uint32).reshape(23, 37)
                                  .astype(np.uint8)))
    cases = [base, rgba, base.convert("L"), base.convert("LA"),
             base.convert("P", palette=Image.Palette.ADAPTIVE, colors=50)]
    # optimize=True makes zlib/PIL pick per-row filters (sub, up, average, paeth)
    jobs = [{"op": "decode", "url": data_url(im, optimize=True)} for im in cases]
    results = run_js(jobs, tmp_path)
    for im, got in zip(cases, results):
        assert "error" not in got, got
        assert (got["width"], got["height"]) == im.size
        expected = np.asarray(im.convert("RGBA"))
        assert np.array_equal(unb64(got["rgba"]).reshape(expected.shape), expected), im.mode
        assert got["record"]["type"] == "image/png" and len(got["record"]["sha256"]) == 64


@pytest.mark.parametrize("size,out", [((133, 130), (128, 128)), ((20, 20), (48, 40)),
                                      ((300, 141), (128, 64)), ((64, 70), (64, 64)),
                                      ((90, 64), (32, 64)), ((17, 9), (16, 8))])
def test_lanczos_matches_pil(size, out, tmp_path):
    image = test_image(*size, seed=sum(size))
    rgb = np.asarray(image)
    [got] = run_js([{"op": "resize", "rgb": base64.b64encode(rgb.tobytes()).decode(),
                     "w": size[0], "h": size[1], "ow": out[0], "oh": out[1]}], tmp_path)
    expected = np.asarray(image.resize(out, resample=Image.Resampling.LANCZOS))
    ours = unb64(got["rgb"]).reshape(expected.shape)
    diff = np.abs(ours.astype(int) - expected.astype(int))
    print(f"{size} -> {out}: max diff {diff.max()}, {np.count_nonzero(diff)} values differ")
    assert np.array_equal(ours, expected)


def test_prepare_image_matches_python(tmp_path):
    """prepareImage = wsd.runtime.image.prepare_image: same size, resized (RGBA source), and
    the same refusal (both sizes named) for a size that does not round to the bundle's."""
    same = test_image(128, 128, seed=3)
    odd = test_image(133, 130, seed=4, mode="RGBA")
    wrong = test_image(150, 128, seed=5)
    jobs = [{"op": "prepare", "url": data_url(im), "lw": 128, "lh": 128}
            for im in (same, odd, wrong)]
    results = run_js(jobs, tmp_path)
    for im, got in zip((same, odd), results):
        assert "error" not in got, got
        expected = prepare_image(im, 128, 128)
        ours = unb64(got["pixels"], np.float32).reshape(expected.shape)
        assert np.array_equal(ours, expected)
    assert results[1]["record"]["resized"] is True
    message = results[2]["error"]
    assert "150x128" in message and "128x128" in message and "built for" in message, message
