"""Structured (channel) pruning that really shrinks tensors, built on Torch-Pruning's dependency graph.

- :func:`collapse_channels` removes output channels that contribute nothing downstream.
- :class:`LatencyAwareImportance` scores channels by magnitude divided by their layer's latency share.
- :func:`structured_channel_pruning` prunes globally to a ratio with it, then collapses dead channels.
- :func:`save_pruned` / :func:`load_pruned` store a pruned model as tensors only (``weights_only=True``)
  and rebuild its architecture from the tensor shapes.

Torch-Pruning / DepGraph: Fang et al., "DepGraph: Towards Any Structural Pruning", arXiv:2301.12900.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from pathlib import Path

import torch
import torch_pruning as tp
from torch import nn

from .files import atomic_write
from .models import build_model

__all__ = ["collapse_channels", "output_layers", "layer_costs", "LatencyAwareImportance",
           "structured_channel_pruning", "save_pruned", "load_pruned"]

PRUNABLE = (nn.Conv2d, nn.Linear)


def _check(model, example_inputs):
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(example_inputs, torch.Tensor) or example_inputs.ndim < 2:
        raise TypeError("example_inputs must be a batch tensor [N, ...], e.g. torch.randn(1, 1, 28, 28)")


def output_layers(model: nn.Module, example_inputs: torch.Tensor) -> list[nn.Module]:
    """The Conv2d/Linear layers whose output *is* the model's output (never pruned: they fix its shape)."""
    _check(model, example_inputs)
    produced = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out: produced.__setitem__(id(out), mod))
             for m in model.modules() if isinstance(m, PRUNABLE)]
    try:
        with torch.no_grad():
            was = model.training
            model.eval()
            out = model(example_inputs)
            model.train(was)
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
    if isinstance(layer, (nn.Conv2d, nn.Linear)):
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
    was = model.training
    model.eval()
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
    model.train(was)
    if diff > check_atol:
        raise RuntimeError(f"collapse_channels changed the outputs (max abs diff {diff:.2e}); a removed channel was not dead")
    return removed


def layer_costs(model: nn.Module, example_inputs: torch.Tensor, measure: str = "latency", *, warmup: int = 3,
                repeats: int = 20, threads: int = 1) -> dict[nn.Module, float]:
    """Each Conv2d/Linear layer's share of the model's cost, summing to 1.

    ``measure='latency'`` times every layer with forward hooks (median over ``repeats`` runs after
    ``warmup``, ``threads`` threads); ``measure='macs'`` counts its multiply-accumulates instead.
    """
    _check(model, example_inputs)
    if measure not in ("latency", "macs"):
        raise ValueError(f"measure must be 'latency' or 'macs', got {measure!r}")
    layers = [m for m in model.modules() if isinstance(m, PRUNABLE)]
    if not layers:
        raise ValueError("model has no Conv2d or Linear layers")
    samples: dict[nn.Module, list[float]] = {m: [] for m in layers}
    macs: dict[nn.Module, float] = {}
    start: dict[nn.Module, float] = {}

    def pre(mod, inp):
        start[mod] = time.perf_counter()

    def post(mod, inp, out):
        samples[mod].append(time.perf_counter() - start[mod])
        if isinstance(mod, nn.Conv2d):
            macs[mod] = out[0].numel() * mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]
        else:
            macs[mod] = out[0].numel() * mod.in_features

    hooks = [h for m in layers for h in (m.register_forward_pre_hook(pre), m.register_forward_hook(post))]
    old_threads, was = torch.get_num_threads(), model.training
    try:
        torch.set_num_threads(threads)
        model.eval()
        with torch.inference_mode():
            for _ in range(warmup if measure == "latency" else 0):
                model(example_inputs)
            for s in samples.values():
                s.clear()
            for _ in range(repeats if measure == "latency" else 1):
                model(example_inputs)
    finally:
        for h in hooks:
            h.remove()
        torch.set_num_threads(old_threads)
        model.train(was)
    raw = {m: statistics.median(samples[m]) for m in layers} if measure == "latency" else macs
    total = sum(raw.values())
    return {m: v / total for m, v in raw.items()}


