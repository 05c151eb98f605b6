// Image-to-image input: a picture (data URL, Blob/File, ImageBitmap) to the float32 pixels the
// bundle's `encode_image` takes, as wsd/runtime/image.py prepares them (and diffusers'
// VaeImageProcessor.preprocess before its 2x - 1):
//
//   decode -> RGB (alpha dropped) -> size rounded down to multiples of 8 (must be the bundle's)
//   -> Lanczos resize as PIL's Image.resize(..., LANCZOS) when that changes the size -> x / 255
//
// PNGs are decoded here (8-bit gray, gray+alpha, RGB, RGBA, palette; not interlaced), in every
// engine: the same pixels as PIL's, with no canvas (Deno has none) and no premultiplied alpha.
// Other formats (JPEG, WebP, ...) and ImageBitmaps go through createImageBitmap and an
// OffscreenCanvas where the engine has them.
//
// The Lanczos resize is PIL's (libImaging/Resample.c) re-derived: a separable filter (support 3,
// sinc(x) * sinc(x / 3), widened by the scale when shrinking), coefficients normalized to sum 1
// then to 22-bit fixed point, horizontal pass then vertical, each rounded and clipped to uint8.
//
// Plain ES module, no dependencies (browsers, Deno, node >= 20).

const PNG_SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];

export class ImageInputError extends Error {}

// ---- reading --------------------------------------------------------------------------------

/** The bytes and media type of a data URL ("data:image/png;base64,..."). */
export function dataURLBytes(url) {
  const match = /^data:([^,]*?),(.*)$/s.exec(url);
  if (!match) throw new ImageInputError("image: a string must be a data: URL");
  const params = match[1].split(";");
  const type = params[0] || "text/plain";
  let bytes;
  if (params.includes("base64")) {
    let binary;
    try {
      binary = atob(match[2].replace(/\s+/g, ""));
    } catch {
      throw new ImageInputError("image: the data URL's base64 is not valid");
    }
    bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  } else {
    bytes = new TextEncoder().encode(decodeURIComponent(match[2]));
  }
  return { bytes, type };
}

const isPNG = (bytes) => bytes.length >= 8 && PNG_SIGNATURE.every((b, i) => bytes[i] === b);

async function inflate(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

function paeth(a, b, c) {
  const p = a + b - c;
  const pa = Math.abs(p - a), pb = Math.abs(p - b), pc = Math.abs(p - c);
  return pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
}

/** PNG file bytes -> {rgba: Uint8Array (H*W*4), width, height}. 8-bit, not interlaced. */
export async function decodePNG(bytes) {
  if (!isPNG(bytes)) throw new ImageInputError("image: not a PNG file");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let offset = 8;
  let header = null;
  let palette = null;
  let transparency = null;
  const idat = [];
  while (offset + 8 <= bytes.length) {
    const length = view.getUint32(offset);
    const type = String.fromCharCode(...bytes.subarray(offset + 4, offset + 8));
    const data = bytes.subarray(offset + 8, offset + 8 + length);
    if (data.length !== length) throw new ImageInputError("image: the PNG file is truncated");
    offset += 12 + length;
    if (type === "IHDR") {
      const h = new DataView(data.buffer, data.byteOffset, data.byteLength);
      header = { width: h.getUint32(0), height: h.getUint32(4), depth: data[8],
                 color: data[9], interlace: data[12] };
    } else if (type === "PLTE") {
      palette = data;
    } else if (type === "tRNS") {
      transparency = data;
    } else if (type === "IDAT") {
      idat.push(data);
    } else if (type === "IEND") {
      break;
    }
  }
  if (!header) throw new ImageInputError("image: the PNG file has no header (IHDR)");
  const { width, height, depth, color, interlace } = header;
  const channels = { 0: 1, 2: 3, 3: 1, 4: 2, 6: 4 }[color];
  if (depth !== 8 || channels === undefined || interlace !== 0) {
    throw new ImageInputError(
      `image: PNGs of ${depth}-bit color type ${color}${interlace ? ", interlaced" : ""} are ` +
      "not supported here (8-bit gray, RGB, RGBA or palette, not interlaced, are): save it " +
      "as an 8-bit RGB PNG");
  }
  if (color === 3 && !palette) throw new ImageInputError("image: palette PNG without PLTE");
  if (width === 0 || height === 0) throw new ImageInputError("the image is empty (0 pixels)");
  const compressed = new Uint8Array(idat.reduce((n, d) => n + d.length, 0));
  let at = 0;
  for (const d of idat) {
    compressed.set(d, at);
    at += d.length;
  }
  let raw;
  try {
    raw = await inflate(compressed);
  } catch (err) {
    throw new ImageInputError(`image: the PNG's pixel data does not inflate (${err.message})`);
  }
  const stride = width * channels;
  if (raw.length < height * (stride + 1)) {
    throw new ImageInputError("image: the PNG's pixel data is truncated");
  }
  const pixels = new Uint8Array(height * stride);
  const bpp = channels;
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)];
    const src = raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1));
    const row = pixels.subarray(y * stride, (y + 1) * stride);
    const prev = y > 0 ? pixels.subarray((y - 1) * stride, y * stride) : null;
    for (let i = 0; i < stride; i++) {
      const a = i >= bpp ? row[i - bpp] : 0;
      const b = prev ? prev[i] : 0;
      const c = prev && i >= bpp ? prev[i - bpp] : 0;
      let value;
      switch (filter) {
        case 0: value = src[i]; break;
        case 1: value = src[i] + a; break;
        case 2: value = src[i] + b; break;
        case 3: value = src[i] + ((a + b) >> 1); break;
        case 4: value = src[i] + paeth(a, b, c); break;
        default: throw new ImageInputError(`image: bad PNG row filter ${filter}`);
      }
      row[i] = value & 0xff;
    }
  }
  const rgba = new Uint8Array(width * height * 4);
  for (let p = 0; p < width * height; p++) {
    const o = p * 4;
    if (color === 6) {
      rgba.set(pixels.subarray(p * 4, p * 4 + 4), o);
    } else if (color === 2) {
      rgba[o] = pixels[p * 3]; rgba[o + 1] = pixels[p * 3 + 1]; rgba[o + 2] = pixels[p * 3 + 2];
      rgba[o + 3] = 255;
    } else if (color === 3) {
      const index = pixels[p];
      rgba[o] = palette[index * 3]; rgba[o + 1] = palette[index * 3 + 1];
      rgba[o + 2] = palette[index * 3 + 2];
      rgba[o + 3] = transparency && index < transparency.length ? transparency[index] : 255;
    } else {
      const g = pixels[p * channels];
      rgba[o] = g; rgba[o + 1] = g; rgba[o + 2] = g;
      rgba[o + 3] = color === 4 ? pixels[p * 2 + 1] : 255;
    }
  }
  return { rgba, width, height };
}

