"""Bad images: 16-bit, float, transparent, CMYK and rotated photos decode to the right RGB; decompression bombs are
too large, not corrupt; every damaged, truncated, unreadable or misnamed image is skipped with its own reason and
random damage never raises; each photo's check is remembered by its bytes."""
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from catalogue_kit import folder
from tests.conftest import damaged
from xmodal.data import check_image, load_catalogue, open_rgb
from xmodal.data import images as images_mod


# --- images ----------------------------------------------------------------------------------------------

def png_bytes(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG", **kw)
    return buf.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels and holds none (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


GRADIENT = np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16)  # every 16-bit level


@pytest.mark.parametrize("make", [
    lambda: png_bytes(Image.fromarray(GRADIENT)),  # a 16-bit greyscale PNG (opens as I;16)
    lambda: Image.fromarray(GRADIENT.astype(">u2")),  # I;16B
    lambda: Image.fromarray(GRADIENT.astype(np.int32)),  # I: 16-bit values in a 32-bit image
], ids=["png-I;16", "I;16B", "I"])
def test_16bit_greyscale_is_scaled_not_clipped_to_white(make):
    src = make()
    im = open_rgb(src) if isinstance(src, bytes) else images_mod.to_rgb(src)
    a = np.asarray(im)
    assert im.mode == "RGB" and a.shape == (48, 64, 3)
    assert np.abs(a[..., 0].astype(int) - np.rint(GRADIENT / 257.0)).max() <= 1
    assert (a == 255).mean() < 0.01  # was 99.6 % white


def test_float_and_8bit_in_wide_modes():
    ramp = np.linspace(0, 1, 100, dtype=np.float32).reshape(10, 10)
    assert np.asarray(images_mod.to_rgb(Image.fromarray(ramp, "F")))[..., 0].max() == 255
    assert np.asarray(images_mod.to_rgb(Image.fromarray(ramp, "F")))[0, 0, 0] == 0
    wide = Image.fromarray((ramp * 200).astype(np.int32))  # 8-bit values stored in mode I
    assert np.asarray(images_mod.to_rgb(wide))[..., 0].max() == 200


@pytest.mark.parametrize("make", [
    lambda: Image.new("RGBA", (8, 8), (255, 0, 0, 0)),
    lambda: Image.new("LA", (8, 8), (0, 0)),
    lambda: Image.open(io.BytesIO(png_bytes(Image.new("P", (8, 8), 0), transparency=0))),
], ids=["RGBA", "LA", "P-transparency"])
def test_transparency_is_composited_on_white(make):
    src = make()
    a = np.asarray(open_rgb(png_bytes(src)))
    assert (a == 255).all()


def test_half_transparent_red_is_pink_on_white():
    a = np.asarray(open_rgb(png_bytes(Image.new("RGBA", (4, 4), (255, 0, 0, 128)))))
    assert tuple(a[0, 0]) == (255, 127, 127) or tuple(a[0, 0]) == (255, 128, 128)


def test_cmyk_and_exif_orientation(tmp_path):
    buf = io.BytesIO()
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(buf, "JPEG", quality=95)
    r, g, b = np.asarray(open_rgb(buf.getvalue())).reshape(-1, 3).mean(0)
    assert r > 230 and g < 30 and b < 30  # red
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.new("RGB", (30, 40), "white").save(tmp_path / "rot.jpg", exif=exif)
    assert open_rgb(tmp_path / "rot.jpg").size == (40, 30)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # PIL's own warning, 1x-2x the limit
def test_decompression_bombs_are_too_large_not_corrupt(monkeypatch):
    with pytest.raises(images_mod.ImageError, match="image too large") as err:
        open_rgb(png_header(100_000, 100_000))  # 250x the limit: PIL refuses it at open
    assert err.value.reason == "image too large"
    assert check_image(png_header(7_000, 7_000)) == "image too large"  # between 1x and 2x the limit
    small = png_bytes(Image.new("RGB", (40, 40)))
    assert check_image(small) is None
    monkeypatch.setattr(images_mod, "MAX_IMAGE_PIXELS", 1_000)
    assert check_image(small) == "image too large"
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # 1,600 pixels > 2x: DecompressionBombError at open
    assert check_image(small, max_pixels=10**9) == "image too large"


def test_every_bad_image_gets_its_own_reason_in_the_report(tmp_path):
    root = tmp_path / "cat"
    (root / "images").mkdir(parents=True)
    good = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good, "JPEG")
    files = {
        "good.jpg": good.getvalue(),
        "grey16.png": png_bytes(Image.fromarray(GRADIENT)),
        "empty.jpg": b"",
        "truncated.jpg": good.getvalue()[: len(good.getvalue()) // 2],
        "text.jpg": b"this is a caption, not a picture\n",
        "page.jpg": b"<!DOCTYPE html>\n<html><body>404 Not Found</body></html>",
        "bomb.png": png_header(100_000, 100_000),
        "header.jpg": b"\xff\xd8\xff\xe0 this is not a jpeg",
    }
    for name, data in files.items():
        (root / "images" / name).write_bytes(data)
    (root / "images" / "dir.jpg").mkdir()
    names = [*files, "dir.jpg", "gone.jpg"]
    (root / "captions.csv").write_text("image,caption\n" + "".join(f"images/{n},Item {n}\n" for n in names))
    cat = load_catalogue(root)
    assert cat.images == ["images/good.jpg", "images/grey16.png"]
    assert cat.report.skipped == {"empty image file": 1, "truncated image": 1, "not an image file": 1,
                                  "not an image (an HTML page)": 1, "image too large": 1, "corrupt image": 1,
                                  "image path is a folder": 1, "missing image": 1}
    assert (np.asarray(cat.open_image(1)) == 255).mean() < 0.01  # the 16-bit PNG, not white

    from xmodal.image.backbones import ImageFiles
    pixels = ImageFiles([cat.image_path(1)], lambda im: np.asarray(im))[0]
    assert pixels.shape == (48, 64, 3) and (pixels == 255).mean() < 0.01


def test_unreadable_image_is_its_own_reason(tmp_path, monkeypatch):
    root = folder(tmp_path, "image,caption\nimages/0.jpg,Red Shirt\nimages/1.jpg,Blue Jeans\n")
    real = Path.read_bytes

    def denied(self):
        if self.name == "1.jpg":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)
    monkeypatch.setattr(Path, "read_bytes", denied)
    rep = load_catalogue(root).report
    assert rep.skipped == {"image not readable (permission denied)": 1}


