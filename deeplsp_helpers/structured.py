"""Structured (channel) pruning that really shrinks tensors, built on Torch-Pruning's dependency graph.

- :func:`collapse_channels` removes output channels that contribute nothing downstream.
- :class:`LatencyAwareImportance` scores channels by magnitude divided by their layer's latency share.
- :func:`structured_channel_pruning` prunes globally to a ratio with it, then collapses dead channels.
- ``target_speedup=`` prunes to a requested speed-up with a measured latency table instead
  (:mod:`deeplsp_helpers.speedup`, :mod:`deeplsp_helpers.latency_model`).

Saving and loading a pruned model: :mod:`deeplsp_helpers.serialization`.

Torch-Pruning / DepGraph: Fang et al., "DepGraph: Towards Any Structural Pruning", arXiv:2301.12900.
"""

from __future__ import annotations

import math

import torch
import torch_pruning as tp
from torch import nn

from ._modes import eval_mode
from ._validate import PRUNABLE, check_batch, check_fraction, check_ints, check_module
from .latency_model import layer_costs

__all__ = ["collapse_channels", "output_layers", "LatencyAwareImportance", "structured_channel_pruning"]


def _check(model, example_inputs):
    check_module(model)
    check_batch(example_inputs)


def output_layers(model: nn.Module, example_inputs: torch.Tensor) -> list[nn.Module]:
    """The Conv2d/Linear layers whose output *is* the model's output (never pruned: they fix its shape)."""
    _check(model, example_inputs)
    produced = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out: produced.__setitem__(id(out), mod))
             for m in model.modules() if isinstance(m, PRUNABLE)]
    try:
        with torch.no_grad(), eval_mode(model):
            out = model(example_inputs)
    finally:
        for h in hooks:
            h.remove()
    outs = out if isinstance(out, (tuple, list)) else [out]
    return [produced[id(o)] for o in outs if id(o) in produced]


def _is_out_fn(dep) -> bool:
    return getattr(dep.pruning_fn, "__name__", "") == "prune_out_channels"


def _dead_mask(dep, idxs: list[int], atol: float) -> torch.Tensor:
    """For one producing layer of a group: which of ``idxs`` give exactly nothing for a zero input."""
    layer = dep.layer
    idx = torch.as_tensor(idxs, dtype=torch.long)
    if isinstance(layer, PRUNABLE):
        dead = layer.weight.detach()[idx].flatten(1).abs().amax(1) <= atol
        if layer.bias is not None:
            dead &= layer.bias.detach()[idx].abs() <= atol
        return dead
    if isinstance(layer, nn.modules.batchnorm._BatchNorm):
        # output for a zero input: beta - gamma * mean / sqrt(var + eps); a shift makes the channel constant, not dead
        mean = layer.running_mean[idx] if layer.running_mean is not None else torch.zeros(len(idx))
        var = layer.running_var[idx] if layer.running_var is not None else torch.ones(len(idx))
        gamma = layer.weight.detach()[idx] if layer.affine else torch.ones(len(idx))
        beta = layer.bias.detach()[idx] if layer.affine else torch.zeros(len(idx))
        return (beta - gamma * mean / torch.sqrt(var + layer.eps)).abs() <= atol
    return torch.ones(len(idx), dtype=torch.bool)  # ReLU, pooling, additions: zero in, zero out


