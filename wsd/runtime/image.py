"""Image-to-image input on the host: a picture file to the float32 pixels `encode_image` takes.

As diffusers' VaeImageProcessor.preprocess does for StableDiffusionImg2ImgPipeline (0.42):
the size is rounded down to multiples of the VAE's scale factor (8), the image is resized to
it with Lanczos (PIL's resize, a copy when the size is unchanged), and the pixels become
float32 in [0, 1] (x / 255); the compiled encode_image then maps them to [-1, 1].

A compiled library has one static size, so the rounded size must equal the library's: no
resize beyond diffusers' own. Unlike diffusers (which leaves the mode as it is and fails later
on anything but 3 channels), palette, grayscale and alpha images are converted to RGB.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np


class ImageError(ValueError):
    """An image input that cannot be used (unreadable, empty, not an image, wrong size)."""


def read_image(source):
    """A PIL image from a path (str or Path) or a PIL image, loaded; RGB."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(source, Image.Image):
        image = source
    elif isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"image file {str(path)!r} does not exist or is not a file")
        if path.stat().st_size == 0:
            raise ImageError(f"image file {str(path)!r} is empty")
        try:
            with Image.open(path) as opened:
                opened.load()
                image = opened.copy()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            raise ImageError(f"{str(path)!r} is not an image file PIL can read ({err})") from None
    else:
        raise ImageError(f"image must be a file path or a PIL image, got "
                         f"{type(source).__name__}")
    if image.width == 0 or image.height == 0:
        raise ImageError("the image is empty (0 pixels)")
    return image if image.mode == "RGB" else image.convert("RGB")


def rounded_size(width: int, height: int, factor: int = 8) -> tuple[int, int]:
    """(width, height) rounded down to multiples of `factor` (VaeImageProcessor's
    get_default_height_width)."""
    return width - width % factor, height - height % factor


def prepare_image(source, height: int, width: int, factor: int = 8) -> np.ndarray:
    """float32 (1, height, width, 3) in [0, 1] for a library of this size, as diffusers'
    VaeImageProcessor.preprocess prepares `source` (before its 2x - 1). Raises ImageError when
    the image's rounded size is not the library's."""
    from PIL import Image

    image = read_image(source)
    w, h = rounded_size(image.width, image.height, factor)
    if (w, h) != (width, height):
        rounded = ("" if (w, h) == image.size
                   else f", {w}x{h} once rounded down to multiples of {factor}")
        raise ImageError(
            f"the image is {image.width}x{image.height} (width x height){rounded}; the compiled "
            f"library makes {width}x{height} images: build for the image's size (--width {w} "
            f"--height {h}) or give a {width}x{height} image")
    if image.size != (w, h):
        image = image.resize((w, h), resample=Image.Resampling.LANCZOS)
    pixels = np.array(image).astype(np.float32) / np.float32(255.0)
    return pixels[None]


def file_record(path) -> dict:
    """{"name", "sha256"} of an image file (for the PNG's parameters)."""
    data = Path(path).read_bytes()
    return {"name": Path(path).name, "sha256": hashlib.sha256(data).hexdigest()}
