"""Bit-exact numpy re-implementation of PyTorch's CPU ``torch.randn`` (float32).

Reproduces::

    g = torch.Generator("cpu").manual_seed(seed)
    torch.randn(shape, generator=g)          # float32, called any number of times

with numpy only (no torch at run time), including consecutive calls on one
generator (Stable Diffusion draws the initial latents and then the per-step
noise of ancestral samplers from a single generator).  The algorithm below is
written out step by step so that it can be ported to JavaScript (doubles +
``Math.fround`` + ``Math.imul``-style uint32 arithmetic are enough).

Everything here was read from the PyTorch 2.13 sources/headers
(``ATen/core/MT19937RNGEngine.h``, ``ATen/core/TransformationHelper.h``,
``ATen/core/DistributionsHelper.h``, ``ATen/native/cpu/DistributionTemplates.h``,
``ATen/native/cpu/avx_mathfun.h``), the compiled AVX2 kernel was disassembled
(``objdump`` of ``libtorch_cpu.so``) to see which operations GCC fused into
FMAs, and all of it is verified against torch in ``tests/unit/test_rng.py``.

Algorithm
=========

1. Seeding.  ``Generator.manual_seed(s)`` accepts ``-2**63 <= s < 2**64``;
   negative seeds are reinterpreted as uint64 (two's complement).  The engine
   is a standard 32-bit MT19937 initialised with ``init_genrand(s & 0xffffffff)``
   (so seeds ``s`` and ``s + 2**32`` give identical streams, and ``-1`` equals
   ``2**32 - 1``)::

       mt[0] = s & 0xffffffff
       mt[i] = (1812433253 * (mt[i-1] ^ (mt[i-1] >> 30)) + i) & 0xffffffff   # i = 1..623

   followed by the usual MT19937 twist / tempering; each draw is one uint32.
   ``manual_seed`` also clears the cached normal of step 4.  (numpy's
   ``MT19937`` bit generator is fed this exact key; its ``random_raw`` stream
   equals torch's.)

2. Float32 uniform: ``u = (r & 0xffffff) * 2**-24`` -- the LOW 24 bits of one
   uint32 draw ``r``; ``u`` is in [0, 1) and exact in float32.
   (``torch.rand`` float32 is exactly this; see :meth:`TorchGenerator.rand`.)

3. ``numel >= 16`` (the path of every SD latent): ``normal_fill``

   a. draw ``numel`` uniforms ``data[0..numel)`` (step 2), in order;
   b. for every complete block of 16 (``i = 0, 16, ...`` while
      ``i + 16 <= numel``), Box-Muller on pairs ``j = 0..7``::

          u1 = 1 - data[i+j]        # in (0, 1], exact
          u2 = data[i+j+8]
          radius = sqrt(-2 * log(u1))
          theta  = 2*pi * u2
          data[i+j]   = radius * cos(theta)
          data[i+j+8] = radius * sin(theta)

   c. if ``numel % 16 != 0``: draw 16 FRESH uniforms into
      ``data[numel-16 .. numel)`` (overwriting already-transformed values) and
      apply (b) to that last block.  Total draws: ``numel + (16 if numel % 16
      else 0)``.

   How log/sin/cos are rounded depends on torch's CPU kernel ("kernel" below):

   * ``kernel="avx2"`` (DEFAULT HERE): torch's ``CPU_CAPABILITY_AVX2`` kernel,
     which is what every x86-64 CPU with AVX2 runs -- including AVX-512 CPUs,
     because torch registers no AVX512 kernel for ``normal_stub`` and falls
     back to the AVX2 one (``torch.backends.cpu.get_cpu_capability()`` says
     ``AVX512`` yet gives identical numbers).  It is NOT SLEEF: it uses the
     Cephes-derived ``log256_ps`` / ``sincos256_ps`` of ``avx_mathfun.h``
     entirely in float32, and GCC (``-mfma``) contracted several mul+add pairs
     into fused multiply-adds.  :func:`_avx_log` and :func:`_avx_sincos`
     replay that instruction sequence op by op in float32 (every op IEEE
     round-to-nearest; each FMA is emulated exactly by :func:`_fma32`), then
     ``radius = sqrt(-2*log)``, ``theta = f32(2*pi) * u2``, outputs
     ``radius*cos + 0``, ``radius*sin + 0`` (the ``+ 0`` is torch's
     ``fma(n, std=1, mean=0)``; it turns -0 into +0).

   * ``kernel="default"``: torch's scalar ``CPU_CAPABILITY=DEFAULT`` kernel
     (x86 without AVX2, ``ATEN_CPU_CAPABILITY=default``; other architectures
     also take this scalar path but with their own libm).  In float32:
     ``radius = sqrtf(-2*logf(u1))``, ``theta = (float)(2*pi_double*u2)``,
     ``out = radius*cosf(theta)`` / ``radius*sinf(theta)``.  glibc's
     ``logf/cosf/sinf`` are not correctly rounded; we use correctly rounded
     values (float64 function, rounded to float32) instead, so this kernel is
     close but not bit-exact (see "Measured accuracy").

4. ``1 <= numel < 16``: a scalar, double-precision path
   (``at::normal_distribution<double>``), one element at a time, in C order:

   * if the generator holds a cached normal ``c``: the element is ``c`` and
     the cache is cleared;
   * else draw two float64 uniforms, each from two uint32 draws ``a`` then
     ``b``: ``u = (((a << 32) | b) & (2**53 - 1)) * 2**-53`` (first ``u1``,
     then ``u2``), and::

         r = sqrt(-2 * log1p(-u2));  theta = 2*pi*u1
         element = r * cos(theta);   cache = r * sin(theta)

   * finally each element (float64) is rounded to float32.
   The cache lives in the generator: it survives calls with ``numel >= 16``
   (which neither read nor write it) and is cleared only by ``manual_seed``.
   ``numel == 0`` draws nothing.  This path is identical for both kernels
   (it calls libm ``log1p/sin/cos`` in double; we call Python's ``math``,
   which is the same libm on Linux; a JS port using ``Math.log1p/sin/cos``
   may differ by a float64 ulp, which very rarely changes the float32).

Measured accuracy (vs torch 2.13.0+cpu, x86-64 Linux/glibc, this machine)
------------------------------------------------------------------------
Sweep: seeds 0..199, 2**32+3, 2**64-1, -1, 123456789, -2**63; per seed one
generator drawing 1x4x64x64, 1x4x8x8, 2x4x96x64, 16, 17, 31, 32, 33,
1000003 (every 50th seed), every numel 1..15, (), (2,3), empty shapes, in
sequence (9.5e6 elements).

* ``kernel="avx2"`` vs torch with capability AVX512 (native here) and with
  ``ATEN_CPU_CAPABILITY=avx2``: **0 ulp** -- bit-exact on every element.  In
  addition ``_box_muller_avx2`` was compared with torch's compiled
  ``NormalFill16<float>`` (called through ctypes) on all 2**24 possible values
  of u1 and of u2: bit-exact everywhere, including u1 = 1 (radius is -0, the
  ``+ 0`` makes the output +0) and u1 = 2**-24.  Replacing any one of the
  FMAs by mul-then-add breaks exactness (for 3 .. 3e5 of the 2**24 inputs),
  except those whose product is exact anyway (y*DP1, y*DP2, e*q2, z*0.5).
* ``numel < 16``: **0 ulp** (both kernels; double path through libm).
* ``kernel="default"`` vs torch with ``ATEN_CPU_CAPABILITY=default``:
  **max 3 ulp**; ~1.5 % of elements differ (1 ulp: 1.27 %, 2 ulp: 0.21 %,
  3 ulp: 0.001 % over 1.6e7 latent elements) because glibc's float
  ``logf/cosf/sinf`` are not correctly rounded.  A different libm (macOS,
  other glibc versions) moves this path by a few ulp as well.

Runtime (numpy, this 2-core box): generator construction ~1 ms; a 1x4x64x64
latent ~4 ms (avx2 kernel; the exact float32 FMA emulation dominates) or
~1 ms (default kernel); 1e6 values ~0.25-0.4 s (avx2) / ~0.04 s (default);
torch itself takes ~5 ms for 1e6.
"""

