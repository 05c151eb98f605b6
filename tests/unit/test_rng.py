"""wsd.runtime.rng must reproduce torch's CPU generator / randn.  All reference values
come from torch (in this process, or in a subprocess with a forced
ATEN_CPU_CAPABILITY), never from wsd.runtime.rng itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from fractions import Fraction

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tests.cases import RARE_CASE_SEEDS  # noqa: E402
from wsd.runtime import rng  # noqa: E402
from wsd.runtime.rng import TorchGenerator, randn  # noqa: E402

CAPABILITY = torch.backends.cpu.get_cpu_capability()
# torch has no AVX512 normal kernel: AVX512 builds fall back to the AVX2 one.
IN_PROCESS_KERNEL = "avx2" if CAPABILITY in ("AVX2", "AVX512") else None
DEFAULT_KERNEL_MAX_ULP = 3  # measured (module docstring): glibc logf/cosf/sinf are not correctly rounded

SHAPES = [
    (1, 4, 64, 64),
    (1, 4, 8, 8),
    (2, 4, 96, 64),
    (16,),
    (17,),
    (31,),
    (32,),
    (33,),
    (5, 7),
]
SMALL_SHAPES = [(), (0,), (3, 0), *[(n,) for n in range(1, 16)], (2, 3), (1, 1, 5), (3, 5)]
SEEDS = [0, 1, 42, 1234, 2**31 - 1, 2**32 - 1, 2**32 + 7, 2**63 + 5, 2**64 - 1, -1, -12345, -(2**63)]


# ---------------------------------------------------------------- helpers
def ulp_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| in float32 ulps, via int32 views mapped onto a monotonic integer line
    (-0.0 and +0.0 both map to 0)."""
    a = np.ascontiguousarray(a, dtype=np.float32).view(np.int32).astype(np.int64)
    b = np.ascontiguousarray(b, dtype=np.float32).view(np.int32).astype(np.int64)
    a = np.where(a < 0, -(a & 0x7FFFFFFF), a)
    b = np.where(b < 0, -(b & 0x7FFFFFFF), b)
    return np.abs(a - b)


def assert_bitexact(ours: np.ndarray, ref: np.ndarray) -> None:
    assert ours.shape == ref.shape
    assert ours.dtype == np.float32
    d = ulp_distance(ours, ref)
    assert np.array_equal(ours.view(np.int32), ref.view(np.int32)), (
        f"{int((d > 0).sum())} of {ref.size} elements differ, max {int(d.max())} ulp"
    )


def torch_gen(seed: int) -> "torch.Generator":
    return torch.Generator("cpu").manual_seed(seed)


def torch_randn(shape, seed: int) -> np.ndarray:
    return torch.randn(shape, generator=torch_gen(seed)).numpy()


needs_avx2_kernel = pytest.mark.skipif(
    IN_PROCESS_KERNEL is None, reason=f"torch CPU capability here is {CAPABILITY}, not AVX2/AVX512"
)


# --------------------------------------------------------- helper self-tests
def test_ulp_distance_helper():
    one = np.float32(1.0)
    up = np.nextafter(one, np.float32(2))
    assert ulp_distance(np.array([one]), np.array([up]))[0] == 1
    assert ulp_distance(np.array([-one]), np.array([-up]))[0] == 1
    tiny = np.nextafter(np.float32(0), np.float32(1))
    assert ulp_distance(np.array([-tiny]), np.array([tiny]))[0] == 2  # straddles zero
    assert ulp_distance(np.array([-0.0], np.float32), np.array([0.0], np.float32))[0] == 0
    assert ulp_distance(np.array([1.0], np.float32), np.array([2.0], np.float32))[0] == 2**23


def _fma32_reference(a: np.float32, b: np.float32, c: np.float32) -> np.float32:
    """Correctly rounded float32(a*b + c) using exact rational arithmetic."""
    exact = Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c))
    guess = np.float32(float(exact))
    cands = [np.nextafter(guess, np.float32(-np.inf)), guess, np.nextafter(guess, np.float32(np.inf))]
    best = min(cands, key=lambda f: (abs(Fraction(float(f)) - exact), int(np.array(f).view(np.int32)) & 1))
    return np.float32(best)


