"""web/src/rng.js must reproduce torch's CPU ``torch.randn`` bit for bit.

A small node driver (written to tmp_path) imports web/src/rng.js, replays a list
of (seed, calls-in-sequence) cases on one TorchGenerator each and prints every
result as base64 of its float32 bytes.  Every value is compared with torch
(a CPU generator in this process), never with wsd/runtime/rng.py.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from tests.cases import RARE_CASE_SEEDS

torch = pytest.importorskip("torch")

NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed (needed to run web/src/rng.js)")

RNG_JS = Path(__file__).resolve().parents[2] / "web" / "src" / "rng.js"

CAPABILITY = torch.backends.cpu.get_cpu_capability()
# rng.js ports torch's AVX2 kernel; AVX512 builds of torch fall back to it for randn.
needs_avx2_kernel = pytest.mark.skipif(
    CAPABILITY not in ("AVX2", "AVX512"),
    reason=f"torch CPU capability here is {CAPABILITY}; rng.js reproduces the AVX2/AVX512 kernel",
)


LATENT = [1, 4, 64, 64]
SMALL_LATENT = [1, 4, 16, 16]

# One generator per seed, these calls in sequence: SD latent shapes, odd sizes, and
# every numel 1..15 interleaved with big draws (exercises the cached second normal,
# which survives numel >= 16 calls), plus numel 0 and shape ().
SEQUENCE = [LATENT, [1], SMALL_LATENT, [17], [3], [31], [1000], [2], [33], [], [0], [2, 0, 3], [2, 3]]
for _n in range(1, 16):
    SEQUENCE += [[_n], SMALL_LATENT if _n % 2 else [17]]
SEQUENCE += [[1, 1, 5], LATENT, [15]]

DEFAULT_KERNEL_SEEDS = [0, 1, 2, 2**32 + 9, -7]
DEFAULT_KERNEL_SHAPES = [LATENT, SMALL_LATENT, [17], [3], [31], [1], [1000]]
# torch's scalar kernel calls glibc logf/cosf/sinf (not correctly rounded); rng.js
# rounds the engine's float64 Math.log/cos/sin instead (wsd/runtime/rng.py measured 3 ulp)
DEFAULT_KERNEL_MAX_ULP = 3

SEEDS = [0, 42, 2**32 + 3, 2**64 - 1, -1, -(2**63), 1234, 2**63 + 5]

DRIVER = r"""
import { TorchGenerator, fma32 } from %(module_url)s;
import { readFileSync } from "node:fs";

const seedOf = (s) => (s.type === "number" ? Number(s.value) : BigInt(s.value));
const b64 = (a) => Buffer.from(a.buffer, a.byteOffset, a.byteLength).toString("base64");

