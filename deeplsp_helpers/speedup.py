"""Channel pruning to a requested speed-up: the latency-saliency knapsack, solved greedily.

Every group of coupled channels (Torch-Pruning's dependency graph) is scored channel by channel
(L1 magnitude, normalised to mean 1 within its group). Channels leave ``round_to`` at a time, always
the chunk whose removal loses the least importance per unit of cost saved, until the latency the
:class:`~deeplsp_helpers.latency_model.LatencyTable` predicts for the pruned widths reaches
``dense / target_speedup``. The cost can be:

- ``"latency"``: the predicted milliseconds saved (HALP: Shen et al., "Structural Pruning via
  Latency-Saliency Knapsack", arXiv:2210.06659; NetAdapt, arXiv:1804.03230, is the older, layer-by-layer version);
- ``"macs"``: the multiply-accumulates saved (what a method that treats MACs as latency would do);
- ``"none"``: nothing, channels go in order of importance alone (plain global magnitude pruning).

In all three the stopping rule is the same (the table's predicted latency), so they can be compared
at the same requested speed-up. The default is ``"none"``, the cost chapter 06 validates (its recipe,
:data:`deeplsp_helpers.recipe.DEFAULT_RECIPE`): with a group-normalised importance the weighted costs drain the
early, expensive layers and kept less accuracy at the same request (HALP's Taylor score with progressive steps is
:mod:`deeplsp_helpers.halp`). This is what the seed script's constant ``LatencyAwareImportance`` was a placeholder
for.
"""

from __future__ import annotations

import math

import torch
import torch_pruning as tp
from torch import nn

from ._modes import eval_mode
from ._validate import check_fraction, check_ints, check_number
from .channels import collapse_channels, coupled_groups, layer_widths, prunable_dims  # noqa: F401 (prunable_dims: re-exported)
from .latency_model import LatencyTable

__all__ = ["prunable_dims", "reachable_speedup", "plan_to_speedup", "prune_to_speedup", "COSTS"]

COSTS = ("latency", "macs", "none")


def _macs(widths, table: LatencyTable) -> float:
    total = 0.0
    for n, e in table.layers.items():
        cin, cout = widths[n]
        total += (cout if e["depthwise"] else cin * cout) * e["out_positions"]
    return total


def _check_request(target_speedup, cost, max_pruning_ratio) -> None:
    check_number(target_speedup, "target_speedup", 1)
    if cost not in COSTS:
        raise ValueError(f"cost must be one of {COSTS}, got {cost!r}")
    check_fraction(max_pruning_ratio, "max_pruning_ratio", low_open=True)


def _greedy_plan(model, example_inputs, target_speedup, table, cost, importance, round_to, max_pruning_ratio,
                 ignored_layers):
    """The greedy knapsack, run until ``table`` predicts ``target_speedup`` (``math.inf``: as far as it goes).
    Returns the plan and whether it reached the target."""
    if not isinstance(table, LatencyTable):
        raise TypeError(f"table must be a LatencyTable, got {type(table).__name__}")
    table.check_model(model, batch_size=int(example_inputs.shape[0]))
    if list(example_inputs.shape[1:]) != list(table.meta["input_shape"]):
        raise ValueError(f"the table was measured for inputs of shape {table.meta['input_shape']}, "
                         f"not {list(example_inputs.shape[1:])}")
    round_to = table.meta["round_to"] if round_to is None else round_to  # 0 is an error, not "the default"
    check_ints(("round_to", round_to, 1))
    with eval_mode(model):
        _, groups = coupled_groups(model, example_inputs[:1], ignored_layers)
        importance = importance or tp.importance.GroupMagnitudeImportance(p=1, normalizer="mean")
        scored = []
        for group, effects in groups:
            imp = importance(group)
            if imp is None:
                continue
            order = torch.argsort(imp.detach().float().cpu(), stable=True)
            n = len(order)
            most = round_to * math.floor(n * max_pruning_ratio / round_to)
            cum = torch.cat([torch.zeros(1), torch.cumsum(imp.detach().float().cpu()[order], 0)])
            scored.append({"group": group, "effects": effects, "order": order, "most": most, "cum": cum, "k": 0})
    widths = {n: list(w) for n, w in layer_widths(model).items()}
    dense_ms = table.predict_widths(widths)
    goal = dense_ms / target_speedup

    def removed(widths, g, c):
        w = {n: list(v) for n, v in widths.items()}
        for n, d, per in g["effects"]:
            w[n][d] -= c * per
        return w

    current = dense_ms
    while current > goal:
        best, best_score = None, math.inf
        for g in scored:
            c = min(round_to, g["most"] - g["k"])
            if c <= 0:
                continue
            lost = float(g["cum"][g["k"] + c] - g["cum"][g["k"]])
            after = removed(widths, g, c)
            if cost == "latency":
                saved = current - table.predict_widths(after)
            elif cost == "macs":
                saved = _macs(widths, table) - _macs(after, table)
            else:
                saved = 1.0
            if saved <= 0:
                continue
            score = lost / saved
            if score < best_score:
                best, best_score = (g, c, after), score
        if best is None:
            break
        g, c, widths = best
        g["k"] += c
        current = table.predict_widths(widths)
    chosen = [(g["group"], sorted(g["order"][:g["k"]].tolist())) for g in scored if g["k"] > 0]
    plan = {"groups": chosen, "widths": {n: tuple(w) for n, w in widths.items()}, "predicted_ms": current,
            "dense_ms": dense_ms, "predicted_speedup": dense_ms / current}
    return plan, current <= goal