from __future__ import annotations

import math
import operator
from typing import Iterable, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = ["TorchGenerator", "randn", "KERNELS"]

ShapeLike = Union[int, Sequence[int]]

#: Supported Box-Muller rounding variants (see module docstring, step 3).
KERNELS = ("avx2", "default")

_F32 = np.float32
_U64_MASK = (1 << 64) - 1
_MIN_SEED = -(1 << 63)
_MAX_SEED = (1 << 64) - 1
_MANT53 = (1 << 53) - 1

# ---------------------------------------------------------------------------
# float32 constants of avx_mathfun.h (each literal is rounded to float32 once)
# ---------------------------------------------------------------------------
_SQRTHF = _F32(0.707106781186547524)
_LOG_P = tuple(
    _F32(v)
    for v in (
        7.0376836292e-2,
        -1.1514610310e-1,
        1.1676998740e-1,
        -1.2420140846e-1,
        1.4249322787e-1,
        -1.6668057665e-1,
        2.0000714765e-1,
        -2.4999993993e-1,
        3.3333331174e-1,
    )
)
_LOG_Q1 = _F32(-2.12194440e-4)
_LOG_Q2 = _F32(0.693359375)
_FOPI = _F32(1.27323954473516)  # 4 / pi
_DP1 = _F32(-0.78515625)
_DP2 = _F32(-2.4187564849853515625e-4)
_DP3 = _F32(-3.77489497744594108e-8)
_SIN_P = (_F32(-1.9515295891e-4), _F32(8.3321608736e-3), _F32(-1.6666654611e-1))
_COS_P = (_F32(2.443315711809948e-005), _F32(-1.388731625493765e-003), _F32(4.166664568298827e-002))
_TWO_PI_F32 = _F32(2.0 * math.pi)  # torch: _mm256_set1_ps(2.0f * c10::pi<double>)


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------
def _normalize_seed(seed) -> int:
    """Validate a seed like ``torch.Generator.manual_seed`` and return it as uint64."""
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}: {seed!r}")
    seed = int(seed)
    if not _MIN_SEED <= seed <= _MAX_SEED:
        raise ValueError(f"seed must be in [-2**63, 2**64 - 1] (torch's range), got {seed}")
    return seed & _U64_MASK


