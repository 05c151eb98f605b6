// PNG encoding without a canvas (browsers, Deno, node): 8-bit RGBA, filter 0, one zlib stream
// from CompressionStream("deflate"). Same pixels in, same file out, in every engine.
// Text chunks (tEXt: a Latin-1 keyword and value) carry the settings, as `wsd generate`
// writes them (keyword "parameters", a JSON value; see parametersJSON in app.js):
// withText adds them to a PNG, readText reads them back.

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

function crc32(bytes) {
  let c = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function chunk(type, data) {
  const out = new Uint8Array(12 + data.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, data.length);
  for (let i = 0; i < 4; i++) out[4 + i] = type.charCodeAt(i);
  out.set(data, 8);
  view.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)));
  return out;
}

async function zlib(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new CompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

const SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];

/** A tEXt chunk: keyword (1-79 Latin-1 characters), NUL, value (Latin-1). */
function textChunk(keyword, value) {
  const latin1 = (s, what) => {
    const bytes = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) {
      const c = s.charCodeAt(i);
      if (c > 0xff) throw new Error(`PNG tEXt ${what} must be Latin-1: ${JSON.stringify(s)}`);
      bytes[i] = c;
    }
    return bytes;
  };
  if (!/^[\x20-\x7e\xa1-\xff]{1,79}$/.test(keyword)) {
    throw new Error(`PNG tEXt keyword must be 1-79 printable Latin-1 characters: ${keyword}`);
  }
  const key = latin1(keyword, "keyword");
  const text = latin1(value, "value");
  const data = new Uint8Array(key.length + 1 + text.length);
  data.set(key, 0);
  data.set(text, key.length + 1);
  return chunk("tEXt", data);
}

function concat(parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let offset = 0;
  for (const p of parts) {
    out.set(p, offset);
    offset += p.length;
  }
  return out;
}

/** The chunks of PNG bytes: [{type, start, end (of the whole chunk), data}]; throws when the
 * bytes are not a PNG. */
function chunks(png) {
  if (png.length < 8 || SIGNATURE.some((b, i) => png[i] !== b)) throw new Error("not a PNG file");
  const view = new DataView(png.buffer, png.byteOffset, png.byteLength);
  const out = [];
  let offset = 8;
  while (offset + 12 <= png.length) {
    const length = view.getUint32(offset);
    const type = String.fromCharCode(...png.subarray(offset + 4, offset + 8));
    const end = offset + 12 + length;
    if (end > png.length) break; // truncated: keep what was whole
    out.push({ type, start: offset, end, data: png.subarray(offset + 8, offset + 8 + length) });
    offset = end;
    if (type === "IEND") break;
  }
  return out;
}

/** PNG bytes with tEXt chunks ({keyword: value}) inserted after IHDR (so that readers which
 * stop at the image data, as Pillow's info does, see them). */
export function withText(png, text) {
  const all = chunks(png);
  if (!all.length || all[0].type !== "IHDR") throw new Error("PNG without IHDR");
  const texts = Object.entries(text).map(([k, v]) => textChunk(k, v));
  return concat([png.subarray(0, all[0].end), ...texts, png.subarray(all[0].end)]);
}

/** The tEXt chunks of PNG bytes as {keyword: value} (Latin-1); {} for a PNG without them. */
export function readText(png) {
  const out = {};
  for (const { type, data } of chunks(png)) {
    if (type !== "tEXt") continue;
    const nul = data.indexOf(0);
    if (nul < 1) continue;
    const latin1 = (bytes) => Array.from(bytes, (b) => String.fromCharCode(b)).join("");
    out[latin1(data.subarray(0, nul))] = latin1(data.subarray(nul + 1));
  }
  return out;
}

/** RGBA pixels (height x width x 4) -> PNG file bytes, with tEXt chunks `text` if given. */
export async function encodePNG(rgba, height, width, text = {}) {
  const header = new Uint8Array(13);
  const view = new DataView(header.buffer);
  view.setUint32(0, width);
  view.setUint32(4, height);
  header.set([8, 6, 0, 0, 0], 8); // 8 bits, RGBA, deflate, filter method 0, no interlace
  const rows = new Uint8Array(height * (width * 4 + 1));
  for (let y = 0; y < height; y++) {
    rows.set(rgba.subarray(y * width * 4, (y + 1) * width * 4), y * (width * 4 + 1) + 1);
  }
  return concat([Uint8Array.from(SIGNATURE), chunk("IHDR", header),
                 ...Object.entries(text).map(([k, v]) => textChunk(k, v)),
                 chunk("IDAT", await zlib(rows)), chunk("IEND", new Uint8Array(0))]);
}

/** "data:image/png;base64,..." -> PNG bytes. */
export function fromDataURL(url) {
  const binary = atob(url.slice(url.indexOf(",") + 1));
  const out = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) out[i] = binary.charCodeAt(i);
  return out;
}

/** PNG bytes -> "data:image/png;base64,...". */
export function dataURL(png) {
  let binary = "";
  for (let i = 0; i < png.length; i += 0x8000) {
    binary += String.fromCharCode(...png.subarray(i, i + 0x8000));
  }
  return `data:image/png;base64,${btoa(binary)}`;
}
