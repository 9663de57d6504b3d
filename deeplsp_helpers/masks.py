"""Reference pruning masks at every granularity (chapter 01).

Each function returns a float mask of the weight's shape, 1 = keep, 0 = prune. The asked ``sparsity``
(fraction of zeros) is hit exactly in units of the granularity: ``round(sparsity * groups)`` groups are
removed, ties at the threshold broken by position, so equal scores never make a mask miss its target.
Scores are magnitudes: |w| for single weights, the Lp norm for groups, whatever the signs.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import prune

from ._validate import check_fraction, check_int, check_ints, check_module, check_number, check_tensor

__all__ = ["fine_grained_mask", "nm_mask", "vector_mask", "kernel_mask", "filter_mask", "channel_mask",
           "hooked_tensors", "pruned_tensors", "masked_layers"]


def hooked_tensors(module: nn.Module) -> list[str]:
    """Names of ``module``'s own tensors that a ``torch.nn.utils.prune`` forward pre-hook recomputes (the pruning
    method itself, a ``prune.BasePruningMethod``, sits in ``module._forward_pre_hooks``): the ones
    ``prune.remove(module, name)`` accepts. A subset of :func:`pruned_tensors`."""
    check_module(module, "module")
    return [h._tensor_name for h in module._forward_pre_hooks.values() if isinstance(h, prune.BasePruningMethod)]


def pruned_tensors(module: nn.Module) -> list[str]:
    """Names of ``module``'s own tensors that carry a ``torch.nn.utils.prune`` mask: each one a pruning forward
    pre-hook recomputes, and each one stored as the pair that pruning leaves (a parameter ``<name>_orig`` next to a
    buffer ``<name>_mask``, e.g. after the hook was deleted). A buffer merely named ``..._mask`` (an attention mask,
    say) is not a prune mask. Submodules are not looked at: see :func:`masked_layers`."""
    names = hooked_tensors(module)
    params = {p for p, _ in module.named_parameters(recurse=False)}
    for b, _ in module.named_buffers(recurse=False):
        base = b[:-len("_mask")]
        if b.endswith("_mask") and f"{base}_orig" in params and base not in names:
            names.append(base)
    return names


def masked_layers(model: nn.Module) -> list[str]:
    """Names (as ``model.named_modules()`` gives them, ``""`` for the model itself) of the modules that still carry
    a ``torch.nn.utils.prune`` mask on any of their tensors (:func:`pruned_tensors`); empty when none does."""
    check_module(model)
    return [name for name, m in model.named_modules() if pruned_tensors(m)]


def _check_sparsity(sparsity) -> float:
    return check_fraction(sparsity, "sparsity", high_open=False)


def _check_p(p) -> float:
    return check_number(p, "p", 0, hint=" (1 for L1, 2 for L2)")


def _keep_top(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """A 0/1 mask over the flat ``scores`` removing the ``round(sparsity * n)`` lowest (first index on ties)."""
    flat = scores.flatten()
    n_prune = round(sparsity * flat.numel())
    mask = torch.ones_like(flat)
    if n_prune:
        order = torch.argsort(flat, stable=True)  # ascending; equal scores keep their index order
        mask[order[:n_prune]] = 0.0
    return mask.view(scores.shape)


def fine_grained_mask(w: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Remove the ``round(sparsity * numel)`` individual weights with the smallest |w|.

    Magnitude pruning as in Han et al., "Learning both Weights and Connections for Efficient Neural
    Networks", arXiv:1506.02626.
    """
    w = check_tensor(w, "weight", floating=True, min_ndim=1)
    return _keep_top(w.abs(), _check_sparsity(sparsity)).to(w.dtype)