def collapse_channels(model: nn.Module, example_inputs: torch.Tensor, *, atol: float = 0.0,
                      check_atol: float = 1e-5) -> dict[str, int]:
    """Physically remove every dead output channel of every Conv2d (and dead Linear output feature).

    A channel is dead when every layer that produces it (its conv, its BN, and any layer coupled to
    it, e.g. through a residual addition) outputs exactly zero for it; then everything that consumes it
    (the next conv's input channels, a linear layer's inputs) is trimmed too, through the dependency
    graph. A zero filter followed by a BatchNorm whose shift is non-zero is a *constant* channel and is
    kept. Activations must map 0 to 0 (ReLU does). The output layers are never touched.

    The model is changed in place. Its outputs on ``example_inputs`` are checked to be unchanged
    (max abs difference <= ``check_atol``), else ``RuntimeError``.
    Returns ``{layer_name: channels removed}``.
    """
    _check(model, example_inputs)
    with eval_mode(model):
        with torch.no_grad():
            before = model(example_inputs)
        keep_out = set(map(id, output_layers(model, example_inputs)))
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
        names = {m: n for n, m in model.named_modules()}
        removed: dict[str, int] = {}
        for layer in [m for m in model.modules() if isinstance(m, PRUNABLE) and id(m) not in keep_out]:
            w = layer.weight.detach()
            cand = (w.flatten(1).abs().amax(1) <= atol).nonzero().flatten().tolist()
            if not cand or len(cand) == w.shape[0]:
                continue  # nothing dead, or the whole layer (removing it all would break the graph)
            fn = tp.prune_conv_out_channels if isinstance(layer, nn.Conv2d) else tp.prune_linear_out_channels
            group = dg.get_pruning_group(layer, fn, idxs=cand)
            alive = set()  # candidates that some coupled producer (BN shift, residual branch) keeps alive
            for i, (dep, idxs) in enumerate(group):
                if _is_out_fn(dep):
                    for root, is_dead in zip(group[i].root_idxs, _dead_mask(dep, list(idxs), atol).tolist()):
                        if not is_dead:
                            alive.add(root)
            idxs = [c for c in cand if c not in alive]
            if idxs and dg.check_pruning_group(group := dg.get_pruning_group(layer, fn, idxs=idxs)):
                group.prune()
                removed[names[layer]] = len(idxs)
        with torch.no_grad():
            diff = (model(example_inputs) - before).abs().max().item()
    if diff > check_atol:
        raise RuntimeError(f"collapse_channels changed the outputs (max abs diff {diff:.2e}); a removed channel was not dead")
    return removed


class LatencyAwareImportance(tp.importance.GroupMagnitudeImportance):
    """Channel magnitude (L1, normalised to mean 1 within its group) divided by the cost share of the
    layers the channel touches, so channels of costly layers are removed first in global pruning.

    The cost of a group is the summed share (measured latency, or MACs) of every Conv2d/Linear whose
    output or input channels the group prunes.

    Build it with :meth:`from_model`. The magnitude criterion follows Li et al., "Pruning Filters for
    Efficient ConvNets", arXiv:1608.08710; weighting by measured latency is in the spirit of
    NetAdapt (Yang et al., arXiv:1804.03230) and HALP (Shen et al., arXiv:2210.06659).
    """

    def __init__(self, costs: dict[nn.Module, float], p: int = 1):
        super().__init__(p=p, group_reduction="mean", normalizer="mean")
        if not costs or any((not isinstance(v, float) and not isinstance(v, int)) or v < 0 for v in costs.values()):
            raise ValueError("costs must be a non-empty {layer: share >= 0} dict (see layer_costs)")
        self.costs = costs
        self.floor = min(v for v in costs.values() if v > 0) if any(v > 0 for v in costs.values()) else 1.0

    @classmethod
    def from_model(cls, model: nn.Module, example_inputs: torch.Tensor, measure: str = "latency", **kwargs):
        """Measure each layer's cost share on ``example_inputs`` (``measure='latency'`` or ``'macs'``)."""
        return cls(layer_costs(model, example_inputs, measure, **kwargs))

    def group_cost(self, group) -> float:
        seen, cost = set(), 0.0
        for dep, _ in group:
            layer = dep.layer
            if isinstance(layer, PRUNABLE) and id(layer) not in seen:
                seen.add(id(layer))
                cost += self.costs.get(layer, 0.0)
        return max(cost, self.floor)

    @torch.no_grad()
    def __call__(self, group):
        magnitude = super().__call__(group)
        if magnitude is None:
            return None
        return magnitude / self.group_cost(group)