const cases = JSON.parse(readFileSync(process.argv[2], "utf8"));
const results = [];
const t0 = performance.now();
for (const c of cases) {
  const g = new TorchGenerator(seedOf(c.seed), c.kernel ? { kernel: c.kernel } : undefined);
  if (g.kernel !== (c.kernel || "avx2")) throw new Error("kernel not set");
  const out = [];
  for (const op of c.ops) {
    if (op.op === "randn") out.push(b64(g.randn(op.shape)));
    else if (op.op === "rand") out.push(b64(g.rand(op.shape)));
    else if (op.op === "seed") { if (g.manualSeed(seedOf(op.seed)) !== g) throw new Error("manualSeed must return this"); out.push(null); }
    else if (op.op === "initial_seed") out.push(g.initialSeed().toString());
    else throw new Error("bad op " + op.op);
  }
  results.push(out);
}
const ms = performance.now() - t0;
const rejected = [];
for (const s of JSON.parse(readFileSync(process.argv[3], "utf8"))) {
  let seed = s.type === "number" ? Number(s.value) : s.type === "bigint" ? BigInt(s.value) : s.value;
  try { new TorchGenerator(seed); rejected.push(false); } catch (e) { rejected.push(e.name); }
}
const f32 = new Float32Array(JSON.parse(readFileSync(process.argv[4], "utf8")).map((b) => new Float32Array(new Int32Array([b]).buffer)[0]));
const fma = new Float32Array(f32.length / 3);
for (let i = 0; i < fma.length; i++) fma[i] = fma32(f32[3 * i], f32[3 * i + 1], f32[3 * i + 2]);
process.stdout.write(JSON.stringify({ results, rejected, ms, fma: b64(fma) }));
"""


def _seed(value, as_number: bool = False) -> dict:
    if as_number:
        assert abs(value) <= 2**53
        return {"type": "number", "value": str(value)}
    return {"type": "bigint", "value": str(value)}


def _randn(shape) -> dict:
    return {"op": "randn", "shape": list(shape)}


def _build_cases():
    """(cases for the driver, list of torch reference arrays per case, labels)."""
    cases, labels = [], []

    def add(label, seed, ops, as_number=False):
        labels.append(label)
        cases.append({"seed": _seed(seed, as_number), "ops": ops})

    for seed in SEEDS:
        add(f"sequence seed={seed}", seed, [_randn(s) for s in SEQUENCE])
    for seed in [42, 2**32 + 3, -1]:  # Number seeds (same rules as BigInt)
        add(f"number seed={seed}", seed, [_randn(SMALL_LATENT), _randn([5]), _randn([17])], as_number=True)
    for name, seed in sorted(RARE_CASE_SEEDS.items()):
        add(f"rare {name} seed={seed}", seed, [_randn(LATENT), _randn(SMALL_LATENT)])
    for seed in range(100):
        add(f"many seed={seed}", seed, [_randn(SMALL_LATENT)], as_number=True)
    for seed in [0, 5, 2**32 + 5, -3]:  # numel < 16 only: the scalar double path and its cache
        small = [[], [2, 3], [1, 1, 5], [3, 5]] + [[n] for n in range(1, 16)]
        add(f"small-only seed={seed}", seed, [_randn(s) for s in small * 3])
    for seed in [0, 1234567]:
        add(f"large seed={seed}", seed, [_randn([1000003])])
    # SD-style: latents, 10 ancestral-step noises, then odd/small sizes
    sd = [_randn(LATENT)] * 11 + [_randn(s) for s in [[1], [1, 4, 8, 8], [3], [17], [5], [2, 3], [1], [1], [33], [15]]]
    add("sd-sequence seed=31337", 31337, sd)
    # manual_seed resets the MT state and the cached normal
    add(
        "reseed",
        11,
        [_randn([1]), _randn([40]), {"op": "seed", "seed": _seed(11)}, _randn([3]), {"op": "seed", "seed": _seed(-5)},
         _randn([16])],
    )
    # torch.rand (float32) and initial_seed
    add("rand", 3, [{"op": "rand", "shape": [1, 4, 8, 8]}, {"op": "rand", "shape": [7]}, _randn([5]),
                    {"op": "rand", "shape": []}])
    for seed in [0, 2**32 + 1, -1, -(2**63), 2**64 - 1]:
        add(f"initial_seed {seed}", seed, [{"op": "initial_seed"}])
    # kernel "default" (torch's scalar kernel; checked against a subprocess torch)
    for seed in DEFAULT_KERNEL_SEEDS:
        add(f"default-kernel seed={seed}", seed, [_randn(s) for s in DEFAULT_KERNEL_SHAPES])
        cases[-1]["kernel"] = "default"
    return cases, labels


def _torch_results(cases):
    refs = []
    for case in cases:
        if case.get("kernel", "avx2") != "avx2":
            refs.append(None)  # computed in a subprocess (test_rng_js_default_kernel_close)
            continue
        g = torch.Generator("cpu").manual_seed(int(case["seed"]["value"]))
        out = []
        for op in case["ops"]:
            if op["op"] == "randn":
                out.append(torch.randn(op["shape"], generator=g).numpy())
            elif op["op"] == "rand":
                out.append(torch.rand(op["shape"], generator=g).numpy())
            elif op["op"] == "seed":
                g.manual_seed(int(op["seed"]["value"]))
                out.append(None)
            elif op["op"] == "initial_seed":
                out.append(str(g.initial_seed()))
        refs.append(out)
    return refs


BAD_SEEDS = [
    {"type": "bigint", "value": str(2**64)},
    {"type": "bigint", "value": str(-(2**63) - 1)},
    {"type": "bigint", "value": str(10**30)},
    {"type": "number", "value": "1.5"},
    {"type": "string", "value": "3"},
    {"type": "null", "value": None},
]


def _fma_inputs() -> np.ndarray:
    """(n, 3) float32 triples (a, b, c) for fma32, ending with double-rounding traps."""
    rs = np.random.default_rng(0)
    a = rs.standard_normal(2000).astype(np.float32)
    b = rs.standard_normal(2000).astype(np.float32)
    c = (rs.standard_normal(2000) * 10.0 ** rs.integers(-8, 3, 2000)).astype(np.float32)
    # a*b lands exactly on a float32 midpoint and c is far below a double ulp of it:
    # float64(a*b + c) then float32 rounds twice and gets these wrong
    h = np.float32(1 + 2**-12)
    a = np.concatenate([a, [h, h, -h, h, -h]])
    b = np.concatenate([b, [h, h, h, h, -h]])
    c = np.concatenate([c, [2.0**-60, -(2.0**-60), 2.0**-60, 0.0, -(2.0**-70)]])
    return np.stack([a, b, c], axis=1).astype(np.float32)


N_FMA_TRAPS = 5


@pytest.fixture(scope="module")
def js_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rng_js")
    driver = tmp / "driver.mjs"
    driver.write_text(DRIVER % {"module_url": json.dumps(RNG_JS.as_uri())})
    cases, labels = _build_cases()
    (tmp / "cases.json").write_text(json.dumps(cases))
    (tmp / "bad.json").write_text(json.dumps(BAD_SEEDS))
    (tmp / "fma.json").write_text(json.dumps(_fma_inputs().view(np.int32).reshape(-1).tolist()))
    proc = subprocess.run(
        [NODE, str(driver), str(tmp / "cases.json"), str(tmp / "bad.json"), str(tmp / "fma.json")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, f"node driver failed:\n{proc.stderr}"
    out = json.loads(proc.stdout)
    return cases, labels, out


def _decode(b64: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(b64), dtype="<f4")


def _ulp(a: np.ndarray, b: np.ndarray) -> int:
    a = a.view(np.int32).astype(np.int64)
    b = b.view(np.int32).astype(np.int64)
    a = np.where(a < 0, -(a & 0x7FFFFFFF), a)
    b = np.where(b < 0, -(b & 0x7FFFFFFF), b)
    return int(np.abs(a - b).max()) if a.size else 0


@needs_avx2_kernel
def test_rng_js_bitexact_vs_torch(js_run):
    cases, labels, out = js_run
    refs = _torch_results(cases)
    assert len(out["results"]) == len(refs)
    checked = 0
    failures = []
    for label, case, got_list, ref_list in zip(labels, cases, out["results"], refs):
        if ref_list is None:
            continue
        assert len(got_list) == len(ref_list) == len(case["ops"])
        for k, (op, got, ref) in enumerate(zip(case["ops"], got_list, ref_list)):
            if op["op"] == "seed":
                continue
            if op["op"] == "initial_seed":
                if got != ref:
                    failures.append(f"{label}: initialSeed {got} != torch {ref}")
                continue
            ours = _decode(got)
            ref = np.ascontiguousarray(ref, dtype=np.float32).reshape(-1)
            checked += ref.size
            if ours.shape != ref.shape:
                failures.append(f"{label} call {k} {op}: {ours.size} values, torch {ref.size}")
            elif not np.array_equal(ours.view(np.int32), ref.view(np.int32)):
                n_bad = int((ours.view(np.int32) != ref.view(np.int32)).sum())
                failures.append(f"{label} call {k} {op['shape']}: {n_bad}/{ref.size} differ, max {_ulp(ours, ref)} ulp")
    assert not failures, "\n".join(failures[:20])
    assert checked > 2_500_000
    print(f"rng.js: {checked} values bit-exact vs torch; JS time {out['ms']:.0f} ms")


def test_rng_js_small_path_vs_torch(js_run):
    """numel < 16 is torch's scalar double path (the same under every CPU capability)."""
    cases, labels, out = js_run
    refs = _torch_results(cases)
    for label, case, got_list, ref_list in zip(labels, cases, out["results"], refs):
        if ref_list is None:
            continue
        # only cases that made nothing but small draws so far stay independent of the kernel
        for op, got, ref in zip(case["ops"], got_list, ref_list):
            if op["op"] != "randn" or int(np.prod(op["shape"])) >= 16:
                break
            ours = _decode(got)
            ref = np.ascontiguousarray(ref, dtype=np.float32).reshape(-1)
            assert np.array_equal(ours.view(np.int32), ref.view(np.int32)), (label, op)


