"""One-shot pruning of every block linear of a transformer, block by block, as Wanda and SparseGPT do it.

:func:`prune_one_shot` is the loop chapters 08 and 09 run (chapter 08 also separates SparseGPT's mask from its update
with ``update=``): for each
block in order, the calibration inputs are run through the model *as pruned so far*, each linear's input
statistics (the Hessian ``X Xᵀ``, whose diagonal gives Wanda's input norms) are collected, and its weights are
masked, by magnitude or Wanda within output rows (or N:M groups), or by SparseGPT's solver, which also corrects
the weights it keeps. Embeddings, LayerNorms and the output head are not pruned (as in both papers).
"""

from __future__ import annotations

import copy
from typing import Iterable

import torch
from torch import nn

from .._validate import check_bool
from .sparsegpt import sparsegpt_prune
from .sublayers import block_linears, input_hessian
from .wanda import mask_from_scores, wanda_scores

__all__ = ["ONE_SHOT_METHODS", "prune_one_shot"]

ONE_SHOT_METHODS = ("magnitude", "wanda", "sparsegpt")


def prune_one_shot(model: nn.Module, batches: Iterable, method: str, pattern: float | tuple[int, int], *,
                   update: bool | None = None) -> nn.Module:
    """A pruned copy of ``model`` (``model`` itself is unchanged), no fine-tuning.

    Args:
        model: a transformer whose blocks are ``model.blocks`` (``nn.Sequential`` or ``nn.ModuleList``) with
            attention (q/k/v/out_proj) and MLP (fc1/fc2) sublayers, e.g. ``models.ViT`` or ``models.TinyGPT``.
        batches: calibration batches (tensors or ``(X, y)`` pairs) from the *training* split; a list, since every
            block runs them again.
        method: ``"magnitude"`` (smallest ``|W_ij|`` per output row), ``"wanda"`` (smallest
            ``|W_ij| * ||X_j||`` per row) or ``"sparsegpt"`` (SparseGPT's mask and weight update).
        pattern: a sparsity in [0, 1): per output row for magnitude and Wanda; SparseGPT chooses across the
            rows of each block of 128 columns, so its rows may differ while the layer is at that sparsity; or
            ``(n, m)``: n *kept* of every m consecutive inputs of a row (the reference code of Wanda and SparseGPT
            counts the n pruned; for 2:4 and 4:8 the two agree).
        update: whether the weights that stay get SparseGPT's correction. Default: only for ``"sparsegpt"``, as
            the papers do. ``update=True`` with magnitude or Wanda applies the correction on that method's mask;
            ``update=False`` with SparseGPT keeps its mask and drops its correction (an ablation).

    Magnitude here compares weights within each output row, as Wanda does; the Wanda repository's magnitude
    baseline compares them across the whole layer (a weaker baseline).
    """
    if method not in ONE_SHOT_METHODS:
        raise ValueError(f"method must be one of {', '.join(ONE_SHOT_METHODS)}, got {method!r}")
    update = method == "sparsegpt" if update is None else check_bool(update, "update")  # None: the method's own
    if not isinstance(getattr(model, "blocks", None), (nn.Sequential, nn.ModuleList)):
        raise TypeError(f"model must keep its transformer blocks in model.blocks, got {type(model).__name__}")
    batches = list(batches)
    if not batches:
        raise ValueError("batches is empty: give at least one calibration batch")
    pruned = copy.deepcopy(model)
    for b in range(len(pruned.blocks)):
        layers = {n: m for n, m in block_linears(pruned).items() if n.startswith(f"blocks.{b}.")}
        hessians = input_hessian(pruned, layers, batches) if method != "magnitude" or update else {}
        with torch.no_grad():
            for name, layer in layers.items():
                w = layer.weight
                if method == "sparsegpt":
                    updated, mask = sparsegpt_prune(w, hessians[name], pattern)
                else:
                    scores = w.abs() if method == "magnitude" else wanda_scores(w, hessians[name].diagonal().sqrt())
                    mask = mask_from_scores(scores, pattern)
                    updated = sparsegpt_prune(w, hessians[name], mask=mask)[0] if update else None
                w.copy_((updated if update else w * mask).to(w.dtype))
    return pruned
