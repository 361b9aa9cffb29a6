"""Bad photos given to the search API: a clear ValueError naming the problem, never a PIL traceback."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import xmodal


@pytest.fixture(scope="module")
def run(trained_run):
    return xmodal.load_run(trained_run)


@pytest.mark.parametrize("content,reason", [
    (b"", "empty image file"), (b"hello, not a picture", "not an image"),
    (b"<!doctype html><html><body>nope</body></html>", "HTML"), (b"\xff\xd8\xff\xe0" + b"\x00" * 40, "image"),
])
def test_search_image_refuses_what_is_not_a_photo(run, tmp_path, content, reason):
    path = tmp_path / "query.jpg"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=reason):
        run.search_image(path)
    with pytest.raises(ValueError, match="missing"):
        run.search_image(tmp_path / "absent.jpg")


def test_search_image_reads_16_bit_greyscale_like_its_8_bit_version(run, tmp_path):
    grey = (np.linspace(0, 1, 64 * 48).reshape(64, 48) * 65535).astype(np.uint16)
    Image.fromarray(grey).save(tmp_path / "g16.png")
    Image.fromarray((grey // 257).astype(np.uint8)).save(tmp_path / "g8.png")
    a = run.embed_image(tmp_path / "g16.png")
    b = run.embed_image(tmp_path / "g8.png")
    assert float(a @ b) > 0.999  # the same picture up to rounding of one grey level (white would be far off)
    white = run.embed_image(Image.new("RGB", (48, 64), "white"))
    assert float(a @ white) < float(a @ b)
    assert len(run.search_image(tmp_path / "g16.png", k=3)) == 3