def _normalize_shape(shape) -> Tuple[int, ...]:
    """Accept an int or a sequence of ints (like ``torch.randn``); reject negatives."""
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, (bool, np.bool_)):
        dims: Iterable = (shape,)
    elif isinstance(shape, (str, bytes)) or not isinstance(shape, (Sequence, np.ndarray)):
        raise TypeError(f"shape must be an int or a sequence of ints, got {type(shape).__name__}: {shape!r}")
    else:
        dims = shape
    out = []
    for d in dims:
        if isinstance(d, (bool, np.bool_)) or not isinstance(d, (int, np.integer)):
            raise TypeError(f"shape entries must be ints, got {type(d).__name__}: {d!r} in {shape!r}")
        d = int(d)
        if d < 0:
            raise ValueError(f"negative dimension {d} in shape {shape!r}")
        out.append(d)
    return tuple(out)


def _init_genrand_key(seed32: int) -> np.ndarray:
    """MT19937 ``init_genrand``: the 624-word state for a 32-bit seed."""
    key = np.empty(624, dtype=np.uint32)
    prev = seed32 & 0xFFFFFFFF
    key[0] = prev
    for i in range(1, 624):
        prev = (1812433253 * (prev ^ (prev >> 30)) + i) & 0xFFFFFFFF
        key[i] = prev
    return key


def _fma32(a, b, c) -> np.ndarray:
    """Correctly rounded float32 fused multiply-add ``a*b + c`` (like vfmadd*ps).

    float32*float32 is exact in float64 (48 significant bits).  The float64 sum
    ``s = p + c`` is then rounded *to odd*: if it was inexact (TwoSum error
    ``e != 0``) and the last mantissa bit of ``s`` is 0, ``s`` moves one float64
    ulp towards the exact value (``s`` cannot be 0 then).  Rounding that to
    float32 cannot double-round (53 >= 2*24 + 2).  A JS port can do the same
    with doubles, a DataView for the bit step, and ``Math.fround``.
    """
    a64 = np.asarray(a, dtype=np.float32).astype(np.float64)
    p = a64 * np.asarray(b, dtype=np.float32).astype(np.float64)
    c64 = np.asarray(c, dtype=np.float32).astype(np.float64)
    s = p + c64
    bb = s - p  # TwoSum: e is the exact rounding error of s
    e = (p - (s - bb)) + (c64 - bb)
    bits = s.view(np.int64)
    fix = (e != 0) & ((bits & 1) == 0)
    # same sign: increase |s| (bits + 1); opposite sign: decrease |s| (bits - 1)
    step = np.where((e > 0) == (s > 0), 1, -1) * fix
    return (bits + step).view(np.float64).astype(np.float32)


