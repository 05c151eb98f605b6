"""The reference: diffusers' StableDiffusionPipeline over the same weights and settings
(LatentConsistencyModelPipeline for a UNet with a guidance embedding); for image-to-image,
StableDiffusionImg2ImgPipeline (LatentConsistencyModelImg2ImgPipeline) built from the same
components.

Used by the end-to-end tests and to (re)generate the golden images.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from wsd import settings
from wsd.models import Model
from wsd.runtime.pipeline import to_uint8


@dataclass(frozen=True)
class Settings:
    """None: the model family's default (wsd.models.Model.settings)."""

    prompt: str
    negative_prompt: str = settings.NEGATIVE_PROMPT
    scheduler: str | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    seed: int = settings.SEED

    def as_dict(self) -> dict:
        return asdict(self)


@contextlib.contextmanager
def peft_version_waiver():
    """transformers 5.25's adapter methods (which diffusers' text-encoder LoRA loading calls)
    ask for peft >= 0.22, a release not published when this was written; the LoRA layers of
    the newest published peft (0.21.2) are the ones diffusers' UNet path uses. Lower the
    bar to the installed peft while LoRAs load, only where it is below it."""
    try:
        import peft
        from transformers.integrations import peft as hf_peft
    except ImportError:
        yield
        return
    saved = getattr(hf_peft, "MIN_PEFT_VERSION", None)
    if saved is None or _version(peft.__version__) >= _version(saved):
        yield
        return
    hf_peft.MIN_PEFT_VERSION = peft.__version__
    try:
        yield
    finally:
        hf_peft.MIN_PEFT_VERSION = saved


def _version(text: str):
    from packaging.version import Version

    return Version(text)


class Reference:
    """diffusers' pipeline for one model, built once (safety checker off). The model's LoRAs
    (Model.loras) are applied by diffusers itself, over the model's base weights:
    `load_lora_weights` + `fuse_lora(lora_scale=...)` + `unload_lora_weights` per file, in
    order (needs peft)."""

    def __init__(self, model: Model, device: str = "cpu"):
        # A fair float32 reference on GPUs: no TF32 in matrix products and convolutions.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        from diffusers import LatentConsistencyModelPipeline, StableDiffusionPipeline
        from transformers import CLIPTokenizer

        from wsd.samplers import diffusers_scheduler

        self.model = model
        base = replace(model, loras=())  # diffusers fuses the LoRAs itself, below
        if model.path is not None:
            folder = model.path / "tokenizer"
        else:  # the same vocabulary files, written out for transformers
            folder = tempfile.mkdtemp(prefix="wsd-tokenizer-")
            model.tokenizer().save_pretrained_files(folder)
        tokenizer = CLIPTokenizer.from_pretrained(folder, local_files_only=True)
        cls = (LatentConsistencyModelPipeline if model.guidance_embedded
               else StableDiffusionPipeline)
        self.pipe = cls(
            vae=base.vae(), text_encoder=base.text_encoder(), tokenizer=tokenizer,
            unet=base.unet(),
            scheduler=diffusers_scheduler(model.settings()[0], model.configs["scheduler"]),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
        with peft_version_waiver():
            for i, (path, scale) in enumerate(model.loras):
                name = f"wsd_lora_{i}"
                self.pipe.load_lora_weights(str(path), adapter_name=name)
                self.pipe.fuse_lora(lora_scale=scale, adapter_names=[name])
                self.pipe.unload_lora_weights()  # keeps the fused weights, drops the adapter
        self.pipe.to(device)
        self.pipe.set_progress_bar_config(disable=True)
        self._scheduler = diffusers_scheduler

    def save(self, folder) -> None:
        """Write the model as a diffusers-format folder (safetensors), with the model's own
        scheduler config (not that of whichever sampler the reference ran last)."""
        self.pipe.save_pretrained(folder, safe_serialization=True)
        config = Path(folder) / "scheduler" / "scheduler_config.json"
        config.write_text(json.dumps(self.model.configs["scheduler"], indent=2))

    def image(self, settings: Settings, height: int | None = None, width: int | None = None,
              image=None, strength: float | None = None) -> np.ndarray:
        """uint8 (height, width, 3). Noise comes from a CPU generator, as wsd's does.
        With `image` (a PIL image or a file path): image-to-image at `strength` (diffusers'
        default 0.8), whose output size follows the image (height and width unused)."""
        scheduler, steps, guidance = self.model.settings(settings.scheduler, settings.steps,
                                                         settings.guidance_scale)
        self.pipe.scheduler = self._scheduler(scheduler, self.model.configs["scheduler"])
        generator = torch.Generator("cpu").manual_seed(settings.seed)
        # the LCM pipeline takes no negative prompt (its UNet runs on the prompt alone)
        negative = ({} if self.model.guidance_embedded
                    else {"negative_prompt": settings.negative_prompt or None})
        if image is None:
            pipe, size = self.pipe, {"height": height, "width": width}
        else:
            pipe, size = self.img2img(), {"image": _pil(image)}
            if strength is not None:
                size["strength"] = strength
        with torch.no_grad():
            out = pipe(
                settings.prompt, **negative, num_inference_steps=steps,
                guidance_scale=guidance, generator=generator, output_type="np", **size,
            ).images[0]
        return to_uint8(out)

    def img2img(self):
        """diffusers' image-to-image pipeline over this pipeline's components (the same
        modules, the scheduler last set)."""
        from diffusers import (LatentConsistencyModelImg2ImgPipeline,
                               StableDiffusionImg2ImgPipeline)

        cls = (LatentConsistencyModelImg2ImgPipeline if self.model.guidance_embedded
               else StableDiffusionImg2ImgPipeline)
        pipe = cls(**self.pipe.components, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        return pipe


def _pil(image):
    """A PIL image, as given or read from a file (diffusers' load_image would also apply EXIF
    orientation; our test images have none)."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image
    with Image.open(image) as opened:
        opened.load()
        return opened.copy()
