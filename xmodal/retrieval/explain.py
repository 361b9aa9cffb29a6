"""Why did a (caption, photo) pair score as it did: word importance and region importance.

Both measure what the model does when part of its input goes missing, for any of the registered models:

- **Word importance**: each word the model reads is replaced by ``<unk>`` in turn (what the model makes of a
  word it does not know: word dropout trains the sequence models for it, and the bag-of-words models leave
  ``<unk>`` out of their mean, so there it removes the word); a word's importance is the drop of the pair's
  cosine score. All the variants go through the text tower in one batch.
- **Region importance**: occlusion sensitivity (Zeiler & Fergus, ECCV 2014). The photo, resized as the model
  sees it, is cut into a ``rows x cols`` grid; each cell in turn is painted grey (the photo's own mean
  colour, see ``occluded``) and the photo goes through the image tower, backbone and head, on pixels
  (even for models trained on cached features: ``encode_image`` takes pooled backbone features, and the
  backbone runs here); a cell's importance is the drop of the score. One batch: the photo and its
  ``rows * cols`` occluded copies.

A positive value: the word or region pushes the score up; negative: the model likes the pair better without
it. ``GRID`` (7 x 5 = 35 occluded copies) keeps one explanation fast (``bench_explain``).

Models share one absolute scale (``SCALE``: a change of the cosine score). Raw cosines cannot be compared
across models either (a siamese model scores every hit near 0.998), so ``explain`` also places the
pair among the catalogue (``Calibration``: its rank and how many standard deviations it stands above the
query's mean score). ``reading_check`` says when an explanation contradicts the photo: a word credited by the
model names an attribute value the product does not have ("navy" on a red shirt), and how well the model
reads that attribute over the catalogue (``attribute_reading``).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..data.images import open_rgb, to_rgb
from ..image.backbones import image_transform
from ..models.embed import embed_texts
from ..text.vocabulary import PAD, UNK, Vocab, token_spans, tokenize
from .arguments import check_index

if TYPE_CHECKING:
    from .run import Run

GRID = (7, 5)  # (rows, cols) of occluded cells: 35 copies of the photo, portrait like the catalogue's photos
FILLS = ("mean", "grey")  # what an occluded cell is painted with (see ``occluded``)
SCALE = 0.2  # change of the cosine score drawn at full colour, for every model (words and regions alike)
BASELINE = "the score with that word read as unknown (<unk>)"  # what a word's effect is measured against
CREDIT = 0.25  # a word is credited when its effect is positive and at least this share of the largest one


@dataclass
class Calibration:
    """Where a pair's score stands among the query's scores over a gallery: what can be compared across models."""

    query: str  # "text" (the caption searched the photos) or "image" (the photo searched the captions)
    rank: int  # 1 + how many gallery entries score above the pair
    gallery: int  # entries in the gallery (the run's catalogue)
    z: float  # (score - the query's mean score over the gallery) / their standard deviation
    mean: float  # the query's mean score over the gallery
    std: float  # their standard deviation


@dataclass
class Explanation:
    """Why one caption and one photo scored as they did (see the module docstring)."""

    text: str  # the caption, as given
    score: float  # cosine similarity of the pair
    words: list[str]  # the words the model reads, in order
    spans: list[tuple[int, int]]  # character span of each word in ``display_text``
    display_text: str  # ``text``, or its lower-cased form when lower-casing changes its length
    word_scores: np.ndarray  # [len(words)] score drop when each word is read as <unk>
    regions: np.ndarray  # [rows, cols] score drop when each grid cell is greyed out
    photo: np.ndarray  # [H, W, 3] uint8: the photo resized to the model's input size
    seconds: float  # time taken
    text_vector: np.ndarray | None = None  # [D] the caption's joint-space vector
    image_vector: np.ndarray | None = None  # [D] the photo's joint-space vector
    calibration: Calibration | None = None  # the pair among the catalogue (``explain`` fills it in)

    @property
    def grid(self) -> tuple[int, int]:
        """``(rows, columns)`` of the region-importance grid."""
        return tuple(self.regions.shape)

    def top_words(self, n: int = 3) -> list[tuple[str, float]]:
        """The ``n`` words with the largest effect either way, with their score drops, largest ``|drop|`` first."""
        order = np.argsort(-np.abs(self.word_scores), kind="stable")[:n]
        return [(self.words[i], float(self.word_scores[i])) for i in order]


def word_spans(text: str, max_len: int | None = None) -> tuple[str, list[tuple[int, int]]]:
    """The text to show (``text`` itself) and the character span in it of each word the model reads
    (``tokenize``'s words, the first ``max_len``)."""
    spans = token_spans(text)
    return text, spans[:max_len] if max_len is not None else spans


@torch.no_grad()
def word_importance(model: nn.Module, vocab: Vocab, text: str, image_embed: torch.Tensor,
                    device: torch.device | str = "cpu") -> tuple[list[str], np.ndarray, float]:
    """Each read word's share of the score of ``text`` against ``image_embed`` ``[D]``.

    Returns:
        (words as read, score drop per word ``[L]`` when it is read as ``<unk>``, the pair's score).
        Words the vocabulary lacks are ``<unk>`` already: their drop is 0.
    """
    model.eval()
    tokens = vocab.encode([text])[0]  # [L]
    words = vocab.read(text) or ["<unk>"]
    n = len(words)
    variants = tokens.repeat(n + 1, 1)  # [n + 1, L]: the text, then one copy per word read as <unk>
    pos = torch.arange(n)
    variants[pos + 1, pos] = torch.where(variants[pos + 1, pos] == PAD, PAD, UNK)
    emb = model.encode_text(variants.to(device)).float().cpu()  # [n + 1, D]
    scores = emb @ image_embed.float().cpu()  # [n + 1]
    return words, (scores[0] - scores[1:]).numpy(), float(scores[0])


def _image_tower(model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """Joint-space vectors ``[B, D]`` of pixels ``[B, 3, H, W]`` through backbone and head.

    A frozen backbone runs in the fastest runtime the machine has (``xmodal.image.runtime``, when present: a
    cached ONNX graph checked against PyTorch), and its pooled features go through ``encode_image``.
    """
    cfg = model.cfg
    if cfg.finetune or cfg.tune_blocks or pixels.device.type != "cpu":
        return model.encode_image(pixels).float().cpu()
    try:
        from ..image.runtime import backbone_features
    except ImportError:  # no runtime module: PyTorch
        feats = model.backbone(pixels)
    else:
        feats = backbone_features(model.backbone, pixels)
    return model.encode_image(feats.float()).float().cpu()  # [B, D]


def occluded(pixels: torch.Tensor, grid: tuple[int, int] = GRID, fill: str = "mean") -> torch.Tensor:
    """``pixels`` ``[3, H, W]`` (normalised) followed by one copy per grid cell with that cell painted over:
    ``[1 + rows * cols, 3, H, W]``, row-major over the cells.

    Args:
        fill: ``mean``: the photo's own mean colour (a grey for most photos; it hides the cell without
            pasting a dark square onto a light backdrop, which a model reads as an object of its own);
            ``grey``: the backbone's normalisation mean (0 after normalisation).
    """
    if fill not in FILLS:
        raise ValueError(f"unknown fill {fill!r}; choose one of {FILLS}")
    value = pixels.mean((1, 2))[:, None, None] if fill == "mean" else 0.0  # [3, 1, 1] or a scalar
    rows, cols = grid
    _, h, w = pixels.shape
    ys = np.linspace(0, h, rows + 1).round().astype(int)
    xs = np.linspace(0, w, cols + 1).round().astype(int)
    batch = pixels.repeat(1 + rows * cols, 1, 1, 1)  # [1 + R*C, 3, H, W]
    for r in range(rows):
        for c in range(cols):
            batch[1 + r * cols + c, :, ys[r]:ys[r + 1], xs[c]:xs[c + 1]] = value
    return batch


@torch.no_grad()
def region_importance(model: nn.Module, pixels: torch.Tensor, text_embed: torch.Tensor,
                      grid: tuple[int, int] = GRID, batch: int = 64, fill: str = "mean"
                      ) -> tuple[np.ndarray, float]:
    """Occlusion sensitivity of the score of ``pixels`` ``[3, H, W]`` against ``text_embed`` ``[D]``.

    Returns:
        (score drop per cell ``[rows, cols]`` when the cell is greyed out, the pair's score).
    """
    drops, score, _ = _occlusion(model, pixels, text_embed, grid, batch, fill)
    return drops, score


def _occlusion(model: nn.Module, pixels: torch.Tensor, text_embed: torch.Tensor, grid: tuple[int, int],
               batch: int, fill: str) -> tuple[np.ndarray, float, torch.Tensor]:
    """``region_importance``, and the photo's own joint-space vector ``[D]``."""
    model.eval()
    device = next(model.parameters()).device
    copies = occluded(pixels, grid, fill)  # [1 + R*C, 3, H, W]
    emb = torch.cat([_image_tower(model, copies[s:s + batch].to(device)) for s in range(0, len(copies), batch)])
    scores = emb @ text_embed.float().cpu()  # [1 + R*C]
    return (scores[0] - scores[1:]).reshape(grid).numpy(), float(scores[0]), emb[0]


def explain_pair(model: nn.Module, vocab: Vocab, text: str, image: Image.Image, grid: tuple[int, int] = GRID,
                 device: torch.device | str = "cpu") -> Explanation:
    """Word and region importance of one caption and one photo (a PIL image, any size)."""
    from ..data.images import to_rgb
    t = time.perf_counter()
    model.eval()
    device = torch.device(device)
    h, w = model.cfg.image_size
    image = to_rgb(image)
    pixels = image_transform(model.cfg.backbone, (h, w))(image)  # [3, H, W]
    with torch.no_grad():
        text_embed = model.encode_text(vocab.encode([text]).to(device)).float().cpu()[0]  # [D]
    with torch.no_grad():
        regions, score, image_embed = _occlusion(model, pixels, text_embed, grid, batch=64, fill="mean")
    words, drops, _ = word_importance(model, vocab, text, image_embed, device)
    shown, spans = word_spans(text, vocab.max_len)
    if len(spans) != len(words):  # a text with no word: the model read one <unk>
        spans = []
    photo = np.asarray(image.resize((w, h), Image.BILINEAR), dtype=np.uint8)
    return Explanation(text=text, score=score, words=words, spans=spans, display_text=shown, word_scores=drops,
                       regions=regions, photo=photo, seconds=time.perf_counter() - t,
                       text_vector=text_embed.numpy(), image_vector=image_embed.numpy())


def _as_image(run: Run, image: Image.Image | str | os.PathLike | bytes | int) -> Image.Image:
    if isinstance(image, (int, np.integer)):  # bool included: refused by check_index
        return run.catalogue.open_image(check_index(image, len(run.catalogue), "image (an item index)"))
    return to_rgb(image) if isinstance(image, Image.Image) else open_rgb(image)


def explain(run: Run, text: str, image: Image.Image | str | os.PathLike | bytes | int,
            grid: tuple[int, int] = GRID, query: str = "text") -> Explanation:
    """Why ``text`` and ``image`` (a PIL image, a path, the file's bytes, or an item index of the run's
    catalogue) score as they do under ``run``'s model, with the pair's ``calibration`` among the catalogue
    from the side of ``query`` (``text``: the caption searched the photos; ``image``: the photo the captions).

    Raises:
        ValueError: a non-string ``text``, an index outside the catalogue or an unreadable ``image``, a bad ``grid``.
    """
    if query not in ("text", "image"):
        raise ValueError(f"query must be 'text' or 'image'; got {query!r}")
    if not isinstance(text, str):
        raise ValueError(f"text must be a string of words; got {type(text).__name__}")
    if (not isinstance(grid, (tuple, list)) or len(grid) != 2
            or not all(isinstance(g, int) and not isinstance(g, bool) and 1 <= g <= 32 for g in grid)):
        raise ValueError(f"grid must be (rows, columns), two whole numbers from 1 to 32; got {grid!r}")
    expl = explain_pair(run.model, run.vocab, text, _as_image(run, image), grid, run.device)
    expl.calibration = calibrate(run, expl, query)
    return expl


def calibrate(run: Run, expl: Explanation, query: str = "text") -> Calibration | None:
    """The pair's rank and standard score among ``query``'s scores over the run's catalogue (its cached gallery
    embeddings): a number that means the same for every model, where a raw cosine does not."""
    if expl.text_vector is None or expl.image_vector is None:
        return None
    gallery = run.image_embeds if query == "text" else run.text_embeds  # [N, D]
    vector = expl.text_vector if query == "text" else expl.image_vector  # [D]
    scores = gallery.float().numpy() @ np.asarray(vector, dtype=np.float32)  # [N]
    if not len(scores):
        return None
    mean, std = float(scores.mean()), float(scores.std())
    return Calibration(query=query, rank=int((scores > expl.score + 1e-6).sum()) + 1, gallery=len(scores),
                       z=(expl.score - mean) / std if std > 0 else 0.0, mean=mean, std=std)


@dataclass
class Contradiction:
    """A word the model credits that names an attribute value the photo's product does not have."""

    word: str  # the credited word, as read
    effect: float  # its score drop (positive: the match leans on it)
    attribute: str  # the catalogue column whose values it names (``colour``)
    value: str  # the product's own value of that column (``Red``)
    named: list[str]  # the column's values the word is part of (``Navy Blue``)
    reading: dict  # ``attribute_reading`` of the column: how well the model reads it over the catalogue


def credited_words(expl: Explanation, share: float = CREDIT) -> list[tuple[str, float]]:
    """The words the explanation credits: a positive effect of at least ``share`` of the largest one."""
    top = float(np.max(expl.word_scores, initial=0.0))
    if top <= 0:
        return []
    return [(w, float(v)) for w, v in zip(expl.words, expl.word_scores) if v > 0 and v >= share * top]


def attribute_reading(run: Run, attribute: str) -> dict:
    """How well the model reads ``attribute`` over its catalogue: each product's photo is given the value whose
    words (``Navy Blue``, read as a caption) score highest against it, among the column's values.

    Returns:
        ``{"attribute", "accuracy", "majority", "values", "items", "per_value": {value: {"recall", "precision",
        "n"}}}``: ``accuracy`` is the share of products given their own value, ``majority`` what always
        answering the most common value would score; empty for a column with fewer than two values.
    """
    column = run.catalogue.attributes.get(attribute) or []
    labelled = [(i, v) for i, v in enumerate(column) if v]
    values = sorted({v for _, v in labelled})
    if len(values) < 2:
        return {}
    names = embed_texts(run.model, run.vocab, values, run.device).numpy()  # [V, D]
    idx = np.array([i for i, _ in labelled])
    truth = np.array([values.index(v) for _, v in labelled])
    guess = (run.image_embeds.float().numpy()[idx] @ names.T).argmax(1)  # [n]
    per_value = {}
    for j, v in enumerate(values):
        own, called = truth == j, guess == j
        per_value[v] = {"n": int(own.sum()), "recall": float((called & own).sum() / max(own.sum(), 1)),
                        "precision": float((called & own).sum() / called.sum()) if called.any() else float("nan")}
    majority = float(np.bincount(truth, minlength=len(values)).max() / len(truth))
    return {"attribute": attribute, "accuracy": float((guess == truth).mean()), "majority": majority,
            "values": len(values), "items": len(truth), "per_value": per_value}


def reading_check(run: Run, expl: Explanation, item: int, reading=attribute_reading) -> list[Contradiction]:
    """The credited words of ``expl`` (whose photo is item ``item`` of the run's catalogue) that name a value of
    an attribute column other than the product's own (credit for "navy" on a product whose colour is Red).

    Each comes with ``reading(run, column)`` (default ``attribute_reading``), so the page can say how reliably
    the model reads that column instead of presenting the heat as the reason for the match.
    """
    item = check_index(item, len(run.catalogue), "item")
    out = []
    for word, effect in credited_words(expl):
        for attribute, column in run.catalogue.attributes.items():
            own = column[item] if item < len(column) else ""
            named = sorted({v for v in set(column) if v and word in tokenize(v)})
            if not own or not named or word in tokenize(own):
                continue
            if len(named) > 50:  # a word in most values (a brand's "of"): it names none of them
                continue
            out.append(Contradiction(word, effect, attribute, own, named, reading(run, attribute)))
    return out


def legend(scale: float = SCALE, width: int = 240, height: int = 14) -> Image.Image:
    """The colour bar of ``overlay`` and of the highlighted words, from ``-scale`` (left) through 0 to ``+scale``
    (right), over a mid grey: what each colour means, the same for every panel."""
    values = np.linspace(-scale, scale, width, dtype=np.float32)[None, :].repeat(height, 0)  # [h, w]
    rgb, alpha = heat_colours(values, scale)
    out = 160 * (1 - alpha[..., None]) + rgb.astype(np.float32) * alpha[..., None]
    return Image.fromarray(out.clip(0, 255).astype(np.uint8))


def heat_colours(values: np.ndarray, scale: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """RGB ``[..., 3]`` (uint8) and opacity ``[...]`` (0-1) for importance values: warm (orange to red) where
    a part pushes the score up, cool (blue) where it pulls it down, opacity growing with ``|value| / scale``
    (``scale``: the largest ``|value|`` unless given)."""
    v = np.asarray(values, dtype=np.float32)
    scale = float(scale if scale is not None else np.abs(v).max(initial=0.0)) or 1.0
    level = np.clip(v / scale, -1, 1)
    warm = np.array([255, 140, 0], np.float32) + np.array([-25, -120, 0], np.float32) * level[..., None].clip(0, 1)
    cool = np.broadcast_to(np.array([30, 90, 230], np.float32), warm.shape)
    rgb = np.where(level[..., None] >= 0, warm, cool).astype(np.uint8)
    return rgb, np.abs(level)


def overlay(expl: Explanation, scale: int = 2, max_alpha: float = 0.5, heat_scale: float | None = SCALE
            ) -> Image.Image:
    """The photo as the model saw it, in grey (so that the heat shows on a garment of any colour), with the
    region importance laid over it in colour, ``scale`` times its size.

    Args:
        max_alpha: the heat's opacity at full colour: the photo keeps at least ``1 - max_alpha`` of its contrast
            under the strongest cell.
        heat_scale: the score change drawn at full colour (``SCALE`` for every model: one legend for all
            panels); None draws this explanation's own largest change at full colour.
    """
    h, w = expl.photo.shape[:2]
    size = (w * scale, h * scale)
    smooth = np.asarray(Image.fromarray(expl.regions.astype(np.float32), mode="F").resize(size, Image.BILINEAR))
    rgb, alpha = heat_colours(smooth, scale=heat_scale if heat_scale is not None
                              else np.abs(expl.regions).max(initial=0.0))
    grey = Image.fromarray(expl.photo).convert("L").resize(size, Image.BILINEAR)
    photo = 20 + 0.9 * np.asarray(grey.convert("RGB"), dtype=np.float32)  # a little lighter, contrast kept
    a = (alpha * max_alpha)[..., None]
    out = photo * (1 - a) + rgb.astype(np.float32) * a
    rows, cols = expl.grid
    for r in range(1, rows):  # faint grid lines: which cell is which
        out[int(round(r * size[1] / rows)), :, :] *= 0.8
    for c in range(1, cols):
        out[:, int(round(c * size[0] / cols)), :] *= 0.8
    return Image.fromarray(out.clip(0, 255).astype(np.uint8))


def bench_explain(run_dir: str | os.PathLike, repeats: int = 3, data: str | None = None) -> dict:
    """Seconds for one explanation of one pair (an item's own caption and photo) at the run's image size.

    The first call (which loads weights and warms the runtime) is left out; ``seconds`` is the best of
    ``repeats`` and ``median_s`` their median.

    Returns:
        ``{"seconds", "median_s", "image_size", "grid", "copies", "model", "runtime", "threads"}``; ``runtime``
        says what ran the frozen backbone (``onnxruntime`` when ``xmodal.image.runtime`` has its graph, else torch).
    """
    from .run import load_run
    run = load_run(Path(run_dir), data=data)
    cfg = run.model.cfg
    runtime = "torch"
    if not (cfg.finetune or cfg.tune_blocks):
        try:  # as the dashboard finds it once the run's features were extracted: the backbone's graph on disk
            from ..image.runtime import load_graph, requested_runtime
        except ImportError:
            pass
        else:
            if requested_runtime() != "torch" and load_graph(run.model.backbone, tuple(cfg.image_size)) is not None:
                runtime = "onnxruntime"
    text, image = run.catalogue.captions[0], run.catalogue.open_image(0)
    explain(run, text, image)  # warm-up
    times = [explain(run, text, image).seconds for _ in range(repeats)]
    return {"seconds": min(times), "median_s": float(np.median(times)), "image_size": list(cfg.image_size),
            "grid": list(GRID), "copies": 1 + GRID[0] * GRID[1], "model": run.name, "runtime": runtime,
            "threads": torch.get_num_threads()}
