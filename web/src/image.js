// The decoded image (float32 RGB in [0, 1], as the compiled `decode` returns it) to pixels,
// with the rounding diffusers uses (numpy: (x * 255).round(), half to even, in float32),
// so that the browser's PNG has the same pixels as `wsd generate`'s.

import { dataURL, encodePNG } from "./png.js";

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

/** RGBA pixels -> "data:image/png;base64,..." (lossless; no canvas, so any engine). */
export async function pngDataURL(rgba, height, width) {
  return dataURL(await encodePNG(rgba, height, width));
}
