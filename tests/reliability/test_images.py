"""Corpus: odd but valid images are converted like any other; what cannot be an image is one
InputError line.

Valid: 16-bit grayscale PNG and TIFF, float TIFF, palette (with and without transparency),
alpha, bilevel, CMYK and grayscale JPEG, EXIF-rotated JPEG, an animated GIF, 1x1 and 1xN
images, BMP / PPM / WebP, arrays of uint8 and uint16, bytes, file objects, LAB / HSV / I;16 PIL
images. Refused: a PNG whose header claims 20000x20000 (or past Pillow's warning limit), a
truncated, empty or text file, an EPS file (never handed to Ghostscript), a folder, a missing
path, arrays and objects that are not images. Each case runs through runtime.image and through
the API (`ArmorPipeline.chat`); a few through `armor-run` (exit 2 and one stderr line, or 0).
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, features

from runtime import ArmorPipeline, InputError
from runtime.image import load_image, preprocess

SIZE = 64


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims `width`x`height` with almost no pixel data behind it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def gradient(w: int = 48, h: int = 40) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) % 256], -1).astype(np.uint8)


def encoded(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def truncated_png() -> bytes:
    """Random pixels (incompressible) cut in the middle of their data."""
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = encoded(Image.fromarray(noise), "PNG")
    return data[: len(data) // 2]


def exif_rotated_jpeg() -> bytes:
    """A 48x40 JPEG whose EXIF says 'rotate 90' (orientation 6): it must load as 40x48."""
    im = Image.fromarray(gradient())
    exif = Image.Exif()
    exif[0x0112] = 6
    return encoded(im, "JPEG", exif=exif.tobytes())


def animated_gif() -> bytes:
    frames = [Image.fromarray(gradient()).convert("P"), Image.new("P", (48, 40), 3)]
    return encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


def palette_transparent() -> bytes:
    im = Image.fromarray(gradient()).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return encoded(im, "PNG", transparency=0)


# name -> the file's bytes; each must load, convert and preprocess
VALID_FILES = {
    "gray16.png": lambda: encoded(Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)), "PNG"),
    "gray16.tif": lambda: encoded(Image.fromarray((np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)), "TIFF"),
    "float.tif": lambda: encoded(Image.fromarray(np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16)), "TIFF"),
    "one_by_one.png": lambda: encoded(Image.new("RGB", (1, 1), (200, 30, 30)), "PNG"),
    "one_by_300.png": lambda: encoded(Image.new("RGB", (1, 300), (0, 0, 255)), "PNG"),
    "300_by_1.png": lambda: encoded(Image.new("L", (300, 1), 128), "PNG"),
    "palette.png": lambda: encoded(Image.fromarray(gradient()).convert("P"), "PNG"),
    "palette_transparent.png": palette_transparent,
    "rgba.png": lambda: encoded(Image.fromarray(np.dstack([gradient(), np.full((40, 48), 100, np.uint8)])), "PNG"),
    "la.png": lambda: encoded(Image.new("LA", (20, 20), (50, 128)), "PNG"),
    "bilevel.png": lambda: encoded(Image.new("1", (30, 30), 1), "PNG"),
    "cmyk.jpg": lambda: encoded(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG"),
    "gray.jpg": lambda: encoded(Image.fromarray(gradient()).convert("L"), "JPEG"),
    "exif_rotated.jpg": exif_rotated_jpeg,
    "animated.gif": animated_gif,
    "image.bmp": lambda: encoded(Image.fromarray(gradient()), "BMP"),
    "image.ppm": lambda: encoded(Image.fromarray(gradient()), "PPM"),
    "image.webp": lambda: encoded(Image.fromarray(gradient()), "WEBP"),
}

# in-memory inputs the API takes
VALID_OBJECTS = {
    "uint8-rgb": lambda: gradient(),
    "uint8-gray": lambda: gradient()[:, :, 0],
    "uint8-one-channel": lambda: gradient()[:, :, :1],
    "uint8-rgba": lambda: np.dstack([gradient(), np.full((40, 48), 255, np.uint8)]),
    "uint16-gray": lambda: (np.arange(40 * 48).reshape(40, 48) * 30).astype(np.uint16),
    "non-contiguous": lambda: gradient()[::2, ::-1],
    "bytes": lambda: encoded(Image.fromarray(gradient()), "PNG"),
    "file-object": lambda: io.BytesIO(encoded(Image.fromarray(gradient()), "PNG")),
    "pil-lab": lambda: Image.new("LAB", (8, 8), (128, 128, 128)),
    "pil-hsv": lambda: Image.new("HSV", (8, 8), (0, 255, 255)),
    "pil-i16": lambda: Image.fromarray((np.arange(64).reshape(8, 8) * 1000).astype(np.uint16)),
    "pil-int32": lambda: Image.new("I", (8, 8), 40000),
    "pil-lazy": lambda: Image.open(io.BytesIO(encoded(Image.fromarray(gradient()), "PNG"))),
    "pil-1x1": lambda: Image.new("RGB", (1, 1), (0, 255, 0)),
}

EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke\nshowpage\n"

# name -> (bytes of the file, or a marker for a folder / a missing path; message regex)
REFUSED_FILES = {
    "bomb_20000.png": (lambda: png_claiming(20000, 20000), r"claims 400,000,000 pixels, more than the \d+ million"),
    "bomb_10000.png": (lambda: png_claiming(10000, 10000), r"claims 100,000,000 pixels"),
    "truncated.png": (lambda: truncated_png(), r"damaged or truncated file"),
    "empty.png": (lambda: b"", r"is not a picture in a format read here"),
    "text.png": (lambda: b"this is not an image\n" * 10, r"is not a picture in a format read here"),
    "drawing.eps": (lambda: EPS, r"is not a picture in a format read here"),
    "a_folder.png": ("folder", r"image file not found"),
    "missing.png": ("missing", r"image file not found"),
}

REFUSED_OBJECTS = {
    "float-array": (lambda: np.zeros((8, 8, 3), np.float32), r"image arrays must be HxW, HxWx1, HxWx3 or HxWx4"),
    "two-channels": (lambda: np.zeros((8, 8, 2), np.uint8), r"got shape \(8, 8, 2\)"),
    "empty-array": (lambda: np.zeros((0, 8, 3), np.uint8), r"got shape \(0, 8, 3\)"),
    "4d-array": (lambda: np.zeros((1, 8, 8, 3), np.uint8), r"got shape \(1, 8, 8, 3\)"),
    "int8-array": (lambda: np.zeros((8, 8, 3), np.int8), r"dtype int8"),
    "pil-zero-size": (lambda: Image.new("RGB", (0, 0)), r"the image has no pixels"),
    "garbage-bytes": (lambda: b"\x00\x01garbage", r"given as bytes is not a picture"),
    "a-number": (lambda: 3, r"an image must be a PIL image, a file path, bytes"),
    "none": (lambda: None, r"got NoneType"),
    "a-dict": (lambda: {"image": "x.png"}, r"got dict"),
    "a-list": (lambda: [[0, 0, 0]], r"got list"),
}


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    for name, make in VALID_FILES.items():
        if name.endswith(".webp") and not features.check("webp"):
            continue
        (d / name).write_bytes(make())
    for name, (make, _) in REFUSED_FILES.items():
        if make == "folder":
            (d / name).mkdir()
        elif make != "missing":
            (d / name).write_bytes(make())
    return d


@pytest.fixture(scope="module")
def pipe(random_bundle):
    with ArmorPipeline.load(random_bundle) as p:
        yield p


def ask(pipe, image):
    return pipe.chat([{"role": "user", "content": [{"type": "image", "image": image},
                                                    {"type": "text", "text": "what is it?"}]}], max_new_tokens=1)


def check_pixels(x: np.ndarray) -> None:
    assert x.shape == (3, SIZE, SIZE) and x.dtype == np.float32 and np.isfinite(x).all()


# --- valid --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(VALID_FILES))
def test_valid_image_files_convert_and_answer(image_dir, pipe, name):
    path = image_dir / name
    if not path.exists():
        pytest.skip(f"this Pillow cannot write {path.suffix}")
    im = load_image(path)
    assert im.mode == "RGB" and min(im.size) >= 1
    check_pixels(preprocess(path, SIZE))
    assert isinstance(ask(pipe, str(path)), list)


@pytest.mark.parametrize("name", list(VALID_OBJECTS))
def test_valid_in_memory_images_convert_and_answer(pipe, name):
    check_pixels(preprocess(VALID_OBJECTS[name](), SIZE))
    assert isinstance(ask(pipe, VALID_OBJECTS[name]()), list)


def test_sixteen_bit_gray_is_scaled_not_clipped(image_dir):
    """Pillow's own convert() clips 16-bit values at 255 (a white picture); ours scales."""
    x = np.asarray(load_image(image_dir / "gray16.png"), dtype=np.float32)
    assert 100 < x.mean() < 160 and x.min() < 10 and x.max() > 245