def _avx_log(x: np.ndarray) -> np.ndarray:
    """``log256_ps`` of avx_mathfun.h as compiled in libtorch (float32, x > 0)."""
    bits = x.view(np.int32)
    # (max(x, FLT_MIN) is a no-op here: x >= 2**-24.  x <= 0 would give NaN.)
    e = ((bits >> 23) - 127).astype(np.float32) + _F32(1)
    x = ((bits & ~0x7F800000) | 0x3F000000).view(np.float32)  # mantissa in [0.5, 1)
    mask = x < _SQRTHF
    tmp = np.where(mask, x, _F32(0))
    x = x - _F32(1)
    e = e - np.where(mask, _F32(1), _F32(0))
    x = x + tmp
    z = x * x
    y = np.full_like(x, _LOG_P[0])
    for p in _LOG_P[1:]:  # fused in the binary: y = fma(y, x, p)
        y = _fma32(y, x, p)
    y = y * x
    y = _fma32(y, z, e * _LOG_Q1)  # y*z + e*q1 (e*q1 rounded first)
    y = _fma32(-z, _F32(0.5), y)  # y - z*0.5
    x = x + y
    return _fma32(e, _LOG_Q2, x)  # x + e*q2


def _avx_sincos(x: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """``sincos256_ps`` of avx_mathfun.h as compiled in libtorch (float32)."""
    sign_sin = x.view(np.int32) & np.int32(-0x80000000)
    x = np.abs(x)
    j = (x * _FOPI).astype(np.int32)  # cvttps: truncation
    j = (j + 1) & ~1
    y = j.astype(np.float32)
    swap_sign_sin = (j & 4) << 29
    poly_mask = (j & 2) == 0
    # extended-precision reduction x - y*pi/4, each step a fused multiply-add
    x = _fma32(y, _DP1, x)
    x = _fma32(y, _DP2, x)
    x = _fma32(y, _DP3, x)
    sign_cos = (~(j - 2) & 4) << 29
    sign_sin = sign_sin ^ swap_sign_sin
    z = x * x
    # cosine polynomial
    yc = _fma32(_COS_P[0], z, _COS_P[1])
    yc = _fma32(yc, z, _COS_P[2])
    yc = yc * z
    yc = _fma32(yc, z, -(z * _F32(0.5)))
    yc = yc + _F32(1)
    # sine polynomial
    ys = _fma32(_SIN_P[0], z, _SIN_P[1])
    ys = _fma32(ys, z, _SIN_P[2])
    ys = ys * z
    ys = _fma32(ys, x, x)
    # select polynomials (same and/andnot/sub/add sequence as the binary)
    ysin2 = np.where(poly_mask, ys, _F32(0))
    ysin1 = np.where(poly_mask, _F32(0), yc)
    ys = ys - ysin2
    yc = yc - ysin1
    s = ysin1 + ysin2
    c = yc + ys
    s = (s.view(np.int32) ^ sign_sin).view(np.float32)
    c = (c.view(np.int32) ^ sign_cos).view(np.float32)
    return s, c


def _box_muller_avx2(blocks: np.ndarray) -> np.ndarray:
    """torch's AVX2 ``NormalFill16`` on an (nb, 16) float32 array of uniforms."""
    u1 = _F32(1) - blocks[:, :8]
    u2 = blocks[:, 8:]
    radius = np.sqrt(_avx_log(u1) * _F32(-2))
    sin_t, cos_t = _avx_sincos(_TWO_PI_F32 * u2)
    out = np.empty_like(blocks)
    out[:, :8] = radius * cos_t + _F32(0)
    out[:, 8:] = radius * sin_t + _F32(0)
    return out


def _box_muller_default(blocks: np.ndarray) -> np.ndarray:
    """torch's scalar ``NormalFill16<float>`` with correctly rounded logf/cosf/sinf."""
    u1 = _F32(1) - blocks[:, :8]
    u2 = blocks[:, 8:]
    log_u1 = np.log(u1.astype(np.float64)).astype(np.float32)
    radius = np.sqrt(_F32(-2) * log_u1)
    theta = ((2.0 * math.pi) * u2.astype(np.float64)).astype(np.float32).astype(np.float64)
    out = np.empty_like(blocks)
    out[:, :8] = radius * np.cos(theta).astype(np.float32) + _F32(0)
    out[:, 8:] = radius * np.sin(theta).astype(np.float32) + _F32(0)
    return out


_BOX_MULLER = {"avx2": _box_muller_avx2, "default": _box_muller_default}


# ---------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------
class TorchGenerator:
    """numpy stand-in for ``torch.Generator("cpu").manual_seed(seed)``.

    State (MT19937 position and the cached double normal of the small path) is
    kept across calls, so ``g.randn(a); g.randn(b)`` equals torch's two
    consecutive ``torch.randn(..., generator=g)`` calls.

    ``kernel``: ``"avx2"`` (default; torch on any x86-64 CPU with AVX2 or
    AVX-512, bit-exact) or ``"default"`` (torch's scalar kernel, within 3 ulp).
    """

    def __init__(self, seed: int, kernel: str = "avx2"):
        if kernel not in _BOX_MULLER:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        self.kernel = kernel
        self._bitgen = np.random.MT19937()
        self.manual_seed(seed)

    # -- seeding -----------------------------------------------------------
    def manual_seed(self, seed: int) -> "TorchGenerator":
        """Reseed (same semantics as torch: uint64 seed, engine uses low 32 bits)."""
        self._seed = _normalize_seed(seed)
        key = _init_genrand_key(self._seed & 0xFFFFFFFF)
        # pos=624: the next draw triggers the first twist, exactly like torch's engine.
        self._bitgen.state = {"bit_generator": "MT19937", "state": {"key": key, "pos": 624}}
        self._cached_normal: Optional[float] = None
        return self

    def initial_seed(self) -> int:
        """The seed as torch reports it (uint64, e.g. -1 -> 2**64 - 1)."""
        return self._seed

    # -- raw draws ---------------------------------------------------------
    def random_raw(self, n: int) -> np.ndarray:
        """The next ``n`` raw MT19937 uint32 draws (advances the state)."""
        n = operator.index(n)
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        return self._bitgen.random_raw(n).astype(np.uint32)

    def _uniform_f32(self, n: int) -> np.ndarray:
        r = self.random_raw(n)
        return (r & np.uint32(0xFFFFFF)).astype(np.float32) * _F32(2.0**-24)

    def _uniform_f64(self) -> float:
        a, b = (int(v) for v in self._bitgen.random_raw(2))
        return (((a << 32) | b) & _MANT53) * 2.0**-53

    # -- distributions -----------------------------------------------------
    def rand(self, shape: ShapeLike) -> np.ndarray:
        """``torch.rand(shape, generator=g)`` (float32): one draw per element."""
        shape = _normalize_shape(shape)
        return self._uniform_f32(math.prod(shape)).reshape(shape)

    def randn(self, shape: ShapeLike) -> np.ndarray:
        """``torch.randn(shape, generator=g)`` as a C-contiguous float32 array."""
        shape = _normalize_shape(shape)
        n = math.prod(shape)
        if n >= 16:
            flat = self._normal_fill(n)
        else:
            flat = self._normal_small(n)
        # (flat is a fresh contiguous 1-D array, so the reshape is C-contiguous;
        # np.ascontiguousarray would turn shape () into (1,).)
        return flat.reshape(shape)

    def _normal_fill(self, n: int) -> np.ndarray:
        box_muller = _BOX_MULLER[self.kernel]
        data = self._uniform_f32(n)
        nb = n // 16
        out = np.empty(n, dtype=np.float32)
        out[: nb * 16] = box_muller(data[: nb * 16].reshape(nb, 16)).reshape(-1)
        if n % 16:
            # torch recomputes the last 16 values from 16 fresh uniforms.
            out[n - 16 :] = box_muller(self._uniform_f32(16).reshape(1, 16)).reshape(-1)
        return out

    def _normal_small(self, n: int) -> np.ndarray:
        out = np.empty(n, dtype=np.float64)
        for i in range(n):
            if self._cached_normal is not None:
                value = self._cached_normal
                self._cached_normal = None
            else:
                u1 = self._uniform_f64()
                u2 = self._uniform_f64()
                r = math.sqrt(-2.0 * math.log1p(-u2))
                theta = 2.0 * math.pi * u1
                self._cached_normal = r * math.sin(theta)
                value = r * math.cos(theta)
            out[i] = value * 1.0 + 0.0  # torch: val * std + mean (-0 -> +0)
        return out.astype(np.float32)

    def __repr__(self) -> str:
        return f"TorchGenerator(seed={self._seed}, kernel={self.kernel!r})"


def randn(shape: ShapeLike, seed: int, kernel: str = "avx2") -> np.ndarray:
    """``torch.randn(shape, generator=torch.Generator().manual_seed(seed))`` in numpy."""
    return TorchGenerator(seed, kernel=kernel).randn(shape)
