"""Depth-aware parameter groups for any ``nn.Module``.

Layer-wise strategies (discriminative rates, DALS's depth-aware filter) need each parameter's depth. We
find it from the module tree alone, so an MLP, a CNN, a torchvision ResNet and a Hugging Face encoder all
work without per-model code:

* a *repeated container* is an ``nn.Sequential`` / ``nn.ModuleList`` with two or more children that own
  parameters (BERT's ``encoder.layer``, ResNet's ``layer1``, an MLP's ``Sequential``); each such child is
  one block;
* everything else is *loose*: runs of loose modules between blocks merge into one block, so the stem
  (embeddings, ``conv1`` + ``bn1``) is block 0 and the head (pooler + classifier, ``fc``) is the last;
* a model with no repeated container gets one block per top-level module, norm layers folded into the
  module before them.

``grouping="children"`` gives the paper's grouping (each top-level child that owns parameters is a
block); a list of name prefixes or a function ``name -> block`` overrides both.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence, Union

import torch
from torch import nn

__all__ = ["Block", "Grouping", "blocks", "block_names"]

Grouping = Union[str, Sequence[str], Callable[[str], int]]

_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)
_RMSNORM = getattr(nn, "RMSNorm", ())


@dataclass
class Block:
    """The parameters of one block, in forward order, with what the strategies need to know of them."""

    index: int
    depth: float
    names: list[str]
    params: list[torch.Tensor]
    no_decay: list[bool]  # biases and norm weights: skipped by decay/trust when a strategy asks


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, _NORMS) or (bool(_RMSNORM) and isinstance(module, _RMSNORM)) or (
        "norm" in type(module).__name__.lower()
    )


def _owns_params(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def _is_container(module: nn.Module) -> bool:
    return isinstance(module, (nn.Sequential, nn.ModuleList)) and (
        sum(_owns_params(c) for c in module.children()) >= 2
    )


def _has_container(module: nn.Module) -> bool:
    return any(_is_container(m) for m in module.modules())


def _units(module: nn.Module, prefix: str) -> list[tuple[str, bool]]:
    """(prefix, is_block) units in registration order; ``is_block`` marks a repeated container's child."""
    out: list[tuple[str, bool]] = []
    if any(p.requires_grad for p in module.parameters(recurse=False)):
        out.append((prefix, False))
    container = _is_container(module)
    for name, child in module.named_children():
        if not _owns_params(child):
            continue
        path = f"{prefix}{name}."
        # a block is never split (ResNet's downsample is a Sequential inside a block); a nested
        # container, or a plain module holding one, is opened further
        if _is_container(child) if container else _has_container(child):
            out.extend(_units(child, path))
        else:
            out.append((path, container))
    return out


def _auto_assign(model: nn.Module) -> dict[str, str]:
    """Map each parameter-owning unit prefix to the key of the block it belongs to."""
    units = _units(model, "")
    has_blocks = any(is_block for _, is_block in units)
    assign: dict[str, str] = {}
    current: str | None = None
    previous_loose = False
    for prefix, is_block in units:
        if is_block:
            current, previous_loose = prefix, False
        elif has_blocks:
            if not previous_loose:
                current = prefix
            previous_loose = True
        else:  # no repeated container: one block per top-level module, norms join the one before
            module = model.get_submodule(prefix.rstrip(".")) if prefix else model
            if current is None or not _is_norm(module):
                current = prefix
        assign[prefix] = current  # type: ignore[assignment]
    return assign


def _unit_of(name: str, prefixes: Iterable[str]) -> str:
    """The longest unit prefix that owns parameter ``name`` ('' is the root's own parameters)."""
    best = None
    for prefix in prefixes:
        if prefix and name.startswith(prefix) and (best is None or len(prefix) > len(best)):
            best = prefix
    if best is None:
        return ""
    return best


def _index_fn(model: nn.Module, grouping: Grouping) -> Callable[[str], object]:
    """A function parameter name -> block key (keys are ranked by first appearance later)."""
    if callable(grouping):
        return grouping
    if isinstance(grouping, str):
        if grouping == "auto":
            assign = _auto_assign(model)
            return lambda name: assign[_unit_of(name, assign)]
        if grouping == "children":
            return lambda name: name.split(".")[0] if "." in name else ""
        raise ValueError(f"grouping must be 'auto', 'children', a list of prefixes or a function, not {grouping!r}")
    prefixes = list(grouping)

    def by_prefix(name: str) -> int:
        for i, prefix in enumerate(prefixes):
            if name.startswith(prefix):
                return i
        raise ValueError(f"parameter {name!r} matches none of the grouping prefixes {prefixes}")

    return by_prefix


def _no_decay(model: nn.Module, name: str, param: torch.Tensor) -> bool:
    owner = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    return param.ndim <= 1 or _is_norm(owner)


def blocks(model: nn.Module | Iterable[torch.Tensor], grouping: Grouping = "auto") -> list[Block]:
    """Split the trainable parameters of ``model`` into depth-ordered blocks.

    Plain parameters (not a module) form one block at depth 0.5, as do models with a single block.
    """
    if not isinstance(model, nn.Module):
        params = [p for p in model if p.requires_grad]
        if not params:
            raise ValueError("no trainable parameters were given: pass a model or parameters with requires_grad=True")
        return [Block(0, 0.5, [f"param{i}" for i in range(len(params))], params, [p.ndim <= 1 for p in params])]
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError(f"{type(model).__name__} has no trainable parameters (all requires_grad=False?)")
    key_of = _index_fn(model, grouping)
    order: dict[object, int] = {}
    for name, _ in named:
        order.setdefault(key_of(name), len(order))
    # an explicit grouping gives the block index itself; the automatic ones rank by first appearance
    keys = sorted(order) if not isinstance(grouping, str) else list(order)
    rank = {k: i for i, k in enumerate(keys)}
    count = len(keys)
    out = [Block(i, 0.5 if count == 1 else i / (count - 1), [], [], []) for i in range(count)]
    for name, param in named:
        block = out[rank[key_of(name)]]
        block.names.append(name)
        block.params.append(param)
        block.no_decay.append(_no_decay(model, name, param))
    return out


def block_names(model: nn.Module, grouping: Grouping = "auto") -> list[list[str]]:
    """The parameter names of each block, bottom to top: what a user checks before trusting the depths."""
    return [b.names for b in blocks(model, grouping)]
