// Bit-exact JavaScript port of wsd/runtime/rng.py: PyTorch's CPU `torch.randn` (float32).
//
// Reproduces, bit for bit,
//
//     g = torch.Generator("cpu").manual_seed(seed)
//     torch.randn(shape, generator=g)      // any number of consecutive calls
//
// for torch's AVX2 CPU kernel (what torch runs on every x86-64 CPU with AVX2 or
// AVX-512; the default of wsd/runtime/rng.py and of this file).  {kernel: "default"}
// approximates torch's scalar kernel (x86 without AVX2) to a few float32 ulp.  The algorithm is specified step by step
// in the module docstring of wsd/runtime/rng.py; this file mirrors that code op by op:
//
//   * MT19937 (init_genrand with the low 32 bits of the uint64 seed);
//   * float32 uniforms u = (r & 0xffffff) * 2**-24;
//   * numel >= 16: 16-wide Box-Muller blocks using the float32 Cephes
//     log256_ps / sincos256_ps sequence of avx_mathfun.h, with every fused
//     multiply-add GCC emitted emulated exactly (fma32 below), and the tail
//     block recomputed from 16 fresh uniforms when numel % 16 != 0;
//   * 1 <= numel < 16: torch's scalar float64 path with the cached second
//     normal (kept in the generator across calls, cleared by manualSeed).
//
// Plain ES module, no dependencies, no Node APIs (browsers and node >= 20).
// Float32 rounding is Math.fround; a float32*float32 product is exact in a
// double, and the double-rounding hazard of "exact product + c, then round
// to float32" is removed by rounding the double sum to odd first (see fma32).
//
// Caveat (same as wsd/runtime/rng.py's docstring): the numel < 16 path calls the
// engine's float64 Math.log1p/sin/cos; V8/SpiderMonkey/JSC use fdlibm-style
// implementations, which may differ from glibc's by one float64 ulp and so,
// very rarely, change a float32 result.  The numel >= 16 path uses only
// +, -, *, sqrt and bit operations and is exact on every engine.

const U64_MASK = (1n << 64n) - 1n;
const MIN_SEED = -(1n << 63n);
const MAX_SEED = (1n << 64n) - 1n;

export const KERNELS = Object.freeze(["avx2", "default"]);

// ---------------------------------------------------------------------------
// bit views (endianness-independent)
// ---------------------------------------------------------------------------
const F64 = new Float64Array(1);
const U64W = new Uint32Array(F64.buffer);
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
const LO = LITTLE_ENDIAN ? 0 : 1;
const HI = LITTLE_ENDIAN ? 1 : 0;
const F32 = new Float32Array(1);
const I32 = new Int32Array(F32.buffer);

function f32Bits(x) {
  F32[0] = x;
  return I32[0];
}

function f32FromBits(bits) {
  I32[0] = bits;
  return F32[0];
}

const fr = Math.fround;

// ---------------------------------------------------------------------------
// float32 constants of avx_mathfun.h (each literal rounded to float32 once)
// ---------------------------------------------------------------------------
const SQRTHF = fr(0.707106781186547524);
const LOG_P0 = fr(7.0376836292e-2);
const LOG_P = [
  -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1, 1.4249322787e-1,
  -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1,
].map(fr);
const LOG_Q1 = fr(-2.12194440e-4);
const LOG_Q2 = fr(0.693359375);
const FOPI = fr(1.27323954473516); // 4 / pi
const DP1 = fr(-0.78515625);
const DP2 = fr(-2.4187564849853515625e-4);
const DP3 = fr(-3.77489497744594108e-8);
const SIN_P0 = fr(-1.9515295891e-4);
const SIN_P1 = fr(8.3321608736e-3);
const SIN_P2 = fr(-1.6666654611e-1);
const COS_P0 = fr(2.443315711809948e-5);
const COS_P1 = fr(-1.388731625493765e-3);
const COS_P2 = fr(4.166664568298827e-2);
const TWO_PI_F32 = fr(2.0 * Math.PI); // torch: _mm256_set1_ps(2.0f * c10::pi<double>)
const TWO_M24 = 5.9604644775390625e-8; // 2**-24
const TWO_M53 = 1.1102230246251565e-16; // 2**-53
const TWO_32 = 4294967296;

