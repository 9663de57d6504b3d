"""Attention heads and MLP hidden neurons: their importance from a per-weight criterion, and their physical removal."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from .._validate import check_finite, check_int, check_module
from ..criteria import layer_scores
from .sublayers import _QKV, _is_attention, _is_mlp, _join, attention_modules, mlp_modules


def _scores_for(model: nn.Module, scores, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """The per-weight scores of the named layers: ``scores[name]`` if given, else |w| (L1 magnitude)."""
    modules = dict(model.named_modules())
    return layer_scores({n: modules[n] for n in names}, scores)


def head_importance(model: nn.Module, scores: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """``{attention name: tensor [num_heads]}``: a per-weight criterion summed over the weights a head owns (its
    rows of q/k/v and its columns of ``out_proj``), i.e. over everything :func:`remove_heads` deletes.

    Args:
        scores: ``{layer name: per-weight score}`` from :mod:`deeplsp_helpers.criteria` (e.g. ``taylor``,
            ``magnitude``); default the L1 magnitude ``|w|``. Summing a criterion over a group is the group
            importance of DepGraph (Fang et al., arXiv:2301.12900); per head as in Michel, Levy & Neubig, "Are
            Sixteen Heads Really Better than One?", arXiv:1905.10650 (which uses a gradient-based score).
    """
    attns = attention_modules(model)
    if not attns:
        raise ValueError("model has no attention sublayers (q_proj, k_proj, v_proj, out_proj and head_dim)")
    out = {}
    for name, attn in attns.items():
        h, d = attn.num_heads, attn.head_dim
        s = _scores_for(model, scores, [_join(name, a) for a in (*_QKV, "out_proj")])
        for layer, t in s.items():  # a NaN score would rank heads arbitrarily (NaN compares false with everything)
            check_finite(t, f"the scores of {layer!r}")
        total = sum(s[_join(name, a)].reshape(h, d, -1).sum(dim=(1, 2)) for a in _QKV)  # rows: [h*d, D] -> [h]
        out[name] = total + s[_join(name, "out_proj")].reshape(-1, h, d).sum(dim=(0, 2))   # columns: [D, h*d] -> [h]
    return out


def neuron_importance(model: nn.Module, scores: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """``{mlp name: tensor [hidden]}``: a per-weight criterion summed over hidden neuron ``j``'s row of ``fc1`` and
    column of ``fc2`` (what :func:`remove_mlp_neurons` deletes). ``scores`` as in :func:`head_importance`."""
    mlps = mlp_modules(model)
    if not mlps:
        raise ValueError("model has no MLP sublayers (fc1 and fc2)")
    out = {}
    for name in mlps:
        s = _scores_for(model, scores, [_join(name, "fc1"), _join(name, "fc2")])
        for layer, t in s.items():
            check_finite(t, f"the scores of {layer!r}")
        out[name] = s[_join(name, "fc1")].sum(1) + s[_join(name, "fc2")].sum(0)  # [hidden, D] rows + [D, hidden] columns
    return out


def _indices(idx, size: int, what: str, unit: str) -> list[int]:
    if isinstance(idx, torch.Tensor):
        if idx.ndim != 1 or idx.is_floating_point() or idx.dtype == torch.bool:
            raise TypeError(f"{what} must be a sequence of int indices or a 1-D integer tensor")
        idx = idx.tolist()
    if isinstance(idx, (str, bytes)) or not hasattr(idx, "__iter__"):
        raise TypeError(f"{what} must be a sequence of int indices, got {type(idx).__name__}")
    idx = list(idx)
    for i in idx:
        check_int(i, f"each entry of {what}", None)  # the range below, with its own message
        if not 0 <= i < size:
            raise ValueError(f"{unit} index {i} is out of range: there are {size} {unit}s (0..{size - 1})")
    if len(set(idx)) != len(idx):
        raise ValueError(f"{what} lists an index twice: {sorted(idx)}")
    if len(idx) == size:
        raise ValueError(f"cannot remove all {size} {unit}s; keep at least one")
    return idx


def _shrink(layer: nn.Linear, keep: torch.Tensor, dim: int) -> None:
    """Keep only the rows (``dim=0``, with the bias) or columns (``dim=1``) ``keep`` of ``layer``, in place."""
    with torch.no_grad():
        layer.weight = nn.Parameter(layer.weight.index_select(dim, keep).clone(), layer.weight.requires_grad)
        if dim == 0 and layer.bias is not None:
            layer.bias = nn.Parameter(layer.bias[keep].clone(), layer.bias.requires_grad)
    layer.out_features, layer.in_features = layer.weight.shape


def remove_heads(attention: nn.Module, heads: Sequence[int]) -> nn.Module:
    """Physically remove attention heads: their rows of ``q_proj``/``k_proj``/``v_proj`` (weights and biases) and
    their columns of ``out_proj``, in place; ``num_heads`` follows. ``attention`` may also be a block with an
    ``attn`` attribute.

    The output projection's bias and width stay: the sublayer still maps the residual stream's width to itself, so
    nothing outside it changes. A head whose output is already zero (its ``out_proj`` columns, or its ``v_proj``
    rows and bias, zeroed) is removed without changing the model's outputs.
    Returns the attention module.
    """
    check_module(attention, "attention")
    if not _is_attention(attention) and _is_attention(getattr(attention, "attn", None)):
        attention = attention.attn
    if not _is_attention(attention):
        raise TypeError("attention must have nn.Linear q_proj, k_proj, v_proj, out_proj and an int head_dim "
                        "(models.SelfAttention), or be a block with such an .attn")
    h, d = attention.num_heads, attention.head_dim
    if any(getattr(attention, a).out_features != h * d for a in _QKV) or attention.out_proj.in_features != h * d:
        raise ValueError(f"q/k/v/out projections do not all have num_heads x head_dim = {h} x {d} features")
    gone = set(_indices(heads, h, "heads", "head"))
    kept = [j for j in range(h) if j not in gone]
    if not gone:
        return attention
    keep = torch.tensor([j * d + c for j in kept for c in range(d)], device=attention.q_proj.weight.device)
    for a in _QKV:
        _shrink(getattr(attention, a), keep, 0)
    _shrink(attention.out_proj, keep, 1)
    return attention


def remove_mlp_neurons(block: nn.Module, neurons: Sequence[int]) -> nn.Module:
    """Physically remove hidden neurons of an MLP: their rows of ``fc1`` (and bias entries) and their columns of
    ``fc2``, in place. ``block`` is the MLP (``fc1``, ``fc2``) or a block with an ``mlp`` attribute.

    ``fc2``'s bias and output width stay (the residual stream's width), so nothing outside the MLP changes. A
    neuron whose contribution is already zero (its ``fc2`` column zeroed, or its ``fc1`` row and bias zeroed:
    GELU(0) = 0) is removed without changing the outputs. Returns the MLP module.
    """
    check_module(block, "block")
    mlp = block if _is_mlp(block) else getattr(block, "mlp", None)
    if mlp is None or not _is_mlp(mlp):
        raise TypeError("block must have nn.Linear fc1 and fc2 (models.MLP), or be a block with such an .mlp")
    hidden = mlp.fc1.out_features
    if mlp.fc2.in_features != hidden:
        raise ValueError(f"fc1 has {hidden} outputs but fc2 takes {mlp.fc2.in_features} inputs")
    gone = set(_indices(neurons, hidden, "neurons", "neuron"))
    if not gone:
        return mlp
    keep = torch.tensor([j for j in range(hidden) if j not in gone], device=mlp.fc1.weight.device)
    _shrink(mlp.fc1, keep, 0)
    _shrink(mlp.fc2, keep, 1)
    return mlp
