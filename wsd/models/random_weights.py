"""Deterministic random weights for the built-in architectures.

Every parameter is drawn from numpy's legacy `RandomState`, whose stream numpy guarantees
never to change, seeded by the parameter's name. So the tiny model, and with it every golden
image, is the same on any machine and any torch/diffusers version (torch's own initializers
are not part of any stability promise).

Scales keep activations near unit size through the network: weights ~ N(0, 1/fan_in),
norm scales ~ 1 + N(0, 0.1), biases ~ N(0, 0.05). The VAE's output convolution is damped so
its pixels mostly stay inside [-1, 1] instead of saturating (clipped pixels would make the
image-similarity tests blind to differences there). A tiny autoencoder's (AutoencoderTiny)
decoder ends in a plain convolution whose output is the image in [0, 1]: it is damped
likewise and centred on 0.5 (`randomize_vae_`).
"""

import zlib

import numpy as np
import torch

# The VAE's last convolution, scaled down so that few pixels clip at 0 or 255.
OUTPUT_GAIN = {
    "decoder.conv_out.weight": 0.5,
}


def _draw(seed: int, name: str, shape: tuple[int, ...]) -> np.ndarray:
    state = np.random.RandomState(zlib.crc32(f"{seed}/{name}".encode()) & 0xFFFFFFFF)
    return state.standard_normal(shape)


def randomize_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Overwrite every parameter of `module` in place; returns the module."""
    with torch.no_grad():
        for name, param in module.named_parameters():
            shape = tuple(param.shape)
            noise = _draw(seed, name, shape)
            if param.ndim >= 2:
                fan_in = int(np.prod(shape[1:]))
                values = noise / np.sqrt(fan_in)
                values *= OUTPUT_GAIN.get(name, 1.0)
            elif name.endswith("bias"):
                values = 0.05 * noise
            else:  # norm scales
                values = 1.0 + 0.1 * noise
            param.copy_(torch.from_numpy(values.astype(np.float32)))
    return module


# A tiny autoencoder's last convolution: its output is the pixel value in [0, 1].
TINY_OUTPUT_GAIN = 0.5
TINY_OUTPUT_CENTRE = 0.5


def randomize_vae_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """randomize_ for a VAE (AutoencoderKL or AutoencoderTiny); returns the module."""
    randomize_(module, seed)
    if type(module).__name__ == "AutoencoderTiny":
        last = [m for m in module.decoder.layers if isinstance(m, torch.nn.Conv2d)][-1]
        with torch.no_grad():
            last.weight.mul_(TINY_OUTPUT_GAIN)
            last.bias.add_(TINY_OUTPUT_CENTRE)
    return module
