"""Fine-grained pruning with masks kept through fine-tuning, and per-layer sensitivity scans (chapters 02-03)."""

from __future__ import annotations

import copy
from typing import Iterable, Mapping, Sequence

import torch
from torch import nn

from .criteria import layer_scores, prunable_layers
from .masks import fine_grained_mask

__all__ = ["FineGrainedPruner", "global_threshold_sparsities", "sensitivity_scan"]


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