/** RGBA pixels of an ImageBitmap (or a Blob the engine can decode) through a canvas. */
async function canvasPixels(source, what) {
  if (typeof OffscreenCanvas === "undefined" || typeof createImageBitmap === "undefined") {
    throw new ImageInputError(
      `image: this engine has no canvas to decode ${what} with: give a PNG (8-bit RGB/RGBA)`);
  }
  let bitmap = source;
  if (!(typeof ImageBitmap !== "undefined" && source instanceof ImageBitmap)) {
    try {
      bitmap = await createImageBitmap(source, { colorSpaceConversion: "none",
                                                 premultiplyAlpha: "none" });
    } catch (err) {
      throw new ImageInputError(`image: ${what} could not be decoded (${err.message})`);
    }
  }
  const { width, height } = bitmap;
  if (!width || !height) throw new ImageInputError("the image is empty (0 pixels)");
  const context = new OffscreenCanvas(width, height).getContext("2d");
  context.drawImage(bitmap, 0, 0);
  const { data } = context.getImageData(0, 0, width, height);
  return { rgba: new Uint8Array(data.buffer, data.byteOffset, data.byteLength), width, height };
}

async function sha256Hex(bytes) {
  if (!globalThis.crypto?.subtle) return null;
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** An image input -> {rgba, width, height, record}; record: {type, bytes, sha256} (sha256 of
 * the file, or of the RGBA pixels for an ImageBitmap), for window.wsd.last.settings. */
export async function readImage(image) {
  let bytes = null;
  let type = "";
  if (typeof image === "string") {
    ({ bytes, type } = dataURLBytes(image));
  } else if (typeof Blob !== "undefined" && image instanceof Blob) {
    bytes = new Uint8Array(await image.arrayBuffer());
    type = image.type;
  } else if (image instanceof Uint8Array || image instanceof ArrayBuffer) {
    bytes = new Uint8Array(image);
  } else if (typeof ImageBitmap !== "undefined" && image instanceof ImageBitmap) {
    const pixels = await canvasPixels(image, "the ImageBitmap");
    return { ...pixels, record: { type: "ImageBitmap", sha256: await sha256Hex(pixels.rgba) } };
  } else {
    throw new ImageInputError("image must be a data URL string, a Blob/File or an " +
                              `ImageBitmap, got ${image === null ? "null" : typeof image}`);
  }
  if (bytes.length === 0) throw new ImageInputError("image: the file is empty");
  const record = { type: isPNG(bytes) ? "image/png" : (type || "unknown"),
                   bytes: bytes.length, sha256: await sha256Hex(bytes) };
  const pixels = isPNG(bytes) ? await decodePNG(bytes)
    : await canvasPixels(new Blob([bytes], { type }), `a ${type || "non-PNG"} image`);
  return { ...pixels, record };
}

// ---- size and resize ------------------------------------------------------------------------

/** (width, height) rounded down to multiples of `factor` (VaeImageProcessor's). */
export function roundedSize(width, height, factor = 8) {
  return [width - (width % factor), height - (height % factor)];
}

/** The error wsd/runtime/image.py's prepare_image raises, in the same words. */
export function sizeError(width, height, w, h, libWidth, libHeight, factor = 8) {
  const rounded = w === width && h === height ? ""
    : `, ${w}x${h} once rounded down to multiples of ${factor}`;
  return new ImageInputError(
    `the image is ${width}x${height} (width x height)${rounded}; the bundle was built for ` +
    `${libWidth}x${libHeight} images: build it for the image's size (--width ${w} ` +
    `--height ${h}) or give a ${libWidth}x${libHeight} image`);
}

const PRECISION_BITS = 32 - 8 - 2; // PIL's 8-bit fixed point
const LANCZOS_SUPPORT = 3;

function sinc(x) {
  if (x === 0) return 1;
  const px = x * Math.PI;
  return Math.sin(px) / px;
}

function lanczos(x) {
  return x >= -3 && x < 3 ? sinc(x) * sinc(x / 3) : 0;
}

/** Per output index: [first input index, count, Int32 fixed-point weights] (PIL's
 * precompute_coeffs + normalize_coeffs_8bpc, over the whole input: box (0, inSize)). */
export function lanczosCoeffs(inSize, outSize) {
  const scale = inSize / outSize;
  const filterScale = Math.max(scale, 1);
  const support = LANCZOS_SUPPORT * filterScale;
  const out = [];
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const ss = 1 / filterScale;
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const xmax = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
    const weights = new Float64Array(Math.max(xmax, 0));
    let sum = 0;
    for (let x = 0; x < xmax; x++) {
      const w = lanczos((x + xmin - center + 0.5) * ss);
      weights[x] = w;
      sum += w;
    }
    const fixed = new Int32Array(weights.length);
    for (let x = 0; x < weights.length; x++) {
      const w = sum !== 0 ? weights[x] / sum : weights[x];
      fixed[x] = Math.trunc(w < 0 ? -0.5 + w * (1 << PRECISION_BITS)
                                  : 0.5 + w * (1 << PRECISION_BITS));
    }
    out.push([xmin, weights.length, fixed]);
  }
  return out;
}