class _CappedImportance(tp.importance.Importance):
    """Wraps an importance so that global pruning removes at most ``max_ratio`` of any group's channels:
    the strongest ``ceil((1 - max_ratio) * n)`` channels of each group get an infinite score. (Torch-Pruning's
    own ``max_pruning_ratio`` is checked before a step, not within it: a one-shot global threshold can
    select a whole group, which is then skipped entirely.)"""

    def __init__(self, inner, max_ratio: float):
        self.inner, self.max_ratio = inner, max_ratio

    def __call__(self, group):
        imp = self.inner(group)
        if imp is None:
            return None
        keep = max(1, math.ceil(len(imp) * (1.0 - self.max_ratio)))
        imp = imp.clone().float()
        imp[torch.topk(imp, keep).indices] = float("inf")
        return imp


def structured_channel_pruning(model: nn.Module, example_inputs: torch.Tensor, pruning_ratio: float | None = None,
                               importance=None, ignored_layers=None, iterative_steps: int = 1,
                               round_to: int | None = None, max_pruning_ratio: float | None = None, *,
                               target_speedup: float | None = None, latency_table=None,
                               cost: str = "latency") -> nn.Module:
    """Remove channels, then collapse any channel left dead: either a fraction of them, or as many as a
    requested speed-up needs.

    Args:
        pruning_ratio: remove this fraction of the channels globally (Torch-Pruning's ``BasePruner``).
        target_speedup: instead, remove channel groups in order of least importance lost per predicted
            millisecond saved until ``latency_table`` (a :class:`~deeplsp_helpers.latency_model.LatencyTable`
            measured at ``example_inputs``'s batch size; measured here if None) predicts this speed-up over the
            dense model (:func:`deeplsp_helpers.speedup.prune_to_speedup`; ``cost`` picks latency, MACs or none).
        importance: a Torch-Pruning importance; default for ``pruning_ratio``: :class:`LatencyAwareImportance`
            measured on ``example_inputs``; for ``target_speedup``: L1 magnitude normalised within each group.
        ignored_layers: layers never pruned; default: the output layer(s), which fix the output shape.
        max_pruning_ratio: no group of coupled channels loses more than this fraction; default
            ``max(0.65, pruning_ratio + 0.1)`` (at most 0.95) for a ratio, 0.75 for a speed-up.
    Returns:
        The same model, pruned in place.
    """
    _check(model, example_inputs)
    if (pruning_ratio is None) == (target_speedup is None):
        raise ValueError("give exactly one of pruning_ratio and target_speedup")
    if target_speedup is not None:
        from .speedup import prune_to_speedup

        prune_to_speedup(model, example_inputs, target_speedup, latency_table, cost=cost, importance=importance,
                         round_to=round_to, max_pruning_ratio=0.75 if max_pruning_ratio is None else max_pruning_ratio,
                         ignored_layers=ignored_layers)
        return model
    check_fraction(pruning_ratio, "pruning_ratio")
    check_ints(("iterative_steps", iterative_steps, 1))
    if pruning_ratio == 0:
        return model
    model.eval()
    importance = importance or LatencyAwareImportance.from_model(model, example_inputs)
    ignored = list(ignored_layers) if ignored_layers is not None else output_layers(model, example_inputs)
    if max_pruning_ratio is None:
        max_pruning_ratio = min(0.95, max(0.65, pruning_ratio + 0.1))
    check_fraction(max_pruning_ratio, "max_pruning_ratio", low=pruning_ratio)  # pruning_ratio > 0 here
    pruner = tp.pruner.BasePruner(model, example_inputs, importance=_CappedImportance(importance, max_pruning_ratio),
                                  global_pruning=True,
                                  pruning_ratio=pruning_ratio, iterative_steps=iterative_steps,
                                  ignored_layers=ignored, round_to=round_to, max_pruning_ratio=max_pruning_ratio)
    for _ in range(iterative_steps):
        pruner.step()
    collapse_channels(model, example_inputs)
    return model
