"""The samplers: host logic in numpy, per-step tensor math as compiled Relax functions.

    SCHEDULERS                        name -> Scheduler class: "pndm", "dpm-solver++",
                                      "euler", "euler-a", "ddim", "lcm"
    make_scheduler(name, config)      our scheduler for a diffusers scheduler config dict
    relax_functions()                 every sampler's Relax functions, to compile with the model
                                      (with the shared add_noise and latent_sample)
    diffusers_scheduler(name, config) diffusers' matching scheduler (the reference)

Each sampler reproduces diffusers' `XScheduler.from_config(config)` step by step; see
`base.Scheduler` for the interface and the split between host and device.
"""

from __future__ import annotations

from tvm import relax

from wsd.samplers.base import COMMON_KERNELS, Scheduler
from wsd.samplers.ddim import DDIM
from wsd.samplers.dpm_solver import DPMSolverPP
from wsd.samplers.euler import Euler
from wsd.samplers.euler_ancestral import EulerAncestral
from wsd.samplers.lcm import LCM
from wsd.samplers.pndm import PNDM

SCHEDULERS: dict[str, type[Scheduler]] = {
    "pndm": PNDM,
    "dpm-solver++": DPMSolverPP,
    "euler": Euler,
    "euler-a": EulerAncestral,
    "ddim": DDIM,
    "lcm": LCM,
}


def _check_name(name: str) -> type[Scheduler]:
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of: {', '.join(SCHEDULERS)}")
    return SCHEDULERS[name]


def make_scheduler(name: str, config: dict) -> Scheduler:
    """Our `name` sampler configured as diffusers would configure it from `config`."""
    return _check_name(name)(config)


def relax_functions() -> dict[str, relax.Function]:
    """All samplers' compiled functions by name (each name is prefixed by its sampler),
    and those they share (add_noise, latent_sample: image-to-image)."""
    functions = {k.name: k.relax_function() for k in COMMON_KERNELS}
    for cls in SCHEDULERS.values():
        for name, func in cls.relax_functions().items():
            if name in functions:
                raise RuntimeError(f"two samplers define {name}")
            functions[name] = func
    return functions


def diffusers_scheduler(name: str, config: dict):
    """diffusers' scheduler for `name`, built with `from_config(config)` (the reference).
    DDIM's eta is a step() argument in diffusers; the pipeline's default, 0, is ours.
    LCM's step() takes the pipeline's generator, as euler-a's does."""
    import diffusers

    return getattr(diffusers, _check_name(name).diffusers_class).from_config(config)
