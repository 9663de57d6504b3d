"""Fine-grained pruning with masks kept through fine-tuning, Optimal Brain Surgeon for one layer, and per-layer
sensitivity scans (chapters 02-03)."""

from __future__ import annotations

import copy
from typing import Iterable, Mapping, Sequence

import torch
from torch import nn

from ._validate import check_fraction, check_number, check_tensor
from .criteria import layer_scores, prunable_layers
from .masks import fine_grained_mask

__all__ = ["FineGrainedPruner", "global_threshold_sparsities", "obs_prune", "sensitivity_scan"]


class FineGrainedPruner:
    """Zero the lowest-scoring weights of each layer to a given sparsity, and keep them at zero.

    Args:
        model: the model to prune (its Conv2d/Linear weights).
        sparsity_dict: ``{layer_name: sparsity}``; layers not listed are left dense.
        scores: optional ``{layer_name: tensor}`` importance (default |w|, i.e. magnitude pruning).

    The masks are computed once, at construction. :meth:`apply` multiplies the weights by them: call it
    once to prune and then **after every optimizer step** while fine-tuning (``train.fine_tune(...,
    callbacks=[pruner.apply])``), because the gradient of a zeroed weight is not zero, and momentum keeps
    moving it away from zero (weight decay only pulls towards zero).

    When to use which: this pruner keeps its own masks outside the model, takes any score (chapter 02's
    criteria) and leaves the model's parameters and ``state_dict`` untouched, which suits experiments.
    :func:`deeplsp_helpers.deeplsp.apply_unstructured_pruning` uses ``torch.nn.utils.prune`` instead
    (chapter 04): the masks live in the model (``weight_orig``/``weight_mask``, a forward pre-hook), so
    fine-tuning keeps zeros at zero without callbacks, and ``remove_pruning_masks`` makes them permanent
    for deployment; the DeepLSP pipeline uses that one.
    """

    def __init__(self, model: nn.Module, sparsity_dict: Mapping[str, float], scores=None):
        layers = prunable_layers(model)
        if not isinstance(sparsity_dict, Mapping) or not sparsity_dict:
            raise TypeError("sparsity_dict must be a non-empty {layer_name: sparsity} dict")
        unknown = sorted(set(sparsity_dict) - set(layers))
        if unknown:
            raise ValueError(f"unknown layers {unknown}; prunable layers are {sorted(layers)}")
        scores = layer_scores({n: layers[n] for n in sparsity_dict}, scores)
        self.masks = {n: fine_grained_mask(scores[n], s) for n, s in sparsity_dict.items()}

    @torch.no_grad()
    def apply(self, model: nn.Module) -> nn.Module:
        layers = dict(model.named_modules())
        for n, mask in self.masks.items():
            if n not in layers or layers[n].weight.shape != mask.shape:
                raise ValueError(f"model does not match the pruner's masks at layer {n!r}")
            layers[n].weight.mul_(mask.to(layers[n].weight.device))
        return model

    __call__ = apply

    def sparsity(self) -> float:
        """Fraction of zeros over all masked weights."""
        zeros = sum(int((m == 0).sum()) for m in self.masks.values())
        return zeros / sum(m.numel() for m in self.masks.values())


def global_threshold_sparsities(model: nn.Module, sparsity: float, scores=None) -> dict[str, float]:
    """Per-layer sparsities that one global threshold on the scores (default |w|) gives for an overall
    ``sparsity`` over all Conv2d/Linear weights."""
    layers = prunable_layers(model)
    scores = layer_scores(layers, scores)
    flat = torch.cat([scores[n].flatten() for n in layers])
    mask = fine_grained_mask(flat, sparsity)
    out, start = {}, 0
    for n in layers:
        k = scores[n].numel()
        out[n] = float((mask[start:start + k] == 0).float().mean())
        start += k
    return out


