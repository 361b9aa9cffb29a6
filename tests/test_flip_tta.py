"""Flip test-time augmentation: each gallery image embedded as the normalised mean of it and its mirror.

Checked against a reference built here from the pixels (the backbone run on ``flip(pixels)``), on the demo photos,
which are not mirror-symmetric, so a skipped flip fails; the unflipped feature cache must be left as it was, and
``python -m xmodal.evaluate --flip-tta`` must say in its JSON that it ran so.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from xmodal.data import load_catalogue
from xmodal.evaluate import main as evaluate_main
from xmodal.image.backbones import image_transform
from xmodal.image.feature_cache import feature_cache_path
from xmodal.models.embed import embed_catalogue_images
from xmodal.models.registry import create_model
from xmodal.retrieval.run import load_model

CPU = torch.device("cpu")
SIZE = (64, 48)


@torch.no_grad()
def reference(model, cat, index, pixels_in: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Both views' unit embeddings ``[n, D]`` computed here from the resized uint8 pixels, in PyTorch."""
    tf = image_transform(model.cfg.backbone, tuple(model.cfg.image_size))
    x = tf.normalise(tf.load([cat.image_path(int(i)) for i in index]))  # [n, 3, H, W]

    def embed(v: torch.Tensor) -> torch.Tensor:
        return F.normalize(model.encode_image(v if pixels_in else model.backbone(v)), dim=-1)
    return embed(x), embed(x.flip(-1))


def check_flip(model, cat, index, pixels_in: bool) -> None:
    plain, mirrored = reference(model, cat, index, pixels_in)
    assert (plain - mirrored).abs().max() > 1e-2  # the photos are not symmetric: a skipped flip shows
    want = F.normalize(plain + mirrored, dim=-1)
    got = embed_catalogue_images(model, cat, index, CPU, flip=True)
    torch.testing.assert_close(embed_catalogue_images(model, cat, index, CPU), plain, atol=2e-4, rtol=0)
    torch.testing.assert_close(got, want, atol=2e-4, rtol=0)
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(len(index)))


def test_frozen_features_flip_is_the_mean_of_both_views_and_leaves_the_plain_cache(trained_run, tmp_path,
                                                                                     monkeypatch):
    monkeypatch.setenv("XMODAL_CACHE", str(tmp_path / "cache"))
    model, _, config = load_model(trained_run, CPU)
    cat = load_catalogue(config["data"]["path"])
    index = np.arange(0, len(cat), 3)
    embed_catalogue_images(model, cat, index, CPU)  # fills the unflipped cache
    folder = tmp_path / "cache" / "features"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    check_flip(model, cat, index, pixels_in=False)
    after = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert {k: after[k] for k in before} == before  # the unflipped entries are untouched
    new = sorted(set(after) - set(before))
    assert len(new) == 1 and "_flip_" in new[0]  # the mirrors in an entry of their own
    args = (model.backbone, "efficientnet", SIZE, cat.images, cat.fingerprint)
    assert feature_cache_path(*args, flip=False) == feature_cache_path(*args)  # the unflipped key is unchanged
    assert feature_cache_path(*args, flip=True) != feature_cache_path(*args)


def test_pixel_model_flips_the_pixel_batch(trained_run):
    torch.manual_seed(0)
    model = create_model("cmpm-efficientnet", pretrained=False, finetune=True, image_size=SIZE, embed_dim=16,
                         vocab_size=10, lstm_dim=8, hidden_dim=16).eval()
    assert model.image_input == "pixels"
    _, _, config = load_model(trained_run, CPU)
    check_flip(model, load_catalogue(config["data"]["path"]), np.arange(6), pixels_in=True)


@pytest.mark.parametrize("flag", [False, True])
def test_evaluate_json_says_whether_flip_was_used(trained_run, capsys, flag):
    assert evaluate_main(["--run", str(trained_run), "--split", "val", "--json", *(["--flip-tta"] * flag)]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["flip_tta"] is flag
    assert ("horizontal mirror" in res["protocol"]) is flag
