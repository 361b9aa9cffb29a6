"""Photos the right way up: a JPEG whose EXIF orientation says "turn me" is read upright by every reader (the
decoder and its fast path, training and feature extraction, thumbnails, result cards, sprite sheets, the Search
page's upload), with the embedding of the upright file; and a 16-bit greyscale upload is searched as the API
searches it. The upright reference is the stored pixels turned exactly, saved losslessly (PNG)."""
from __future__ import annotations

import base64
import io
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import xmodal
from xmodal.dashboard import analysis, queries, state, ui
from xmodal.dashboard.maps import sprites
from xmodal.dashboard.uploads import read_upload
from xmodal.data import fastjpeg, load_catalogue
from xmodal.data.images import open_rgb, rgb_array
from xmodal.image.backbones import ImageFiles, ImageTransform
from xmodal.models.embed import catalogue_features, embed_catalogue_images

# EXIF orientation -> the turn that shows the stored pixels upright (PIL.ImageOps.exif_transpose's table)
TURN = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_90}
UNDO = {2: TURN[2], 3: TURN[3], 4: TURN[4], 5: TURN[5], 6: TURN[8], 7: TURN[7], 8: TURN[6]}  # upright -> stored
TURNED = (3, 6, 8)  # upside down, and both quarter turns (phones held sideways)


