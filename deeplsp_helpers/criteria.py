"""Pruning criteria: importance scores per weight (or per BN channel), higher = more important (chapter 02).

Every function returns ``{layer_name: score}`` with one score tensor of the weight's shape for each
``Conv2d``/``Linear`` layer (``bn_scale``: one score per BatchNorm channel). Data-driven criteria accumulate
over several calibration batches, one gradient per batch (``obd``: one per example), never a single saved gradient.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import torch
from torch import nn

from ._modes import eval_mode
from ._validate import PRUNABLE, check_int, check_module, check_number

__all__ = ["prunable_layers", "layer_scores", "random_scores", "magnitude", "gradient", "taylor", "obd", "bn_scale"]


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The model's Conv2d and Linear layers by name."""
    check_module(model)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, PRUNABLE)}
    if not layers:
        raise ValueError("model has no Conv2d or Linear layers")
    return layers


def layer_scores(layers: Mapping[str, nn.Module], scores=None) -> dict[str, torch.Tensor]:
    """The per-weight scores of ``layers`` (``{name: layer}``): ``scores[name]`` (detached) where ``scores`` is given,
    else ``|w|`` (magnitude). ``TypeError`` unless ``scores`` is a dict; ``ValueError`` for a layer it has no entry
    for, or an entry that is not a tensor of the layer's weight shape."""
    if scores is None:
        return {n: m.weight.detach().abs() for n, m in layers.items()}
    if not isinstance(scores, Mapping):
        raise TypeError("scores must be a dict {layer name: per-weight score}, e.g. criteria.taylor(model, batches)")
    out = {}
    for n, m in layers.items():
        if n not in scores:
            raise ValueError(f"scores has no entry for {n!r}; pass a criterion computed on this model "
                             "(e.g. criteria.magnitude(model))")
        if not isinstance(scores[n], torch.Tensor) or scores[n].shape != m.weight.shape:
            raise ValueError(f"scores[{n!r}] must be a tensor of the weight's shape {tuple(m.weight.shape)}")
        out[n] = scores[n].detach()
    return out


def random_scores(model: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """Uniform random scores: the baseline every criterion must beat."""
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.rand(m.weight.shape, generator=gen) for n, m in prunable_layers(model).items()}


def magnitude(model: nn.Module, p: float = 1) -> dict[str, torch.Tensor]:
    """|w|^p. Element by element, L1 (p=1) and L2 (p=2) rank weights identically (x -> x^2 is monotonic
    on |w|); they differ only once scores are summed over a group (a filter, a channel).

    Han et al., "Learning both Weights and Connections for Efficient Neural Networks", arXiv:1506.02626.
    """
    p = check_number(p, "p", 0, hint=" (1 for L1, 2 for L2)")
    return {n: m.weight.detach().abs().pow(p).clone() for n, m in prunable_layers(model).items()}


def _check_plain_weights(layers: dict[str, nn.Module]) -> None:
    """``ValueError`` for a layer whose weight is recomputed in the forward pass (torch.nn.utils.prune's
    weight_orig * weight_mask): a gradient with respect to it would be zero or fail."""
    for n, m in layers.items():
        if not isinstance(m.weight, nn.Parameter):
            raise ValueError(f"layer {n!r} has a pruning reparametrisation (weight_orig * weight_mask): gradient "
                             f"criteria need plain weights; call torch.nn.utils.prune.remove(module, 'weight') first")


def _per_batch_grads(model: nn.Module, batches: Iterable, layers: dict[str, nn.Module]):
    """Yield ``{name: dL/dw}`` for every (X, y) batch, in eval mode, the model's mode restored after."""
    if batches is None or not hasattr(batches, "__iter__"):
        raise TypeError("batches must be an iterable of (X, y) calibration batches")
    _check_plain_weights(layers)
    weights = [m.weight for m in layers.values()]
    count = 0
    with eval_mode(model):
        for X, y in batches:
            loss = nn.functional.cross_entropy(model(X), y)
            grads = torch.autograd.grad(loss, weights)
            count += 1
            yield dict(zip(layers, grads))
    if count == 0:
        raise ValueError("batches is empty: give at least one (X, y) calibration batch")


def _batch_mean(model: nn.Module, batches: Iterable, term) -> dict[str, torch.Tensor]:
    """Mean over batches of ``term(w, dL/dw)`` for every prunable layer (w detached)."""
    layers = prunable_layers(model)
    total = {n: torch.zeros_like(m.weight) for n, m in layers.items()}
    n_batches = 0
    for grads in _per_batch_grads(model, batches, layers):
        n_batches += 1
        for n, g in grads.items():
            total[n] += term(layers[n].weight.detach(), g)
    return {n: t / n_batches for n, t in total.items()}


def gradient(model: nn.Module, batches: Iterable) -> dict[str, torch.Tensor]:
    """Mean over batches of |dL/dw|: how strongly the loss reacts to each weight (ignores its size)."""
    return _batch_mean(model, batches, lambda w, g: g.abs())


