"""The text side: which words a model can read, refusing queries it cannot, and word vectors that are
the same in every process for the same seed (the whole run too, end to end)."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import EARLY_RUNS, TINY_SIZE, early_run
from xmodal.retrieval.run import Hit, SearchResult, UnknownQueryError
from xmodal.text.vocabulary import Vocab, stable_hash, token_spans, tokenize

CAPTIONS = ["Roadster Men Navy Blue Tshirt", "Nike Women Red Shoes", "Roadster Women Red Tshirt",
            "Libas Women Navy Blue Kurta"]


@pytest.fixture
def vocab() -> Vocab:
    return Vocab.build(CAPTIONS)


def test_unknown_words_listed_once_in_order(vocab):
    assert vocab.unknown_words("navy kurtta with asdkjh, KURTTA") == ["kurtta", "with", "asdkjh"]
    assert vocab.unknown_words("Navy Blue Kurta") == []
    assert vocab.check_query("navy blue kurtta") == (["navy", "blue", "kurtta"], ["kurtta"])


@pytest.mark.parametrize("query", ["asdkjh qwpoe", "ASDKJH   qwpoe!"])
def test_query_of_only_unknown_words_is_refused_naming_them(vocab, query):
    with pytest.raises(UnknownQueryError) as err:
        vocab.check_query(query)
    message = str(err.value)
    assert message.startswith("the model knows none of these words: 'asdkjh', 'qwpoe'; use words from")
    assert message.endswith("e.g. 'women', 'blue', 'navy'") and "\n" not in message  # the most frequent words
    assert err.value.unknown_words == ["asdkjh", "qwpoe"] and isinstance(err.value, ValueError)


def test_refusal_suggests_close_spellings(vocab):
    with pytest.raises(UnknownQueryError, match="e.g. 'kurta'"):
        vocab.check_query("kurtta")


@pytest.mark.parametrize("query,reason", [("", "empty query"), ("   ", "empty query"),
                                          ("?!... --", "has no words"), ("😀😀", "has no words"),
                                          ("**<>** ~", "has no words")])
def test_query_without_words_is_refused(vocab, query, reason):
    with pytest.raises(UnknownQueryError, match=reason) as err:
        vocab.check_query(query)
    assert "<" not in str(err.value) and "*" not in str(err.value), "the message never echoes the raw text"


def test_long_queries_are_read_up_to_max_len():
    v = Vocab(["navy"], max_len=3)
    assert v.read("a b c navy") == ["a", "b", "c"]
    with pytest.raises(UnknownQueryError):
        v.check_query("a b c navy")  # the model never reads 'navy'


TRICKY = ["Navy Blue T-Shirt", "İstanbul Kurta", "STRASSE Straße", "ﬁt & Flare", "2XL/3XL\ttee", "Ǆemper ǅ x",
          "Café Crème", " \t\n", "", "😀Red😀Shirt😀", "½ sleeve ²", "ΣΑΡΙ saree", "\u212aelvin K", "İİİ a-b"]


def test_token_spans_and_explanations_read_the_words_tokenize_reads():
    """One tokeniser: ``token_spans`` locates exactly ``tokenize``'s words in the text itself, and the
    explanation's highlighted spans (``explain.word_spans``) are those, on strings with letters that fold
    (İ, the Kelvin sign, ß, ligatures, accents), digits, emoji and invisible characters."""
    from xmodal.retrieval.explain import word_spans
    from xmodal.text.normalise import fold
    assert tokenize("Navy Blue T-Shirt") == ["navy", "blue", "t", "shirt"]
    assert tokenize("İstanbul Kurta") == ["istanbul", "kurta"]  # was "i" "stanbul": the dot split the word
    assert tokenize("\u212aelvin K") == ["kelvin", "k"] and tokenize("ﬁt & Flare") == ["fit", "flare"]
    assert tokenize("STRASSE Straße") == ["strasse", "strasse"] and tokenize("½ sleeve ²") == ["1", "2", "sleeve", "2"]
    for text in TRICKY:
        words = tokenize(text)
        spans = token_spans(text)  # a character that folds to several words ("½" -> "1", "2") spans each
        assert len(spans) == len(words), text
        for w, span in zip(words, spans):
            cut = tokenize(text[span[0]:span[1]])
            assert cut == [w] if spans.count(span) == 1 else w in cut, (text, w, span)
        shown, spans = word_spans(text)
        assert shown == text and all(w in fold(shown[a:b]) for w, (a, b) in zip(words, spans)), text
        assert all(0 <= a < b <= len(shown) for a, b in spans)
        assert word_spans(text, max_len=2)[1] == token_spans(text)[:2]


def test_text_that_looks_the_same_reads_the_same():
    """Invisible characters inside a word no longer split it, accents keep their letters, NFD equals NFC, and
    the tokeniser, the title key and so the split and caption-level ground truth agree."""
    import unicodedata
    from xmodal.evaluation.metrics import title_groups
    from xmodal.text.normalise import normalise_caption
    assert tokenize("Ku\u200brta") == ["kurta"] and tokenize("Ku\u00adrta Set") == ["kurta", "set"]
    assert tokenize("Café Crème") == ["cafe", "creme"]  # was "caf" "cr" "me"
    nfd = unicodedata.normalize("NFD", "Crème Brûlée Kurta")
    assert nfd != "Crème Brûlée Kurta" and tokenize(nfd) == tokenize("Crème Brûlée Kurta")
    assert token_spans("Ku\u200brta top") == [(0, 6), (7, 10)]  # the zero-width space inside the word's span
    same = ["Roadster Men Black T-Shirt", "Roadster Men Black T-\u00adShirt", "Roadster\u200b Men Black T-Shirt",
            "ＲＯＡＤＳＴＥＲ Men Black T-Shirt", unicodedata.normalize("NFD", "Roadster Men Black T-Shirt"),
            "Roadster\u00a0Men  Black T-Shirt\ufeff"]
    assert len({normalise_caption(t) for t in same}) == 1
    assert title_groups(same + ["Roadster Men Blue T-Shirt"]).tolist() == [0] * len(same) + [1]


def test_the_title_split_keeps_invisibly_different_titles_together(tmp_path):
    """Titles that differ only by an invisible character land in one split (8 of 8 leaked before)."""
    from PIL import Image
    from xmodal.data import load_catalogue, make_splits, unseen_title_mask
    rows = ["image,caption"]
    for i in range(40):
        Image.new("RGB", (24, 32), (i * 6, 40, 90)).save(tmp_path / f"{i}.jpg")
        title = f"Brand{i // 2} Men Shirt"
        rows.append(f"{i}.jpg,{title if i % 2 else title.replace('Shirt', 'Sh' + chr(0xAD) + 'irt')}")
    (tmp_path / "captions.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    cat = load_catalogue(tmp_path)
    sp = make_splits(cat, seed=0)
    assert unseen_title_mask(cat, sp["test"], sp["train"]).all()
    where = {int(i): s for s, idx in sp.items() for i in idx}
    assert all(where[2 * j] == where[2 * j + 1] for j in range(20))


def test_search_reports_unknown_words_and_refuses_unreadable_queries(trained_run):
    from xmodal import load_run
    run = load_run(trained_run)
    title = run.catalogue.captions[0]
    typo = "zzqxv"
    assert typo not in run.vocab.stoi
    hits = run.search_text(f"{title} {typo}", k=5)
    assert isinstance(hits, SearchResult) and isinstance(hits, list) and len(hits) == 5
    assert all(isinstance(h, Hit) for h in hits) and hits[0].score >= hits[-1].score
    assert hits.unknown_words == [typo] and hits.query_words == [*tokenize(title), typo]
    assert run.search_text(title, k=3).unknown_words == []
    for query in ("asdkjh qwpoe", "😀😀", "", "!!!"):
        with pytest.raises(UnknownQueryError):
            run.search_text(query, k=5)
        with pytest.raises(ValueError):
            run.embed_text(query)


def test_trained_run_learnt_the_unknown_word(trained_run):
    """Word dropout in training moves <unk> away from its initial (random) word vector."""
    from safetensors.torch import load_file

    from xmodal.text.vocabulary import UNK
    config = json.loads((trained_run / "config.json").read_text())
    assert config["model_config"]["word_dropout"] > 0
    weights = load_file(trained_run / "best.safetensors")["word_embed.weight"].numpy()  # [V, word_dim]
    rng = np.random.default_rng(config["train"].get("seed", 0))  # as word2vec_vectors draws words it lacks
    initial = rng.normal(0, 0.1, size=weights.shape).astype(np.float32)  # [V, word_dim]
    assert not np.allclose(weights[UNK], initial[UNK], atol=1e-6)


# One process per PYTHONHASHSEED (it is fixed when the interpreter starts). Each writes the hash of "navy" and of
# its word2vec vectors, then trains every SAME_SEED_MODELS model through the CLI's ``main`` (what ``python -m
# xmodal.train`` runs) with the same flags and --seed, each model with a cache of its own: the first process
# extracts the image features (cold cache), the second finds them (warm). The first also writes the catalogue.
_PER_HASH_SEED = """
import hashlib, json, os, sys
from pathlib import Path
from xmodal.text.vocabulary import Vocab, stable_hash, word2vec_vectors
folder, catalogue, runs = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
if not (catalogue / "captions.csv").is_file():
    from xmodal.data import generate_demo
    generate_demo(catalogue, n=60, seed=1)