/**
 * Correctly rounded float32 fused multiply-add a*b + c (a, b, c float32 values).
 *
 * a*b is exact in a double (<= 48 significant bits).  The double sum
 * s = p + c is rounded *to odd*: if it was inexact (TwoSum error e != 0) and
 * the last mantissa bit of s is 0, s moves one double ulp towards the exact
 * value.  Rounding that to float32 cannot double-round (53 >= 2*24 + 2).
 * Same as _fma32 in wsd/runtime/rng.py.
 */
export function fma32(a, b, c) {
  const p = a * b;
  const s = p + c;
  const bb = s - p;
  const e = (p - (s - bb)) + (c - bb);
  if (e === 0) return fr(s);
  F64[0] = s;
  const lo = U64W[LO];
  if ((lo & 1) !== 0) return fr(s);
  if ((e > 0) === (s > 0)) {
    U64W[LO] = lo | 1; // |s| up one ulp (low bit is 0: no carry)
  } else if (lo === 0) {
    U64W[LO] = 0xffffffff; // |s| down one ulp, borrow from the high word
    U64W[HI] = U64W[HI] - 1;
  } else {
    U64W[LO] = lo - 1;
  }
  return fr(F64[0]);
}

/** log256_ps of avx_mathfun.h as compiled in libtorch (float32, x > 0). */
function avxLog(x0) {
  const bits = f32Bits(x0);
  // (max(x, FLT_MIN) is a no-op here: x >= 2**-24.)
  let e = fr(((bits >> 23) - 127) + 1);
  let x = f32FromBits((bits & ~0x7f800000) | 0x3f000000); // mantissa in [0.5, 1)
  const mask = x < SQRTHF;
  const tmp = mask ? x : 0;
  x = fr(x - 1);
  e = fr(e - (mask ? 1 : 0));
  x = fr(x + tmp);
  const z = fr(x * x);
  let y = LOG_P0;
  for (let k = 0; k < 8; k++) y = fma32(y, x, LOG_P[k]); // fused in the binary
  y = fr(y * x);
  y = fma32(y, z, fr(e * LOG_Q1)); // y*z + e*q1 (e*q1 rounded first)
  y = fma32(-z, 0.5, y); // y - z*0.5
  x = fr(x + y);
  return fma32(e, LOG_Q2, x); // x + e*q2
}

// sincos256_ps output slots (avoid allocating per call)
let SIN_OUT = 0;
let COS_OUT = 0;

/** sincos256_ps of avx_mathfun.h as compiled in libtorch (float32); sets SIN_OUT/COS_OUT. */
function avxSincos(x0) {
  let signSin = f32Bits(x0) & 0x80000000;
  let x = Math.abs(x0);
  let j = Math.trunc(fr(x * FOPI)) | 0; // cvttps: truncation
  j = (j + 1) & ~1;
  const y = j; // exact in float32 (small integer)
  const swapSignSin = (j & 4) << 29;
  const polyMask = (j & 2) === 0;
  // extended-precision reduction x - y*pi/4, each step a fused multiply-add
  x = fma32(y, DP1, x);
  x = fma32(y, DP2, x);
  x = fma32(y, DP3, x);
  const signCos = (~(j - 2) & 4) << 29;
  signSin ^= swapSignSin;
  const z = fr(x * x);
  // cosine polynomial
  let yc = fma32(COS_P0, z, COS_P1);
  yc = fma32(yc, z, COS_P2);
  yc = fr(yc * z);
  yc = fma32(yc, z, -fr(z * 0.5));
  yc = fr(yc + 1);
  // sine polynomial
  let ys = fma32(SIN_P0, z, SIN_P1);
  ys = fma32(ys, z, SIN_P2);
  ys = fr(ys * z);
  ys = fma32(ys, x, x);
  // select polynomials (same and/andnot/sub/add sequence as the binary)
  const ysin2 = polyMask ? ys : 0;
  const ysin1 = polyMask ? 0 : yc;
  ys = fr(ys - ysin2);
  yc = fr(yc - ysin1);
  const s = fr(ysin1 + ysin2);
  const c = fr(yc + ys);
  SIN_OUT = f32FromBits(f32Bits(s) ^ signSin);
  COS_OUT = f32FromBits(f32Bits(c) ^ signCos);
}

