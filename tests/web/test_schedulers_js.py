"""web/src/schedulers/*.js must drive the compiled kernels exactly as wsd/samplers does.

For every sampler, config variant and step count, the Python scheduler runs a denoising loop
with a recording `run` (each call returns a fresh opaque token) and a fake rng; a node driver
does the same with the JS scheduler. Compared: timesteps (float32 bits), init_noise_sigma, and
the full event sequence (UNet inputs, kernel names, which tokens feed which call, coefficient
float32 bits, rng draws). JS timesteps are also compared with diffusers' directly, and bad
inputs must throw the same messages as Python raises.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("diffusers")

from tests.cases import REAL_SCHEDULER_CONFIGS, SCHEDULER_VARIANTS, SD15  # noqa: E402
from wsd.samplers import SCHEDULERS, diffusers_scheduler, make_scheduler  # noqa: E402
from wsd.samplers.base import COMMON_KERNELS  # noqa: E402

NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed")

INDEX_JS = Path(__file__).resolve().parents[2] / "web" / "src" / "schedulers" / "index.js"

NAMES = list(SCHEDULERS)
STEPS = (1, 2, 3, 10, 25, 50)
SHAPE = [1, 4, 8, 8]

CONFIGS = [
    ("sd15", SD15),
    ("leading", {**SD15, "timestep_spacing": "leading"}),
    ("trailing", {**SD15, "timestep_spacing": "trailing"}),
    ("linspace", {**SD15, "timestep_spacing": "linspace"}),
    ("v", {**SD15, "prediction_type": "v_prediction"}),
    ("v-trailing", {**SD15, "prediction_type": "v_prediction", "timestep_spacing": "trailing"}),
]
# the option variants of tests/unit/test_schedulers.py
VARIANTS = SCHEDULER_VARIANTS + [
    ("dpm-solver++", {**SD15, "solver_type": "heun", "final_sigmas_type": "sigma_min",
                      "lower_order_final": False, "prediction_type": "v_prediction"}),
    ("ddim", {**SD15, "_use_default_values": ["beta_start"], "timestep_spacing": "linspace"}),
    ("euler", {**SD15, "trained_betas": np.linspace(1e-4, 0.02, 1000).tolist()}),
    ("euler-a", {**SD15, "num_train_timesteps": 500, "timestep_spacing": "leading"}),
]


# every sampler from every real config (the refused ones must fail with Python's message)
REAL = [(n, f"real-{src}", cfg) for src, cfg in REAL_SCHEDULER_CONFIGS.items() for n in NAMES]
# lcm with set_timesteps' original_inference_steps argument: (label, config, argument)
LCM_ORIGINAL = [("orig8", SD15, 8), ("orig20", SD15, 20), ("orig100", SD15, 100),
                ("orig-real", REAL_SCHEDULER_CONFIGS["lcm"], 4)]


# image-to-image: (strength, how): "truncate" (StableDiffusionImg2ImgPipeline.get_timesteps)
# or "lcm" (LatentConsistencyModelImg2ImgPipeline: set_timesteps(..., strength))
IMG2IMG_CONFIGS = [("sd15", SD15), ("trailing", {**SD15, "timestep_spacing": "trailing"}),
                   ("v", {**SD15, "prediction_type": "v_prediction"})]
IMG2IMG_STEPS = (1, 2, 3, 10, 25)
IMG2IMG_STRENGTHS = (0.05, 0.3, 0.6, 0.99, 1.0)
LCM_IMG2IMG = [("lcm-real", REAL_SCHEDULER_CONFIGS["lcm"]), ("lcm-sd15", SD15)]


def _cases():
    cases = [(n, label, cfg) for n in NAMES for label, cfg in CONFIGS]
    cases += [(n, f"variant{i}", cfg) for i, (n, cfg) in enumerate(VARIANTS)]
    cases += REAL
    out = [(n, label, cfg, steps, None, None) for n, label, cfg in cases for steps in STEPS]
    out += [("lcm", label, cfg, steps, original, None) for label, cfg, original in LCM_ORIGINAL
            for steps in STEPS]
    out += [(n, f"i2i-{label}-{strength:g}", cfg, steps, None, [strength, "truncate"])
            for n in NAMES for label, cfg in IMG2IMG_CONFIGS for steps in IMG2IMG_STEPS
            for strength in IMG2IMG_STRENGTHS]
    out += [("lcm", f"i2i-{label}-{strength:g}", cfg, steps, None, [strength, "lcm"])
            for label, cfg in LCM_IMG2IMG for steps in (1, 2, 4, 8)
            for strength in (0.05, 0.2, 0.5, 1.0)]
    return out


CASES = _cases()


# ---- the Python side -------------------------------------------------------------------------

class Token:
    def __init__(self, name, shape=SHAPE):
        self.name, self.shape = name, tuple(shape)


def _bits(a) -> list[int]:
    return np.asarray(a, np.float32).reshape(-1).view(np.int32).tolist()


def python_events(name: str, config: dict, steps: int, original=None, img2img=None) -> dict:
    try:
        s = make_scheduler(name, config)
        before = s.init_noise_sigma
        if img2img is not None and img2img[1] == "lcm":
            s.set_timesteps(steps, original, strength=img2img[0])
        else:
            s.set_timesteps(steps, *([] if original is None else [original]))
        if img2img is not None and img2img[1] == "truncate":
            s.truncate(img2img[0])
    except ValueError as e:
        return {"error": str(e)}
    events, counter = [], [0]
    kernels = {k.name: k for cls in SCHEDULERS.values() for k in cls.kernels}
    kernels.update({k.name: k for k in COMMON_KERNELS})

    def run(kname, *args):
        k = kernels[kname]
        tensors, coeffs = (args[:-1], args[-1]) if k.num_coeffs else (args, None)
        ids = []
        for a in tensors:
            if isinstance(a, Token):
                ids.append(a.name)
            else:  # the rng's noise
                a = np.asarray(a)
                assert a.dtype == np.float32
                ids.append(f"noise{int(a.reshape(-1)[0])}:{list(a.shape)}")
        events.append(["call", kname, ids, None if coeffs is None else _bits(coeffs)])
        counter[0] += 1
        return Token(f"out{counter[0]}")

    class Rng:
        draws = 0

        def randn(self, shape):
            Rng.draws += 1
            events.append(["randn", list(shape)])
            return np.full(shape, Rng.draws, np.float32)

    latents = Token("latents")
    if img2img is not None:
        latents = s.add_noise(run, Token("image"), Token("noise"))
    for i in range(len(s.timesteps)):
        x = s.scale_model_input(run, latents, i)
        events.append(["unet", x.name, _bits(s.timesteps[i])])
        latents = s.step(run, Token(f"eps{i}"), i, latents, Rng())
    events.append(["result", latents.name])
    return {"timesteps": _bits(s.timesteps), "sigma_before": before,
            "sigma": s.init_noise_sigma, "events": events}


# ---- the JS side -----------------------------------------------------------------------------

DRIVER = r"""
import { makeScheduler } from %(module_url)s;
import { readFileSync } from "node:fs";

