"""HALP: latency-targeted channel pruning with first-order Taylor importance and a latency-saliency knapsack.

Shen et al., "Structural Pruning via Latency-Saliency Knapsack" (HALP), NeurIPS 2022, arXiv:2210.06659;
followed: the reference code NVlabs/HALP, ``prune/importance.py``, ``prune/pruner.py``, ``prune/cost.py``,
``train/training.py``.

- :class:`TaylorBNImportance` (from :func:`taylor_bn_importance`): a channel scores
  ``|sum over its group's BatchNorms of (gamma * dL/dgamma + beta * dL/dbeta)|`` per batch, averaged over
  batches (Molchanov et al., arXiv:1906.10771), as the reference's ``ChannelImportance``: group sum, then
  absolute value, then mean; no per-group normalisation; gradients in train mode (the reference scores inside
  its training loop). Groups without a BN fall back, as there, to the conv/linear weights' ``w * dL/dw``.
- :func:`knapsack_greedy` / :func:`knapsack_exact`: keep the most importance (a group keeps its top-k, k moving
  ``chunk`` at a time) under a latency budget.
- :func:`halp_prune`: step t of K aims at ``dense_ms / target_speedup**(t/K)`` (the reference's geometric
  ``set_latency_prune_target``), re-scores, plans, prunes, then calls ``fine_tune``.
- :func:`progressive_fine_tune`: a ``fine_tune`` for :func:`halp_prune` that makes the K steps points in one
  fine-tuning run (one cosine schedule over the whole budget, the steps spread over its first part), as HALP
  prunes during training rather than between separate fine-tunes.

Deviations from the reference, and why:

- Scores come from fixed calibration batches with the weights held still; the reference accumulates them over
  the training iterations between pruning steps while the weights move (``fine_tune`` per step stands in for
  that training). A non-finite loss raises instead of silently skipping the batch.
- Plans use the greedy knapsack (least importance lost per predicted ms saved, recomputed from the current
  widths with this machine's :class:`~deeplsp_helpers.latency_model.LatencyTable`). The reference solves a 0/1
  knapsack exactly, with each layer's latency cost taken at its *current input* width: coupled widths make the
  true problem non-separable, and the greedy needs no such approximation. :func:`knapsack_exact` is exact for
  latencies made of adjacent-width terms (a chain of layers); the tests check the greedy against it.
- Channels are removed for real with Torch-Pruning (``group.prune``), not masked; coupled layers come from
  Torch-Pruning's dependency graph, not hand-written group files. The first conv (the reference gives
  ``module.conv1`` importance 10000) is an ignored layer; ``max_pruning_ratio`` (of the width passed in)
  replaces ``disable_layer_prune`` as the guard against emptying a layer.
- With :func:`progressive_fine_tune`, removing channels for real changes the parameters' shapes, so the optimizer
  (and its momentum) starts afresh after each step; the reference masks channels and keeps its optimizer. The
  learning-rate schedule runs on unbroken.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import speedup
from ._modes import eval_mode, train_mode
from ._validate import PRUNABLE, check_batch, check_bool, check_int, check_ints, check_module, check_number
from .channels import collapse_channels, coupled_groups, layer_widths, output_layers
from .latency_model import LatencyTable, _input_shapes

__all__ = ["taylor_bn_importance", "TaylorBNImportance", "knapsack_greedy", "knapsack_exact", "halp_prune",
           "progressive_fine_tune"]

_BN = nn.modules.batchnorm._BatchNorm


def _check_batches(batches) -> list:
    if isinstance(batches, torch.Tensor) or not hasattr(batches, "__iter__"):
        raise TypeError(f"calibration batches must be an iterable of (X, y) pairs, got {type(batches).__name__}")
    batches = list(batches)
    if not batches:
        raise ValueError("calibration batches are empty: pass a few (X, y) batches from the training split")
    for b in batches:
        if not (isinstance(b, (tuple, list)) and len(b) == 2 and all(isinstance(t, torch.Tensor) for t in b)):
            raise TypeError(f"each calibration batch must be an (X, y) pair of tensors, got {type(b).__name__}")
    return batches


def taylor_bn_importance(model: nn.Module, batches, loss_fn=F.cross_entropy) -> dict[str, torch.Tensor]:
    """Signed first-order Taylor terms, one row per batch: ``{layer name: tensor [batches, channels]}``.

    For every affine BatchNorm ``gamma * dL/dgamma + beta * dL/dbeta``; for every Conv2d/Linear the sum over each
    output channel's weights of ``w * dL/dw`` (the reference's fallback for groups without a BN). The loss is
    ``loss_fn(model(X), y)`` with the model in train mode (as HALP scores during training). Afterwards the mode,
    the BN running statistics and ``requires_grad`` flags are restored and the gradients zeroed (set to None);
    the weights are never changed. :class:`TaylorBNImportance` combines the rows into group scores."""
    check_module(model)
    batches = _check_batches(batches)
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, e.g. torch.nn.functional.cross_entropy, got {loss_fn!r}")
    params = list(model.parameters())
    device = params[0].device if params else torch.device("cpu")
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    flags = [p.requires_grad for p in params]
    layers = {n: m for n, m in model.named_modules() if (isinstance(m, _BN) and m.affine) or isinstance(m, PRUNABLE)}
    rows: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
    try:
        for p in params:
            p.requires_grad_(True)
        with train_mode(model):
            for X, y in batches:
                model.zero_grad(set_to_none=True)
                loss = loss_fn(model(X.to(device)), y.to(device))
                if not torch.isfinite(loss).all():
                    raise ValueError(f"the loss on a calibration batch is {loss.item()!r}: check the batch and the model")
                loss.backward()
                for n, m in layers.items():
                    if isinstance(m, _BN):
                        t = sum(p.detach() * p.grad for p in (m.weight, m.bias) if p.grad is not None)
                    else:
                        t = (m.weight.detach() * m.weight.grad).flatten(1).sum(1) if m.weight.grad is not None else 0
                    rows[n].append(torch.zeros(m.weight.shape[0], device=device) + t)
    finally:
        model.zero_grad(set_to_none=True)
        for p, f in zip(params, flags):
            p.requires_grad_(f)
        with torch.no_grad():
            for n, b in model.named_buffers():
                if n in buffers and b.shape == buffers[n].shape:
                    b.copy_(buffers[n])
    return {n: torch.stack(r).float().cpu() for n, r in rows.items()}


class TaylorBNImportance:
    """HALP's importance as a Torch-Pruning importance: ``imp(group)`` is a 1-D tensor, one score per channel of the
    group, ``mean over batches of |sum over the group's BNs of the Taylor term|`` (the conv/linear output terms if
    the group has no BN). Scores describe the model as it was when built: build a new one after pruning."""

    def __init__(self, model: nn.Module, batches, loss_fn=F.cross_entropy):
        scores = taylor_bn_importance(model, batches, loss_fn)
        self.scores = {m: scores[n] for n, m in model.named_modules() if n in scores}

    def __call__(self, group) -> torch.Tensor | None:
        n = len(group[0].idxs)
        bns, outs = [], []
        for i, (dep, idxs) in enumerate(group):
            layer, root = dep.target.module, group[i].root_idxs
            s = self.scores.get(layer)
            if s is None or any(r is None for r in root):
                continue
            if s.shape[1] != layer.weight.shape[0]:
                raise ValueError("TaylorBNImportance is stale: the model was pruned after it was built; build it again")
            if isinstance(layer, _BN):
                bns.append((s[:, idxs], root))
            elif getattr(dep.handler, "__name__", "").endswith("out_channels"):
                outs.append((s[:, idxs], root))
        if not (bns or outs):
            return None
        total = torch.zeros(next(iter(self.scores.values())).shape[0], n)
        for s, root in bns or outs:
            total.index_add_(1, torch.as_tensor(root), s)
        return total.abs().mean(0)


def _prepare(scores, budget, chunk, lowest):
    check_number(budget, "budget", 0, hint=" (ms)")
    check_ints(("chunk", chunk, 1))
    cums = [np.concatenate([[0.0], np.cumsum(np.sort(np.asarray(s, dtype=float).ravel())[::-1])]) for s in scores]
    sizes = [len(c) - 1 for c in cums]
    lowest = [1] * len(sizes) if lowest is None else list(lowest)
    if len(lowest) != len(sizes) or any(not 0 <= lo <= n for lo, n in zip(lowest, sizes)):
        raise ValueError(f"lowest must give each of the {len(sizes)} groups a floor in 0..its size, got {lowest!r}")
    return cums, sizes, lowest


def knapsack_greedy(scores, latency, budget: float, *, chunk: int = 1, lowest=None) -> list[int]:
    """How many channels each group keeps: the greedy latency-saliency knapsack.

    ``scores[g]`` are group g's channel importances (a group keeps its top-k); ``latency(keeps)`` predicts the
    latency of a tuple of kept counts. From all channels kept, remove the ``chunk`` that loses the least
    importance per unit of latency saved (recomputed from the current counts) until ``latency <= budget`` or
    every group is at its floor ``lowest[g]`` (default 1). Returns the kept counts."""
    cums, keeps, lowest = _prepare(scores, budget, chunk, lowest)
    current = latency(tuple(keeps))
    while current > budget:
        best, best_score = None, math.inf
        for g, k in enumerate(keeps):
            if k - chunk < lowest[g]:
                continue
            saved = current - latency(tuple(keeps[:g]) + (k - chunk,) + tuple(keeps[g + 1:]))
            lost = cums[g][k] - cums[g][k - chunk]
            if saved > 0 and lost / saved < best_score:
                best, best_score = (g, current - saved), lost / saved
        if best is None:
            break
        keeps[best[0]] -= chunk
        current = best[1]
    return keeps


def knapsack_exact(scores, term, budget: float, *, chunk: int = 1, lowest=None, bins: int = 2000) -> list[int]:
    """The exact counterpart of :func:`knapsack_greedy` for small instances: a dynamic programme over groups x
    kept counts on a latency budget cut into ``bins`` units, for latencies ``sum_g term(g, k_prev, k)`` where
    ``k_prev`` is group g-1's kept count (None for g = 0): each layer's latency depends on its input and output
    widths, i.e. on adjacent groups. (A ``term`` that ignores ``k_prev`` is the separable knapsack HALP states.)
    Costs are rounded up to whole units, so the answer always fits the budget. Returns the kept counts."""
    check_ints(("bins", bins, 1))
    cums, sizes, lowest = _prepare(scores, budget, chunk, lowest)
    unit = budget / bins
    choices = [list(range(n, lo - 1, -chunk)) if n >= lo else [n] for n, lo in zip(sizes, lowest)]
    value, parents = None, []
    for g, ks in enumerate(choices):
        new = np.full((len(ks), bins + 1), -np.inf)
        parent = np.zeros((len(ks), bins + 1), dtype=int)
        for j, k in enumerate(ks):
            for p, kp in enumerate(choices[g - 1] if g else [None]):
                c = math.ceil(term(g, kp, k) / unit - 1e-9)
                if c < 0:
                    raise ValueError(f"term({g}, {kp}, {k}) is negative: latencies must be >= 0")
                if c > bins:
                    continue
                prev = np.zeros(bins + 1) if g == 0 else value[p]
                cand = np.full(bins + 1, -np.inf)
                cand[c:] = prev[:bins + 1 - c] + cums[g][k]
                better = cand > new[j]
                new[j][better], parent[j][better] = cand[better], p
        value = new
        parents.append(parent)
    j, b = np.unravel_index(np.argmax(value), value.shape)
    if not np.isfinite(value[j, b]):
        raise ValueError(f"no choice of kept channels fits a budget of {budget:g}")
    keeps = []
    for g in range(len(choices) - 1, -1, -1):
        k = choices[g][j]
        keeps.append(k)
        p = parents[g][j, b]
        b -= math.ceil(term(g, choices[g - 1][p] if g else None, k) / unit - 1e-9)
        j = p
    return keeps[::-1]


def _first_conv(model: nn.Module, x: torch.Tensor) -> nn.Module | None:
    """The Conv2d the forward pass calls first (the table's own forward-order record of its layers)."""
    modules = dict(model.named_modules())
    return next((modules[n] for n in _input_shapes(model, x) if isinstance(modules[n], nn.Conv2d)), None)


def _plan_step(model, x, table, target_ms, importance, chunk, floors, ignored):
    """Greedy plan for one step: ``[(group, idxs to remove)]``."""
    _, groups = coupled_groups(model, x, ignored)
    widths = {n: list(w) for n, w in layer_widths(model).items()}
    kept, scores, lowest = [], [], []
    for group, effects in groups:
        imp = importance(group)
        if imp is not None:
            key = tuple((n, d) for n, d, _ in effects)
            kept.append((group, effects, imp.detach().float().cpu()))
            scores.append(kept[-1][2])
            lowest.append(min(len(imp), floors.get(key, len(imp))))

    def latency(keeps):
        w = {n: list(v) for n, v in widths.items()}
        for (_, effects, imp), k in zip(kept, keeps):
            for n, d, per in effects:
                w[n][d] -= (len(imp) - k) * per
        return table.predict_widths(w)

    keeps = knapsack_greedy(scores, latency, target_ms, chunk=chunk, lowest=lowest)
    return [(group, sorted(torch.argsort(imp, stable=True)[:len(imp) - k].tolist()))
            for (group, _, imp), k in zip(kept, keeps) if k < len(imp)]


def halp_prune(model: nn.Module, example_inputs: torch.Tensor, target_speedup: float, table: LatencyTable,
               calibration_batches, *, steps: int = 5, fine_tune=None, loss_fn=F.cross_entropy,
               protect_first_conv: bool = True, round_to: int | None = None, max_pruning_ratio: float = 0.75) -> dict:
    """Prune ``model`` in place, HALP's way, until ``table`` predicts ``target_speedup`` over it.

    ``steps`` steps aim at latencies falling geometrically from the dense one to ``dense / target_speedup``; each
    re-scores the channels (:class:`TaylorBNImportance` on ``calibration_batches``, (X, y) pairs from the training
    split), plans with :func:`knapsack_greedy` against the table (``round_to`` channels at a time, default the
    table's; no group below ``1 - max_pruning_ratio`` of its width), prunes with Torch-Pruning, then calls
    ``fine_tune(model, step)`` if given. The first convolution is never pruned unless ``protect_first_conv=False``.

    Returns ``{"dense_ms", "target_speedup", "reachable_speedup", "steps": [{"step", "target_ms",
    "target_speedup", "predicted_ms", "predicted_speedup", "widths"}], "predicted_ms", "predicted_speedup",
    "widths", "reached"}``.

    Raises:
        ValueError: before any work if the table predicts ``target_speedup`` cannot be reached (the message gives
            the maximum, :func:`deeplsp_helpers.speedup.reachable_speedup`), or on bad arguments.
    """
    check_module(model)
    check_batch(example_inputs)
    speedup._check_request(target_speedup, "latency", max_pruning_ratio)
    check_ints(("steps", steps, 1))
    if fine_tune is not None and not callable(fine_tune):
        raise TypeError(f"fine_tune must be None or a callable fine_tune(model, step), got {type(fine_tune).__name__}")
    check_bool(protect_first_conv, "protect_first_conv")
    batches = _check_batches(calibration_batches)
    if not isinstance(table, LatencyTable):
        raise TypeError(f"table must be a LatencyTable, got {type(table).__name__}")
    round_to = table.meta["round_to"] if round_to is None else round_to  # 0 is an error, not "the default"
    check_ints(("round_to", round_to, 1))
    x1 = example_inputs[:1]
    ignored = output_layers(model, x1)
    first = _first_conv(model, x1) if protect_first_conv else None
    ignored += [first] if first is not None and first not in ignored else []
    top = speedup.reachable_speedup(model, example_inputs, table, round_to=round_to,
                                    max_pruning_ratio=max_pruning_ratio, ignored_layers=ignored)
    if top < target_speedup:
        raise ValueError(f"cannot reach a {target_speedup:g}x speed-up: this machine's latency table predicts at most "
                         f"{top:.2f}x with max_pruning_ratio={max_pruning_ratio}, round_to={round_to} and the "
                         f"{'first conv protected' if first is not None else 'first conv prunable'}; ask for less")
    dense_ms = table.predict_widths(layer_widths(model))
    floors = {}
    for group, effects in coupled_groups(model, x1, ignored)[1]:
        n = len(group[0].idxs)
        floors[tuple((name, d) for name, d, _ in effects)] = n - round_to * math.floor(n * max_pruning_ratio / round_to)
    report = {"dense_ms": dense_ms, "target_speedup": target_speedup, "reachable_speedup": top, "steps": []}
    for step in range(1, steps + 1):
        step_speedup = target_speedup ** (step / steps)
        importance = TaylorBNImportance(model, batches, loss_fn)
        with eval_mode(model):
            for group, idxs in _plan_step(model, x1, table, dense_ms / step_speedup, importance, round_to, floors,
                                          ignored):
                group.prune(idxs=idxs)
            collapse_channels(model, x1)
        widths = layer_widths(model)
        ms = table.predict_widths(widths)
        report["steps"].append({"step": step, "target_ms": dense_ms / step_speedup, "target_speedup": step_speedup,
                                "predicted_ms": ms, "predicted_speedup": dense_ms / ms, "widths": widths})
        if fine_tune is not None:
            fine_tune(model, step)
    last = report["steps"][-1]
    report.update(predicted_ms=last["predicted_ms"], predicted_speedup=last["predicted_speedup"],
                  widths=last["widths"], reached=last["predicted_ms"] <= dense_ms / target_speedup * (1 + 1e-9))
    if not report["reached"]:
        warnings.warn(f"HALP ended at a predicted {last['predicted_speedup']:.2f}x, short of {target_speedup:g}x",
                      stacklevel=2)
    return report


def progressive_fine_tune(finetune_data, steps: int, *, num_epochs: int, lr: float, batch_size: int = 128,
                          prune_fraction: float = 0.25, seed: int = 0, after_step=None):
    """A ``fine_tune(model, step)`` for :func:`halp_prune` with ``steps`` steps: the whole fine-tuning budget is one
    run of ``num_epochs`` epochs over ``finetune_data`` (a :class:`~deeplsp_helpers.data.ImageTensorDataset`, with
    the teacher's outputs if it carries them) on one cosine schedule, and pruning step k (1-based) happens after
    ``(k - 1) / steps`` of its first ``prune_fraction``; after the last step the run goes on to its end. So the
    model takes exactly the optimizer steps of ``train.fine_tune(model, loader, num_epochs=num_epochs)``, the same
    budget as a one-shot prune followed by that fine-tune. ``after_step(model, step, done, total)`` is called after
    each segment (``done`` of the run's ``total`` optimizer steps taken). (The reference's ResNet-50 configuration
    prunes 30 times, every 40 iterations from the first, in a 90-epoch run, about its first 1 %; a run of a few
    epochs needs a larger ``prune_fraction`` to leave optimizer steps between the steps.)"""
    from . import data, train

    check_ints(("steps", steps, 1), ("num_epochs", num_epochs, 1), ("batch_size", batch_size, 1), ("seed", seed, 0))
    check_number(lr, "lr", 0)
    check_number(prune_fraction, "prune_fraction", 0, strict=False)
    if prune_fraction >= 1:
        raise ValueError(f"prune_fraction must be in [0, 1): the run must go on after the last step, got {prune_fraction}")
    if after_step is not None and not callable(after_step):
        raise TypeError(f"after_step must be None or a callable after_step(model, step, done, total), got {after_step!r}")
    total = num_epochs * len(data.BatchLoader(finetune_data, batch_size))
    marks = [math.floor(total * prune_fraction * k / steps) for k in range(steps)] + [total]

    def fine_tune(model: nn.Module, step: int) -> None:
        check_int(step, "step", 1, steps)  # the schedule was made for `steps` steps
        start, stop = marks[step - 1], marks[step]
        if stop > start:
            loader = data.BatchLoader(finetune_data, batch_size, shuffle=True, seed=seed)  # the same order each call
            train.fine_tune(model, loader, num_epochs=num_epochs, lr=lr, start_step=start, stop_step=stop,
                            progress=False)
        if after_step is not None:
            after_step(model, step, stop, total)

    return fine_tune
