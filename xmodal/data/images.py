"""The one image decoder: every image the library reads (catalogue checks, training, search, uploads)
goes through :func:`open_rgb` (or :func:`rgb_array`, the same pixels as an array, faster for plain JPEGs),
so they all see the same 8-bit RGB pixels, upright: the EXIF orientation is applied in one place,
:func:`upright`, and thumbnails (:func:`thumbnail_jpeg`: tables, result cards, map sprites) are made from
the same decoded pixels, so no reader shows or embeds a photo sideways.

It turns what product photos arrive as into plain RGB: 16-bit and 32-bit greyscale scaled to 8 bits
(a plain ``convert("RGB")`` clips them to white), float images, transparency composited on white,
CMYK, palettes, and the EXIF orientation applied. Files that cannot be used raise :class:`ImageError`
whose ``reason`` is a short key for load reports ("image too large", "truncated image", ...).
"""
from __future__ import annotations

import io
import os
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from . import fastjpeg

# Largest image we agree to decode (pixels); guards against decompression bombs. PIL's own guard is set
# to the same value so a direct ``Image.open`` elsewhere refuses more than twice this much.
MAX_IMAGE_PIXELS = 40_000_000
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
BACKGROUND = (255, 255, 255)  # transparent pixels are composited on white, like a shop page

# Reasons, the keys a LoadReport counts skipped rows under.
EMPTY = "empty image file"
NOT_IMAGE = "not an image file"
HTML = "not an image (an HTML page)"
UNSUPPORTED = "unsupported image format"
TOO_LARGE = "image too large"
TRUNCATED = "truncated image"
CORRUPT = "corrupt image"
MISSING = "missing image"
NOT_READABLE = "image not readable (permission denied)"
IS_FOLDER = "image path is a folder"

_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM", b"II*\x00", b"MM\x00*", b"RIFF")
_UNSUPPORTED_BRANDS = {b"heic": "HEIC", b"heix": "HEIC", b"mif1": "HEIF", b"avif": "AVIF"}

Source = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO


class ImageError(ValueError):
    """An image that cannot be used. ``reason`` is a short key; the message adds the file and what to do."""

    def __init__(self, reason: str, detail: str = "", name: str = "image"):
        self.reason = reason
        super().__init__(f"{name}: {reason}" + (f" ({detail})" if detail else ""))


def _name(source: Source) -> str:
    return str(source) if isinstance(source, (str, os.PathLike)) else "image"


def _head(source: Source, n: int = 512) -> bytes:
    """The first ``n`` bytes of ``source`` (to say what a file that PIL cannot identify is)."""
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            return bytes(source[:n])
        if isinstance(source, (str, os.PathLike)):
            with open(source, "rb") as f:
                return f.read(n)
        source.seek(0)
        return source.read(n)
    except (OSError, ValueError):
        return b""


def _unidentified_reason(head: bytes) -> tuple[str, str]:
    """(reason, advice) for bytes that no PIL plugin recognises."""
    if not head:
        return EMPTY, "the file has 0 bytes: download or export it again"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or b"<html" in text:
        return HTML, "probably an error page saved instead of the photo: download the image again"
    if text.startswith((b"<svg", b"<?xml")):
        return UNSUPPORTED, "SVG is a vector format: export it as PNG or JPEG"
    brand = head[8:12] if head[4:8] == b"ftyp" else b""
    if brand in _UNSUPPORTED_BRANDS:
        return UNSUPPORTED, f"{_UNSUPPORTED_BRANDS[brand]} cannot be decoded here: convert it to JPEG"
    if head.startswith(_SIGNATURES):
        return CORRUPT, "the header is damaged: export the image again"
    return NOT_IMAGE, "not a JPEG, PNG, WebP, GIF, BMP or TIFF file"


