"""Load a trained run and search its gallery: ``xmodal.load_run(dir).search_text("navy kurta", k=10)``.

The gallery (every item of the run's catalogue, or of another one) is embedded once and cached in
the run folder as safetensors, keyed by the catalogue's fingerprint and the weights file. Each side
(images, captions) is searched through an ``xmodal.gallery.Gallery``: exact up to 50k items, a faiss
index above that, built once and cached beside the embeddings.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .data import Catalogue, CatalogueError, load_catalogue, resolve_data
from .gallery import Gallery
from .models import rebuild_model
from .pipeline import embed_catalogue_images, embed_pil, embed_texts
from .runs import read_json
from .text import Vocab


class RunError(ValueError):
    """A run folder that cannot be loaded (missing files, bad weights)."""


@dataclass
class Hit:
    """One search result."""

    index: int  # item index in the gallery catalogue
    score: float  # cosine similarity
    caption: str
    image: Path
    item_id: str


def load_model(run_dir: str | os.PathLike, device: torch.device | str = "cpu", weights: str = "best.safetensors"):
    """(model, vocab, config) of a run folder, weights loaded safely (safetensors).

    Raises:
        RunError: the folder is not a complete run or its weights do not fit its config.
    """
    run_dir = Path(run_dir)
    config = read_json(run_dir / "config.json")
    if not config:
        raise RunError(f"{run_dir} is not a run folder: config.json is missing or unreadable")
    if not (run_dir / weights).is_file():
        raise RunError(f"{run_dir} has no {weights} yet: the run has not finished an epoch")
    vocab = Vocab.load(run_dir / "vocab.json")
    model = rebuild_model(config["model"], config["model_config"])
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        state = load_file(run_dir / weights)
        model.load_state_dict(state)
    except (SafetensorError, RuntimeError, OSError) as err:
        raise RunError(f"{run_dir / weights} cannot be loaded ({err}); retrain or resume the run") from err
    return model.to(device).eval(), vocab, config


def run_catalogue_path(config: dict, data: str | None = None) -> Path:
    """The catalogue folder to search or evaluate: ``data`` if given, else the run's own (the demo is
    found in this machine's cache, wherever it lay when the run trained)."""
    if data:
        return resolve_data(data)
    if config["data"]["name"] == "demo":
        return resolve_data("demo")
    return Path(config["data"]["path"])


class Run:
    """A trained run with a searchable gallery."""

    def __init__(self, run_dir: str | os.PathLike, data: str | None = None, device: str = "cpu",
                 catalogue: Catalogue | None = None):
        self.dir = Path(run_dir)
        self.device = torch.device(device)
        self.model, self.vocab, self.config = load_model(self.dir, self.device)
        self.name = self.config["model"]
        if catalogue is not None:  # already loaded and validated by the caller (the dashboard's cache)
            self.catalogue: Catalogue = catalogue
        else:
            try:
                self.catalogue = load_catalogue(run_catalogue_path(self.config, data))
            except CatalogueError as err:
                raise RunError(f"the gallery catalogue of {self.dir.name} cannot be loaded: {err}") from err
        self._image_embeds: torch.Tensor | None = None
        self._text_embeds: torch.Tensor | None = None
        self._galleries: dict[str, Gallery] = {}

    def _cache_path(self, kind: str) -> Path:
        weights = self.dir / "best.safetensors"
        key = hashlib.sha256(f"{self.catalogue.fingerprint}|{weights.stat().st_mtime_ns}|{kind}".encode())
        return self.dir / f"gallery_{kind}_{key.hexdigest()[:12]}.safetensors"

    def _cached(self, kind: str, compute) -> torch.Tensor:
        from safetensors.torch import load_file, save_file
        path = self._cache_path(kind)
        if path.is_file():
            emb = load_file(path)["embeds"]
            if emb.shape[0] == len(self.catalogue):
                return emb
        emb = compute()
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file({"embeds": emb.contiguous()}, tmp)
        os.replace(tmp, path)
        return emb

    @property
    def image_embeds(self) -> torch.Tensor:
        """Gallery image embeddings ``[N, D]``."""
        if self._image_embeds is None:
            idx = np.arange(len(self.catalogue))
            self._image_embeds = self._cached("images", lambda: embed_catalogue_images(
                self.model, self.catalogue, idx, self.device))
        return self._image_embeds

    @property
    def text_embeds(self) -> torch.Tensor:
        """Gallery caption embeddings ``[N, D]``."""
        if self._text_embeds is None:
            self._text_embeds = self._cached("texts", lambda: embed_texts(
                self.model, self.vocab, self.catalogue.captions, self.device))
        return self._text_embeds

    def gallery(self, kind: str) -> Gallery:
        """The search index over ``images`` or ``texts``, built once per run (a faiss index is cached)."""
        if kind not in self._galleries:
            if kind not in ("images", "texts"):
                raise ValueError(f"unknown gallery {kind!r}; choose 'images' or 'texts'")
            embeds = self.image_embeds if kind == "images" else self.text_embeds
            index_path = self._cache_path(kind).with_suffix(".index.npz")
            self._galleries[kind] = Gallery.build(embeds, cache_path=index_path)
        return self._galleries[kind]

    def _hits(self, kind: str, query: torch.Tensor, k: int) -> list[Hit]:
        scores, indices = self.gallery(kind).search(query[None], k)  # [1, k] each
        return [Hit(int(i), float(s), self.catalogue.captions[int(i)], self.catalogue.image_path(int(i)),
                    self.catalogue.item_ids[int(i)]) for s, i in zip(scores[0], indices[0])]

    def embed_text(self, query: str) -> torch.Tensor:
        return embed_texts(self.model, self.vocab, [query], self.device)[0]  # [D]

    def embed_image(self, image: Image.Image | str | os.PathLike) -> torch.Tensor:
        if not isinstance(image, Image.Image):
            with Image.open(image) as im:
                image = im.convert("RGB")
        return embed_pil(self.model, [image], self.device)[0]  # [D]

    def search_text(self, query: str, k: int = 10) -> list[Hit]:
        """The ``k`` gallery products whose images best match ``query``."""
        if not query.strip():
            raise ValueError("empty query: type a few words, e.g. 'navy blue striped kurta'")
        return self._hits("images", self.embed_text(query), k)

    def search_image(self, image: Image.Image | str | os.PathLike, k: int = 10) -> list[Hit]:
        """The ``k`` gallery captions that best describe ``image`` (a PIL image or a path)."""
        return self._hits("texts", self.embed_image(image), k)


def load_run(run_dir: str | os.PathLike, data: str | None = None, device: str = "cpu",
             catalogue: Catalogue | None = None) -> Run:
    """Open a run folder for search over its catalogue (or ``data``)."""
    return Run(run_dir, data=data, device=device, catalogue=catalogue)
