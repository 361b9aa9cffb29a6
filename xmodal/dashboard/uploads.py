"""Checks on an uploaded query image: size, type, pixel count (decompression bombs) and decodability.

The pixels come from the library's one decoder (``xmodal.data.images.open_rgb``), so an upload is searched
exactly as ``Run.search_image`` searches the same file: upright (EXIF orientation applied), 16-bit greyscale
scaled to 8 bits rather than clipped to white, transparency on white.
"""
from __future__ import annotations

import io

from PIL import Image, UnidentifiedImageError

from ..data.images import MAX_IMAGE_PIXELS, ImageError, open_rgb

MAX_UPLOAD_BYTES = 10 * 1024 * 1024  # keep in step with server.maxUploadSize in .streamlit/config.toml
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
EXTENSIONS = ["jpg", "jpeg", "png", "webp", "gif", "bmp"]


class UploadError(ValueError):
    """An upload that cannot be used as a query image; the message says why and what to do."""


def read_upload(data: bytes, name: str = "upload", max_bytes: int = MAX_UPLOAD_BYTES,
                max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode an uploaded image safely into upright 8-bit RGB (``open_rgb``'s pixels).

    Raises:
        UploadError: empty, too large, not an image, an unsupported format, too many pixels, or corrupt.
    """
    if not data:
        raise UploadError(f"{name} is empty: upload a JPEG or PNG product photo")
    if len(data) > max_bytes:
        raise UploadError(f"{name} is {len(data) / 2**20:.1f} MB; the limit is {max_bytes / 2**20:.0f} MB. "
                          "Upload a smaller photo.")
    try:
        with Image.open(io.BytesIO(data)) as im:  # the header only: format and size, before any pixel
            if im.format not in FORMATS:
                raise UploadError(f"{name} is a {im.format} file; upload one of {', '.join(FORMATS)}")
            if im.width * im.height > max_pixels:
                raise UploadError(f"{name} is {im.width}x{im.height} pixels, over the {max_pixels:,}-pixel "
                                  "limit (a guard against decompression bombs). Upload a smaller photo.")
        return open_rgb(data, max_pixels)
    except UploadError:
        raise
    except Image.DecompressionBombError as err:
        raise UploadError(f"{name} is refused as a possible decompression bomb ({err})") from err
    except ImageError as err:
        raise UploadError(f"{name} is not a readable image ({err.reason}); upload a JPEG or PNG "
                          "product photo") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise UploadError(f"{name} is not a readable image ({type(err).__name__}); upload a JPEG or PNG "
                          "product photo") from err