def _to_uint8(a: np.ndarray, mode: str) -> np.ndarray:
    """8-bit values of a high-bit-depth single-channel array, scaled by its bit depth, not clipped."""
    a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if mode.startswith("I;16"):
        scale = 65535.0  # full 16-bit range
    elif mode == "F" and lo >= 0.0 and hi <= 1.0:
        scale = 1.0  # float images in [0, 1]
    elif lo >= 0.0 and hi <= 255.0:
        scale = 255.0  # 8-bit values stored in a wider type
    elif mode != "F" and lo >= 0.0 and hi <= 65535.0:
        scale = 65535.0  # 16-bit values in a 32-bit integer image (older PNG and TIFF readers)
    else:  # arbitrary range: stretch it
        a, scale = a - lo, max(hi - lo, 1e-12)
    return np.clip(np.rint(a * (255.0 / scale)), 0, 255).astype(np.uint8)


def to_rgb(im: Image.Image) -> Image.Image:
    """An 8-bit RGB copy of a loaded image of any mode (see the module docstring)."""
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im
    if mode.startswith("I") or mode == "F":  # I, I;16, I;16B, I;16L, I;16N, F: one high-bit-depth channel
        grey = Image.fromarray(_to_uint8(np.asarray(im), mode), "L")
        return grey.convert("RGB")
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        out = Image.new("RGB", rgba.size, BACKGROUND)
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return im.convert("RGB")  # L, 1, P, CMYK, YCbCr, HSV


_ORIENTATION = 0x0112  # EXIF tag: how the stored pixels are turned for display (1: as stored)
_SIDEWAYS = (5, 6, 7, 8)  # orientations that swap width and height


def orientation(im: Image.Image) -> int:
    """The EXIF orientation of an opened image (1-8; 1, shown as stored, when absent or unreadable)."""
    try:
        value = im.getexif().get(_ORIENTATION, 1)
    except Exception:  # a damaged EXIF block: the image is kept as stored
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def upright(im: Image.Image) -> Image.Image:
    """``im`` (loaded) turned, in place, the way its EXIF orientation says it is shown, and returned; the one
    place the orientation is applied (``PIL.ImageOps.exif_transpose``). Unchanged when it has none or
    the EXIF block is damaged."""
    try:
        ImageOps.exif_transpose(im, in_place=True)
    except Exception:  # a damaged EXIF block must not lose an image that decodes: keep it as stored
        pass
    return im


def open_rgb(source: Source, max_pixels: int | None = None, draft: tuple[int, int] | None = None) -> Image.Image:
    """Decode an image into 8-bit RGB, upright, transparency on white.

    Args:
        source: a path, the file's bytes, or a binary file object.
        max_pixels: refuse larger images (default ``MAX_IMAGE_PIXELS``), checked from the header
            before any pixel is decoded.
        draft: (width, height) of a thumbnail to be made: a JPEG is then decoded at the smallest of
            libjpeg's scales (1/2, 1/4, 1/8) that still covers this size upright. None: full size.

    Raises:
        ImageError: missing, empty, not an image, unsupported, too large, truncated or corrupt;
            ``reason`` says which.
    """
    return _decode(source, max_pixels, keep=True, draft=draft)