def test_rng_js_rejects_seeds_torch_rejects(js_run):
    _, _, out = js_run
    assert len(out["rejected"]) == len(BAD_SEEDS)
    for spec, rejected in zip(BAD_SEEDS, out["rejected"]):
        value = spec["value"]
        py_value = int(value) if spec["type"] == "bigint" else (float(value) if spec["type"] == "number" else value)
        with pytest.raises((TypeError, ValueError, RuntimeError, OverflowError)):
            torch.Generator().manual_seed(py_value)
        assert rejected in ("TypeError", "RangeError"), (spec, rejected)


def _fma32_exact(a: np.float32, b: np.float32, c: np.float32) -> np.float32:
    """Correctly rounded float32(a*b + c) from exact rational arithmetic (ties to even)."""
    exact = Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c))
    guess = np.float32(float(exact))
    cands = [np.nextafter(guess, np.float32(-np.inf)), guess, np.nextafter(guess, np.float32(np.inf))]
    return min(cands, key=lambda f: (abs(Fraction(float(f)) - exact), int(np.array(f).view(np.int32)) & 1))


def test_rng_js_fma32_correctly_rounded(js_run):
    """rng.js emulates torch's FMAs with doubles; check it against exact arithmetic,
    including the double-rounding traps that a plain Math.fround(a*b + c) gets wrong."""
    _, _, out = js_run
    inp = _fma_inputs()
    ours = _decode(out["fma"])
    ref = np.array([_fma32_exact(*t) for t in inp], dtype=np.float32)
    assert np.array_equal(ours.view(np.int32), ref.view(np.int32))
    traps = inp[-N_FMA_TRAPS:].astype(np.float64)
    naive = (traps[:, 0] * traps[:, 1] + traps[:, 2]).astype(np.float32)
    assert not np.array_equal(naive.view(np.int32), ref[-N_FMA_TRAPS:].view(np.int32))  # the traps are real


