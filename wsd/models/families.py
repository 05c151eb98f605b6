"""Model families: what a model is, and the generation defaults that fit it.

diffusers runs every checkpoint with its pipeline's defaults (50 steps, guidance 7.5) and the
folder's own scheduler; distilled families are made for far fewer steps, and their model
cards say so. A user who names no steps, guidance or sampler gets the family's:

    family  how it is recognised                             steps  guidance  samplers
    sd      anything else (SD v1.x, SD 2.x)                  25     7.5       all
    turbo   "turbo" in the folder's or preset's name, or in    1     0.0       all
            model_index.json's _name_or_path (SD-Turbo is
            SD 2.1-base's architecture: only its card tells)
    lcm     a UNet with time_cond_proj_dim (LCM-distilled:      4     8.5       lcm
            the guidance scale enters as an embedding)

The sampler: the folder's own scheduler class (its config is what the model was made with),
else the family's. LCM's guidance 8.5 is diffusers' LatentConsistencyModelPipeline default.
"""

from __future__ import annotations

from dataclasses import dataclass

from wsd import settings

# diffusers' scheduler classes -> our samplers
SAMPLER_OF_CLASS = {
    "PNDMScheduler": "pndm",
    "DPMSolverMultistepScheduler": "dpm-solver++",
    "EulerDiscreteScheduler": "euler",
    "EulerAncestralDiscreteScheduler": "euler-a",
    "DDIMScheduler": "ddim",
    "LCMScheduler": "lcm",
}


@dataclass(frozen=True)
class Family:
    name: str
    description: str
    steps: int
    guidance_scale: float
    samplers: tuple[str, ...]  # the samplers that apply, the first being the fallback

    def defaults(self, scheduler_config: dict) -> dict:
        """Generation defaults for a model of this family with this scheduler config."""
        return {"scheduler": self.sampler(scheduler_config), "steps": self.steps,
                "guidance_scale": self.guidance_scale}

    def sampler(self, scheduler_config: dict) -> str:
        """The folder's own sampler when we have it and it applies, else the family's first."""
        own = SAMPLER_OF_CLASS.get(scheduler_config.get("_class_name", ""))
        return own if own in self.samplers else self.samplers[0]


SD = Family("sd", "Stable Diffusion", settings.STEPS, settings.GUIDANCE_SCALE,
            settings.SCHEDULERS)
TURBO = Family("turbo", "SD-Turbo (adversarially distilled: 1-4 steps, no guidance)", 1, 0.0,
               ("euler", *(s for s in settings.SCHEDULERS if s != "euler")))
LCM = Family("lcm", "latent consistency model (guidance as an embedding, 2-8 steps)", 4, 8.5,
             ("lcm",))
FAMILIES = {f.name: f for f in (SD, TURBO, LCM)}


def detect(configs: dict, names: tuple[str, ...]) -> Family:
    """The family of a model with these part configs; `names`: the folder's or preset's name
    and model_index.json's _name_or_path (where present)."""
    if configs["unet"].get("time_cond_proj_dim") is not None:
        return LCM
    if any("turbo" in (n or "").lower() for n in names):
        return TURBO
    return SD
