"""The fast path of the one image decoder: plain JPEGs through simplejpeg, with exactly Pillow's pixels.

Product photos are nearly all YCbCr JPEGs. simplejpeg (libjpeg-turbo, the GIL released while it decodes)
decodes the demo's and Myntra's 150x200 photos in 0.18 ms against Pillow's 0.35 ms, and two threads decode
side by side, where Pillow's do not. Both libraries decode with libjpeg-turbo's accurate integer IDCT and
fancy upsampling, so the pixels are the same: checked bit for bit on 1,200 demo and Myntra photos, and on
the first photo each process decodes (a Pillow built on another libjpeg turns the fast path off, said once).

``decode`` only takes what it can decode as Pillow would: a YCbCr JPEG, within the pixel limit, without an
EXIF orientation to apply, that libjpeg decodes without a warning (``strict``). Anything else returns None
and goes to Pillow (``xmodal.data.images.open_rgb``), which handles the rest and names the faults. The caller
passes Pillow's decoder in (``reference``) for the first-decode comparison, so this module stays below
``images`` and never imports it.
"""
from __future__ import annotations

import io
import logging
import threading
from typing import Callable

import numpy as np

try:
    import simplejpeg
except ImportError:  # optional: Pillow decodes everything without it
    simplejpeg = None

log = logging.getLogger(__name__)

_ORIENTATION = 0x0112  # EXIF tag
_checked = threading.Event()  # the first decode of the process was compared with Pillow's
_checking = threading.Lock()  # other threads wait for that comparison
_enabled = simplejpeg is not None


def available() -> bool:
    """Whether the fast path is on (simplejpeg imports and agreed with Pillow so far)."""
    return _enabled


def _has_exif(data: bytes) -> bool:
    """Whether an EXIF block (APP1 "Exif") precedes the scan; True when the markers cannot be read."""
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return True  # not a marker where one must be: let Pillow judge the file
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0xDA:  # start of scan: every APPn segment comes before it
            return False
        if marker == 0xE1 and data[i + 4:i + 10] == b"Exif\x00\x00":
            return True
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return True


def _upright(data: bytes) -> bool:
    """Whether the JPEG is shown as stored: no EXIF, or an EXIF orientation of 1 (or none)."""
    if not _has_exif(data):
        return True
    from PIL import Image
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.getexif().get(_ORIENTATION, 1) == 1
    except Exception:  # a damaged header: Pillow's own path says what is wrong
        return False


def decode(data: bytes, max_pixels: int, reference: Callable[[bytes], np.ndarray]) -> np.ndarray | None:
    """RGB pixels ``[H, W, 3]`` uint8 of a plain JPEG, the same as Pillow's, or None for Pillow to decode.

    Args:
        data: the file's bytes.
        max_pixels: larger images are left to Pillow, which names the fault.
        reference: Pillow's decoder (bytes -> ``[H, W, 3]`` uint8), run once per process on the first photo
            decoded here; if the pixels differ the fast path turns itself off.
    """
    global _enabled
    if not _enabled or not data.startswith(b"\xff\xd8\xff"):
        return None
    try:
        height, width, colour, _ = simplejpeg.decode_jpeg_header(data)
        if colour != "YCbCr" or height * width > max_pixels or not _upright(data):
            return None
        pixels = simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)  # a libjpeg warning raises
    except Exception:  # damaged, truncated or unusual: Pillow decodes it or names the fault
        return None
    if not _checked.is_set():
        with _checking:
            if not _checked.is_set():
                if not np.array_equal(pixels, np.asarray(reference(data))):
                    _enabled = False
                    log.warning("simplejpeg decodes JPEGs differently from this Pillow (another libjpeg?): "
                                "decoding with Pillow only, about twice as slow")
                _checked.set()
    return pixels if _enabled else None


__all__ = ["available", "decode"]
