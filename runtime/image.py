"""Image conversions at the model's edges: user images in, generated pixels out.

Numpy and Pillow only. It knows the vision encoder's normalisation (InternVL's ImageNet
mean/std) and the VQ decoder's [-1, 1] pixel range; it knows nothing about graphs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from runtime.errors import InputError

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
_CONVERTIBLE_MODES = {"RGB", "RGBA", "L", "LA", "P", "CMYK", "YCbCr", "1"}


def load_image(image) -> Image.Image:
    """A PIL image, a path, or an HxWx3 uint8 array -> an RGB PIL image (clear error otherwise)."""
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise InputError(f"image file not found: {path}")
        try:
            with Image.open(path) as im:
                im.load()
                image = im.copy()
        except (UnidentifiedImageError, OSError) as e:
            raise InputError(f"cannot read image {path}: not a readable image file ({e.__class__.__name__})") from e
    elif isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise InputError(f"image arrays must be HxWx3 uint8, got shape {image.shape} dtype {image.dtype}")
        image = Image.fromarray(image, "RGB")
    if not isinstance(image, Image.Image):
        raise InputError(f"an image must be a PIL image, a path or an HxWx3 uint8 array, got {type(image).__name__}")
    if image.mode not in _CONVERTIBLE_MODES:
        raise InputError(f"image mode {image.mode!r} is not supported: give an RGB, RGBA, L or palette image")
    if min(image.size) < 8:
        raise InputError(f"image of {image.size[0]}x{image.size[1]} pixels is too small (at least 8x8)")
    return image.convert("RGB")


def preprocess(image, size: int) -> np.ndarray:
    """Any accepted image -> float32 [3, size, size], resized (bicubic) and ImageNet-normalised."""
    im = load_image(image)
    if im.size != (size, size):
        im = im.resize((size, size), Image.BICUBIC)
    x = np.asarray(im, dtype=np.float32) / 255.0  # [S, S, 3]
    return ((x - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1).copy()


def to_unit_range(image, size: int) -> np.ndarray:
    """Any accepted image -> float32 [3, size, size] in [-1, 1], the VQGAN's input range."""
    im = load_image(image)
    if im.size != (size, size):
        im = im.resize((size, size), Image.BICUBIC)
    return (np.asarray(im, dtype=np.float32) / 127.5 - 1.0).transpose(2, 0, 1).copy()


def pixels_to_image(pixels: np.ndarray) -> Image.Image:
    """VQ decoder output [3, H, W] in [-1, 1] -> an RGB PIL image."""
    x = np.clip((np.asarray(pixels, dtype=np.float32) + 1.0) * 127.5, 0, 255)
    return Image.fromarray(np.rint(x).astype(np.uint8).transpose(1, 2, 0), "RGB")