def reachable_speedup(model: nn.Module, example_inputs: torch.Tensor, table: LatencyTable, *,
                      cost: str = "none", importance=None, round_to: int | None = None,
                      max_pruning_ratio: float = 0.75, ignored_layers=None) -> float:
    """The largest speed-up over ``model`` that :func:`plan_to_speedup` can plan with ``table`` under the same
    options: the greedy knapsack run until no group may lose more channels (``max_pruning_ratio``) or no cut
    saves predicted time. It depends on the machine that measured ``table`` (its kernels, vector width among
    them), so ask for a fraction of it rather than a number written down on another machine."""
    if cost not in COSTS:
        raise ValueError(f"cost must be one of {COSTS}, got {cost!r}")
    check_fraction(max_pruning_ratio, "max_pruning_ratio", low_open=True)
    plan, _ = _greedy_plan(model, example_inputs, math.inf, table, cost, importance, round_to, max_pruning_ratio,
                           ignored_layers)
    return plan["predicted_speedup"]


def plan_to_speedup(model: nn.Module, example_inputs: torch.Tensor, target_speedup: float, table: LatencyTable, *,
                    cost: str = "none", importance=None, round_to: int | None = None,
                    max_pruning_ratio: float = 0.75, ignored_layers=None) -> dict:
    """Which channels to remove so that ``table`` predicts ``target_speedup`` over ``model`` as it is passed in
    (normally the dense model; for an already pruned model the speed-up is relative to that model).

    Returns ``{"groups": [(group, idxs)], "widths": {layer: (in, out)}, "predicted_ms": …,
    "dense_ms": …, "predicted_speedup": …}``; nothing is pruned yet (:func:`prune_to_speedup` does).

    Raises:
        ValueError: the table predicts that ``target_speedup`` cannot be reached under ``max_pruning_ratio``; the
            message gives the reachable maximum (:func:`reachable_speedup`).
    """
    _check_request(target_speedup, cost, max_pruning_ratio)
    plan, reached = _greedy_plan(model, example_inputs, target_speedup, table, cost, importance, round_to,
                                 max_pruning_ratio, ignored_layers)
    if not reached:
        raise ValueError(f"cannot reach a {target_speedup:g}x speed-up: this machine's latency table predicts at "
                         f"most {plan['predicted_speedup']:.2f}x with max_pruning_ratio={max_pruning_ratio} and "
                         f"cost={cost!r}; ask for less (speedup.reachable_speedup gives the maximum)")
    return plan


def prune_to_speedup(model: nn.Module, example_inputs: torch.Tensor, target_speedup: float,
                     table: LatencyTable | None = None, *, cost: str = "none", importance=None,
                     round_to: int | None = None, max_pruning_ratio: float = 0.75, ignored_layers=None,
                     threads: int = 1) -> dict:
    """Prune ``model`` in place until ``table`` predicts ``target_speedup`` at ``example_inputs``'s batch size,
    then collapse any channel left dead. Without a ``table`` one is measured first (``threads`` threads).

    Returns the plan of :func:`plan_to_speedup` (widths, predicted latency and speed-up).
    """
    _check_request(target_speedup, cost, max_pruning_ratio)  # before minutes of measuring, not after
    if table is None:
        table = LatencyTable.measure(model, example_inputs, round_to=round_to or 8, threads=threads)
    plan = plan_to_speedup(model, example_inputs, target_speedup, table, cost=cost, importance=importance,
                           round_to=round_to, max_pruning_ratio=max_pruning_ratio, ignored_layers=ignored_layers)
    for group, idxs in plan["groups"]:
        group.prune(idxs=idxs)
    collapse_channels(model, example_inputs[:1])
    if {n: tuple(w) for n, w in layer_widths(model).items()} != plan["widths"]:
        plan["widths"] = layer_widths(model)
        plan["predicted_ms"] = table.predict(model)
        plan["predicted_speedup"] = plan["dense_ms"] / plan["predicted_ms"]
    del plan["groups"]  # they refer to the model before pruning
    return plan

