"""Image conversions at the model's edges: user images in, generated pixels out.

Numpy and Pillow only. It knows the vision encoder's normalisation (InternVL's ImageNet
mean/std) and the VQ decoder's [-1, 1] pixel range; it knows nothing about graphs.

Anything that is an image is taken and made RGB: 16-bit and 32-bit grayscale (scaled, not
clipped), palette, CMYK, YCbCr, LAB, HSV, alpha (composited over white, the background the
models are trained on), EXIF-rotated photos, the first frame of an animation, and any size
down to 1x1 (resized like any other). What is refused, as one InputError sentence, is what
cannot be an image: a missing or unreadable file, bytes no raster reader here recognises
(vector and document formats such as EPS are not opened at all: Pillow would run
Ghostscript), a file whose header claims more pixels than Pillow's decompression-bomb
limit, an array that is not HxW, HxWx1, HxWx3 or HxWx4 of uint8 / uint16, or no pixels.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from runtime.errors import InputError

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

# Raster formats read from files and bytes: Pillow's other openers include EPS (Ghostscript)
# and scientific/stub formats no user means as a picture.
RASTER_FORMATS = ("PNG", "JPEG", "JPEG2000", "GIF", "BMP", "DIB", "TIFF", "WEBP", "AVIF", "PPM", "TGA", "ICO",
                  "QOI", "PCX", "SGI")
WHITE = (255, 255, 255)
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


def load_image(image) -> Image.Image:
    """A PIL image, a path, bytes / a binary file object, or a uint8/uint16 array (HxW, HxWx1,
    HxWx3, HxWx4) -> an RGB PIL image; InputError (one sentence) for what is not an image."""
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise InputError(f"image file not found: {path}")
        image = _open(path, str(path))
    elif isinstance(image, (bytes, bytearray, memoryview)):
        image = _open(io.BytesIO(bytes(image)), "given as bytes")
    elif hasattr(image, "read") and not isinstance(image, Image.Image):
        image = _open(image, "given as a file object")
    elif isinstance(image, np.ndarray):
        image = _from_array(image)
    if not isinstance(image, Image.Image):
        raise InputError(f"an image must be a PIL image, a file path, bytes or an HxWx3 uint8 array, "
                         f"got {type(image).__name__}")
    if image.width < 1 or image.height < 1:
        raise InputError(f"the image has no pixels ({image.width}x{image.height})")
    try:
        return to_rgb(image)
    except (OSError, ValueError, SyntaxError, EOFError) as e:  # a lazily-loaded PIL image that is truncated
        raise InputError(f"cannot convert the {image.mode} image to RGB ({_reason(e)})") from e


def _open(source, name: str) -> Image.Image:
    """Decode a file or byte stream fully (so errors surface here), the first frame only."""
    try:
        with warnings.catch_warnings():
            # between Pillow's limit and twice it Pillow only warns: refuse those as well
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source, formats=RASTER_FORMATS) as im:
                im.load()
                turned = ImageOps.exif_transpose(im) if _has_orientation(im) else None
                return turned if turned is not None else im.copy()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        limit = Image.MAX_IMAGE_PIXELS or 0
        raise InputError(f"image {name} claims {_claimed(e)} pixels, more than the {limit // 10**6} million an "
                         f"input image may have (a decompression bomb or a mislabeled file): downscale it") from None
    except UnidentifiedImageError:
        raise InputError(f"image {name} is not a picture in a format read here "
                         f"({', '.join(RASTER_FORMATS)})") from None
    except MemoryError:
        raise InputError(f"image {name} is too large to decode in the memory available") from None
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError, ZeroDivisionError) as e:
        # Pillow's readers raise these for truncated or corrupt files
        raise InputError(f"image {name} cannot be read: a damaged or truncated file ({_reason(e)})") from None


def _has_orientation(im: Image.Image) -> bool:
    try:
        return im.getexif().get(0x0112, 1) != 1  # EXIF Orientation: 1 = as stored
    except Exception:  # noqa: BLE001 - a damaged EXIF block is not a reason to refuse the pixels
        return False


def _claimed(e: Exception) -> str:
    """The pixel count in Pillow's bomb message ('Image size (N pixels) exceeds ...')."""
    import re

    found = re.search(r"\((\d+) pixels\)", str(e))
    return f"{int(found.group(1)):,}" if found else "too many"


