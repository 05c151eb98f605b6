// The decoded image (float32 RGB in [0, 1], as the compiled `decode` returns it) to pixels,
// with the rounding diffusers uses (numpy: (x * 255).round(), half to even, in float32),
// so that the browser's PNG has the same bytes as `wsd generate`'s.

/** numpy's np.round: half to even. */
export function roundHalfEven(x) {
  const r = Math.round(x);
  return (Math.abs(x % 1) === 0.5 && r % 2 !== 0) ? r - 1 : r;
}

/** Float32Array (H*W*3, values in [0, 1]) -> Uint8ClampedArray RGBA (H*W*4). */
export function toRGBA(rgb, height, width) {
  const n = height * width;
  if (rgb.length !== n * 3) {
    throw new Error(`image has ${rgb.length} values, expected ${height}x${width}x3`);
  }
  const rgba = new Uint8ClampedArray(n * 4);
  for (let p = 0; p < n; p++) {
    for (let c = 0; c < 3; c++) {
      rgba[p * 4 + c] = roundHalfEven(Math.fround(rgb[p * 3 + c] * 255));
    }
    rgba[p * 4 + 3] = 255;
  }
  return rgba;
}

/** RGBA pixels -> "data:image/png;base64,..." (lossless: every pixel is opaque). */
export function pngDataURL(rgba, height, width) {
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d");
  ctx.putImageData(new ImageData(rgba, width, height), 0, 0);
  return canvas.toDataURL("image/png");
}
