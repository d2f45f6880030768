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


@pytest.mark.parametrize("name", ["textcnn", "bilstm"])
def test_text_models_ignore_padding(name):
    torch.manual_seed(0)
    net = models.build(name, kind="text", regime="scratch", num_classes=6, vocab_size=50).eval()
    ids = torch.tensor([[5, 6, 7, 8, 9, 0, 0], [3, 4, 5, 6, 7, 8, 9]])
    longer = torch.cat([ids, torch.zeros(2, 6, dtype=torch.long)], dim=1)
    out = net(input_ids=ids, attention_mask=(ids != 0).long())
    assert out.shape == (2, 6)
    if name == "bilstm":  # packed sequences: trailing padding changes nothing
        torch.testing.assert_close(net(input_ids=longer, attention_mask=(longer != 0).long()), out)
    assert list(net.named_children())[0][0] == "embedding" and list(net.named_children())[-1][0] == "head"


@pytest.mark.parametrize("model,kind,regime", [
    ("cnn", "tensor", "scratch"), ("mlp:0,3", "tensor", "scratch"), ("mlp:a", "tensor", "scratch"),
    ("mlp", "image", "scratch"), ("minilm", "text", "scratch"), ("textcnn", "text", "finetune"),
])
def test_model_that_does_not_fit_is_one_line(model, kind, regime):
    with pytest.raises(ValueError) as err:
        models.check_model(model, kind, regime)
    assert "\n" not in str(err.value)


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
