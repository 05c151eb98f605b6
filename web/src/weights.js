// The model's weights: the bundle's TVM tensor cache (params/, written by wsd/runtime/weights.py),
// fetched shard by shard, checked against the SHA-256 the manifest records for each shard,
// kept in the browser's Cache Storage, and uploaded to the GPU as tvmjs tensors.
//
// Why not tvmjs' own fetchTensorCache: it does not check integrity, and a corrupt or
// truncated shard must be named in the error rather than turn into a wrong image.
//
// Cache keys carry the shard's hash (`<url>?sha256=<hex>`): a rebuilt bundle with new
// weights gets new keys, and a reload with the same bundle fetches nothing.
//
// Caching is best effort: where Cache Storage is missing, disabled or too small for the
// weights (a browser's quota for one site can be below 2 GB), the weights still load and the
// page works; `cacheWarning` says why nothing (or not everything) was kept.

export const CACHE_NAME = "wsd-weights-v1";

export class ShardError extends Error {
  constructor(shard, reason) {
    super(`weight shard ${shard}: ${reason}`);
    this.name = "ShardError";
    this.shard = shard;
  }
}

function hex(buffer) {
  return Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, "0")).join("");
}

export async function sha256Hex(bytes) {
  return hex(await crypto.subtle.digest("SHA-256", bytes));
}

/** fetch() that revalidates and names `what` in the error on a network failure or HTTP error. */
export async function fetchOk(url, what) {
  let response;
  try {
    response = await fetch(url, { cache: "no-cache" });
  } catch (err) {
    throw new Error(`cannot fetch ${what} (${url}): ${err.message}`);
  }
  if (!response.ok) {
    throw new Error(`cannot fetch ${what} (${url}): HTTP ${response.status} ${response.statusText}`);
  }
  return response;
}

/** Read a response body to one ArrayBuffer, reporting bytes as they arrive. */
async function readBody(response, onBytes) {
  if (!response.body || !response.body.getReader) {
    const buffer = await response.arrayBuffer();
    onBytes(buffer.byteLength);
    return buffer;
  }
  const reader = response.body.getReader();
  const chunks = [];
  let total = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    total += value.byteLength;
    onBytes(value.byteLength);
  }
  const out = new Uint8Array(total);
  let offset = 0;
  for (const chunk of chunks) {
    out.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return out.buffer;
}

const MIB = 1 << 20;
const fmtMiB = (bytes) => `${(bytes / MIB).toFixed(1)} MiB`;

async function openCache() {
  try {
    return typeof caches === "undefined" ? null : await caches.open(CACHE_NAME);
  } catch {
    return null; // e.g. storage disabled: still works, without caching
  }
}

/** Why `bytes` more cannot be cached, from the browser's storage estimate; null if they fit
 * or the browser does not say. */
export async function quotaProblem(bytes, storage = globalThis.navigator?.storage) {
  if (!storage || typeof storage.estimate !== "function") return null;
  let estimate;
  try {
    estimate = await storage.estimate();
  } catch {
    return null;
  }
  const { quota, usage = 0 } = estimate || {};
  if (!Number.isFinite(quota) || quota - usage >= bytes) return null;
  return `the browser's storage quota for this site leaves ${fmtMiB(Math.max(0, quota - usage))} ` +
    `free and the weights need ${fmtMiB(bytes)} more`;
}

const NOT_KEPT = "the weights are not kept in the browser's cache and will be downloaded " +
  "again next time (free disk space, or allow this site more storage)";

/** Milliseconds spent in `fn` added to `timings[key]`. */
async function timed(timings, key, fn) {
  const t0 = performance.now();
  try {
    return await fn();
  } finally {
    timings[key] += performance.now() - t0;
  }
}

/** The manifest (params/tensor-cache.json) of the bundle at `baseUrl`. */
export async function fetchManifest(baseUrl) {
  const url = new URL("params/tensor-cache.json", baseUrl).href;
  const manifest = await (await fetchOk(url, "the weight manifest")).json();
  if (!manifest || !Array.isArray(manifest.records)) {
    throw new Error(`${url} is not a tensor cache manifest (no records)`);
  }
  for (const shard of manifest.records) {
    if (typeof shard.sha256 !== "string" || !Number.isInteger(shard.nbytes)) {
      throw new ShardError(shard.dataPath, "the manifest records no sha256/nbytes for it");
    }
  }
  return manifest;
}

/**
 * Each shard's bytes, verified, in manifest order: calls `onShard(shard, arrayBuffer)` for
 * one shard at a time (so memory holds one shard, not the whole model).
 * `onProgress({loaded, total, fromCache, fetched, cacheWarning})`: bytes so far of all shards.
 * Returns {fetchedBytes, cachedBytes, cached: whether Cache Storage was usable, cacheWarning:
 * why weights were not kept (or null), timings: ms spent in fetchMs, hashMs, cacheReadMs,
 * cacheWriteMs, shardMs (the onShard calls: the upload to the GPU)}.
 */