def test_fma32_is_correctly_rounded():
    rs = np.random.default_rng(0)
    a = rs.standard_normal(300).astype(np.float32)
    b = rs.standard_normal(300).astype(np.float32)
    c = (rs.standard_normal(300) * 10.0 ** rs.integers(-8, 3, 300)).astype(np.float32)
    # double-rounding traps: a*b lands exactly on a float32 midpoint, c is tiny
    h = np.float32(1 + 2**-12)
    a = np.concatenate([a, [h, h, -h, h]]).astype(np.float32)
    b = np.concatenate([b, [h, h, h, h]]).astype(np.float32)
    c = np.concatenate([c, [2.0**-60, -(2.0**-60), 2.0**-60, 0.0]]).astype(np.float32)
    ours = rng._fma32(a, b, c)
    ref = np.array([_fma32_reference(x, y, z) for x, y, z in zip(a, b, c)], dtype=np.float32)
    assert np.array_equal(ours.view(np.int32), ref.view(np.int32))
    # the naive float64 route really is wrong on the trap case (so the test can fail)
    naive = (a[-4:].astype(np.float64) * b[-4:] + c[-4:]).astype(np.float32)
    assert not np.array_equal(naive.view(np.int32), ref[-4:].view(np.int32))


# ------------------------------------------------------------- MT19937 stream
@pytest.mark.parametrize("seed", [0, 7, 2**32 + 7, -1, 2**64 - 1])
def test_raw_stream_matches_torch(seed):
    n = 3000
    g = TorchGenerator(seed)
    raw = g.random_raw(2 * n).astype(np.uint64)
    hi, lo = raw[0::2], raw[1::2]
    # torch.randint over a range >= 2**28 uses random64() = (draw1 << 32) | draw2, % range
    ref_lo = torch.randint(0, 2**32, (n,), dtype=torch.int64, generator=torch_gen(seed)).numpy()
    assert np.array_equal(ref_lo.astype(np.uint64), lo)
    # float64 rand uses the low 53 bits of random64()
    ref_f64 = torch.rand(n, dtype=torch.float64, generator=torch_gen(seed)).numpy()
    ours_f64 = (((hi << np.uint64(32)) | lo) & np.uint64(2**53 - 1)).astype(np.float64) * 2.0**-53
    assert np.array_equal(ref_f64, ours_f64)


@pytest.mark.parametrize("seed", [0, 3, 2**40 + 3, -5])
def test_rand_float32_matches_torch(seed):
    g, tg = TorchGenerator(seed), torch_gen(seed)
    for shape in [(1, 4, 8, 8), (7,), (), (2, 0)]:
        ref = torch.rand(shape, generator=tg).numpy()
        assert_bitexact(g.rand(shape), ref)


# ------------------------------------------------------------------- randn
@needs_avx2_kernel
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", SEEDS)
def test_randn_bitexact(shape, seed):
    assert_bitexact(randn(shape, seed), torch_randn(shape, seed))


@needs_avx2_kernel
@pytest.mark.parametrize("seed", [0, 1234567, 2**64 - 1])
def test_randn_large_odd_size_bitexact(seed):
    assert_bitexact(randn(1000003, seed), torch_randn(1000003, seed))




@needs_avx2_kernel
@pytest.mark.parametrize("case", sorted(RARE_CASE_SEEDS))
def test_randn_rare_rounding_cases_bitexact(case):
    seed = RARE_CASE_SEEDS[case]
    assert_bitexact(randn((1, 4, 64, 64), seed), torch_randn((1, 4, 64, 64), seed))


@needs_avx2_kernel
def test_randn_many_seeds_bitexact():
    ours = np.stack([randn((1, 4, 16, 16), s) for s in range(100)])
    ref = np.stack([torch_randn((1, 4, 16, 16), s) for s in range(100)])
    assert_bitexact(ours, ref)


@pytest.mark.parametrize("shape", SMALL_SHAPES)
@pytest.mark.parametrize("seed", [0, 5, 2**32 + 5, -3])
@pytest.mark.parametrize("kernel", rng.KERNELS)
def test_randn_small_sizes_bitexact(shape, seed, kernel):
    # numel < 16 takes torch's scalar double path (the same under every capability)
    g, tg = TorchGenerator(seed, kernel=kernel), torch_gen(seed)
    for _ in range(3):  # consecutive calls exercise the cached second normal
        assert_bitexact(g.randn(shape), torch.randn(shape, generator=tg).numpy())


