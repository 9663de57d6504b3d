"""The sublayers chapter 08 prunes (attention: q/k/v/out projections; MLP: fc1/fc2) and the calibration statistics
of their inputs: the input-feature norms Wanda weighs by, the Hessian ``X X^T`` SparseGPT solves with."""

from __future__ import annotations

from typing import Iterable, Mapping

import torch
from torch import nn

from .._modes import run_hooked
from .._validate import check_module

_QKV = ("q_proj", "k_proj", "v_proj")


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name  # the model itself is named ""


def _is_attention(m: nn.Module) -> bool:
    return (all(isinstance(getattr(m, a, None), nn.Linear) for a in (*_QKV, "out_proj"))
            and isinstance(getattr(m, "head_dim", None), int))


def _is_mlp(m: nn.Module) -> bool:
    return all(isinstance(getattr(m, a, None), nn.Linear) for a in ("fc1", "fc2"))


def attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The model's attention sublayers by name: modules with ``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``
    (``nn.Linear``) and an int ``head_dim``, e.g. :class:`deeplsp_helpers.models.SelfAttention`."""
    check_module(model)
    return {n: m for n, m in model.named_modules() if _is_attention(m)}


def mlp_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The model's MLP sublayers by name: modules with ``fc1`` and ``fc2`` (``nn.Linear``)."""
    check_module(model)
    return {n: m for n, m in model.named_modules() if _is_mlp(m)}


def block_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The linear layers that chapter 08 prunes: q/k/v/out of every attention sublayer and fc1/fc2 of every MLP
    (not the patch embedding, not the classification head), by their names in ``model``."""
    out = {}
    for prefix, m in attention_modules(model).items():
        out.update({_join(prefix, a): getattr(m, a) for a in (*_QKV, "out_proj")})
    for prefix, m in mlp_modules(model).items():
        out.update({_join(prefix, a): getattr(m, a) for a in ("fc1", "fc2")})
    if not out:
        raise ValueError("model has no attention (q/k/v/out_proj) or MLP (fc1/fc2) sublayers")
    return out


# --- calibration statistics --------------------------------------------------------------------------------------

def _check_layers(model: nn.Module, layers) -> dict[str, nn.Linear]:
    if layers is None:
        return block_linears(model)
    if not isinstance(layers, Mapping) or not layers:
        raise TypeError("layers must be a non-empty dict {name: nn.Linear}, e.g. block_linears(model), or None")
    owned = {id(m) for m in model.modules()}
    for name, m in layers.items():
        if not isinstance(m, nn.Linear):
            raise TypeError(f"layers[{name!r}] must be an nn.Linear, got {type(m).__name__}")
        if id(m) not in owned:
            raise ValueError(f"layers[{name!r}] is not a module of this model")
    return dict(layers)


def _collect(model: nn.Module, layers, batches: Iterable, stat) -> dict[str, torch.Tensor]:
    """Run the calibration batches through ``model`` (eval mode, no gradients) and sum, for every layer,
    ``stat(x)`` over its inputs ``x`` flattened to ``[tokens, in_features]`` (float64)."""
    check_module(model)
    layers = _check_layers(model, layers)
    if batches is None or isinstance(batches, torch.Tensor) or not hasattr(batches, "__iter__"):
        raise TypeError("batches must be an iterable of calibration batches: X tensors or (X, y) pairs")
    state = dict.fromkeys(layers)
    seen = dict.fromkeys(layers, 0)

    def hook(name):
        def fn(module, inputs, output):
            x = inputs[0].detach().reshape(-1, module.in_features).double()  # all tokens: [N, T, in] -> [N*T, in]
            state[name] = stat(x) if state[name] is None else state[name] + stat(x)
            seen[name] += len(x)
        return fn

    run_hooked(model, batches, [m.register_forward_hook(hook(n)) for n, m in layers.items()])
    unused = [n for n, c in seen.items() if c == 0]
    if unused:
        raise ValueError(f"layer(s) {', '.join(unused)} saw no input: they are not used by the model's forward")
    return state


def activation_norms(model: nn.Module, layers: Mapping[str, nn.Linear] | None,
                     batches: Iterable) -> dict[str, torch.Tensor]:
    """``{name: ||X_j||_2}`` for every input feature ``j`` of every layer: the L2 norm over all calibration tokens
    (every token of every image of every batch) of the layer's input, collected with forward hooks.

    Args:
        layers: ``{name: nn.Linear}`` of ``model``; ``None`` for :func:`block_linears`.
        batches: calibration batches, ``X`` tensors or ``(X, y)`` pairs (e.g. ``data.calibration_batches``
            from the training split). Labels are not used.
    Returns:
        A float32 tensor ``[in_features]`` per layer; equal to ``sqrt(diag(input_hessian(...)))``.
    """
    sq = _collect(model, layers, batches, lambda x: x.pow(2).sum(0))
    return {n: s.sqrt().float() for n, s in sq.items()}


def input_hessian(model: nn.Module, layers: Mapping[str, nn.Linear] | None,
                  batches: Iterable) -> dict[str, torch.Tensor]:
    """``{name: H = X X^T}`` for every layer, ``X = [in_features, tokens]`` its calibration inputs: the Hessian of
    the layer's reconstruction error ``||W X - W' X||^2`` with respect to a row of ``W'`` (up to a factor 2).

    Accumulated in float64 over all tokens of all batches, returned as float32 ``[in_features, in_features]``. The
    SparseGPT paper scales it by ``2 / n_samples``; the solution does not depend on the scale (the dampening is
    relative to the mean diagonal). Computed for the given layers in one pass through ``model`` as it is; to prune
    block by block as the paper does, call it per block on the partly pruned model (as
    :func:`prune_one_shot` does), so that each block's inputs come from the already pruned blocks before it.
    """
    hs = _collect(model, layers, batches, lambda x: x.T @ x)  # [in, tokens] @ [tokens, in]
    return {n: h.float() for n, h in hs.items()}
