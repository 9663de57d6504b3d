"""Structured (channel) pruning that really shrinks tensors, built on Torch-Pruning's dependency graph.

- :func:`collapse_channels` removes output channels that contribute nothing downstream.
- :class:`LatencyAwareImportance` scores channels by magnitude divided by their layer's latency share.
- :func:`structured_channel_pruning` prunes globally to a ratio (L1 magnitude by default), then collapses dead
  channels.
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
from ._validate import PRUNABLE, check_batch, check_fraction, check_ints, check_module, check_number
from .channels import collapse_channels, output_layers
from .latency_model import layer_costs
from .speedup import prune_to_speedup

__all__ = ["collapse_channels", "output_layers", "LatencyAwareImportance", "structured_channel_pruning"]


def _check(model, example_inputs):
    check_module(model)
    check_batch(example_inputs)


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
        if not costs:
            raise ValueError("costs must be a non-empty {layer: share >= 0} dict (see layer_costs)")
        for v in costs.values():
            check_number(v, "each cost share in costs (see layer_costs)", 0, strict=False)
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
                               cost: str = "none") -> nn.Module:
    """Remove channels, then collapse any channel left dead: either a fraction of them, or as many as a
    requested speed-up needs.

    Args:
        pruning_ratio: remove this fraction of the channels globally (Torch-Pruning's ``BasePruner``).
        target_speedup: instead, remove channel groups in order of least importance lost per predicted
            millisecond saved until ``latency_table`` (a :class:`~deeplsp_helpers.latency_model.LatencyTable`
            measured at ``example_inputs``'s batch size; measured here if None) predicts this speed-up over the
            dense model (:func:`deeplsp_helpers.speedup.prune_to_speedup`; ``cost`` picks latency, MACs or none).
        importance: a Torch-Pruning importance; default: L1 group magnitude (for ``target_speedup`` normalised
            within each group), chapter 05's criterion, which chapter 06 found more accurate at the same request
            than weighing channels by their latency (:class:`LatencyAwareImportance`, still available).
        ignored_layers: layers never pruned; default: the output layer(s), which fix the output shape.
        max_pruning_ratio: no group of coupled channels loses more than this fraction; default
            ``max(0.65, pruning_ratio + 0.1)`` (at most 0.95) for a ratio, 0.75 for a speed-up.
    Returns:
        The same model, pruned in place, in the train/eval mode it came in (it is traced in eval mode).
    """
    _check(model, example_inputs)
    if (pruning_ratio is None) == (target_speedup is None):
        raise ValueError("give exactly one of pruning_ratio and target_speedup")
    if target_speedup is not None:
        prune_to_speedup(model, example_inputs, target_speedup, latency_table, cost=cost, importance=importance,
                         round_to=round_to, max_pruning_ratio=0.75 if max_pruning_ratio is None else max_pruning_ratio,
                         ignored_layers=ignored_layers)
        return model
    check_fraction(pruning_ratio, "pruning_ratio")
    check_ints(("iterative_steps", iterative_steps, 1))
    if pruning_ratio == 0:
        return model
    importance = importance or tp.importance.GroupMagnitudeImportance(p=1)
    ignored = list(ignored_layers) if ignored_layers is not None else output_layers(model, example_inputs)
    if max_pruning_ratio is None:
        max_pruning_ratio = min(0.95, max(0.65, pruning_ratio + 0.1))
    check_fraction(max_pruning_ratio, "max_pruning_ratio", low=pruning_ratio)  # pruning_ratio > 0 here
    with eval_mode(model):  # traced in eval mode (BatchNorm's running statistics); the caller's mode comes back
        pruner = tp.pruner.BasePruner(model, example_inputs, importance=_CappedImportance(importance, max_pruning_ratio),
                                      global_pruning=True,
                                      pruning_ratio=pruning_ratio, iterative_steps=iterative_steps,
                                      ignored_layers=ignored, round_to=round_to, max_pruning_ratio=max_pruning_ratio)
        for _ in range(iterative_steps):
            pruner.step()
    collapse_channels(model, example_inputs)
    return model