@needs_avx2_kernel
def test_sequential_draws_match_torch():
    """SD-style: latents, then per-step noise, with odd/small sizes interleaved."""
    seed = 31337
    g, tg = TorchGenerator(seed), torch_gen(seed)
    calls = [(1, 4, 64, 64)] * 11  # initial latents + 10 ancestral steps
    calls += [(1,), (1, 4, 8, 8), (3,), (17,), (5,), (2, 3), (1,), (1,), (33,), (15,)]
    for shape in calls:
        assert_bitexact(g.randn(shape), torch.randn(shape, generator=tg).numpy())


@needs_avx2_kernel
def test_sequential_differs_from_fresh():
    # a second call must continue the stream, not restart it
    g = TorchGenerator(9)
    first, second = g.randn((4, 8)), g.randn((4, 8))
    assert not np.array_equal(first, second)
    tg = torch_gen(9)
    torch.randn((4, 8), generator=tg)
    assert_bitexact(second, torch.randn((4, 8), generator=tg).numpy())


def test_manual_seed_resets_state_and_cache():
    tg = torch_gen(11)
    torch.randn(1, generator=tg)  # leaves a cached normal in the generator
    torch.randn(40, generator=tg)
    tg.manual_seed(11)
    ref = torch.randn(3, generator=tg).numpy()

    g = TorchGenerator(11)
    g.randn(1)
    g.randn(40)
    assert g.manual_seed(11) is g
    assert_bitexact(g.randn(3), ref)


def test_different_seeds_differ():
    a, b = randn((1, 4, 8, 8), 0), randn((1, 4, 8, 8), 1)
    assert not np.array_equal(a, b)
    assert not np.array_equal(randn(5, 0), randn(5, 1))
    assert not np.array_equal(torch_randn((1, 4, 8, 8), 0), torch_randn((1, 4, 8, 8), 1))


@pytest.mark.parametrize(
    "seed_a, seed_b",
    [(5, 5 + 2**32), (-1, 2**32 - 1), (2**64 - 1, 2**32 - 1), (-(2**63), 0), (7, 7 + 2**40), (3, 4)],
)
def test_seed_wraparound_matches_torch(seed_a, seed_b):
    shape = (2, 16) if IN_PROCESS_KERNEL else (5,)
    ref_a, ref_b = torch_randn(shape, seed_a), torch_randn(shape, seed_b)
    ours_a, ours_b = randn(shape, seed_a), randn(shape, seed_b)
    assert_bitexact(ours_a, ref_a)
    assert_bitexact(ours_b, ref_b)
    assert np.array_equal(ours_a, ours_b) == np.array_equal(ref_a, ref_b)


@pytest.mark.parametrize("seed", [0, 2**32 + 1, -1, -(2**63), 2**64 - 1])
def test_initial_seed_matches_torch(seed):
    assert TorchGenerator(seed).initial_seed() == torch_gen(seed).initial_seed()


# ------------------------------------------------------- shapes / validation
@pytest.mark.parametrize("shape", [5, (5,), [2, 3], (), (0,), (2, 0, 3), (1, 4, 8, 8), (np.int64(2), 9)])
def test_shapes_and_dtype(shape):
    ours = randn(shape, 0)
    torch_shape = tuple(int(d) for d in shape) if isinstance(shape, (tuple, list)) else shape
    ref = torch.randn(torch_shape, generator=torch_gen(0)).numpy()
    assert ours.shape == ref.shape
    assert ours.dtype == np.float32
    assert ours.flags.c_contiguous


@pytest.mark.parametrize("shape", [-1, (2, -3), [4, -1]])
def test_negative_dims_rejected(shape):
    with pytest.raises(ValueError, match="negative dimension"):
        randn(shape, 0)
    with pytest.raises(RuntimeError):
        torch.randn(shape)


