"""Depth-aware blocks for the four model kinds, with no per-model code."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from dalsopt.groups import block_names, blocks


def prefixes(model: nn.Module, grouping="auto") -> list[set[str]]:
    """Per block, the set of module prefixes (the name minus its last two parts) it holds."""
    return [{n.rsplit(".", 1)[0] for n in names} for names in block_names(model, grouping)]


def test_mlp_one_block_per_linear():
    model = nn.Sequential(nn.Linear(20, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    bs = blocks(model)
    assert [b.names for b in bs] == [["0.weight", "0.bias"], ["2.weight", "2.bias"], ["4.weight", "4.bias"]]
    assert [b.depth for b in bs] == [0.0, 0.5, 1.0]
    assert [b.no_decay for b in bs][0] == [False, True]


class SmallCNN(nn.Module):
    """Attributes, no containers: the authors' conv 32/64/128 + FC 256 shape."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 32, 3), nn.BatchNorm2d(32)
        self.conv2, self.bn2 = nn.Conv2d(32, 64, 3), nn.BatchNorm2d(64)
        self.conv3 = nn.Conv2d(64, 128, 3)
        self.fc1, self.fc2 = nn.Linear(128, 256), nn.Linear(256, 10)


def test_cnn_norms_join_their_conv():
    assert prefixes(SmallCNN()) == [{"conv1", "bn1"}, {"conv2", "bn2"}, {"conv3"}, {"fc1"}, {"fc2"}]


def test_resnet18_stem_residual_blocks_head():
    got = prefixes(torchvision.models.resnet18(num_classes=10))
    assert got[0] == {"conv1", "bn1"}
    assert got[-1] == {"fc"}
    stages = [sorted({p.split(".")[0] + "." + p.split(".")[1] for p in block}) for block in got[1:-1]]
    assert stages == [[f"layer{s}.{i}"] for s in range(1, 5) for i in range(2)]
    # the downsample branch stays inside its residual block
    assert any("layer2.0.downsample.0" in block for block in got)
    assert len(got) == 10


def test_bert_embeddings_layers_head():
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32)
    names = block_names(BertForSequenceClassification(config))
    assert len(names) == 5
    assert all(n.startswith("bert.embeddings.") for n in names[0])
    for i in range(3):
        assert all(n.startswith(f"bert.encoder.layer.{i}.") for n in names[1 + i])
    assert {n.rsplit(".", 2)[0] for n in names[-1]} == {"bert.pooler", "classifier"}
    no_decay = dict(zip(names[1], blocks(BertForSequenceClassification(config))[1].no_decay))
    assert no_decay["bert.encoder.layer.0.attention.output.LayerNorm.weight"] is True
    assert no_decay["bert.encoder.layer.0.attention.self.query.weight"] is False


def test_children_grouping_is_the_papers():
    got = prefixes(torchvision.models.resnet18(), "children")
    assert len(got) == 7 and got[0] == {"conv1"} and got[1] == {"bn1"}


def test_explicit_prefix_and_function_overrides():
    model = SmallCNN()
    assert len(blocks(model, ["conv", "bn", "fc"])) == 3
    bs = blocks(model, lambda name: 0 if name.startswith("fc") else 1)
    assert bs[0].names[0].startswith("fc") and bs[1].names[0] == "conv1.weight"
    with pytest.raises(ValueError, match="matches none of the grouping prefixes"):
        blocks(model, ["conv"])
    with pytest.raises(ValueError, match="grouping must be"):
        blocks(model, "layers")


def test_frozen_parameters_are_left_out():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    model[0].requires_grad_(False)
    assert block_names(model) == [["1.weight", "1.bias"]]
    assert blocks(model)[0].depth == 0.5