function clip8(value) {
  if (value >= (1 << PRECISION_BITS) * 256) return 255;
  if (value <= 0) return 0;
  return Math.floor(value / (1 << PRECISION_BITS));
}

/** RGB(A) pixels (H*W*channels, uint8) resized as PIL's Image.resize(size, LANCZOS) does for
 * an RGB image; returns Uint8Array (outH*outW*channels). */
export function resizeLanczos(pixels, width, height, outWidth, outHeight, channels = 3) {
  if (outWidth === width && outHeight === height) return Uint8Array.from(pixels);
  const half = 1 << (PRECISION_BITS - 1);
  let current = pixels, w = width;
  if (outWidth !== width) { // horizontal pass
    const coeffs = lanczosCoeffs(width, outWidth);
    const next = new Uint8Array(height * outWidth * channels);
    for (let y = 0; y < height; y++) {
      for (let xx = 0; xx < outWidth; xx++) {
        const [xmin, count, k] = coeffs[xx];
        for (let c = 0; c < channels; c++) {
          let ss = half;
          for (let x = 0; x < count; x++) {
            ss += current[(y * w + x + xmin) * channels + c] * k[x];
          }
          next[(y * outWidth + xx) * channels + c] = clip8(ss);
        }
      }
    }
    current = next;
    w = outWidth;
  }
  if (outHeight !== height) { // vertical pass
    const coeffs = lanczosCoeffs(height, outHeight);
    const next = new Uint8Array(outHeight * w * channels);
    for (let yy = 0; yy < outHeight; yy++) {
      const [ymin, count, k] = coeffs[yy];
      for (let x = 0; x < w; x++) {
        for (let c = 0; c < channels; c++) {
          let ss = half;
          for (let y = 0; y < count; y++) ss += current[((y + ymin) * w + x) * channels + c] * k[y];
          next[(yy * w + x) * channels + c] = clip8(ss);
        }
      }
    }
    current = next;
  }
  return current;
}

/** RGBA (H*W*4) -> RGB (H*W*3): alpha dropped, as PIL's convert("RGB") does. */
export function dropAlpha(rgba, width, height) {
  const rgb = new Uint8Array(width * height * 3);
  for (let p = 0; p < width * height; p++) {
    rgb[p * 3] = rgba[p * 4]; rgb[p * 3 + 1] = rgba[p * 4 + 1]; rgb[p * 3 + 2] = rgba[p * 4 + 2];
  }
  return rgb;
}

/** An image input -> {pixels: Float32Array (1*H*W*3, in [0, 1]), record} for a bundle making
 * `libWidth` x `libHeight` images (wsd/runtime/image.py prepare_image). */
export async function prepareImage(image, libWidth, libHeight, factor = 8) {
  const { rgba, width, height, record } = await readImage(image);
  const [w, h] = roundedSize(width, height, factor);
  if (w !== libWidth || h !== libHeight) {
    throw sizeError(width, height, w, h, libWidth, libHeight, factor);
  }
  const rgb = resizeLanczos(dropAlpha(rgba, width, height), width, height, w, h);
  const pixels = new Float32Array(rgb.length);
  for (let i = 0; i < rgb.length; i++) pixels[i] = Math.fround(rgb[i] / 255);
  return { pixels, record: { ...record, width, height, resized: w !== width || h !== height } };
}