def thumbnail_jpeg(source: Source, size: tuple[int, int], quality: int = 85) -> bytes:
    """An upright JPEG of the image fitted within ``size`` (width, height), never enlarged: what the
    dashboard shows for a product photo (its bytes, so no path or URL ever reaches the browser).

    Raises:
        ImageError: as :func:`open_rgb`.
    """
    im = open_rgb(source, draft=size)
    im.thumbnail((max(1, int(size[0])), max(1, int(size[1]))), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


_FAST_MAX_BYTES = 32 << 20  # larger files are left to Pillow, which reads a file as it decodes it


def rgb_array(source: Source, max_pixels: int | None = None) -> np.ndarray:
    """The pixels of ``open_rgb(source)`` as a writable array ``[H, W, 3]`` uint8, decoded faster where it can.

    Plain JPEGs go through :mod:`xmodal.data.fastjpeg` (simplejpeg, the same pixels in half the time);
    everything else, and every file it declines, through :func:`open_rgb`, whose ``ImageError`` it raises.
    """
    limit = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    data, name = source, _name(source)
    if isinstance(source, (str, os.PathLike)):
        try:
            with open(source, "rb") as f:
                if f.read(3) != b"\xff\xd8\xff" or os.fstat(f.fileno()).st_size > _FAST_MAX_BYTES:
                    data = None  # not a JPEG, or too big to read whole: Pillow reads what it needs
                else:
                    data = b"\xff\xd8\xff" + f.read()
        except OSError:  # missing, unreadable, a folder: open_rgb names it
            data = None
        if data is None:
            return np.array(open_rgb(source, max_pixels))
    if isinstance(data, (bytes, bytearray, memoryview)):
        pixels = fastjpeg.decode(bytes(data), limit, reference=lambda b: np.asarray(open_rgb(b)))
        if pixels is not None:
            return pixels
        return np.array(_decode(data, max_pixels, keep=True, name=name))
    return np.array(open_rgb(source, max_pixels))


def check_image(source: Source, max_pixels: int | None = None) -> str | None:
    """None if ``source`` decodes with :func:`open_rgb`, else the reason (an ``ImageError.reason``)."""
    try:
        _decode(source, max_pixels, keep=False)
    except ImageError as err:
        return err.reason
    return None


def _decode(source: Source, max_pixels: int | None, keep: bool, name: str | None = None,
            draft: tuple[int, int] | None = None) -> Image.Image | None:
    limit = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    name = name or _name(source)
    fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
    opened = False  # a header that cannot be parsed is corrupt; pixel data that ends early is truncated
    try:
        with Image.open(fp) as im:
            opened = True
            if im.width * im.height > limit:
                raise ImageError(TOO_LARGE, f"{im.width}x{im.height} = {im.width * im.height:,} pixels, over "
                                 f"the {limit:,}-pixel limit against decompression bombs: downscale it", name)
            if draft is not None and im.format == "JPEG":  # the box as stored: sideways photos swap it
                im.draft("RGB", tuple(draft[::-1]) if orientation(im) in _SIDEWAYS else tuple(draft))
            im.load()  # decodes every pixel: truncated or corrupt data fails here
            rgb = to_rgb(upright(im))
            if not keep:
                return None
            return rgb if rgb is not im else im.copy()  # closing the file invalidates ``im`` itself
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError(TOO_LARGE, f"{err}; downscale it", name) from err
    except UnidentifiedImageError as err:
        reason, advice = _unidentified_reason(_head(source))
        raise ImageError(reason, advice, name) from err
    except FileNotFoundError as err:
        raise ImageError(MISSING, "no such file", name) from err
    except PermissionError as err:
        raise ImageError(NOT_READABLE, "make it readable, e.g. chmod a+r", name) from err
    except IsADirectoryError as err:
        raise ImageError(IS_FOLDER, "the csv must name an image file", name) from err
    except MemoryError as err:
        raise ImageError(TOO_LARGE, "out of memory while decoding", name) from err
    except (OSError, SyntaxError, ValueError, TypeError, IndexError, EOFError) as err:
        if opened and "truncat" in str(err).lower():
            raise ImageError(TRUNCATED, "the file ends early: download or export it again", name) from err
        if "too large" in str(err).lower():  # e.g. a PNG text chunk that decompresses beyond PIL's limit
            raise ImageError(TOO_LARGE, str(err)[:200], name) from err
        if isinstance(err, ValueError) and "conversion" in str(err):
            raise ImageError(UNSUPPORTED, f"{err}: save it as RGB JPEG or PNG", name) from err
        raise ImageError(CORRUPT, f"{type(err).__name__}: {err}"[:200], name) from err


__all__ = ["MAX_IMAGE_PIXELS", "ImageError", "open_rgb", "rgb_array", "to_rgb", "check_image", "orientation",
           "upright", "thumbnail_jpeg"]