_DEFAULT_REF_SCRIPT = """
import base64, json, sys, torch
shapes, seeds = json.loads(sys.argv[1]), json.loads(sys.argv[2])
out = {"capability": torch.backends.cpu.get_cpu_capability(), "arrays": []}
for seed in seeds:
    g = torch.Generator("cpu").manual_seed(seed)
    out["arrays"].append([base64.b64encode(torch.randn(s, generator=g).numpy().tobytes()).decode() for s in shapes])
print(json.dumps(out))
"""


def test_rng_js_default_kernel_close(js_run):
    """kernel "default" vs torch run with ATEN_CPU_CAPABILITY=default: within a few ulp."""
    cases, labels, out = js_run
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default")
    proc = subprocess.run(
        [sys.executable, "-c", _DEFAULT_REF_SCRIPT, json.dumps(DEFAULT_KERNEL_SHAPES), json.dumps(DEFAULT_KERNEL_SEEDS)],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    ref = json.loads(proc.stdout)
    assert ref["capability"] == "DEFAULT"
    got = [r for c, r in zip(cases, out["results"]) if c.get("kernel") == "default"]
    assert len(got) == len(DEFAULT_KERNEL_SEEDS)
    worst, differing, total = 0, 0, 0
    for got_list, ref_list in zip(got, ref["arrays"]):
        for shape, g, r in zip(DEFAULT_KERNEL_SHAPES, got_list, ref_list):
            ours, theirs = _decode(g), _decode(r)
            assert ours.shape == theirs.shape
            if int(np.prod(shape)) < 16:  # the scalar double path is exact
                assert np.array_equal(ours.view(np.int32), theirs.view(np.int32)), shape
            worst = max(worst, _ulp(ours, theirs))
            differing += int((ours.view(np.int32) != theirs.view(np.int32)).sum())
            total += ours.size
    print(f"default kernel: max {worst} ulp, {differing}/{total} differ")
    assert worst <= DEFAULT_KERNEL_MAX_ULP
    assert differing < 0.05 * total
