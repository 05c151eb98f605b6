"""Built-in architectures and their deterministic weights."""

import numpy as np
import pytest
import torch

from wsd.models import load_model
from wsd.models.presets import SD15, TINY


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_sd15_is_stable_diffusion_v15():
    """Parameter counts of the published SD v1.5 checkpoint's parts."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):  # shapes only, no memory
        assert count(UNet2DConditionModel(**SD15["unet"])) == 859_520_964
        assert count(AutoencoderKL(**SD15["vae"])) == 83_653_863
        assert count(CLIPTextModel(CLIPTextConfig(**SD15["text_encoder"]))) == 123_060_480


def test_tiny_keeps_sd15_block_types():
    model = load_model("tiny")
    assert set(TINY["unet"]["down_block_types"]) == set(SD15["unet"]["down_block_types"])
    assert set(TINY["unet"]["up_block_types"]) == set(SD15["unet"]["up_block_types"])
    assert model.vae_scale_factor == 8
    assert model.configs["text_encoder"]["vocab_size"] == 49408
    assert model.default_size == (128, 128)
    assert load_model("sd15").default_size == (512, 512)


def test_tiny_weights_are_deterministic():
    first = load_model("tiny").unet().state_dict()
    second = load_model("tiny").unet().state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_seed_changes_weights():
    a = load_model("tiny", seed=0).text_encoder().state_dict()
    b = load_model("tiny", seed=1).text_encoder().state_dict()
    name = next(k for k in a if k.endswith("layers.0.mlp.fc1.weight"))
    assert not torch.equal(a[name], b[name])


def test_tiny_weights_are_sane():
    """Unit-scale weights: no zeros, no huge values (the default init is not used)."""
    state = load_model("tiny").vae().state_dict()
    conv = state["decoder.up_blocks.0.resnets.0.conv1.weight"].numpy()
    fan_in = np.prod(conv.shape[1:])
    assert 0.8 < conv.std() * np.sqrt(fan_in) < 1.2
    assert np.all(np.isfinite(conv))


def test_config_hash_tracks_architecture():
    assert load_model("tiny").config_hash() != load_model("sd15").config_hash()
    assert load_model("tiny").config_hash() == load_model("tiny", seed=3).config_hash()


@pytest.mark.parametrize("spec", ["", "tiny2", "SD15"])
def test_unknown_names(spec):
    from wsd.models import ModelError

    with pytest.raises(ModelError, match="neither a built-in model"):
        load_model(spec)