@pytest.mark.filterwarnings("ignore::UserWarning")  # PIL warns about damaged TIFF tags
def test_damaged_image_bytes_never_raise():
    rng = np.random.default_rng(1)
    sources = []
    for fmt in ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(buf, fmt)
        sources.append(buf.getvalue())
    reasons = set()
    for src in sources:
        for k in range(40):
            reasons.add(check_image(damaged(src, rng, k, width=16)))  # a reason or None, never an exception
    assert {"truncated image", "corrupt image"} <= reasons


def test_each_photos_check_is_remembered_by_its_bytes(tmp_path, monkeypatch):
    """Loading a catalogue again decodes no photo twice; a photo whose bytes changed is checked again."""
    from xmodal.data import catalogue as catalogue_mod
    from xmodal.data import generate_demo
    folder = generate_demo(tmp_path / "cat", n=12, seed=3)
    checked = []
    real = catalogue_mod.check_image
    monkeypatch.setattr(catalogue_mod, "check_image", lambda data: checked.append(len(data)) or real(data))
    monkeypatch.setattr(catalogue_mod, "_VERDICTS", {})
    first = load_catalogue(folder)
    assert len(checked) == 12
    again = load_catalogue(folder)
    assert len(checked) == 12 and again.fingerprint == first.fingerprint  # nothing decoded again
    (folder / first.images[0]).write_bytes(b"\xff\xd8 not a jpeg any more")
    third = load_catalogue(folder)
    assert len(checked) == 13 and len(third) == 11  # the changed file was checked again, and dropped
