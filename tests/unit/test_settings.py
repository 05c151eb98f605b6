"""The one record of generation settings (wsd.settings) is what every entry point uses."""

import inspect
import json

import pytest

from wsd import settings
from wsd.checks.reference import Settings
from wsd.cli import parser
from wsd.runtime.pipeline import Pipeline


def test_every_entry_point_has_the_same_defaults():
    generate = parser().parse_args(["generate", "--prompt", "x"])
    assert (generate.steps, generate.guidance_scale, generate.scheduler, generate.dtype) == (
        settings.STEPS, settings.GUIDANCE_SCALE, settings.SCHEDULER, settings.DEFAULT_DTYPE)
    api = inspect.signature(Pipeline.generate).parameters
    reference = Settings("x")
    for name in ("negative_prompt", "scheduler", "steps", "guidance_scale", "seed"):
        assert api[name].default == getattr(reference, name) == settings.record()["defaults"][name]


def test_the_samplers_are_the_record_s():
    from wsd.samplers import SCHEDULERS

    assert tuple(SCHEDULERS) == settings.SCHEDULERS


def test_the_record_is_json_for_the_web_bundle():
    record = json.loads(json.dumps(settings.record()))
    assert record["defaults"]["steps"] == settings.STEPS
    assert record["bounds"] == {"steps": [1, 1000], "guidance_scale": [0, 100]}


@pytest.mark.parametrize("steps,guidance,seed,message", [
    (0, 7.5, 0, "steps must be an integer from 1 to 1000, got 0"),
    (2.5, 7.5, 0, "steps must be an integer"),
    (25, 101.0, 0, "guidance scale must be between 0 and 100, got 101.0"),
    (25, float("nan"), 0, "guidance scale must be between 0 and 100"),
    (25, 7.5, -1, r"seed must be an integer from 0 to 2\*\*64-1, got -1"),
    (25, 7.5, 2**64, "seed must be an integer"),
])
def test_out_of_bounds_settings_are_named(steps, guidance, seed, message):
    with pytest.raises(ValueError, match=message):
        settings.check(steps, guidance, seed)
    settings.check(25, 7.5, 2**64 - 1)  # the bounds themselves are in
