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
    assert generate.dtype == settings.DEFAULT_DTYPE
    api = inspect.signature(Pipeline.generate).parameters
    reference = Settings("x")
    for name in ("negative_prompt", "seed"):
        assert api[name].default == getattr(reference, name) == settings.record()["defaults"][name]
    # sampler, steps and guidance: the model family's (None everywhere: Model.settings fills in)
    for name in ("scheduler", "steps", "guidance_scale"):
        assert api[name].default is getattr(reference, name) is getattr(generate, name) is None


@pytest.mark.parametrize("model,expected", [
    ("tiny", ("pndm", settings.STEPS, settings.GUIDANCE_SCALE)),  # SD v1.5's own PNDM
    ("sd21", ("ddim", settings.STEPS, settings.GUIDANCE_SCALE)),  # SD 2.1's own DDIM
    ("tiny-turbo", ("euler", 1, 0.0)),
    ("sd-turbo", ("euler", 1, 0.0)),
    ("lcm", ("lcm", 4, 8.5)),
])
def test_a_model_s_defaults_are_its_family_s(model, expected):
    from wsd.models import load_model

    m = load_model(model)
    assert m.settings() == expected
    assert m.settings("ddim", 7, 2.0) == ("ddim", 7, 2.0)  # what the user gives wins
    record = settings.record(m)
    assert (record["defaults"]["scheduler"], record["defaults"]["steps"],
            record["defaults"]["guidance_scale"]) == expected
    assert expected[0] in record["schedulers"]


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
