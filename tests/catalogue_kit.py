"""What the bad-input tests share: a catalogue folder holding a few photos and a given captions.csv (``folder``),
and the check that an error's message is one line (``one_line``). Used by tests/test_data_inputs.py,
tests/test_image_inputs.py and tests/test_data_splits.py."""
from pathlib import Path

import pytest
from PIL import Image


def folder(root: Path, csv: bytes | str, n_images: int = 4) -> Path:
    """A catalogue folder holding images/0.jpg .. images/{n-1}.jpg and the given captions.csv."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    for i in range(n_images):
        Image.new("RGB", (24, 32), (40 * i, 90, 200)).save(root / "images" / f"{i}.jpg")
    (root / "captions.csv").write_bytes(csv.encode() if isinstance(csv, str) else csv)
    return root


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg, msg
    return msg