/** torch's AVX2 NormalFill16 in place on data[off .. off+16) (float32 uniforms). */
function boxMuller16Avx2(data, off) {
  for (let k = 0; k < 8; k++) {
    const u1 = fr(1 - data[off + k]); // exact
    const u2 = data[off + k + 8];
    // sqrt of a float32 in double, then to float32: correctly rounded (no double rounding)
    const radius = fr(Math.sqrt(fr(avxLog(u1) * -2)));
    avxSincos(fr(TWO_PI_F32 * u2));
    data[off + k] = fr(radius * COS_OUT) + 0; // + 0: torch's fma(n, std=1, mean=0), -0 -> +0
    data[off + k + 8] = fr(radius * SIN_OUT) + 0;
  }
}

/**
 * torch's scalar CPU_CAPABILITY=DEFAULT NormalFill16 (x86 without AVX2), in place.
 * Uses the engine's float64 Math.log/cos/sin rounded to float32 where torch calls
 * glibc logf/cosf/sinf: close (a few float32 ulp) but NOT bit-exact.
 */
function boxMuller16Default(data, off) {
  for (let k = 0; k < 8; k++) {
    const u1 = fr(1 - data[off + k]);
    const u2 = data[off + k + 8];
    const radius = fr(Math.sqrt(fr(-2 * fr(Math.log(u1)))));
    const theta = fr(2.0 * Math.PI * u2);
    data[off + k] = fr(radius * fr(Math.cos(theta))) + 0;
    data[off + k + 8] = fr(radius * fr(Math.sin(theta))) + 0;
  }
}

const BOX_MULLER = { avx2: boxMuller16Avx2, default: boxMuller16Default };

// ---------------------------------------------------------------------------
// argument checks
// ---------------------------------------------------------------------------
function normalizeSeed(seed) {
  let s;
  if (typeof seed === "bigint") {
    s = seed;
  } else if (typeof seed === "number" && Number.isInteger(seed)) {
    s = BigInt(seed); // exact value of the double (pass a BigInt for seeds > 2**53)
  } else {
    throw new TypeError(`seed must be an integer Number or a BigInt, got ${typeof seed}: ${String(seed)}`);
  }
  if (s < MIN_SEED || s > MAX_SEED) {
    throw new RangeError(`seed must be in [-2**63, 2**64 - 1] (torch's range), got ${s}`);
  }
  return s & U64_MASK;
}

function numelOf(shape) {
  const dims = typeof shape === "number" || typeof shape === "bigint" ? [shape] : shape;
  if (dims == null || typeof dims === "string" || typeof dims[Symbol.iterator] !== "function") {
    throw new TypeError(`shape must be an integer or an array of integers, got ${String(shape)}`);
  }
  let n = 1;
  for (const d0 of dims) {
    const d = typeof d0 === "bigint" ? Number(d0) : d0;
    if (typeof d !== "number" || !Number.isInteger(d)) {
      throw new TypeError(`shape entries must be integers, got ${String(d0)} in [${String(shape)}]`);
    }
    if (d < 0) throw new RangeError(`negative dimension ${d} in shape [${String(shape)}]`);
    n *= d;
  }
  if (!Number.isSafeInteger(n)) throw new RangeError(`shape [${String(shape)}] is too large`);
  return n;
}

// ---------------------------------------------------------------------------
// public API
// ---------------------------------------------------------------------------
/**
 * Stand-in for torch.Generator("cpu").manual_seed(seed) (kernel: see the constructor).
 *
 * State (MT19937 position and the cached double normal of the small path) is
 * kept across calls, so g.randn(a); g.randn(b) equals torch's two consecutive
 * torch.randn(..., generator=g) calls.
 */
export class TorchGenerator {
  /**
   * @param {number|bigint} seed  integer in [-2**63, 2**64 - 1]; negatives wrap to uint64
   *   (pass a BigInt above 2**53).
   * @param {{kernel?: "avx2"|"default"}} [options]  "avx2" (default): torch on any x86-64
   *   CPU with AVX2/AVX-512, bit-exact.  "default": torch's scalar kernel, within a few ulp.
   */
  constructor(seed, { kernel = "avx2" } = {}) {
    if (!Object.hasOwn(BOX_MULLER, kernel)) {
      throw new RangeError(`kernel must be one of ${KERNELS.join(", ")}, got ${String(kernel)}`);
    }
    this.kernel = kernel;
    this._boxMuller = BOX_MULLER[kernel];
    this._mt = new Uint32Array(624);
    this._idx = 624;
    this._seed = 0n;
    this._cachedNormal = null;
    this.manualSeed(seed);
  }