@torch.no_grad()
def obs_prune(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float, damp: float = 0.01) -> torch.Tensor:
    """Optimal Brain Surgeon: remove weights one at a time, each time updating the others to compensate.

    Hassibi & Stork, "Second order derivatives for network pruning: Optimal Brain Surgeon", NeurIPS 1992 (1993).
    With the loss near a minimum approximated by L* + 1/2 d^T H d, removing weight q (d_q = -w_q) costs at least
    w_q^2 / (2 [H^-1]_qq), reached by d = -(w_q / [H^-1]_qq) H^-1 e_q. Each step removes the remaining weight with the
    smallest such cost, applies d, and removes q from H^-1 (H^-1 - H^-1 e_q e_q^T H^-1 / [H^-1]_qq, the inverse
    Hessian of the weights still free). The Hessian is dampened, H + damp * mean(diag H) * I, as Hassibi & Stork's
    recursive inverse starts from a multiple of I (and SparseGPT's 1 % dampening does); float64 throughout.

    Args:
        weight: the weights of one layer (any shape; n = weight.numel()).
        hessian: [n, n] symmetric positive semi-definite approximation of the loss Hessian over ``weight.flatten()``
            (e.g. the empirical Fisher: the mean outer product of per-example gradients).
        sparsity: fraction of the n weights to remove, in [0, 1]; round(sparsity * n) are removed.
        damp: relative dampening, >= 0.

    Returns:
        The new weights, ``weight``'s shape and dtype, with the removed ones exactly 0 (``weight`` is not modified).
    Cost: O(k n^2) time and O(n^2) memory for k removals: meant for a layer of a few thousand weights.
    """
    weight = check_tensor(weight, "weight", floating=True)
    n = weight.numel()
    if not isinstance(hessian, torch.Tensor) or hessian.shape != (n, n):
        raise ValueError(f"hessian must be a [{n}, {n}] tensor over weight.flatten(), got "
                         f"{tuple(hessian.shape) if isinstance(hessian, torch.Tensor) else type(hessian).__name__}")
    sparsity = check_fraction(sparsity, "sparsity", high_open=False)
    damp = check_number(damp, "damp", 0, strict=False)
    h = hessian.detach().double()
    h = h + damp * h.diagonal().mean().clamp_min(0) * torch.eye(n, dtype=h.dtype)
    try:
        h_inv = torch.linalg.inv(h)
    except RuntimeError:
        raise ValueError("hessian (after dampening) is singular: give a positive damp") from None
    w = weight.detach().double().flatten().clone()
    free = torch.ones(n, dtype=torch.bool)
    for _ in range(round(sparsity * n)):
        cost = torch.where(free, w.pow(2) / h_inv.diagonal(), torch.inf)
        q = int(cost.argmin())
        col = h_inv[:, q].clone()
        w -= (w[q] / col[q]) * col
        w[q], free[q] = 0.0, False
        h_inv.addr_(col, col, alpha=-1.0 / col[q].item())
    w[~free] = 0.0
    return w.view_as(weight).to(weight.dtype)


@torch.no_grad()
def sensitivity_scan(model: nn.Module, loader: Iterable, sparsities: Sequence[float] = (0.0, 0.3, 0.5, 0.7, 0.8, 0.9),
                     layers: Sequence[str] | None = None, scores=None) -> dict[str, tuple[list[float], list[float]]]:
    """Prune one layer at a time to each sparsity (magnitude, or ``scores``), measure accuracy on ``loader``.

    Returns ``{layer_name: (sparsities, accuracies %)}``, the input of ``plotting.plot_sensitivity``. Use the
    validation split: the scan is for choosing per-layer ratios. The model is not modified.
    """
    from .train import evaluate

    all_layers = prunable_layers(model)
    names = list(all_layers) if layers is None else list(layers)
    unknown = sorted(set(names) - set(all_layers))
    if unknown:
        raise ValueError(f"unknown layers {unknown}; prunable layers are {sorted(all_layers)}")
    if not sparsities:
        raise ValueError("sparsities must not be empty")
    scores = layer_scores({n: all_layers[n] for n in names}, scores)
    result = {}
    for n in names:
        accs = []
        for s in sparsities:
            probe = copy.deepcopy(model)
            FineGrainedPruner(probe, {n: s}, {n: scores[n]}).apply(probe)
            accs.append(evaluate(probe, loader))
        result[n] = (list(sparsities), accs)
    return result
