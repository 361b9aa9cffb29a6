"""Subword (fastText) vectors for words the vocabulary lacks, and the known word each one is read as.

A run trained with ``--word-vectors fasttext`` keeps gensim FastText's character n-gram table beside its
vocabulary (``vocab.subwords.safetensors``). A word outside the vocabulary then gets the vector gensim would
give it (``wv[word]``: the mean of its hashed 3- to 5-gram rows, "<tshirts>" -> "<ts", "tsh", ...), and is read
as the known word whose fastText vector is closest in cosine, when that cosine is at least ``THRESHOLD``;
below it the word stays ``<unk>``. Only numpy and safetensors are needed here: gensim trains the table
(``vocabulary.fasttext_vectors``) but is never imported to read a run.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..cachefile import atomic_write

FORMAT = "xmodal-subwords-1"  # the safetensors metadata's "format": bump when the layout changes
# Cosine at or above which an unseen word is read as its closest known word. fastText vectors trained on a
# catalogue's few thousand titles all point one way (two random Myntra train words: cosine 0.57 on average; every
# unseen val word has a known neighbour above 0.78), so 0.6-0.7 would map every word. Chosen on the train
# vocabulary alone: of 286 made-up variants of train words (a plural, a doubled last letter, a dropped or swapped
# letter) 0.95 maps 32 % back to their word and 3 % elsewhere, and maps 5 % of 300 English words with no close
# spelling in the vocabulary (GloVe's, 0.9 would map 72 % of them).
THRESHOLD = 0.95
MAX_READ_AS = 50_000  # unseen words remembered per vocabulary (a dashboard answers queries for days)


def _fnv1a(data: bytes) -> int:
    """fastText's hash of an n-gram (gensim ``ft_hash_bytes``): 32-bit FNV-1a over *signed* bytes."""
    h = 2166136261
    for b in data:
        h = ((h ^ (b | 0xFFFFFF00 if b > 127 else b)) * 16777619) & 0xFFFFFFFF  # int8 sign-extended to uint32
    return h


def ngram_hashes(word: str, min_n: int, max_n: int, bucket: int) -> list[int]:
    """Bucket rows of ``word``'s character n-grams, as gensim's ``ft_ngram_hashes`` gives them.

    The n-grams are those of ``compute_ngrams_bytes``: of the UTF-8 of ``"<word>"``, ``min_n`` to ``max_n``
    characters long (a multi-byte character counts once), never the lone ``<`` or ``>``.
    """
    data = f"<{word}>".encode()
    size, out = len(data), []
    for i in range(size):
        if data[i] & 0xC0 == 0x80:  # inside a multi-byte character: n-grams start at characters
            continue
        j, n = i, 1
        while j < size and n <= max_n:
            j += 1
            while j < size and data[j] & 0xC0 == 0x80:
                j += 1
            if n >= min_n and not (n == 1 and (i == 0 or j == size)):
                out.append(_fnv1a(data[i:j]) % bucket)
            n += 1
    return out


@dataclass
class Subwords:
    """A fastText n-gram table and the vocabulary's word vectors, to read unseen words."""

    ngrams: np.ndarray  # [bucket, D] float32: gensim's ``wv.vectors_ngrams``
    known: np.ndarray  # [V, D] float32: unit fastText vectors of the vocabulary's ids (pad and unk: zero)
    min_n: int = 3  # shortest n-gram, in characters
    max_n: int = 5  # longest n-gram
    threshold: float = THRESHOLD  # the least cosine at which an unseen word is read as a known one
    words_hash: str = ""  # ``words_digest`` of the vocabulary ``known`` was made for

    def vector(self, word: str) -> np.ndarray:
        """``[D]``: gensim's ``wv[word]`` for a word outside its vocabulary (zero when it has no n-gram)."""
        rows = ngram_hashes(word, self.min_n, self.max_n, len(self.ngrams))
        if not rows:
            return np.zeros(self.ngrams.shape[1], dtype=np.float32)
        # summed row by row in float32, in gensim's order, so the mean is gensim's to the last bits
        out = np.zeros(self.ngrams.shape[1], dtype=np.float32)
        for r in rows:
            out += self.ngrams[r]
        return out / np.float32(len(rows))

    def nearest(self, word: str) -> tuple[int, float]:
        """``(id, cosine)`` of the known word closest to ``word``'s subword vector (``(1, 0.0)``: none)."""
        v = self.vector(word)  # [D]
        norm = float(np.linalg.norm(v))
        if norm == 0.0 or len(self.known) <= 2:
            return 1, 0.0
        sims = self.known[2:] @ (v / norm)  # [V - 2]: never <pad> or <unk>
        best = int(np.argmax(sims))
        return best + 2, float(sims[best])

    def save(self, path: str | Path) -> None:
        """Write the table as safetensors (arrays and a text header: no pickle), atomically."""
        from safetensors.numpy import save  # lazy: safetensors, only when a run has subwords
        meta = {"format": FORMAT, "min_n": str(self.min_n), "max_n": str(self.max_n),
                "threshold": repr(self.threshold), "words_hash": self.words_hash}
        data = save({"ngrams": np.ascontiguousarray(self.ngrams, dtype=np.float32),
                     "known": np.ascontiguousarray(self.known, dtype=np.float32)}, metadata=meta)
        with atomic_write(path) as f:
            f.write(data)

    @classmethod
    def load(cls, path: str | Path, words: list[str]) -> "Subwords":
        """The table at ``path``, for the vocabulary ``words`` (its ``itos``).

        Raises:
            ValueError: the file is missing, damaged, of another format or made for another vocabulary.
        """
        from safetensors import safe_open  # lazy: safetensors, only when a run has subwords
        try:
            with safe_open(str(path), framework="numpy") as f:
                meta = f.metadata() or {}
                ngrams, known = f.get_tensor("ngrams"), f.get_tensor("known")
            out = cls(ngrams, known, int(meta["min_n"]), int(meta["max_n"]), float(meta["threshold"]),
                      meta.get("words_hash", ""))
        except Exception as err:  # any damage reads as one line naming the file
            raise ValueError(f"{path} cannot be read ({type(err).__name__}: {str(err)[:120]}); "
                             "retrain the run or restore the file") from None
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path} is not a subword table of this version (format {meta.get('format')!r})")
        out.check(words, str(path))
        return out

    def check(self, words: list[str], where: str = "the subword table") -> None:
        """Raises ``ValueError`` unless the table fits the vocabulary ``words`` and holds finite float32 rows."""
        dims = {self.ngrams.shape[-1], self.known.shape[-1]}
        if self.ngrams.ndim != 2 or self.known.ndim != 2 or len(dims) != 1 or len(self.ngrams) == 0:
            raise ValueError(f"{where}: shapes {self.ngrams.shape} and {self.known.shape} do not fit together")
        if len(self.known) != len(words) or (self.words_hash and self.words_hash != words_digest(words)):
            raise ValueError(f"{where} was made for another vocabulary ({len(self.known)} words, not {len(words)})")
        if not (np.isfinite(self.ngrams).all() and np.isfinite(self.known).all()):
            raise ValueError(f"{where} holds non-finite values")
        if not 1 <= self.min_n <= self.max_n:
            raise ValueError(f"{where}: n-gram lengths {self.min_n}..{self.max_n} are not valid")


def words_digest(words: list[str]) -> str:
    """A short fingerprint of a vocabulary's ``itos``: a table is only read with the vocabulary it was made for."""
    return hashlib.sha256("\x00".join(words).encode()).hexdigest()[:16]