def photo(width: int = 120, height: int = 160, seed: int = 0) -> Image.Image:
    """An upright, photo-like RGB image with nothing symmetric about it: a light band at the top, a dark
    block at the bottom left, gradients and noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    a = np.stack([x * 200 / width + 30, y * 180 / height + 40, (x * 3 + y) % 91 * 2.5], -1)
    a = a + rng.normal(0, 10, a.shape)
    a[: height // 6] = 240
    a[-height // 4:, : width // 3] = 20
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def turned_jpeg(upright: Image.Image, orientation: int, quality: int = 92) -> tuple[bytes, np.ndarray]:
    """(JPEG bytes storing ``upright`` turned away, with EXIF ``orientation``; the exact upright pixels that the
    file's own stored pixels give when turned as the EXIF says)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    upright.transpose(UNDO[orientation]).save(buf, "JPEG", quality=quality, exif=exif)
    with Image.open(io.BytesIO(buf.getvalue())) as stored:  # decoded as stored: EXIF not applied
        reference = np.asarray(stored.convert("RGB").transpose(TURN[orientation]))
    return buf.getvalue(), reference


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(params=TURNED, ids=lambda o: f"orientation{o}")
def pair(request, tmp_path):
    """(path of the turned JPEG, path of the upright PNG with exactly its pixels, the upright pixels)."""
    data, reference = turned_jpeg(photo(seed=request.param), request.param)
    jpg, up = tmp_path / "turned.jpg", tmp_path / "upright.png"
    jpg.write_bytes(data)
    up.write_bytes(png(reference))
    return jpg, up, reference


def sideways_gap(reference: np.ndarray) -> float:
    """How far the photo read as stored (not turned) is from upright, in mean grey levels at the same size."""
    stored = Image.fromarray(reference).rotate(90, expand=True).resize(reference.shape[1::-1])
    return float(np.abs(np.asarray(stored, np.float32) - reference).mean())


def close(a, b, tol: float = 4.0) -> bool:
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return a.shape == b.shape and float(np.abs(a - b).mean()) < tol


# ---------------------------------------------------------------- the decoder and its readers

@pytest.mark.parametrize("orientation", [2, 3, 4, 5, 6, 7, 8])
def test_decoder_and_fast_path_turn_every_orientation(orientation):
    data, reference = turned_jpeg(photo(), orientation)
    assert np.array_equal(np.asarray(open_rgb(data)), reference)
    assert np.array_equal(rgb_array(data), reference)  # the fast path declines it: Pillow turns it


def test_fast_path_still_takes_plain_jpegs(monkeypatch):
    if not fastjpeg.available():
        pytest.skip("simplejpeg is not installed")
    taken = []
    real = fastjpeg.simplejpeg.decode_jpeg
    monkeypatch.setattr(fastjpeg.simplejpeg, "decode_jpeg", lambda *a, **k: taken.append(1) or real(*a, **k))
    plain, _ = turned_jpeg(photo(), 3)
    buf = io.BytesIO()
    photo().save(buf, "JPEG", quality=92)
    rgb_array(buf.getvalue())
    assert taken == [1]
    rgb_array(plain)
    assert taken == [1]  # a turned one goes to Pillow


def test_training_and_feature_readers_see_upright_pixels(pair):
    jpg, up, reference = pair
    tf = ImageTransform("efficientnet", (64, 48))
    assert torch.equal(tf.load([jpg]), tf.load([up]))  # feature extraction, evaluation
    assert torch.equal(ImageFiles([jpg], tf, uint8=True)[0], ImageFiles([up], tf, uint8=True)[0])  # loaders
    train = ImageTransform("efficientnet", (64, 48), train=True)
    torch.manual_seed(0)
    a = train.load([jpg])
    torch.manual_seed(0)
    assert torch.equal(a, train.load([up]))  # training's random crop and flip, on the same upright photo


def test_thumbnails_cards_and_sprites_are_upright(pair, tmp_path):
    jpg, up, reference = pair
    assert sideways_gap(reference) > 20  # the photo tells upright from sideways
    # the Embeddings map's sprite cell
    assert close(sprites.thumbnail(jpg), sprites.thumbnail(up))
    # table thumbnails (Compare's photo column)
    def uri_pixels(path):
        return Image.open(io.BytesIO(base64.b64decode(analysis.thumbnail_uri(path).split(",", 1)[1])))
    assert close(uri_pixels(jpg), uri_pixels(up))
    # result cards and the Home grid: the bytes handed to st.image (Streamlit drops EXIF when it resizes)
    shown = {}

    class Where:
        def image(self, data, width, caption=None):
            shown.setdefault("images", []).append(data)

        def caption(self, text):
            shown.setdefault("captions", []).append(text)

    for path in (jpg, up):
        ui.photo(path, 90, where=Where())
    assert "captions" not in shown
    turned, straight = (np.asarray(Image.open(io.BytesIO(d)).convert("RGB")) for d in shown["images"])
    assert turned.shape == straight.shape == (120, 90, 3) and close(turned, straight)
    # sprite sheets, as the map's hover reads them
    meta = sprites.read_meta(sprites.build(tmp_path / "sheets", [str(jpg), str(up)]))
    sheet = np.asarray(Image.open(tmp_path / "sheets" / meta["sheets"][0]).convert("RGB"), np.float32)
    w = meta["cell"][0]
    assert close(sheet[:, :w], sheet[:, w:2 * w], tol=10)  # JPEG blocks straddle cells: ~4 levels; sideways ~80


def test_a_missing_photo_is_said_so():
    said = []

    class Where:
        def image(self, *a, **k):
            raise AssertionError("nothing to show")

        def caption(self, text):
            said.append(text)
    ui.photo("https://example.com/shirt.jpg", 90, where=Where())
    assert said == ["(photo missing)"]


def test_upload_is_read_upright(pair):
    jpg, _, reference = pair
    assert np.array_equal(np.asarray(read_upload(jpg.read_bytes(), "turned.jpg")), reference)


# ---------------------------------------------------------------- embeddings and search

@pytest.fixture(scope="module")
def run(trained_run):
    return xmodal.load_run(trained_run)


def test_turned_photo_embeds_as_the_upright_one(run, pair):
    jpg, up, reference = pair
    vector = run.embed_image(jpg)
    assert torch.equal(vector, run.embed_image(up))
    assert torch.equal(vector, run.embed_image(jpg.read_bytes()))
    sideways = run.embed_image(Image.fromarray(reference).rotate(90, expand=True))
    assert not torch.allclose(vector, sideways, atol=1e-3)


def test_search_page_upload_finds_what_search_image_finds(run, pair):
    jpg, _, _ = pair
    page = queries.image_query(run, read_upload(jpg.read_bytes(), jpg.name), k=10).hits
    api = run.search_image(jpg, k=10)
    assert [h.index for h in page] == [h.index for h in api]  # scores agree to float rounding (the page's
    # query thread runs PyTorch on one thread, the API on several)
    assert [h.score for h in page] == pytest.approx([h.score for h in api], abs=1e-5)


def test_sixteen_bit_grey_upload_is_searched_as_the_api_searches_it(run, tmp_path):
    y, x = np.mgrid[0:160, 0:120]
    grey = (8000 + x * 200 + y * 150).astype(np.uint16)  # 16-bit values, mid-grey: none clip to white
    path = tmp_path / "grey16.png"
    Image.fromarray(grey).save(path)
    with Image.open(path) as im:
        assert im.mode in ("I;16", "I")
    upload = read_upload(path.read_bytes(), path.name)
    white = float((np.asarray(upload) == 255).all(-1).mean())
    assert white < 0.01, f"{white:.1%} of the upload read as white"
    assert np.array_equal(np.asarray(upload), rgb_array(path))
    assert torch.equal(run.embed_image(upload), run.embed_image(path))
    page = queries.image_query(run, upload, k=10).hits
    api = run.search_image(path, k=10)
    assert [h.index for h in page] == [h.index for h in api]  # scores to float rounding (one thread vs several)
    assert [h.score for h in page] == pytest.approx([h.score for h in api], abs=1e-5)


def test_catalogue_of_turned_photos_embeds_as_the_upright_catalogue(run, tiny_catalogue, tmp_path):
    """Every item's photo stored turned (orientations 3, 6, 8 in turn) gives the backbone features and the
    embeddings of the same catalogue whose photos are stored upright."""
    turned, upright = tmp_path / "turned", tmp_path / "upright"
    for folder in (turned, upright):
        shutil.copytree(tiny_catalogue, folder)
    for i, p in enumerate(sorted((tiny_catalogue / "images").glob("*.jpg"))[:24]):
        with Image.open(p) as im:
            data, reference = turned_jpeg(im.convert("RGB"), TURNED[i % 3])
        (turned / "images" / p.name).write_bytes(data)
        (upright / "images" / p.name).write_bytes(png(reference))  # PNG bytes: the decoder reads content
    a, b = load_catalogue(turned), load_catalogue(upright)
    index = np.arange(len(a))
    assert torch.equal(embed_catalogue_images(run.model, a, index, run.device),
                       embed_catalogue_images(run.model, b, index, run.device))
    if run.model.image_input == "features":
        assert torch.equal(catalogue_features(run.model, a, run.device, progress=False),
                           catalogue_features(run.model, b, run.device, progress=False))


def test_thumbnail_cache_follows_the_file(tmp_path):
    """The result cards' cached JPEG is made again when the photo changes on disk."""
    path = tmp_path / "p.jpg"
    photo().save(path, quality=92)
    first = state.photo(path, 60)
    data, _ = turned_jpeg(photo(), 6)
    path.write_bytes(data)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert state.photo(path, 60) != first
