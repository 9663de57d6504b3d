"""The channel graph of a model: which layers there are, how wide they are, which channels are coupled, which
layers fix the output, and removing channels that are dead. The ground floor of the structured-pruning modules
(:mod:`~deeplsp_helpers.latency_model`, :mod:`~deeplsp_helpers.speedup`, :mod:`~deeplsp_helpers.structured`,
:mod:`~deeplsp_helpers.halp` import from here; this module imports none of them).

Torch-Pruning / DepGraph: Fang et al., "DepGraph: Towards Any Structural Pruning", arXiv:2301.12900.
"""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn

from ._modes import eval_mode
from ._validate import PRUNABLE, check_batch, check_module

__all__ = ["table_layers", "is_depthwise", "layer_widths", "output_layers", "coupled_groups", "prunable_dims",
           "collapse_channels", "uniform_channel_pruning"]


def table_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The layers a latency table covers: every Conv2d and Linear, by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, PRUNABLE)}


def is_depthwise(m: nn.Module) -> bool:
    """A depthwise convolution: one filter per input channel (its input and output widths move together)."""
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels


def layer_widths(model: nn.Module) -> dict[str, tuple[int, int]]:
    """``{layer name: (input width, output width)}`` of every Conv2d/Linear, read off its weight."""
    out = {}
    for name, m in table_layers(model).items():
        if isinstance(m, nn.Conv2d):
            out[name] = (m.weight.shape[1] * m.groups, m.weight.shape[0])
        else:
            out[name] = (m.weight.shape[1], m.weight.shape[0])
    return out


def output_layers(model: nn.Module, example_inputs: torch.Tensor) -> list[nn.Module]:
    """The Conv2d/Linear layers whose output *is* the model's output (never pruned: they fix its shape)."""
    check_module(model)
    check_batch(example_inputs)
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



def uniform_channel_pruning(model: nn.Module, example_inputs: torch.Tensor, ratio: float, *, ignored_layers=None,
                            round_to: int | None = None) -> nn.Module:
    """Chapter 05's uniform cut, in place: Torch-Pruning's ``BasePruner`` with L1 group magnitude removes ``ratio`` of
    the channels of every group of coupled channels (each group on its own, not a global ranking); the output
    layers (or ``ignored_layers``) are kept. Returns ``model``."""
    ignored = output_layers(model, example_inputs) if ignored_layers is None else list(ignored_layers)
    tp.pruner.BasePruner(model, example_inputs, importance=tp.importance.GroupMagnitudeImportance(p=1),
                         pruning_ratio=ratio, ignored_layers=ignored, round_to=round_to).step()
    return model

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
    check_module(model)
    check_batch(example_inputs)
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


def coupled_groups(model: nn.Module, example_inputs: torch.Tensor, ignored_layers=None):
    """Torch-Pruning's dependency graph and its groups of coupled channels, each with the widths it changes:
    ``(graph, [(group, [(layer name, 0 = input | 1 = output, widths per channel), ...]), ...])``.
    ``ignored_layers`` default: the output layer(s)."""
    ignored = list(ignored_layers) if ignored_layers is not None else output_layers(model, example_inputs)
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
    names = {m: n for n, m in model.named_modules()}
    groups = []
    for group in dg.get_all_groups(ignored_layers=ignored, root_module_types=PRUNABLE):
        n_root = len(group[0].idxs)
        effects = {}  # (layer, 0 = input width | 1 = output width) -> widths removed per channel of the group
        for dep, idxs in group:
            layer = dep.target.module
            fn = getattr(dep.handler, "__name__", "")
            if isinstance(layer, PRUNABLE) and layer in names:
                per = max(1, len(idxs) // max(1, n_root))  # e.g. a flatten before a Linear: H*W inputs a channel
                if fn.endswith("out_channels"):
                    effects[names[layer], 1] = per
                    if is_depthwise(layer):  # depthwise: inputs go with outputs
                        effects[names[layer], 0] = per
                elif fn.endswith("in_channels"):
                    effects[names[layer], 0] = per
        if effects:
            groups.append((group, sorted((n, d, per) for (n, d), per in effects.items())))
    return dg, groups


def prunable_dims(model: nn.Module, example_inputs: torch.Tensor, ignored_layers=None) -> set[str]:
    """The ``"layer.in"`` / ``"layer.out"`` widths that channel pruning can change."""
    _, groups = coupled_groups(model, example_inputs, ignored_layers)
    return {f"{n}.{'in' if d == 0 else 'out'}" for _, effects in groups for n, d, _ in effects}
