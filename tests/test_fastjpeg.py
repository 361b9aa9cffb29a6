"""The fast JPEG path (``xmodal.data.fastjpeg`` behind ``rgb_array``) gives exactly ``open_rgb``'s pixels and
errors for every kind of file, and the batch loader gives what single images get."""
import io
import logging
import threading

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from tests.conftest import damaged
from xmodal.image.backbones import image_transform, resize_pixels
from xmodal.data import fastjpeg
from xmodal.data.images import ImageError, open_rgb, rgb_array

pytestmark = pytest.mark.skipif(fastjpeg.simplejpeg is None, reason="simplejpeg is not installed")


def photo(width: int = 151, height: int = 203, seed: int = 0) -> Image.Image:
    """A photo-like image (smooth shapes and noise) at an odd size, so edge blocks are partial."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) % 97 * 2.6], -1)
    noisy = base + rng.normal(0, 12, base.shape)
    im = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    return im.filter(ImageFilter.GaussianBlur(1))


def jpeg(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", **kw)
    return buf.getvalue()


def exif(orientation: int) -> Image.Exif:
    e = Image.Exif()
    e[0x0112] = orientation
    return e


def kinds() -> dict[str, tuple[bytes, bool]]:
    """name -> (file bytes, whether the fast path should take it)."""
    im = photo()
    png, gif = io.BytesIO(), io.BytesIO()
    im.convert("RGBA").save(png, "PNG")
    im.convert("P").save(gif, "GIF")
    return {
        "baseline 4:2:0": (jpeg(im, quality=90), True),
        "4:4:4": (jpeg(im, quality=80, subsampling=0), True),
        "4:2:2": (jpeg(im, quality=80, subsampling=1), True),
        "progressive": (jpeg(im, progressive=True, quality=60), True),
        "optimised": (jpeg(im, optimize=True), True),
        "restart markers": (jpeg(im, restart_marker_blocks=3), True),
        "tiny": (jpeg(photo(3, 2), quality=95), True),
        "exif, upright": (jpeg(im, exif=exif(1)), True),
        "bytes after the end": (jpeg(im) + b"\x00trailing", True),
        "exif, rotated": (jpeg(im, exif=exif(6)), False),
        "exif, mirrored": (jpeg(im, exif=exif(2)), False),
        "greyscale": (jpeg(im.convert("L")), False),
        "cmyk": (jpeg(im.convert("CMYK")), False),
        "png with alpha": (png.getvalue(), False),
        "gif": (gif.getvalue(), False),
    }


@pytest.fixture
def spy(monkeypatch):
    """Counts the images simplejpeg decodes (without an error)."""
    calls = []
    real = fastjpeg.simplejpeg.decode_jpeg

    def counted(data, *a, **k):
        pixels = real(data, *a, **k)
        calls.append(len(data))
        return pixels
    monkeypatch.setattr(fastjpeg.simplejpeg, "decode_jpeg", counted)
    return calls


@pytest.mark.parametrize("name", list(kinds()))
def test_rgb_array_gives_open_rgbs_pixels_for_every_kind_of_file(tmp_path, spy, name):
    data, fast = kinds()[name]
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
    want = np.asarray(open_rgb(path))
    for source in (path, str(path), data):
        got = rgb_array(source)
        assert got.dtype == np.uint8 and got.flags.writeable
        np.testing.assert_array_equal(got, want)
    assert bool(spy) == fast  # plain JPEGs take the fast path; the rest go to Pillow


def test_rgb_array_raises_open_rgbs_errors_naming_the_file(tmp_path, spy):
    good = jpeg(photo())
    bad = {"truncated.jpg": good[:len(good) // 2], "empty.jpg": b"", "header.jpg": b"\xff\xd8\xff\xe0 not a jpeg",
           "page.jpg": b"<!DOCTYPE html><html>404</html>", "zeros.jpg": good[:600] + bytes(200) + good[800:]}
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "folder.jpg").mkdir()
    for name in [*bad, "folder.jpg", "gone.jpg"]:
        path = tmp_path / name
        with pytest.raises(ImageError) as want:
            open_rgb(path)
        with pytest.raises(ImageError) as got:
            rgb_array(path)
        assert got.value.reason == want.value.reason and str(got.value) == str(want.value), name
        assert str(path) in str(got.value)
    assert not spy  # simplejpeg refused every one: Pillow named the fault
    (tmp_path / "big.jpg").write_bytes(good)
    with pytest.raises(ImageError, match="image too large"):
        rgb_array(tmp_path / "big.jpg", max_pixels=100)  # refused from the header, never decoded
    assert not spy


def test_damaged_jpegs_decode_or_fail_exactly_as_with_pillow():
    """Random damage (cut, overwritten bytes) gives the same pixels or the same error on both paths."""
    rng = np.random.default_rng(7)
    src = jpeg(photo(64, 80), quality=85)
    outcomes = set()
    for k in range(80):
        data = damaged(src, rng, k, width=8, shortest=2)
        try:
            want = np.asarray(open_rgb(data))
        except ImageError as err:
            with pytest.raises(ImageError) as got:
                rgb_array(data)
            assert got.value.reason == err.reason
            outcomes.add(err.reason)
            continue
        np.testing.assert_array_equal(rgb_array(data), want)
        outcomes.add("decoded")
    assert {"decoded", "truncated image"} <= outcomes


def test_fast_path_turns_itself_off_when_pillow_decodes_differently(monkeypatch, caplog):
    """Another libjpeg under Pillow: the first comparison catches it, and Pillow decodes from then on."""
    real = fastjpeg.simplejpeg.decode_jpeg
    monkeypatch.setattr(fastjpeg.simplejpeg, "decode_jpeg", lambda *a, **k: real(*a, **k) ^ 1)
    monkeypatch.setattr(fastjpeg, "_checked", threading.Event())
    monkeypatch.setattr(fastjpeg, "_enabled", True)
    data = jpeg(photo())
    with caplog.at_level(logging.WARNING, logger="xmodal.data.fastjpeg"):
        np.testing.assert_array_equal(rgb_array(data), np.asarray(open_rgb(data)))
    assert not fastjpeg.available()
    assert "decoding with Pillow only" in caplog.text
    np.testing.assert_array_equal(rgb_array(data), np.asarray(open_rgb(data)))


def test_without_simplejpeg_pillow_decodes_everything(monkeypatch):
    monkeypatch.setattr(fastjpeg, "simplejpeg", None)
    monkeypatch.setattr(fastjpeg, "_enabled", False)
    for data, _ in kinds().values():
        np.testing.assert_array_equal(rgb_array(data), np.asarray(open_rgb(data)))


# ---------------------------------------------------------------- resizing, one image or a batch

def test_resize_batches_like_single_images_and_stays_within_one_of_pillow():
    size = (64, 48)
    images = [np.array(photo(w, h, seed)) for seed, (w, h) in enumerate([(150, 200), (151, 203), (150, 200),
                                                                          (48, 64), (300, 100)])]
    batch = resize_pixels(images, size)
    assert batch.shape == (5, 3, *size) and batch.dtype == torch.uint8 and batch.is_contiguous()
    for a, got in zip(images, batch):
        assert torch.equal(resize_pixels([a], size)[0], got)
        pil = np.asarray(Image.fromarray(a).resize(size[::-1], Image.BILINEAR))  # Pillow antialiases by default
        assert np.abs(got.permute(1, 2, 0).numpy().astype(int) - pil).max() <= 1
    assert torch.equal(batch[3], torch.from_numpy(images[3]).permute(2, 0, 1))  # already at size: untouched
    with pytest.raises(ValueError, match="RGB pixels"):
        resize_pixels([np.zeros((4, 4), np.uint8)], size)


def test_transform_load_gives_what_each_image_gets_alone(tmp_path):
    """The extraction's batch loader and a single query's path see the same pixels, whatever the files."""
    paths = []
    for name, (data, _) in kinds().items():
        paths.append(tmp_path / f"{len(paths)}.img")
        paths[-1].write_bytes(data)
    tf = image_transform("efficientnet", (64, 48))
    batch = tf.load(paths)
    for path, got in zip(paths, batch):
        assert torch.equal(tf.to_uint8(open_rgb(path)), got)


def test_large_files_are_left_to_pillow_which_reads_as_it_decodes(tmp_path, spy, monkeypatch):
    """rgb_array reads a JPEG file whole for simplejpeg; above the size cap (and for anything that is not a
    JPEG) Pillow reads it instead, so a huge file named .jpg is never loaded into memory first."""
    from xmodal.data import images
    data = jpeg(photo())
    (tmp_path / "a.jpg").write_bytes(data)
    (tmp_path / "b.jpg").write_bytes(b"GIF89a" + bytes(64))  # not a JPEG whatever its name
    monkeypatch.setattr(images, "_FAST_MAX_BYTES", len(data) - 1)
    np.testing.assert_array_equal(rgb_array(tmp_path / "a.jpg"), np.asarray(open_rgb(tmp_path / "a.jpg")))
    assert not spy
    with pytest.raises(ImageError):
        rgb_array(tmp_path / "b.jpg")
    assert not spy
    monkeypatch.setattr(images, "_FAST_MAX_BYTES", len(data))
    rgb_array(tmp_path / "a.jpg")
    assert spy