def _reason(e: Exception) -> str:
    text = " ".join(str(e).split())[:100]
    return f"{e.__class__.__name__}: {text}" if text else e.__class__.__name__


def _from_array(a: np.ndarray) -> Image.Image:
    """uint8 / uint16 HxW, HxWx1, HxWx3 or HxWx4 -> a PIL image (uint16 scaled to 8 bits)."""
    shape_ok = a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (1, 3, 4))
    if not shape_ok or a.dtype not in (np.uint8, np.uint16) or a.size == 0:
        raise InputError(f"image arrays must be HxW, HxWx1, HxWx3 or HxWx4 of uint8 (or uint16), "
                         f"got shape {a.shape} dtype {a.dtype}")
    if a.dtype == np.uint16:
        a = _to_8bit(a.astype(np.float32), 65535.0)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    return Image.fromarray(np.ascontiguousarray(a))  # 2-D -> L, 3 channels -> RGB, 4 -> RGBA


def _to_8bit(x: np.ndarray, full: float) -> np.ndarray:
    return np.clip(np.rint(x * (255.0 / full)), 0, 255).astype(np.uint8)


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB: wide grayscale scaled to 8 bits, alpha composited over white, LAB
    through a colour transform; the rest by Pillow's own conversion."""
    if im.mode == "RGB":
        return im
    if im.mode.startswith("I;16") or im.mode == "I":
        # 16-bit PNG / TIFF grayscale: Pillow's convert() clips at 255 (all white); scale instead
        x = np.asarray(im).astype(np.float32)
        full = 65535.0 if im.mode.startswith("I;16") or x.max(initial=0) > 255 else 255.0
        return Image.fromarray(_to_8bit(x, full), "L").convert("RGB")
    if im.mode == "F":  # float grayscale: [0, 1] if it fits there, else 8-bit values
        x = np.nan_to_num(np.asarray(im, dtype=np.float32))
        full = 1.0 if x.max(initial=0) <= 1.0 else 255.0
        return Image.fromarray(_to_8bit(x, full), "L").convert("RGB")
    if im.mode == "LAB":
        return _lab_to_rgb(im)
    if im.mode in _ALPHA_MODES or (im.mode in ("P", "L", "RGB") and "transparency" in im.info):
        # La (premultiplied) has no direct path to RGBA in Pillow
        rgba = (im.convert("LA") if im.mode == "La" else im).convert("RGBA")
        background = Image.new("RGBA", rgba.size, WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def _lab_to_rgb(im: Image.Image) -> Image.Image:
    try:
        from PIL import ImageCms

        transform = ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"),
                                            "LAB", "RGB")
        return transform.apply(im)
    except (ImportError, OSError, ValueError) as e:  # Pillow built without littlecms
        raise InputError(f"cannot convert a LAB image to RGB here ({_reason(e)}): save it as RGB") from e


def preprocess(image, size: int) -> np.ndarray:
    """Any accepted image -> float32 [3, size, size], resized (bicubic) and ImageNet-normalised."""
    im = load_image(image)
    if im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.BICUBIC)
    x = np.asarray(im, dtype=np.float32) / 255.0  # [S, S, 3]
    return ((x - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1).copy()


def to_unit_range(image, size: int) -> np.ndarray:
    """Any accepted image -> float32 [3, size, size] in [-1, 1], the VQGAN's input range."""
    im = load_image(image)
    if im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.BICUBIC)
    return (np.asarray(im, dtype=np.float32) / 127.5 - 1.0).transpose(2, 0, 1).copy()


def pixels_to_image(pixels: np.ndarray) -> Image.Image:
    """VQ decoder output [3, H, W] in [-1, 1] -> an RGB PIL image."""
    x = np.clip((np.asarray(pixels, dtype=np.float32) + 1.0) * 127.5, 0, 255)
    return Image.fromarray(np.rint(x).astype(np.uint8).transpose(1, 2, 0), "RGB")