def taylor(model: nn.Module, batches: Iterable) -> dict[str, torch.Tensor]:
    """First-order Taylor estimate of the loss change when w is removed: mean over batches of |w * dL/dw|.

    The per-weight form of the first-order Taylor criterion (as Torch-Pruning's ``TaylorImportance`` computes it).
    Its papers differ in detail: Molchanov et al., "Pruning Convolutional Neural Networks for Resource Efficient
    Inference", arXiv:1611.06440, score a whole feature map by |mean(a * dL/da)| over its activations a;
    "Importance Estimation for Neural Network Pruning", arXiv:1906.10771, square the term, (w * dL/dw)^2, which is
    twice ``obd(..., fisher="batch")``.
    """
    return _batch_mean(model, batches, lambda w, g: (w * g).abs())


def _per_example_squared_grads(model: nn.Module, batches: Iterable, layers: dict[str, nn.Module],
                                chunk_size: int | None) -> dict[str, torch.Tensor]:
    """Mean over every calibration example of (dL_n/dw)^2, L_n one example's cross-entropy (eval mode).

    One gradient per example with ``torch.func``: ``vmap`` over ``grad`` of a ``functional_call`` that runs the
    model on a batch of one; ``chunk_size`` examples at a time bounds the memory (None: a whole batch at once).
    """
    from torch.func import functional_call, grad, vmap

    if batches is None or not hasattr(batches, "__iter__"):
        raise TypeError("batches must be an iterable of (X, y) calibration batches")
    _check_plain_weights(layers)
    key = {n: f"{n}.weight" if n else "weight" for n in layers}  # "" when the model is itself one layer
    weights = {key[n]: m.weight.detach() for n, m in layers.items()}
    fixed = {n: p.detach() for n, p in model.named_parameters() if n not in weights}
    fixed.update(dict(model.named_buffers()))

    def loss_of_one(w: dict, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, {**fixed, **w}, (x.unsqueeze(0),))  # [1, classes]
        return nn.functional.cross_entropy(out, t.unsqueeze(0))

    per_example = vmap(grad(loss_of_one), in_dims=(None, 0, 0), chunk_size=chunk_size)
    total = {n: torch.zeros_like(w) for n, w in weights.items()}
    count = 0
    with eval_mode(model):
        for X, y in batches:
            g = per_example(weights, X, y)  # {name: [N, *weight.shape]}
            for n in total:
                total[n] += g[n].pow(2).sum(0)
            count += len(y)
    if count == 0:
        raise ValueError("batches is empty: give at least one (X, y) calibration batch")
    return {n: total[key[n]] / count for n in layers}


def obd(model: nn.Module, batches: Iterable, fisher: str = "per_example",
        chunk_size: int | None = None) -> dict[str, torch.Tensor]:
    """Optimal Brain Damage saliency 1/2 * h_ii * w^2 (LeCun, Denker & Solla, "Optimal Brain Damage", NeurIPS 1989).

    The diagonal of the Hessian is approximated by the **empirical Fisher**, the mean over calibration examples
    of the squared *per-example* gradient, h_ii ~ F_ii = (1/N) sum_n (dL_n/dw_i)^2 = (mean g)^2 + Var_n(g). It is
    never negative, and close to the Hessian only near a minimum of a log-likelihood loss.

    Args:
        model: the network; its Conv2d and Linear weights are scored (run in eval mode, mode restored).
        batches: an iterable of (X, y) calibration batches (from the training split).
        fisher: ``"per_example"`` (default, the empirical Fisher above) or ``"batch"``: the square of each
            batch-mean gradient, averaged over batches, (mean g)^2 + Var(g)/B for batches of B. With it the saliency is
            1/2 * mean over batches of (w * g_batch)^2, the square of the Taylor term: it ranks weights much as
            ``taylor`` does (identically for one batch). Kept to show that difference.
        chunk_size: examples per vectorised step of the per-example gradients (memory bound); None for a whole batch.

    Returns:
        ``{layer_name: saliency}``, one tensor of each weight's shape.
    """
    if fisher not in ("per_example", "batch"):
        raise ValueError(f"fisher must be 'per_example' or 'batch', got {fisher!r}")
    if chunk_size is not None:
        check_int(chunk_size, "chunk_size", 1)
    layers = prunable_layers(model)
    if fisher == "batch":
        diag = _batch_mean(model, batches, lambda w, g: g.pow(2))
    else:
        diag = _per_example_squared_grads(model, batches, layers, chunk_size)
    return {n: 0.5 * f * layers[n].weight.detach().pow(2) for n, f in diag.items()}


def bn_scale(model: nn.Module) -> dict[str, torch.Tensor]:
    """|gamma| of every BatchNorm channel: the channel-level criterion of network slimming.

    Liu et al., "Learning Efficient Convolutional Networks through Network Slimming", arXiv:1708.06519.
    """
    check_module(model)
    bns = {n: m for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    if not bns:
        raise ValueError("model has no BatchNorm layers (bn_scale needs them)")
    if any(m.weight is None for m in bns.values()):
        raise ValueError("a BatchNorm layer has affine=False: it has no gamma to rank")
    return {n: m.weight.detach().abs().clone() for n, m in bns.items()}