export async function loadShards(baseUrl, manifest, onShard, onProgress = () => {}) {
  let cache = await openCache();
  const total = manifest.records.reduce((sum, s) => sum + s.nbytes, 0);
  let loaded = 0;
  let fetchedBytes = 0;
  let cachedBytes = 0;
  let cacheWarning = null;
  let quotaChecked = false;
  const timings = { fetchMs: 0, hashMs: 0, cacheReadMs: 0, cacheWriteMs: 0, shardMs: 0 };
  const report = () => onProgress({ loaded, total, fetched: fetchedBytes, fromCache: cachedBytes,
                                    cacheWarning });
  const stopCaching = (why) => {
    cacheWarning = `${why}: ${NOT_KEPT}`;
    console.warn(`wsd: ${cacheWarning}`);
    cache = null;
    report();
  };

  for (const [index, shard] of manifest.records.entries()) {
    const url = new URL(`params/${shard.dataPath}`, baseUrl).href;
    const key = `${url}?sha256=${shard.sha256}`;
    let buffer = null;
    const hit = cache ? await timed(timings, "cacheReadMs", () => cache.match(key)) : undefined;
    if (hit) {
      buffer = await timed(timings, "cacheReadMs", () => hit.arrayBuffer());
      const intact = buffer.byteLength === shard.nbytes &&
        await timed(timings, "hashMs", () => sha256Hex(buffer)) === shard.sha256;
      if (!intact) {
        await cache.delete(key); // damaged cache entry: fetch it again
        buffer = null;
      } else {
        loaded += buffer.byteLength;
        cachedBytes += buffer.byteLength;
        report();
      }
    }
    if (buffer === null) {
      if (cache && !quotaChecked) { // before the first download: will the rest fit?
        quotaChecked = true;
        const rest = manifest.records.slice(index).reduce((sum, s) => sum + s.nbytes, 0);
        const problem = await quotaProblem(rest);
        if (problem) stopCaching(problem);
      }
      const start = loaded;
      buffer = await timed(timings, "fetchMs", async () =>
        readBody(await fetchOk(url, `weight shard ${shard.dataPath}`), (n) => {
          loaded += n;
          fetchedBytes += n;
          report();
        }));
      loaded = start + buffer.byteLength;
      if (buffer.byteLength !== shard.nbytes) {
        throw new ShardError(shard.dataPath, `${buffer.byteLength} bytes, the manifest says ` +
                             `${shard.nbytes} (truncated or incomplete download?)`);
      }
      const digest = await timed(timings, "hashMs", () => sha256Hex(buffer));
      if (digest !== shard.sha256) {
        throw new ShardError(shard.dataPath, `corrupt: sha256 ${digest}, the manifest says ` +
                             `${shard.sha256}`);
      }
      if (cache) {
        try {
          await timed(timings, "cacheWriteMs",
                      () => cache.put(key, new Response(buffer.slice(0))));
        } catch (err) { // QuotaExceededError, or storage switched off meanwhile
          stopCaching(`the browser refused to store ${shard.dataPath} (${err.name}: ` +
                      `${err.message})`);
        }
      }
    }
    await timed(timings, "shardMs", () => onShard(shard, buffer));
  }
  return { fetchedBytes, cachedBytes, cached: cache !== null, cacheWarning, timings };
}

/** bfloat16 (upper halves of float32) -> float32 bytes. */
function widenBF16(bytes) {
  const half = new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 2);
  const out = new Uint32Array(half.length);
  for (let i = 0; i < half.length; i++) out[i] = half[i] << 16;
  return new Uint8Array(out.buffer);
}

/**
 * Load every tensor of the cache onto `device` with tvmjs: a Map name -> Tensor (detached
 * from tvmjs scopes; the caller owns them).
 */
export async function loadWeights(tvm, device, baseUrl, onProgress) {
  const manifest = await fetchManifest(baseUrl);
  const tensors = new Map();
  const stats = await loadShards(baseUrl, manifest, (shard, buffer) => {
    for (const rec of shard.records) {
      let bytes = new Uint8Array(buffer, rec.byteOffset, rec.nbytes);
      if (rec.format === "f32-to-bf16" && rec.dtype === "float32") {
        bytes = widenBF16(bytes);
      } else if (rec.format !== "raw") {
        throw new ShardError(shard.dataPath, `tensor ${rec.name}: unknown format ${rec.format}`);
      }
      tvm.beginScope();
      const tensor = tvm.detachFromCurrentScope(tvm.empty(rec.shape, rec.dtype, device));
      if (bytes.length % 4 === 0) {
        tensor.copyFromRawBytes(bytes);
      } else {
        // Direct GPU writes must be whole 4-byte words (an odd count of float16 values is
        // not); tvmjs' copy from a CPU tensor pads the write.
        tensor.copyFrom(tvm.empty(rec.shape, rec.dtype, tvm.cpu()).copyFromRawBytes(bytes));
      }
      tvm.endScope();
      tensors.set(rec.name, tensor);
    }
  }, onProgress);
  return { tensors, manifest, ...stats };
}
