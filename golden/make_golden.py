"""Regenerate the golden images: `python golden/make_golden.py`.

Each golden is diffusers' StableDiffusionPipeline output (the reference, not wsd's) for the
built-in tiny model, stored as `<name>.png` with `<name>.json` holding everything that made
it: model config hash, prompt, negative prompt, seed, scheduler, steps, guidance, dtype, size,
and the library versions. tests/numerics/test_generate.py compares wsd's images with both the
stored golden and a fresh diffusers run.
"""

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from wsd.checks.reference import Reference, Settings  # noqa: E402
from wsd.models import load_model  # noqa: E402

PROMPT = "a lighthouse at dusk, oil painting"
CASES = {
    f"tiny-{name}": Settings(PROMPT, scheduler=name, steps=20, guidance_scale=7.5, seed=42)
    for name in ("pndm", "dpm-solver++", "euler", "euler-a", "ddim")
}
CASES["tiny-pndm-negative"] = Settings(PROMPT, negative_prompt="blurry, low contrast",
                                       scheduler="pndm", steps=20, guidance_scale=7.5, seed=7)


def main() -> None:
    import diffusers
    import torch

    model = load_model("tiny")
    height, width = model.default_size
    reference = Reference(model)
    for name, settings in CASES.items():
        image = reference.image(settings, height, width)
        Image.fromarray(image).save(HERE / f"{name}.png")
        meta = {
            "model": model.name, "model_config_hash": model.config_hash(),
            "settings": settings.as_dict(), "dtype": "float32", "height": height, "width": width,
            "made_by": f"diffusers {diffusers.__version__}, torch {torch.__version__}",
        }
        (HERE / f"{name}.json").write_text(json.dumps(meta, indent=1) + "\n")
        print(f"{name}: mean {np.mean(image):.1f}, std {np.std(image):.1f}")


if __name__ == "__main__":
    main()