caps = {caps!r}
vectors = word2vec_vectors(Vocab.build(caps), caps, dim=16, seed=3, epochs=5)
(folder / f"hash_seed_{{os.environ['PYTHONHASHSEED']}}.txt").write_text(
    f'{{stable_hash("navy")}} {{hashlib.sha256(vectors.tobytes()).hexdigest()}}')
from xmodal.training.cli import main
for cache, argv in runs:
    os.environ["XMODAL_CACHE"] = cache
    if main(argv):
        sys.exit(f"xmodal.train {{argv}} failed")
"""
HASH_SEEDS = ("1", "2")
SAME_SEED_MODELS = ["siamese", "cmpm-efficientnet"]


def _per_hash_seed(folder: Path) -> tuple[list[tuple[list[str], dict]], Path]:
    """The commands of ``_PER_HASH_SEED``, one process after another, on one thread each, from the session's start
    (conftest.py)."""
    catalogue = folder / "cat"

    def runs(hash_seed: str) -> str:
        return json.dumps([(str(folder / model / "cache"), [
            "--model", model, "--data", str(catalogue), "--epochs", "1", "--batch-size", "16", "--seed", "5",
            "--out", str(folder / model), "--run-id", f"r{hash_seed}", *TINY_SIZE]) for model in SAME_SEED_MODELS])
    script = _PER_HASH_SEED.format(caps=CAPTIONS)
    return [([sys.executable, "-c", script, str(folder), str(catalogue), runs(h)], {"PYTHONHASHSEED": h})
            for h in HASH_SEEDS], folder


EARLY_RUNS["per_hash_seed"] = _per_hash_seed


@pytest.fixture
def per_hash_seed(request) -> Path:
    return early_run("per_hash_seed", request)


@pytest.mark.slow
def test_word_vectors_do_not_depend_on_python_hash_seed(per_hash_seed):
    outs = {(per_hash_seed / f"hash_seed_{h}.txt").read_text().strip() for h in HASH_SEEDS}
    assert len(outs) == 1, outs
    assert outs.pop().split()[0] == str(stable_hash("navy"))


@pytest.mark.slow
def test_same_seed_same_numbers(per_hash_seed):
    """Two runs with the same flags and --seed give the same numbers, whatever PYTHONHASHSEED is and
    whether the first run had to extract the image features (cold cache) or found them (warm)."""
    from safetensors.torch import load_file
    for model in SAME_SEED_MODELS:
        runs = [per_hash_seed / model / f"r{h}" for h in HASH_SEEDS]
        a, b = (json.loads((r / "test.json").read_text()) for r in runs)
        for key in ("item", "caption", "similarity", "chosen_on"):
            assert a[key] == b[key], f"{model}: test.json {key} differs"
        assert (runs[0] / "vocab.json").read_text() == (runs[1] / "vocab.json").read_text()
        wa, wb = (load_file(r / "best.safetensors") for r in runs)
        assert wa.keys() == wb.keys()
        for name in wa:
            assert (wa[name] == wb[name]).all(), f"{model}: weights {name} differ"


def test_long_descriptions_are_read_far_enough_and_truncation_is_stated(tiny_catalogue, tmp_path, capsys):
    """H&M-style descriptions: a generic sentence first, the words that tell products apart later."""
    import csv
    import json
    import shutil

    from conftest import TINY_SIZE
    from xmodal.text.vocabulary import MAX_LEN, auto_max_len
    from xmodal.training.cli import main
    assert auto_max_len(["Peter England Men Stripes Yellow Polo T-Shirt"] * 10) == 32
    filler = ("Soft everyday garment made from a cotton blend with a regular fit and a comfortable feel, "
              "easy to care for, machine washable at forty degrees and designed to last for many seasons.")
    cat = tmp_path / "long"
    shutil.copytree(tiny_catalogue, cat)
    with open(cat / "captions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for i, r in enumerate(rows):
        r["caption"] = f"{filler} {r['caption']}." + (" Extra words" * 80 if i == 0 else "")
    with open(cat / "captions.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    from xmodal.text.vocabulary import tokenize
    longest_ordinary = max(len(tokenize(r["caption"])) for r in rows[1:])
    assert 32 < longest_ordinary <= auto_max_len([r["caption"] for r in rows]) <= MAX_LEN
    assert main(["--model", "siamese", "--data", str(cat), "--epochs", "1", "--batch-size", "16",
                 "--out", str(tmp_path / "runs"), "--run-id", "long", *TINY_SIZE]) == 0
    config = json.loads((tmp_path / "runs" / "long" / "config.json").read_text())
    text = config["text"]
    assert text["max_len"] >= longest_ordinary and text["longest"] > text["max_len"] and text["truncated"] >= 1
    assert "truncated" in capsys.readouterr().err
    from xmodal.text.vocabulary import Vocab
    vocab = Vocab.load(tmp_path / "runs" / "long" / "vocab.json")
    title_words = rows[5]["caption"][len(filler):].lower().split()
    read = vocab.read(rows[5]["caption"])
    assert title_words[-1].strip(".").split("-")[-1] in read  # the distinguishing words are read


def test_word2vec_vectors_are_cached_and_heal(tmp_path, monkeypatch):
    """Trained once per vocabulary, captions and settings; read back equal; a damaged file is trained again."""
    from xmodal.text import vocabulary as text
    monkeypatch.setenv("XMODAL_CACHE", str(tmp_path))
    captions = ["Roadster Men Navy Blue Shirt", "Nivora Women Red Striped Kurta", "Kaveri Men Black Jeans"] * 5
    vocab = Vocab.build(captions)
    first = text.word2vec_vectors(vocab, captions, dim=16, seed=3, epochs=5)
    files = list((tmp_path / "word2vec").glob("*.npy"))
    assert len(files) == 1
    trained = []
    real = text._train_word2vec
    monkeypatch.setattr(text, "_train_word2vec", lambda *a: trained.append(a) or real(*a))
    np.testing.assert_array_equal(text.word2vec_vectors(vocab, captions, dim=16, seed=3, epochs=5), first)
    assert not trained  # read from the cache
    np.testing.assert_array_equal(real(vocab, captions, 16, 3, 5), first)  # what training gives again
    text.word2vec_vectors(vocab, captions, dim=16, seed=4, epochs=5)  # another seed: its own file
    assert len(trained) == 1 and len(list((tmp_path / "word2vec").glob("*.npy"))) == 2
    files[0].write_bytes(files[0].read_bytes()[:60])  # truncated
    np.testing.assert_array_equal(text.word2vec_vectors(vocab, captions, dim=16, seed=3, epochs=5), first)
    assert len(trained) == 2
