"""sweeps.models: shapes, block structure (top-level children in forward order), masking, the encoder."""
from __future__ import annotations

import pytest
import torch

from sweeps.train import models


def test_mlp_is_the_authors_net_with_blocks_in_order():
    net = models.build("mlp", kind="tensor", regime="scratch", num_classes=10, in_features=20)
    assert [n for n, _ in net.named_children()] == ["fc0", "fc1", "fc2", "head"]
    assert sum(p.numel() for p in net.parameters()) == 20 * 256 + 256 + 2 * (256 * 256 + 256) + 2570
    assert net(torch.randn(4, 20)).shape == (4, 10)
    gmm = models.build("mlp:128,128", kind="tensor", regime="scratch", num_classes=10, in_features=64)
    assert [m.out_features for m in gmm.modules() if isinstance(m, torch.nn.Linear)] == [128, 128, 10]


def test_cnn_and_resnet_on_cifar_shapes():
    x = torch.randn(2, 3, 32, 32)
    cnn = models.build("cnn", kind="image", regime="scratch", num_classes=10)
    assert [n for n, _ in cnn.named_children()] == ["conv1", "conv2", "conv3", "fc", "head"]
    assert [m.out_channels for m in cnn.modules() if isinstance(m, torch.nn.Conv2d)] == [32, 64, 128]
    assert cnn.fc[1].out_features == 256 and cnn(x).shape == (2, 10)
    assert models.build("resnet18", kind="image", regime="scratch", num_classes=10)(x).shape == (2, 10)


@pytest.mark.parametrize("name", ["textcnn", "bilstm", "minilm"])
def test_text_models_ignore_padding(name):
    """Every model that takes padded text gives the same logits however much trailing padding a batch
    has (id 0 is the padding id of the scratch vocabularies and of MiniLM's tokenizer), and a row's
    logits do not depend on the other rows' lengths."""
    torch.manual_seed(0)
    regime, extra = ("finetune", {}) if name == "minilm" else ("scratch", {"vocab_size": 50})
    net = models.build(name, kind="text", regime=regime, num_classes=6, **extra).eval()
    if name == "textcnn":  # a bias above every real window's score: a padded window would win the max
        with torch.no_grad():
            for conv in net.convs:
                conv.bias.fill_(5.0)

    def logits(ids: torch.Tensor) -> torch.Tensor:
        out = net(input_ids=ids, attention_mask=(ids != 0).long())
        return getattr(out, "logits", out)

    ids = torch.tensor([[5, 6, 7, 8, 9, 0, 0], [3, 4, 5, 6, 7, 8, 9]])
    out = logits(ids)
    assert out.shape == (2, 6)
    for pad in (1, 6):
        longer = torch.cat([ids, torch.zeros(2, pad, dtype=torch.long)], dim=1)
        torch.testing.assert_close(logits(longer), out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits(ids[:1, :5]), out[:1], rtol=1e-5, atol=1e-5)  # no padding at all
    if name != "minilm":
        assert list(net.named_children())[0][0] == "embedding" and list(net.named_children())[-1][0] == "head"


@pytest.mark.parametrize("model,kind,regime,words", [
    ("cnn", "tensor", "scratch", ["model 'cnn' does not fit tensor data in the scratch regime", "use mlp or mlp:H1"]),
    ("mlp:0,3", "tensor", "scratch", ["bad model 'mlp:0,3'", "positive widths"]),
    ("mlp:a", "tensor", "scratch", ["bad model 'mlp:a'", "positive widths"]),
    ("mlp", "image", "scratch", ["model 'mlp' does not fit image data", "cnn", "resnet18"]),
    ("minilm", "text", "scratch", ["model 'minilm' does not fit text data in the scratch regime", "textcnn"]),
    ("textcnn", "text", "finetune", ["model 'textcnn' does not fit text data in the finetune regime", "minilm"]),
])
def test_model_that_does_not_fit_is_one_line(model, kind, regime, words):
    with pytest.raises(ValueError) as err:
        models.check_model(model, kind, regime)
    assert "\n" not in str(err.value) and all(w in str(err.value) for w in words), str(err.value)


def test_minilm_ships_locally_and_gets_a_seeded_head():
    assert (models.minilm_path() / "config.json").is_file()
    torch.manual_seed(1)
    a = models.build("minilm", kind="text", regime="finetune", num_classes=3)
    torch.manual_seed(1)
    b = models.build("minilm", kind="text", regime="finetune", num_classes=3)
    torch.testing.assert_close(a.classifier.weight, b.classifier.weight, rtol=0, atol=0)
    ids = torch.tensor([[101, 7592, 102]])
    assert a(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.shape == (1, 3)


def test_missing_model_folder_is_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        models.build(str(tmp_path / "nope"), kind="text", regime="finetune", num_classes=2)
    with pytest.raises(FileNotFoundError, match="cannot load model") as err:
        models.build(str(tmp_path), kind="text", regime="finetune", num_classes=2)  # a folder, no model
    assert "\n" not in str(err.value)