def nm_mask(w: torch.Tensor, n: int = 2, m: int = 4, dim: int | None = None) -> torch.Tensor:
    """N:M sparsity: keep the ``n`` largest |w| in every run of ``m`` consecutive weights along ``dim``.

    ``dim`` defaults to the input dimension, 1, of a weight ``[out, in, *kernel]``: the rows of a Linear
    weight ``[out, in]``, and for a convolution ``[out, in, kh, kw]`` groups of ``m`` *input channels* at
    every (output channel, kernel position). That is the layout NVIDIA's sparse tensor cores read and its
    ASP library prunes (a conv weight is seen as the matrix ``[kh * kw * out, in]``), not runs of the
    flattened ``in * kh * kw`` that would straddle kernels. A 1-D tensor is grouped along its only dimension.

    Lengths that are not a multiple of ``m``:

    - a vector or a matrix: the last, shorter run of ``r`` weights keeps ``min(n, r)`` (a definition for any
      matrix; sparse tensor cores only run complete groups);
    - a convolution weight (3 or more dimensions): refused with a ``ValueError``. Such a layer, e.g. a first
      convolution with 1 or 3 input channels, cannot hold the pattern the hardware needs, and keeping
      ``min(n, r)`` of a short group would leave it silently dense; leave it dense, as ASP does (it skips such
      layers with a message). Pad or choose the channels first if it must be N:M.

    2:4 is the pattern NVIDIA's sparse tensor cores accelerate (Mishra et al., "Accelerating Sparse Deep
    Neural Networks", arXiv:2104.08378).
    """
    w = check_tensor(w, "weight", floating=True, min_ndim=1)
    check_ints(("n", n, 1), ("m", m, 1))
    if n > m:
        raise ValueError(f"N:M needs n <= m, got n={n}, m={m}")
    if dim is None:
        dim = 1 if w.ndim >= 2 else 0                      # the input dimension of [out, in, *kernel]
    check_int(dim, "dim", -w.ndim, w.ndim - 1)
    length = w.shape[dim]
    if w.ndim >= 3 and length % m:
        raise ValueError(
            f"{n}:{m} groups {m} entries along dim {dim % w.ndim} of this {w.ndim}-D (convolution) weight "
            f"{tuple(w.shape)}, which has {length}, not a multiple of {m}: such a layer cannot hold the N:M "
            f"pattern (e.g. a first convolution with 1 input channel); leave this layer dense (NVIDIA's ASP, too, "
            f"skips layers whose shape the sparse kernels cannot run)")
    moved = w.abs().movedim(dim, -1)                       # [..., L]
    pad = (-length) % m
    scores = torch.nn.functional.pad(moved, (0, pad), value=-math.inf) if pad else moved
    groups = scores.reshape(-1, m)                         # [G, m]
    # stable ranking inside each group: larger |w| first, then lower position first
    order = torch.argsort(-groups, dim=1, stable=True)
    keep = torch.zeros_like(groups)
    keep.scatter_(1, order[:, :n], 1.0)
    keep = keep.reshape(*scores.shape)[..., :length]       # drop the padding
    return keep.movedim(-1, dim).contiguous().to(w.dtype)


def _group_mask(w: torch.Tensor, sparsity: float, reduce_dims: tuple[int, ...], p: float) -> torch.Tensor:
    scores = w.abs().pow(p).sum(dim=reduce_dims, keepdim=True)  # the p-th power of the Lp norm ranks alike
    return _keep_top(scores, sparsity).expand_as(w).to(w.dtype).contiguous()


def vector_mask(w: torch.Tensor, sparsity: float, dim: int = -1, p: float = 2) -> torch.Tensor:
    """Remove whole vectors along ``dim`` (for a matrix and ``dim=-1``: rows), the lowest Lp norms first.

    For a convolution weight ``[out, in, kh, kw]`` and ``dim=-1`` a vector is one row of a kernel.
    """
    w = check_tensor(w, "weight", floating=True, min_ndim=2)
    if not -w.ndim <= dim < w.ndim:
        raise ValueError(f"dim {dim} is out of range for a {w.ndim}-D tensor")
    return _group_mask(w, _check_sparsity(sparsity), (dim % w.ndim,), _check_p(p))


def kernel_mask(w: torch.Tensor, sparsity: float, p: float = 2) -> torch.Tensor:
    """Remove whole 2-D kernels ``w[o, i]`` of a convolution weight ``[out, in, kh, kw]``, lowest Lp norm first."""
    w = check_tensor(w, "convolution weight", floating=True, ndim=4, dims=" [out, in, kh, kw]")
    return _group_mask(w, _check_sparsity(sparsity), (2, 3), _check_p(p))


def filter_mask(w: torch.Tensor, sparsity: float, p: float = 2) -> torch.Tensor:
    """Remove whole filters ``w[o]`` (output channels; rows of a linear weight), lowest Lp norm first.

    Filter pruning as in Li et al., "Pruning Filters for Efficient ConvNets", arXiv:1608.08710.
    """
    w = check_tensor(w, "weight", floating=True, min_ndim=2)
    return _group_mask(w, _check_sparsity(sparsity), tuple(range(1, w.ndim)), _check_p(p))


def channel_mask(w: torch.Tensor, sparsity: float, p: float = 2) -> torch.Tensor:
    """Remove whole input channels ``w[:, i]`` (columns of a linear weight), lowest Lp norm first.

    Channel pruning as in He et al., "Channel Pruning for Accelerating Very Deep Neural Networks",
    arXiv:1707.06168 (which selects channels by reconstruction; here by norm).
    """
    w = check_tensor(w, "weight", floating=True, min_ndim=2)
    return _group_mask(w, _check_sparsity(sparsity), (0,) + tuple(range(2, w.ndim)), _check_p(p))