const bits = (a) => Array.from(new Int32Array(Float32Array.from(a).buffer));
class Token { constructor(name, shape) { this.name = name; this.shape = shape; } }
const SHAPE = %(shape)s;

function events(name, config, steps, original, img2img) {
  let s, before;
  try {
    s = makeScheduler(name, config);
    before = s.initNoiseSigma;
    if (img2img !== null && img2img[1] === "lcm") s.setTimesteps(steps, original, img2img[0]);
    else if (original === null) s.setTimesteps(steps);
    else s.setTimesteps(steps, original);
    if (img2img !== null && img2img[1] === "truncate") s.truncate(img2img[0]);
  } catch (e) {
    return { error: e.message };
  }
  if (!(s.timesteps instanceof Float32Array)) throw new Error("timesteps must be a Float32Array");
  const ev = [];
  let counter = 0, draws = 0;
  const run = (kname, ...args) => {
    const last = args[args.length - 1];
    const hasCoeffs = last instanceof Float32Array;
    const tensors = hasCoeffs ? args.slice(0, -1) : args;
    const ids = tensors.map((a) => {
      if (a instanceof Token) return a.name;
      if (a && a.noise !== undefined) return `noise${a.noise}:${JSON.stringify(a.shape).replace(/,/g, ", ")}`;
      throw new Error("unexpected argument " + a);
    });
    ev.push(["call", kname, ids, hasCoeffs ? bits(last) : null]);
    counter += 1;
    return new Token(`out${counter}`, SHAPE);
  };
  const rng = { randn(shape) { draws += 1; ev.push(["randn", shape]); return { noise: draws, shape }; } };
  let latents = new Token("latents", SHAPE);
  if (img2img !== null) latents = s.addNoise(run, new Token("image", SHAPE), new Token("noise", SHAPE));
  for (let i = 0; i < s.timesteps.length; i++) {
    const x = s.scaleModelInput(run, latents, i);
    ev.push(["unet", x.name, bits([s.timesteps[i]])]);
    latents = s.step(run, new Token(`eps${i}`, SHAPE), i, latents, rng);
  }
  ev.push(["result", latents.name]);
  return { timesteps: bits(s.timesteps), sigma_before: before, sigma: s.initNoiseSigma, events: ev };
}

