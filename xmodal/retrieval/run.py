"""Load a trained run and search its gallery: ``xmodal.load_run(dir).search_text("navy kurta", k=10)``.

The gallery (every item of the run's catalogue, or of another one) is embedded once and cached in the run folder
as safetensors, keyed by the catalogue's fingerprint and a digest of the weights' bytes, checked on every read
(sha256, shape, finite values) and rebuilt with a warning when damaged. Each side (images, captions) is searched
through a ``Gallery`` (xmodal.retrieval.gallery): exact up to 50k items, a faiss index above that, cached beside the
embeddings, its ``nprobe`` calibrated on the other side's embeddings of the catalogue (the queries' modality).
``run.search(image=..., text=..., weight=...)`` and ``run.refine(result, good=[...], bad=[...])`` build their query
vectors with ``xmodal.retrieval.query_vectors``.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from ..image.backbones import weights_digest
from ..cachefile import check_array, warn_rebuild, write_cache
from ..data import Catalogue, CatalogueError, load_catalogue
from ..data.images import rgb_array, to_rgb
from .arguments import check_index, check_indices, check_k, check_vector
from . import kernels
from .gallery import Gallery, GalleryConfig
from .filters import exact_rows, where_mask
from .hubness import CSLS_K, csls_offsets
from ..models import ModelConfig, rebuild_model
from ..models.embed import embed_catalogue_images, embed_pil, embed_texts, fixed_weights
from .query_vectors import DEFAULT_WEIGHT, ROCCHIO, compose_vectors, rocchio, unit
from ..runs import check_record, read_json
from ..runs.snapshots import run_catalogue_path  # noqa: F401  (re-exported: evaluate and the jobs use it)
from ..text.vocabulary import tokenize, UnknownQueryError, Vocab  # noqa: F401  (UnknownQueryError: raised by search_text)


class RunError(ValueError):
    """A run folder that cannot be loaded (missing files, bad weights)."""


# A CLI's one-line input errors for a run folder (a damaged or foreign one: missing keys, wrong types).
RUN_INPUT_ERRORS = (RunError, CatalogueError, ValueError, OSError, KeyError, TypeError)


def run_error_line(err: BaseException, run: object) -> str:
    """``err`` (one of ``RUN_INPUT_ERRORS``) as one line naming the problem, for ``error: ...`` on stderr."""
    detail = "; ".join(line.strip() for line in str(err).splitlines() if line.strip())
    if isinstance(err, (KeyError, TypeError)):
        detail = f"{run} does not look like a complete xmodal run folder ({type(err).__name__}: {detail})"
    return detail


@dataclass
class Hit:
    """One search result."""

    index: int  # item index in the gallery catalogue
    score: float  # cosine similarity
    caption: str
    image: Path
    item_id: str


class SearchResult(list):
    """The hits of a text search, best first (a ``list`` of ``Hit``), and how the model read the query.

    Attributes:
        query_words: the words the model read, in order.
        unknown_words: those it does not know (each once), read as ``<unk>``: they did not steer the search.
        words_not_read: words after the first ``vocab.max_len`` of a long query, which the model ignores.
    """

    def __init__(self, hits: list[Hit] = (), query_words: list[str] = (), unknown_words: list[str] = ()):
        super().__init__(hits)
        self.query_words, self.unknown_words, self.words_not_read = list(query_words), list(unknown_words), 0


class ComposedResult(list):
    """The hits of a composed search or a refinement, best first (a ``list`` of ``Hit``), and its query.

    Attributes:
        query_vector: the joint-space vector ``[D]`` searched with.
        origin: the query before any feedback ``[D]`` (``refine`` starts from it again).
        good, bad: the gallery indices judged so far (relevance feedback).
        exclude: gallery indices never returned (the query's own item).
        unknown_words: words of the text part the model does not know (read as ``<unk>``).
        round: 0 for a search, then one more for each refinement.
    """

    def __init__(self, hits: Sequence[Hit], query_vector: torch.Tensor, origin: torch.Tensor | None = None,
                 good: Sequence[int] = (), bad: Sequence[int] = (), exclude: Sequence[int] = (),
                 unknown_words: Sequence[str] = (), round: int = 0):
        super().__init__(hits)
        self.query_vector = query_vector
        self.origin = query_vector if origin is None else origin
        self.good, self.bad, self.exclude = list(good), list(bad), list(exclude)
        self.unknown_words, self.round = list(unknown_words), round


def load_model(run_dir: str | os.PathLike, device: torch.device | str = "cpu", weights: str = "best.safetensors"):
    """(model, vocab, config) of a run folder, weights loaded safely (safetensors).

    Raises:
        RunError: the folder is not a complete run or its weights do not fit its config.
    """
    run_dir = Path(run_dir)
    config = read_json(run_dir / "config.json")
    if not config or not isinstance(config, dict):
        raise RunError(f"{run_dir} is not a run folder: config.json is missing, unreadable or not an object")
    if not (run_dir / weights).is_file():
        raise RunError(f"{run_dir} has no {weights} yet: the run has not finished an epoch")
    if not isinstance(config.get("model"), str) or not isinstance(config.get("model_config"), dict):
        raise RunError(f"{run_dir / 'config.json'} is damaged: it lacks the model's name or its 'model_config'")
    try:
        check_record("model_config", config["model_config"], ModelConfig)
    except ValueError as err:
        raise RunError(f"{run_dir / 'config.json'} is damaged: {err}") from None
    vocab = Vocab.load(run_dir / "vocab.json")
    model = rebuild_model(config["model"], config["model_config"])
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        model.load_state_dict(load_file(run_dir / weights))
    except (SafetensorError, RuntimeError, OSError) as err:
        raise RunError(f"{run_dir / weights} cannot be loaded ({err}); retrain or resume the run") from err
    return fixed_weights(model.to(device).eval()), vocab, config  # fixed: its text tower may run in ONNX Runtime


class Run:
    """A trained run with a searchable gallery."""

    GALLERY_CACHE_VERSION = 3  # gallery_*.safetensors: bump when their layout or their key's meaning changes

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
        self.gallery_config = GalleryConfig()  # how both galleries are searched (exact or faiss, calibration)
        self.hubness = "none"  # "csls": rank with CSLS hubness reduction (exact search; xmodal.retrieval.hubness)
        self._offsets: dict[str, torch.Tensor] = {}

    def _cache_path(self, kind: str) -> Path:
        """``gallery_<kind>_<key>.safetensors`` in the run folder. The key covers the catalogue's content and
        ``weights_digest`` of the model as loaded from best.safetensors (hashed once per Run, about 30 ms):
        the bytes that made the embeddings, not the file's mtime, which a copy or a touch changes."""
        if getattr(self, "_weights_sha", None) is None:
            self._weights_sha = weights_digest(self.model)
        key = hashlib.sha256(f"{self.GALLERY_CACHE_VERSION}|{self.catalogue.fingerprint}|{self._weights_sha}|"
                             f"{kind}".encode())
        return self.dir / f"gallery_{kind}_{key.hexdigest()[:12]}.safetensors"

    def _cached(self, kind: str, compute, width: int | None = None) -> torch.Tensor:
        """Embeddings ``[N, D]`` (or ``[N, width]``) from the run folder's cache, checked (readable, sha256 of the
        data, shape, dtype, finite values); computed by ``compute()`` and saved when missing or damaged."""
        from safetensors.torch import load, save
        path = self._cache_path(kind)
        if path.is_file():
            try:
                # read into memory (never mmap'd: a file truncated or rewritten under a mapping is a SIGBUS)
                data = path.read_bytes()
                n = int.from_bytes(data[:8], "little")
                digest = (json.loads(data[8:8 + n]).get("__metadata__") or {}).get("sha256")
                emb = load(data)["embeds"]
                if digest != hashlib.sha256(memoryview(emb.numpy()).cast("B")).hexdigest():
                    raise ValueError("its data does not match its sha256")
                check_array("the cached embeddings", emb.numpy(),
                            (len(self.catalogue), width or self.model.cfg.embed_dim), ("float32",))
                return emb
            except Exception as err:  # any damage: recomputed below
                warn_rebuild(path, err)
        emb = compute().contiguous()
        meta = {"sha256": hashlib.sha256(memoryview(emb.numpy()).cast("B")).hexdigest()}
        write_cache(path, lambda f: f.write(save({"embeds": emb}, metadata=meta)))
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
        """The search index over ``images`` or ``texts``, built once per run (a faiss index is cached), calibrated
        on the queries' modality, never on the gallery's own rows (across the modality gap from the queries)."""
        if kind not in self._galleries:
            if kind not in ("images", "texts"):
                raise ValueError(f"unknown gallery {kind!r}; choose 'images' or 'texts'")
            embeds = self.image_embeds if kind == "images" else self.text_embeds
            queries = (lambda: self.text_embeds) if kind == "images" else (lambda: self.image_embeds)
            index_path = self._cache_path(kind).with_suffix(".index.npz")  # checked and healed by Gallery.build
            gallery = Gallery.build(embeds, cache_path=index_path, cfg=self.gallery_config,
                                    calibration_queries=queries)
            if gallery.kind == "faiss":
                other = "caption" if kind == "images" else "image"
                gallery.info["calibrated_on"] = f"the catalogue's {other} embeddings (the queries' modality)"
            self._galleries[kind] = gallery
        return self._galleries[kind]

    def _search(self, kind: str, query: torch.Tensor, k: int, where: dict | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores and indices ``[1, k]`` of gallery ``kind`` (CSLS if ``self.hubness`` asks; among ``where``'s)."""
        keep = where_mask(self.catalogue, where)
        if self.hubness not in ("none", "csls"):
            raise ValueError(f"unknown hubness reduction {self.hubness!r}; choose none or csls")
        if self.hubness == "none" and keep is None:
            return self.gallery(kind).search(query[None], k)
        gallery = self.image_embeds if kind == "images" else self.text_embeds
        return exact_rows(gallery, query, k, self.csls_offsets(kind) if self.hubness == "csls" else None, keep,
                          self.rows_kernel(kind))

    def rows_kernel(self, kind: str) -> str:
        """The product for a float32 pass over gallery ``kind`` (filtered, CSLS): an fp16 gallery's own is for fp16."""
        g = self.gallery(kind)
        if g.embeds.dtype != torch.float16 or g.cfg.kernel != "auto":
            return g.kernel
        if "rows_kernel" not in g.info:
            g.info["rows_kernel"] = kernels.choose(self.image_embeds if kind == "images" else self.text_embeds)[0]
        return g.info["rows_kernel"]

    def csls_offsets(self, kind: str) -> torch.Tensor:
        """CSLS's ``r(g)`` ``[N]`` for gallery ``kind`` (bank: the other modality), cached in the run folder."""
        if kind not in self._offsets:
            gallery, bank = (self.image_embeds, self.text_embeds)[::1 if kind == "images" else -1]
            self._offsets[kind] = self._cached(f"csls{CSLS_K}_{kind}", lambda: csls_offsets(bank, gallery)[:, None],
                                               width=1)[:, 0]
        return self._offsets[kind]

    def _hits(self, kind: str, query: torch.Tensor, k: int, where: dict | None = None) -> list[Hit]:
        query = check_vector(query, self.image_embeds.shape[1])
        scores, indices = self._search(kind, query, k, where)  # [1, k] each
        return [Hit(int(i), float(s), self.catalogue.captions[int(i)], self.catalogue.image_path(int(i)),
                    self.catalogue.item_ids[int(i)]) for s, i in zip(scores[0], indices[0])]

    def embed_text(self, query: str) -> torch.Tensor:
        """The embedding ``[D]`` of ``query``; words the model does not know are read as ``<unk>``.

        Raises:
            UnknownQueryError: the query has no words, or none the model knows.
        """
        self.vocab.check_query(query)
        return embed_texts(self.model, self.vocab, [query], self.device)[0]  # [D]

    def embed_image(self, image: Image.Image | str | os.PathLike | bytes) -> torch.Tensor:
        """The joint-space vector ``[D]`` of a photo (a PIL image, a path or the file's bytes).

        Raises:
            ImageError: (a ``ValueError``) the file is missing, not an image, corrupt or too large.
        """
        image = to_rgb(image) if isinstance(image, Image.Image) else rgb_array(image)
        return embed_pil(self.model, [image], self.device)[0]  # [D]

    def search_text(self, query: str, k: int = 10, vector: torch.Tensor | None = None, where: dict | None = None
                    ) -> SearchResult:
        """The ``k`` gallery products whose images best match ``query``, best first.

        Words the model does not know are read as ``<unk>`` and listed in the result's ``unknown_words``.
        ``vector``: ``embed_text(query)`` where the caller has it already (not computed again). ``where``:
        only products whose attribute columns take these values (``{"gender": "Women"}``; a list for any of).

        Raises:
            UnknownQueryError: (a ``ValueError``) the query has no words (empty, punctuation, emoji) or
                none the model knows; its message names them and suggests words the model knows.
        """
        k, result = check_k(k), self.read_query(query)
        if vector is None:
            vector = embed_texts(self.model, self.vocab, [query], self.device)[0]  # [D]
        result.extend(self._hits("images", vector, k, where))
        return result

    def read_query(self, query: str) -> SearchResult:
        """How the model reads ``query``: a ``SearchResult`` without hits (raises as ``search_text`` does)."""
        result = SearchResult([], *self.vocab.check_query(query))
        result.words_not_read = max(0, len(tokenize(query)) - self.vocab.max_len)
        return result

    def search_image(self, image: Image.Image | str | os.PathLike, k: int = 10, vector: torch.Tensor | None = None,
                     where: dict | None = None) -> list[Hit]:
        """The ``k`` gallery captions that best describe ``image`` (a PIL image or a path); ``vector``:
        ``embed_image(image)`` where the caller has it; ``where``: as ``search_text``."""
        return self._hits("texts", self.embed_image(image) if vector is None else vector, check_k(k), where)

    def _products(self, query: torch.Tensor, k: int, exclude: Sequence[int] = (), where: dict | None = None
                  ) -> list[Hit]:
        """The ``k`` products whose photos best match ``query`` ``[D]``, leaving out ``exclude``."""
        skip = set(int(i) for i in exclude)
        query = check_vector(query, self.image_embeds.shape[1])
        scores, idx = self._search("images", query, k + len(skip), where)  # [1, k + e] each
        cat = self.catalogue
        hits = [Hit(int(i), float(s), cat.captions[int(i)], cat.image_path(int(i)), cat.item_ids[int(i)])
                for s, i in zip(scores[0], idx[0]) if int(i) not in skip]
        return hits[:k]

    def _image_vector(self, image) -> tuple[torch.Tensor, list[int]]:
        """The photo's vector and what to leave out (an item index: that item; else nothing)."""
        if isinstance(image, (int, np.integer)):  # bool included: refused by check_index
            i = check_index(image, len(self.catalogue), "image (an item index)")
            return self.image_embeds[i], [i]
        return self.embed_image(image), []

    def search(self, image: Image.Image | str | os.PathLike | bytes | int | None = None, text: str | None = None,
               weight: float | None = None, k: int = 10, exclude: Sequence[int] = (), where: dict | None = None
               ) -> ComposedResult:
        """Products for a photo, words, or a photo changed by words ("in red"): see ``xmodal.retrieval.query_vectors``.

        Args:
            image: a PIL image, a path, the file's bytes, or an item index of the run's catalogue (that item
                is then left out of the results).
            text: words: a description, or a change to the photo ("in red", "striped").
            weight: the words' share, 0 (photo only) to 1 (words only); default ``DEFAULT_WEIGHT``. Ignored when
                only one of ``image`` and ``text`` is given.
            exclude: more gallery indices to leave out.
            where: only products whose attribute columns take these values (as ``search_text``).

        Raises:
            ValueError: neither ``image`` nor ``text``; a weight outside [0, 1]; ``UnknownQueryError`` for words
                the model cannot read; ``ImageError`` for a photo it cannot open.
        """
        k, exclude = check_k(k), check_indices(exclude, len(self.catalogue), "exclude")
        if text is not None and not isinstance(text, str):
            raise ValueError(f"text must be a string of words; got {type(text).__name__}")
        if image is None and not (text and text.strip()):
            raise ValueError("give a photo, words, or both")
        weight = DEFAULT_WEIGHT if weight is None else float(weight)
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"weight must be between 0 (photo only) and 1 (words only); got {weight}")
        skip, unknown = list(exclude), []
        img = txt = None
        if image is not None:
            img, own = self._image_vector(image)
            skip += own
        if text and text.strip():
            unknown = self.vocab.check_query(text)[1]
            txt = self.embed_text(text)
        if img is not None and txt is not None:
            query = compose_vectors(img, txt, weight, self.image_embeds)
        else:
            query = unit(img if img is not None else txt)
        return ComposedResult(self._products(query, k, skip, where), query, exclude=skip, unknown_words=unknown)

    def refine(self, query: ComposedResult | torch.Tensor, good: Sequence[int] = (), bad: Sequence[int] = (),
               k: int = 10, coefficients: tuple[float, float, float] = ROCCHIO) -> ComposedResult:
        """Re-rank a ``search`` result (or a query vector) towards the ``good`` and away from the ``bad``
        gallery indices (Rocchio: see ``xmodal.retrieval.query_vectors``).

        Args:
            query: a previous ``ComposedResult`` (its first query and judgements carry over; an item judged
                again takes its latest judgement) or a query vector ``[D]``.
            good, bad: gallery indices (``Hit.index``) judged in this round.
        """
        n, k = len(self.catalogue), check_k(k)
        good, bad = check_indices(good, n, "good"), check_indices(bad, n, "bad")
        if isinstance(query, ComposedResult):
            origin, exclude, rounds, unknown = query.origin, query.exclude, query.round, query.unknown_words
            judged = {**{int(i): True for i in query.good}, **{int(i): False for i in query.bad}}
        else:
            origin = unit(check_vector(query, self.image_embeds.shape[1]))
            exclude, rounds, unknown, judged = [], 0, [], {}
        judged.update({int(i): True for i in good})
        judged.update({int(i): False for i in bad})
        good_all = [i for i, g in judged.items() if g]
        bad_all = [i for i, g in judged.items() if not g]
        emb = self.image_embeds
        vector = rocchio(origin, emb[good_all] if good_all else None, emb[bad_all] if bad_all else None,
                         coefficients)
        return ComposedResult(self._products(vector, k, exclude), vector, origin, good_all, bad_all, exclude,
                              unknown, rounds + 1)


def load_run(run_dir: str | os.PathLike, data: str | None = None, device: str = "cpu",
             catalogue: Catalogue | None = None) -> Run:
    """Open a run folder for search over its catalogue (or ``data``)."""
    return Run(run_dir, data=data, device=device, catalogue=catalogue)
