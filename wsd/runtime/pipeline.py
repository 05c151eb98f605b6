"""Stage 5, runtime: text-to-image on a compiled library, natively (llvm CPU or CUDA).

The loop is diffusers' StableDiffusionPipeline.__call__, step for step, so that the same
weights, scheduler, steps, guidance, prompts and seed give the same image:

    tokens -> encode_text (prompt, and negative prompt when guidance > 1)
    latents = randn(seed) * init_noise_sigma          (wsd.runtime.rng: torch.randn without torch)
    for each timestep: scale_model_input -> unet_guided / unet -> scheduler step
    decode -> RGB in [0, 1] -> uint8 with diffusers' rounding

Image-to-image (`image=`, `strength=`), as diffusers' StableDiffusionImg2ImgPipeline:

    pixels (wsd.runtime.image: VaeImageProcessor's rounding and Lanczos resize) -> encode_image
    -> (mean, std); latents = scaling_factor * (mean + std * randn)   (first generator draw)
    the sampler keeps the last int(steps * strength) steps (truncate), then
    latents = add_noise(latents, randn, first kept timestep)          (second draw)
    the loop above over the kept steps -> decode

A guidance-embedded UNet follows LatentConsistencyModelImg2ImgPipeline instead: strength
shortens LCM's original schedule (LCM.set_timesteps(..., strength=)), nothing is cut.

A UNet with a guidance embedding (LCM-distilled) is called once per step with the prompt
and the scale, never with a negative prompt: diffusers' LatentConsistencyModelPipeline (and
StableDiffusionPipeline, for such a UNet) do the same. Settings left as None take the
model family's defaults (wsd.models.families).

Everything between the token ids and the decoded image runs in compiled code on the device;
the host only picks timesteps and coefficients (and draws noise for ancestral samplers).
"""

from __future__ import annotations

import warnings
from typing import Callable

import numpy as np

from wsd import settings
from wsd.models import Model
from wsd.runtime.executor import Executor
from wsd.runtime.image import prepare_image
from wsd.runtime.library import Library
from wsd.runtime.rng import TorchGenerator
from wsd.runtime.weights import collect_weights
from wsd.samplers import make_scheduler
from wsd.samplers.base import latent_sample

