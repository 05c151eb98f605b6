"""The one record of generation settings: defaults, bounds and validation.

Every entry point reads it: `wsd generate` (its option defaults), wsd.runtime.pipeline
(Pipeline.generate), wsd.checks.reference (diffusers' run), and the web app, through the
bundle's wsd-config.json "settings" (`record(model)`), so that no two of them can drift apart.
Steps, guidance and sampler are the "sd" family's here; a model's family
(wsd.models.families: SD-Turbo, LCM) may have its own, which the entry points take through
`Model.settings()` wherever the user gave none.

Defaults, and why:
- steps 25: what `wsd generate` and the web app offered already (the user-facing entry
  points); PNDM, the default sampler, gives a finished image there at half of diffusers' 50
  steps. (The Python API said 20: every test and golden passes its steps explicitly.)
- guidance scale 7.5: diffusers' StableDiffusionPipeline default, for which SD v1.5 was tuned.
- scheduler "pndm": SD v1.5's own scheduler config names PNDM.
- seed 0 for the API and the app (reproducible by default); `wsd generate` draws a random one
  when none is given, and prints it.
- dtype float32: the reference precision; float16 is the opt-in fast path.
"""

from __future__ import annotations

import numpy as np

SCHEDULERS = ("pndm", "dpm-solver++", "euler", "euler-a", "ddim", "lcm")
DTYPES = ("float32", "float16")
DEFAULT_DTYPE = "float32"

PROMPT = ""
NEGATIVE_PROMPT = ""
SCHEDULER = "pndm"
STEPS = 25
GUIDANCE_SCALE = 7.5
SEED = 0
STRENGTH = 0.8  # image-to-image: diffusers' StableDiffusionImg2ImgPipeline default

MIN_STEPS, MAX_STEPS = 1, 1000
MIN_GUIDANCE, MAX_GUIDANCE = 0.0, 100.0
SEED_LIMIT = 2**64  # seeds are integers from 0 to SEED_LIMIT - 1 (torch.Generator's range)


def check(steps, guidance_scale, seed) -> None:
    """Raises ValueError naming the first setting out of bounds (the web app's checkSettings
    says the same words)."""
    if not isinstance(steps, (int, np.integer)) or not MIN_STEPS <= steps <= MAX_STEPS:
        raise ValueError(f"steps must be an integer from {MIN_STEPS} to {MAX_STEPS}, "
                         f"got {steps!r}")
    if not np.isfinite(guidance_scale) or not MIN_GUIDANCE <= guidance_scale <= MAX_GUIDANCE:
        raise ValueError(f"guidance scale must be between {MIN_GUIDANCE:g} and "
                         f"{MAX_GUIDANCE:g}, got {guidance_scale!r}")
    if not isinstance(seed, (int, np.integer)) or not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"seed must be an integer from 0 to 2**64-1, got {seed!r}")


def check_strength(strength) -> None:
    """Image-to-image strength: a number in (0, 1] (0 would keep no denoising step)."""
    if (isinstance(strength, (bool, np.bool_)) or not isinstance(strength, (int, float, np.number))
            or not 0 < strength <= 1):
        raise ValueError(f"strength must be a number in (0, 1], got {strength!r}")


def record(model=None) -> dict:
    """The settings for wsd-config.json: defaults and bounds, and the samplers that apply;
    with a model (wsd.models.Model), its family's defaults and samplers. (The seed's bound is
    not a JSON number JavaScript can hold exactly, so the app keeps 2**64 as a BigInt.)"""
    scheduler, steps, guidance = ((SCHEDULER, STEPS, GUIDANCE_SCALE) if model is None
                                  else model.settings())
    return {
        "defaults": {"prompt": PROMPT, "negative_prompt": NEGATIVE_PROMPT,
                     "scheduler": scheduler, "steps": steps, "guidance_scale": guidance,
                     "seed": SEED},
        "bounds": {"steps": [MIN_STEPS, MAX_STEPS],
                   "guidance_scale": [MIN_GUIDANCE, MAX_GUIDANCE]},
        "schedulers": list(SCHEDULERS if model is None else model.family.samplers),
    }