def test_alpha_is_composited_over_white():
    im = load_image(Image.new("RGBA", (4, 4), (0, 0, 0, 0)))
    assert np.asarray(im).min() == 255


def test_exif_orientation_is_applied(image_dir):
    assert load_image(image_dir / "exif_rotated.jpg").size == (40, 48)


def test_one_pixel_keeps_its_colour(image_dir):
    im = load_image(image_dir / "one_by_one.png").resize((SIZE, SIZE), Image.BICUBIC)
    assert tuple(np.asarray(im)[SIZE // 2, SIZE // 2]) == (200, 30, 30)


# --- refused ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(REFUSED_FILES))
def test_what_is_not_an_image_file_is_one_input_error(image_dir, pipe, name):
    path, message = image_dir / name, REFUSED_FILES[name][1]
    for call in (lambda: load_image(path), lambda: preprocess(str(path), SIZE), lambda: ask(pipe, str(path))):
        with pytest.raises(InputError, match=message) as e:
            call()
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", list(REFUSED_OBJECTS))
def test_what_is_not_an_image_object_is_one_input_error(pipe, name):
    make, message = REFUSED_OBJECTS[name]
    for call in (lambda: load_image(make()), lambda: ask(pipe, make())):
        with pytest.raises(InputError, match=message) as e:
            call()
        assert "\n" not in str(e.value)


def test_eps_is_never_opened(image_dir, monkeypatch):
    """An EPS file would run Ghostscript in Pillow's EPS reader: it is not even tried."""
    from PIL import EpsImagePlugin

    def refuse(*a, **k):
        raise AssertionError("Ghostscript was called")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", refuse)
    with pytest.raises(InputError):
        load_image(image_dir / "drawing.eps")


# --- through armor-run ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name, code", [("bomb_20000.png", 2), ("text.png", 2), ("truncated.png", 2),
                                        ("gray16.png", 0), ("one_by_one.png", 0)])
def test_cli_images(random_bundle, image_dir, tmp_path, capsys, name, code):
    from runtime.cli import main

    got = main([str(random_bundle), "--thread-pool", "session", "--prompt", "what is it?", "--image", str(image_dir / name),
                "--max-new-tokens", "1", "--out", str(tmp_path / "out")])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert got == code, err
    if code:
        assert len(err) == 1 and err[0].startswith("armor-run: error: image "), err
    else:
        assert not any("error" in line for line in err), err


def test_cli_image_that_is_a_folder(random_bundle, image_dir, tmp_path, capsys):
    from runtime.cli import main

    assert main([str(random_bundle), "--thread-pool", "session", "--prompt", "x", "--image", str(image_dir / "a_folder.png"),
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "image file not found" in err[0]