class Pipeline:
    def __init__(self, model: Model, library: Library):
        self.model = model
        self.library = library
        self.meta = library.meta
        self.executor = Executor(library.module, library.device)
        self.tokenizer = model.tokenizer()
        self.weights = self._upload_weights()

    def _upload_weights(self) -> dict[str, list]:
        return upload_weights(self.executor, self.model, self.meta)

    def call(self, name: str, *inputs):
        return self.executor(name, *inputs, *self.weights[name])

    def encode(self, prompt: str):
        ids = self.tokenizer(prompt).reshape(1, -1).astype(np.int32)
        dropped = len(self.tokenizer.encode(prompt)) - ids.shape[1]
        if dropped > 0:  # as diffusers: CLIP sees only the first 77 tokens
            warnings.warn(f"prompt truncated: its last {dropped} tokens are beyond CLIP's "
                          f"{ids.shape[1]}-token window", stacklevel=2)
        return self.call("encode_text", ids)

    def generate(self, prompt: str, negative_prompt: str = settings.NEGATIVE_PROMPT,
                 scheduler: str | None = None, steps: int | None = None,
                 guidance_scale: float | None = None, seed: int = settings.SEED,
                 progress: Callable[[int, int], None] | None = None,
                 image=None, strength: float | None = None,
                 on_latents: Callable[[int, object], None] | None = None) -> np.ndarray:
        """Returns the image as uint8 (height, width, 3). `image` (a file path or a PIL
        image) makes it image-to-image, at `strength` (default 0.8, as diffusers).
        `on_latents(step, latents)` is called after each step with the latents on the device
        (e.g. for `preview`)."""
        scheduler, steps, guidance_scale = self.model.settings(scheduler, steps,
                                                               guidance_scale)
        settings.check(steps, guidance_scale, seed)
        embedded = self.model.guidance_embedded
        pixels = None
        if image is None:
            if strength is not None:
                raise ValueError("strength is for image-to-image: give an image too")
        else:
            if "encode_image" not in self.meta["functions"]:
                raise ValueError(f"image-to-image needs the VAE's encoder; {self.model.name}'s "
                                 f"VAE is an {self.model.vae_class} (no latent distribution)")
            strength = settings.STRENGTH if strength is None else strength
            settings.check_strength(strength)
            pixels = prepare_image(image, self.meta["height"], self.meta["width"],
                                   self.model.vae_scale_factor)
        sampler = make_scheduler(scheduler, self.model.configs["scheduler"])
        if pixels is not None and embedded:  # LatentConsistencyModelImg2ImgPipeline
            if scheduler != "lcm":
                raise ValueError(f"image-to-image with {self.model.name} (guidance embedded in "
                                 f"the UNet) needs the lcm sampler, got {scheduler!r}")
            sampler.set_timesteps(steps, strength=strength)
        else:
            sampler.set_timesteps(steps)
            if pixels is not None:  # StableDiffusionImg2ImgPipeline.get_timesteps
                sampler.truncate(strength)
        guided = guidance_scale > 1.0 and not embedded  # as diffusers: none at or below 1
        cond = self.encode(prompt)
        uncond = self.encode(negative_prompt or "") if guided else None
        scale = np.array([guidance_scale], dtype=np.float32)

        rng = TorchGenerator(seed)
        c, f = self.model.latent_channels, self.model.vae_scale_factor
        shape = (1, c, self.meta["height"] // f, self.meta["width"] // f)
        run = self.executor
        if pixels is None:
            latents = rng.randn(shape) * np.float32(sampler.init_noise_sigma)
            latents = self.executor.upload(latents.astype(np.float32))
        else:
            latents = self.image_latents(pixels, rng)
            latents = sampler.add_noise(run, latents, rng.randn(shape))

        for i, t in enumerate(sampler.timesteps):
            sample = sampler.scale_model_input(run, latents, i)
            timestep = np.array([t], dtype=np.float32)
            if guided:
                noise = self.call("unet_guided", sample, timestep, cond, uncond, scale)
            elif embedded:
                noise = self.call("unet", sample, timestep, cond, scale)
            else:
                noise = self.call("unet", sample, timestep, cond)
            latents = sampler.step(run, noise, i, latents, rng)
            if progress:
                progress(i + 1, len(sampler.timesteps))
            if on_latents:
                on_latents(i + 1, latents)
        image = self.call("decode", latents).numpy()[0]
        return to_uint8(image)

    def preview(self, latents) -> np.ndarray:
        """The latents as uint8 (height, width, 3) through the preview VAE (`decode_preview`,
        a model with --preview-vae), as the web app's previews."""
        if "decode_preview" not in self.weights:
            raise ValueError(f"model {self.model.name} has no preview VAE (--preview-vae)")
        return to_uint8(self.call("decode_preview", latents).numpy()[0])


    def image_latents(self, pixels: np.ndarray, rng):
        """The image's latents, as diffusers' retrieve_latents(vae.encode(image), generator)
        times the VAE's scaling factor: one randn draw of the latent shape."""
        mean, std = self.call("encode_image", pixels)
        noise = rng.randn(tuple(int(d) for d in mean.shape)).astype(np.float32)
        return latent_sample(self.executor, mean, std, noise, [self.scaling_factor])

    @property
    def scaling_factor(self) -> float:
        return float(self.model.configs["vae"].get("scaling_factor", 0.18215))


def upload_weights(executor, model: Model, meta: dict, modules=None) -> dict[str, list]:
    """Device copies (`executor.upload`) of each function's weights, named and ordered as in
    the browser's tensor cache (wsd.runtime.weights); the two UNet functions share theirs. `modules`:
    the wrapped modules if already loaded (wsd.runtime.weights.collect_weights)."""
    tensors, order = collect_weights(model, meta, modules=modules)
    uploaded = {name: executor.upload(array) for name, array in tensors.items()}
    return {function: [uploaded[n] for n in names] for function, names in order.items()}


def to_uint8(image: np.ndarray) -> np.ndarray:
    """diffusers' numpy_to_pil: round(x * 255)."""
    return (image * 255).round().astype(np.uint8)