class LatencyAwareImportance(tp.importance.GroupMagnitudeImportance):
    """Channel magnitude (L1, normalised to mean 1 within its group) divided by the cost share of the
    layers the channel touches, so channels of costly layers are removed first in global pruning.

    The cost of a group is the summed share (measured latency, or MACs) of every Conv2d/Linear whose
    output or input channels the group prunes.

    Build it with :meth:`from_model`. The magnitude criterion follows Li et al., "Pruning Filters for
    Efficient ConvNets", arXiv:1608.08710; weighting by measured latency is in the spirit of
    NetAdapt (Yang et al., arXiv:1804.03230) and HALP (Shen et al., arXiv:2110.10811).
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


def structured_channel_pruning(model: nn.Module, example_inputs: torch.Tensor, pruning_ratio: float,
                               importance=None, ignored_layers=None, iterative_steps: int = 1,
                               round_to: int | None = None, max_pruning_ratio: float | None = None) -> nn.Module:
    """Remove ``pruning_ratio`` of the channels globally, then collapse any channel left dead.

    Args:
        importance: a Torch-Pruning importance; default :class:`LatencyAwareImportance` measured on
            ``example_inputs``.
        ignored_layers: layers never pruned; default: the output layer(s), which fix the output shape.
        max_pruning_ratio: no group of coupled channels loses more than this fraction; default
            ``max(0.65, pruning_ratio + 0.1)`` (at most 0.95), which keeps a latency-aware global ranking
            from reducing one costly layer to a few channels.
    Returns:
        The same model, pruned in place.
    """
    _check(model, example_inputs)
    if not isinstance(pruning_ratio, (int, float)) or not 0.0 <= pruning_ratio < 1.0:
        raise ValueError(f"pruning_ratio must be in [0, 1), got {pruning_ratio!r}")
    if isinstance(iterative_steps, bool) or not isinstance(iterative_steps, int) or iterative_steps < 1:
        raise ValueError(f"iterative_steps must be an int >= 1, got {iterative_steps!r}")
    if pruning_ratio == 0:
        return model
    model.eval()
    importance = importance or LatencyAwareImportance.from_model(model, example_inputs)
    ignored = list(ignored_layers) if ignored_layers is not None else output_layers(model, example_inputs)
    if max_pruning_ratio is None:
        max_pruning_ratio = min(0.95, max(0.65, pruning_ratio + 0.1))
    if not isinstance(max_pruning_ratio, (int, float)) or not 0.0 < max_pruning_ratio < 1.0 \
            or pruning_ratio > max_pruning_ratio:
        raise ValueError(f"max_pruning_ratio must be in (pruning_ratio, 1), got {max_pruning_ratio!r}")
    pruner = tp.pruner.MetaPruner(model, example_inputs, importance=_CappedImportance(importance, max_pruning_ratio),
                                  global_pruning=True,
                                  pruning_ratio=pruning_ratio, iterative_steps=iterative_steps,
                                  ignored_layers=ignored, round_to=round_to, max_pruning_ratio=max_pruning_ratio)
    for _ in range(iterative_steps):
        pruner.step()
    collapse_channels(model, example_inputs)
    return model


def _rebuild(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Resize every layer of a freshly built ``model`` to the shapes in ``state`` (a pruned state_dict)."""
    for name, m in model.named_modules():
        key = f"{name}.weight" if name else "weight"
        if key not in state:
            continue
        w = state[key]
        if isinstance(m, nn.Conv2d):
            depthwise = m.groups > 1 and m.groups == m.in_channels
            m.out_channels = w.shape[0]
            m.groups = w.shape[0] if depthwise else m.groups
            m.in_channels = w.shape[1] * m.groups
        elif isinstance(m, nn.Linear):
            m.out_features, m.in_features = w.shape
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.num_features = w.shape[0]
        else:
            continue
        for pname, p in list(m.named_parameters(recurse=False)):
            setattr(m, pname, nn.Parameter(torch.empty_like(state[f"{name}.{pname}"]), requires_grad=p.requires_grad))
        for bname, b in list(m.named_buffers(recurse=False)):
            if b is not None and f"{name}.{bname}" in state:
                setattr(m, bname, torch.empty_like(state[f"{name}.{bname}"]))
    model.load_state_dict(state)
    return model


def save_pruned(model: nn.Module, arch: str, path: str | os.PathLike) -> Path:
    """Save a pruned model as ``{'arch': name, 'state_dict': tensors}``, atomically (temp file + rename).

    Only tensors and a string are stored, so :func:`load_pruned` can use ``weights_only=True``
    (a whole-model ``torch.save(model)`` would need ``weights_only=False``, which runs pickled code).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    build_model(arch)  # validates the name
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    if any(k.endswith(("_orig", "_mask")) for k in state):
        raise ValueError("model still has pruning masks; call remove_pruning_masks(model) before saving")
    path = atomic_write(path, lambda f: torch.save({"arch": arch, "state_dict": state}, f))
    return path


def load_pruned(path: str | os.PathLike) -> nn.Module:
    """Load a model written by :func:`save_pruned`: a fresh model of its ``arch`` resized to the saved shapes."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no pruned model at {path}")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or "arch" not in blob or "state_dict" not in blob:
        raise ValueError(f"{path} was not written by save_pruned (expected keys 'arch' and 'state_dict')")
    return _rebuild(build_model(blob["arch"]), blob["state_dict"]).eval()