  /** Reseed like torch (uint64 seed, engine uses its low 32 bits); clears the cached normal. */
  manualSeed(seed) {
    const s = normalizeSeed(seed);
    const mt = this._mt;
    let prev = Number(s & 0xffffffffn);
    mt[0] = prev;
    for (let i = 1; i < 624; i++) {
      prev = (Math.imul(1812433253, (prev ^ (prev >>> 30)) | 0) + i) >>> 0;
      mt[i] = prev;
    }
    this._idx = 624; // the next draw twists first, like torch's engine
    this._seed = s;
    this._cachedNormal = null;
    return this;
  }

  /** The seed as torch reports it (uint64 BigInt, e.g. -1 -> 2n**64n - 1n). */
  initialSeed() {
    return this._seed;
  }

  _twist() {
    const mt = this._mt;
    for (let kk = 0; kk < 624; kk++) {
      const y = (mt[kk] & 0x80000000) | (mt[kk + 1 === 624 ? 0 : kk + 1] & 0x7fffffff);
      const k2 = kk + 397 < 624 ? kk + 397 : kk + 397 - 624;
      mt[kk] = mt[k2] ^ (y >>> 1) ^ (y & 1 ? 0x9908b0df : 0);
    }
    this._idx = 0;
  }

  /** Next raw MT19937 uint32 draw (as a Number in [0, 2**32)). */
  nextUint32() {
    if (this._idx >= 624) this._twist();
    let y = this._mt[this._idx++];
    y ^= y >>> 11;
    y ^= (y << 7) & 0x9d2c5680;
    y ^= (y << 15) & 0xefc60000;
    y ^= y >>> 18;
    return y >>> 0;
  }

  _fillUniformF32(out, off, n) {
    for (let i = 0; i < n; i++) out[off + i] = (this.nextUint32() & 0xffffff) * TWO_M24;
  }

  _uniformF64() {
    const a = this.nextUint32();
    const b = this.nextUint32();
    // ((a << 32) | b) & (2**53 - 1), times 2**-53 (exact in a double)
    return ((a & 0x1fffff) * TWO_32 + b) * TWO_M53;
  }

  /** torch.rand(shape, generator=g) (float32): one draw per element, C order. */
  rand(shape) {
    const n = numelOf(shape);
    const out = new Float32Array(n);
    this._fillUniformF32(out, 0, n);
    return out;
  }

  /** torch.randn(shape, generator=g) as a flat (C-order) Float32Array of numel values. */
  randn(shape) {
    const n = numelOf(shape);
    return n >= 16 ? this._normalFill(n) : this._normalSmall(n);
  }

  _normalFill(n) {
    const data = new Float32Array(n);
    this._fillUniformF32(data, 0, n);
    const full = n - (n % 16);
    const boxMuller = this._boxMuller;
    for (let i = 0; i < full; i += 16) boxMuller(data, i);
    if (n % 16 !== 0) {
      // torch recomputes the last 16 values from 16 fresh uniforms
      this._fillUniformF32(data, n - 16, 16);
      boxMuller(data, n - 16);
    }
    return data;
  }

  _normalSmall(n) {
    const out = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      let value;
      if (this._cachedNormal !== null) {
        value = this._cachedNormal;
        this._cachedNormal = null;
      } else {
        const u1 = this._uniformF64();
        const u2 = this._uniformF64();
        const r = Math.sqrt(-2.0 * Math.log1p(-u2));
        const theta = 2.0 * Math.PI * u1;
        this._cachedNormal = r * Math.sin(theta);
        value = r * Math.cos(theta);
      }
      out[i] = value * 1.0 + 0.0; // torch: val * std + mean (-0 -> +0); rounded to float32
    }
    return out;
  }
}

/** torch.randn(shape, generator=torch.Generator().manual_seed(seed)) as a Float32Array. */
export function randn(shape, seed, options) {
  return new TorchGenerator(seed, options).randn(shape);
}