function error(f) {
  try { f(); } catch (e) { return e instanceof Error ? e.message : "not an Error: " + e; }
  return null;
}

const input = JSON.parse(readFileSync(process.argv[2], "utf8"));
const t0 = performance.now();
const results = input.cases.map(([name, config, steps, original, img2img]) =>
  events(name, config, steps, original, img2img));
const errors = input.errors.map((c) => {
  if (c.kind === "make") return error(() => makeScheduler(c.name, c.config));
  if (c.kind === "steps") return error(() => makeScheduler(c.name, c.config).setTimesteps(c.steps));
  if (c.kind === "steps_original") {
    return error(() => makeScheduler(c.name, c.config).setTimesteps(c.steps, c.original));
  }
  if (c.kind === "lcm_strength") {
    return error(() => makeScheduler(c.name, c.config).setTimesteps(c.steps, null, c.strength));
  }
  if (c.kind === "truncate") {
    return error(() => {
      const s = makeScheduler(c.name, c.config);
      if (c.set) s.setTimesteps(c.steps);
      s.truncate(c.strength);
      if (c.twice) s.truncate(c.strength);
    });
  }
  const s = makeScheduler(c.name, c.config);
  const t = (n) => new Token(n, SHAPE);
  const run = () => t("out");
  const rng = { randn: (shape) => ({ noise: 0, shape }) };
  if (c.kind === "step_before_set") return error(() => s.step(run, t("eps"), 0, t("x"), rng));
  if (c.kind === "timesteps_before_set") return error(() => s.timesteps);
  s.setTimesteps(5);
  if (c.kind === "out_of_order") return error(() => s.step(run, t("eps"), 1, t("x"), rng));
  if (c.kind === "bad_index") return error(() => s.scaleModelInput(run, t("x"), c.index));
  if (c.kind === "no_rng") return error(() => s.step(run, t("eps"), 0, t("x"), null));
  throw new Error("bad kind " + c.kind);
});
process.stdout.write(JSON.stringify({ results, errors, ms: performance.now() - t0 }));
"""

UNSUPPORTED = [
    ("pndm", {"skip_prk_steps": False}),
    ("pndm", {"prediction_type": "sample"}),
    ("ddim", {"clip_sample": True}),
    ("ddim", {"thresholding": True}),
    ("ddim", {"rescale_betas_zero_snr": True}),
    ("dpm-solver++", {"algorithm_type": "sde-dpmsolver++"}),
    ("dpm-solver++", {"solver_order": 3}),
    ("dpm-solver++", {"use_karras_sigmas": True}),
    ("dpm-solver++", {"variance_type": "learned_range"}),
    ("euler", {"use_karras_sigmas": True}),
    ("euler", {"interpolation_type": "log_linear"}),
    ("euler", {"timestep_type": "continuous", "prediction_type": "v_prediction"}),
    ("euler-a", {"prediction_type": "sample"}),
    ("euler-a", {"timestep_spacing": "quadratic"}),
    ("euler-a", {"beta_schedule": "sigmoid"}),
    ("euler", {"trained_betas": [0.1, 0.2]}),
    ("ddim", {"num_train_timesteps": 1}),
    ("lcm", {"thresholding": True}),
    ("lcm", {"clip_sample": True}),
    ("lcm", {"rescale_betas_zero_snr": True}),
    ("lcm", {"prediction_type": "x0"}),
    ("lcm", {"beta_schedule": "sigmoid"}),
    ("lcm", {"original_inference_steps": 0}),
    ("lcm", {"original_inference_steps": 1001}),
    ("lcm", {"original_inference_steps": 2.5}),
    ("lcm", {"original_inference_steps": None}),
    ("lcm", {"timestep_scaling": None}),
    ("lcm", {"timestep_scaling": "10"}),
]
BAD_STEPS = [0, -1, 10000, 1001, 2.5, True, "10", None]


def _error_cases():
    cases = [{"kind": "make", "name": "lms", "config": SD15}]
    cases += [{"kind": "make", "name": n, "config": {**SD15, **o}} for n, o in UNSUPPORTED]
    for n in NAMES:
        cases += [{"kind": "steps", "name": n, "config": SD15, "steps": b} for b in BAD_STEPS]
        cases += [{"kind": "steps", "name": n, "config": {**SD15, "timestep_spacing": "trailing"},
                   "steps": 61},
                  {"kind": "steps", "name": n, "config": {**SD15, "timestep_spacing": "leading"},
                   "steps": 1000},
                  {"kind": "steps", "name": n, "config": {**SD15, "timestep_spacing": "linspace"},
                   "steps": 1000}]
        cases += [{"kind": k, "name": n, "config": SD15}
                  for k in ("step_before_set", "timesteps_before_set", "out_of_order")]
        cases += [{"kind": "bad_index", "name": n, "config": SD15, "index": i}
                  for i in (-1, 99, 1.5, True)]
    cases.append({"kind": "no_rng", "name": "euler-a", "config": SD15})
    cases.append({"kind": "no_rng", "name": "lcm", "config": SD15})
    cases += [{"kind": "steps_original", "name": "lcm", "config": SD15, "steps": steps,
               "original": original}
              for steps, original in ((5, 4), (5, 0), (5, 1001), (5, 2.5), (5, True), (4, 4),
                                      (1001, 1000), (0, 10))]
    for n in NAMES:
        cases += [{"kind": "truncate", "name": n, "config": SD15, "steps": 10, "set": True,
                   "strength": strength}
                  for strength in (0, -0.5, 1.5, "0.5", None, True, 0.05)]  # (JSON has no NaN)
        cases += [{"kind": "truncate", "name": n, "config": SD15, "steps": 10, "set": False,
                   "strength": 0.5},
                  {"kind": "truncate", "name": n, "config": SD15, "steps": 10, "set": True,
                   "strength": 0.5, "twice": True}]
    cases += [{"kind": "lcm_strength", "name": "lcm", "config": SD15, "steps": steps,
               "strength": strength}
              for steps, strength in ((4, 0), (4, 1.5), (4, "1"), (4, 0.05), (8, 0.1), (4, 0.1))]
    return cases


def python_error(c) -> str | None:
    class Tok:
        shape = tuple(SHAPE)

    class Rng:
        def randn(self, shape):
            return np.zeros(shape, np.float32)

    def run(*args):
        return Tok()

    try:
        if c["kind"] == "make":
            make_scheduler(c["name"], c["config"])
        elif c["kind"] == "steps":
            make_scheduler(c["name"], c["config"]).set_timesteps(c["steps"])
        elif c["kind"] == "steps_original":
            make_scheduler(c["name"], c["config"]).set_timesteps(c["steps"], c["original"])
        elif c["kind"] == "lcm_strength":
            make_scheduler(c["name"], c["config"]).set_timesteps(c["steps"], None, c["strength"])
        elif c["kind"] == "truncate":
            s = make_scheduler(c["name"], c["config"])
            if c["set"]:
                s.set_timesteps(c["steps"])
            s.truncate(c["strength"])
            if c.get("twice"):
                s.truncate(c["strength"])
        else:
            s = make_scheduler(c["name"], c["config"])
            if c["kind"] == "step_before_set":
                s.step(run, Tok(), 0, Tok(), Rng())
            elif c["kind"] == "timesteps_before_set":
                s.timesteps
            else:
                s.set_timesteps(5)
                if c["kind"] == "out_of_order":
                    s.step(run, Tok(), 1, Tok(), Rng())
                elif c["kind"] == "bad_index":
                    s.scale_model_input(run, Tok(), c["index"])
                elif c["kind"] == "no_rng":
                    s.step(run, Tok(), 0, Tok(), None)
    except ValueError as e:
        return str(e)
    return None


@pytest.fixture(scope="module")
def js(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("schedulers_js")
    driver = tmp / "driver.mjs"
    driver.write_text(DRIVER % {"module_url": json.dumps(INDEX_JS.as_uri()), "shape": json.dumps(SHAPE)})
    payload = {"cases": [[n, cfg, steps, original, img2img]
                         for n, _, cfg, steps, original, img2img in CASES],
               "errors": _error_cases()}
    (tmp / "input.json").write_text(json.dumps(payload))
    proc = subprocess.run([NODE, str(driver), str(tmp / "input.json")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"node driver failed:\n{proc.stderr}"
    return json.loads(proc.stdout)


def _ids(case):
    n, label, _, steps, _, _ = case
    return f"{n}-{label}-{steps}"


def diffusers_timesteps(name, config, steps, original, img2img) -> list[int]:
    """float32 bits of the timesteps diffusers' pipeline runs (img2img: as the pipelines
    truncate or shorten them)."""
    ref = diffusers_scheduler(name, config)
    kwargs = {} if original is None else {"original_inference_steps": original}
    if img2img is not None and img2img[1] == "lcm":
        kwargs["strength"] = img2img[0]
    ref.set_timesteps(steps, **kwargs)
    timesteps = ref.timesteps
    if img2img is not None and img2img[1] == "truncate":
        timesteps = timesteps[steps - min(int(steps * img2img[0]), steps):]
    return timesteps.numpy().astype(np.float32).view(np.int32).tolist()


@pytest.mark.parametrize("index", range(len(CASES)), ids=[_ids(c) for c in CASES])
def test_js_scheduler_matches_python(js, index):
    name, _, config, steps, original, img2img = CASES[index]
    ours = js["results"][index]
    theirs = python_events(name, config, steps, original, img2img)
    if "error" in theirs:
        assert ours == theirs
        return
    assert "error" not in ours, ours["error"]
    assert ours["timesteps"] == theirs["timesteps"]
    assert ours["sigma_before"] == theirs["sigma_before"]
    assert ours["sigma"] == theirs["sigma"]
    assert len(ours["events"]) == len(theirs["events"])
    for k, (a, b) in enumerate(zip(ours["events"], theirs["events"])):
        assert a == b, f"event {k}: JS {a} != Python {b}"
    # and directly against diffusers
    assert ours["timesteps"] == diffusers_timesteps(name, config, steps, original, img2img)


def test_all_kernels_exercised(js):
    """The cases above call every kernel of every sampler."""
    called = {e[1] for r in js["results"] if "events" in r for e in r["events"] if e[0] == "call"}
    every = {k.name for cls in SCHEDULERS.values() for k in cls.kernels}
    every.add("add_noise")  # latent_sample: the engine's (tests/web/test_browser_run.py)
    assert called == every


def test_js_errors_match_python(js):
    cases = _error_cases()
    assert len(js["errors"]) == len(cases)
    raised = 0
    for c, got in zip(cases, js["errors"]):
        want = python_error(c)  # None where Python accepts it (then JS must accept it too)
        raised += want is not None
        assert got == want, c
    assert raised >= len(cases) - 8  # a few step counts are fine for some samplers