@pytest.mark.parametrize("shape", [2.0, (2, 3.0), "12", None, (True, 2)])
def test_non_int_shapes_rejected(shape):
    with pytest.raises(TypeError):
        randn(shape, 0)


@pytest.mark.parametrize("seed", [1.5, "3", None, True, [1]])
def test_non_int_seed_rejected(seed):
    with pytest.raises(TypeError, match="seed must be an int"):
        TorchGenerator(seed)
    with pytest.raises((TypeError, RuntimeError)):
        torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("seed", [2**64, -(2**63) - 1, 10**30])
def test_out_of_range_seed_rejected(seed):
    with pytest.raises(ValueError, match="seed must be in"):
        TorchGenerator(seed)
    with pytest.raises((ValueError, RuntimeError, OverflowError)):
        torch.Generator().manual_seed(seed)


def test_numpy_integer_seed_accepted():
    assert_bitexact(randn(7, np.int64(21)), torch_randn(7, 21))


def test_bad_kernel_rejected():
    with pytest.raises(ValueError, match="kernel"):
        TorchGenerator(0, kernel="sleef")


# ------------------------------------- other torch CPU capabilities (subprocess)
_SUBPROCESS_SCRIPT = textwrap.dedent(
    """
    import json, sys, numpy as np, torch
    shapes, seeds, out = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
    arrays = {"capability": np.array(torch.backends.cpu.get_cpu_capability())}
    for seed in seeds:
        g = torch.Generator("cpu").manual_seed(seed)
        for i, shape in enumerate(shapes):  # consecutive calls on one generator
            arrays[f"{seed}_{i}"] = torch.randn(shape, generator=g).numpy()
    np.savez(out, **arrays)
    """
)


SUB_SHAPES = [[1, 4, 64, 64], [1, 4, 8, 8], [17], [3], [2, 4, 96, 64], [31], [1]]
SUB_SEEDS = [0, 1, 2, 3, 2**32 + 9, -7]


@pytest.fixture(scope="module")
def capability_refs(tmp_path_factory):
    """torch.randn references computed under ATEN_CPU_CAPABILITY=default and =avx2
    (two subprocesses, run concurrently to keep the suite fast)."""
    tmp = tmp_path_factory.mktemp("rng_refs")
    procs = {}
    for capability in ("default", "avx2"):
        out = tmp / f"ref_{capability}.npz"
        env = dict(os.environ, ATEN_CPU_CAPABILITY=capability)
        args = [sys.executable, "-c", _SUBPROCESS_SCRIPT]
        args += [json.dumps(SUB_SHAPES), json.dumps(SUB_SEEDS), str(out)]
        procs[capability] = (subprocess.Popen(args, env=env, cwd=tmp), out)
    refs = {}
    for capability, (proc, out) in procs.items():
        assert proc.wait(timeout=120) == 0, f"torch reference subprocess failed for {capability}"
        refs[capability] = np.load(out)
    return refs


def _our_sequence(kernel, shapes, seed):
    g = TorchGenerator(seed, kernel=kernel)
    return [g.randn(tuple(s)) for s in shapes]


def test_default_capability_kernel_within_bound(capability_refs):
    ref = capability_refs["default"]
    assert str(ref["capability"]) == "DEFAULT"
    worst, differing, total = 0, 0, 0
    for seed in SUB_SEEDS:
        for i, ours in enumerate(_our_sequence("default", SUB_SHAPES, seed)):
            r = ref[f"{seed}_{i}"]
            assert ours.shape == r.shape and ours.dtype == np.float32
            d = ulp_distance(ours, r)
            worst, differing, total = max(worst, int(d.max())), differing + int((d > 0).sum()), total + d.size
    assert worst <= DEFAULT_KERNEL_MAX_ULP, worst
    assert differing < 0.05 * total, (differing, total)


def test_avx2_capability_kernel_bitexact(capability_refs):
    ref = capability_refs["avx2"]
    if str(ref["capability"]) != "AVX2":
        pytest.skip(f"this CPU cannot run torch's AVX2 kernel (got {ref['capability']})")
    for seed in SUB_SEEDS:
        for i, ours in enumerate(_our_sequence("avx2", SUB_SHAPES, seed)):
            assert_bitexact(ours, ref[f"{seed}_{i}"])
