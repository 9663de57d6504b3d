"""Sparsity, parameter counts, model size and MACs.

All functions read the *effective* weights of a model: for a module pruned with
``torch.nn.utils.prune`` (which keeps ``weight_orig`` and a ``weight_mask``) they count the masked
``weight``, so a pruned model is measured as it computes.
"""

from __future__ import annotations

import contextlib
import io
import math
from typing import Iterator, Sequence

import torch
from torch import nn

from ._modes import eval_mode
from ._validate import PRUNABLE, check_ints, check_module, check_shape, check_tensor
from .masks import pruned_tensors

__all__ = ["sparsity", "model_sparsity", "count_parameters", "model_size", "count_macs", "summarize",
           "effective_parameters", "weight_sparsity", "layer_sparsities", "conv_widths", "nonzero_macs"]


def sparsity(t: torch.Tensor) -> float:
    """Fraction of exactly-zero entries, in [0, 1]."""
    t = check_tensor(t, "tensor")
    return 1.0 - t.count_nonzero().item() / t.numel()


def effective_parameters(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` for every parameter, with pruned ``*_orig`` parameters replaced by their masked value."""
    check_module(model)
    for mod_name, module in model.named_modules():
        pruned = pruned_tensors(module)
        for p_name, p in module.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            if p_name.endswith("_orig") and p_name[: -len("_orig")] in pruned:
                base = p_name[: -len("_orig")]
                yield (f"{mod_name}.{base}" if mod_name else base), getattr(module, base)
            else:
                yield full, p


def count_parameters(model: nn.Module, nonzero_only: bool = False) -> int:
    """Number of parameters (or of non-zero parameters)."""
    total = 0
    for _, t in effective_parameters(model):
        total += int(t.count_nonzero().item()) if nonzero_only else t.numel()
    return total


def model_sparsity(model: nn.Module) -> float:
    """Fraction of zero parameters over the whole model."""
    n = count_parameters(model)
    if n == 0:
        raise ValueError("model has no parameters")
    return 1.0 - count_parameters(model, nonzero_only=True) / n


def weight_sparsity(model: nn.Module, types: Sequence[type] = PRUNABLE) -> float:
    """Fraction of zeros over all Conv2d/Linear weights together (biases, BatchNorm and buffers excluded):
    the global sparsity that unstructured pruning targets. Masked weights count as pruned."""
    check_module(model)
    ws = [m.weight for m in model.modules() if isinstance(m, tuple(types))]
    if not ws:
        raise ValueError("model has no Conv2d or Linear layers")
    return sum(int((w == 0).sum()) for w in ws) / sum(w.numel() for w in ws)


def layer_sparsities(model: nn.Module, types: Sequence[type] = PRUNABLE) -> dict[str, float]:
    """``{layer_name: sparsity of its weight}`` for every layer of the given types."""
    check_module(model)
    return {name: sparsity(m.weight) for name, m in model.named_modules() if isinstance(m, tuple(types))}


def conv_widths(model: nn.Module) -> list[int]:
    """Output channels of every ``Conv2d``, in ``model.modules()`` order: the widths structured pruning changes."""
    check_module(model)
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


def model_size(model: nn.Module, data_width: int = 32, nonzero_only: bool = False) -> int:
    """Size in **bits** of the parameters at ``data_width`` bits each (no index overhead counted).

    Divide by 8 * 1024**2 for MiB. With ``nonzero_only`` it is the payload of a sparse format
    *without* its indices, a lower bound on what sparse storage costs.
    """
    check_ints(("data_width (bits)", data_width, 1))
    return count_parameters(model, nonzero_only=nonzero_only) * data_width


def _example_inputs(inputs) -> torch.Tensor:
    if isinstance(inputs, torch.Tensor):
        if inputs.ndim < 2:
            raise ValueError(f"inputs must have a batch dimension, got shape {tuple(inputs.shape)}")
        return inputs
    return torch.zeros(1, *check_shape(inputs, "inputs", example="(1, 28, 28) (or a batch tensor [N, ...])"))


def count_macs(model: nn.Module, inputs) -> int:
    """Multiply-accumulates for **one sample**, traced by torchprofile in eval mode.

    Zeros are still counted: an 90 %-sparse dense weight costs as many MACs as a dense one, because
    dense kernels multiply by zero all the same. A module pruned with ``torch.nn.utils.prune`` also
    shows its mask multiplication (``weight_orig * weight_mask``) as extra ``mul`` operations;
    call ``prune.remove`` before counting to measure the deployed model.

    Args:
        inputs: an example batch [N, C, H, W] or an input size ``(C, H, W)``.
    """
    from torchprofile import profile_macs

    check_module(model)
    x = _example_inputs(inputs)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    with eval_mode(model), torch.no_grad():
        macs = profile_macs(model, x.to(device))
    return int(math.ceil(macs / x.shape[0]))


def nonzero_macs(model: nn.Module, inputs) -> int:
    """Multiply-accumulates with a **non-zero** weight, for one sample, over every Conv2d and Linear layer.

    What a kernel that skipped every zero weight would still compute: each layer's weight non-zeros times the
    number of output positions each is applied at (a convolution's output height × width). Unlike
    :func:`count_macs` it counts no other operation, so a dense model's figure is its convolutions' and linear
    layers' MACs. It says how much compute a pruned model keeps, not how fast it runs (chapter 03).

    Args:
        inputs: an example batch [N, C, H, W] or an input size ``(C, H, W)``.
    """
    check_module(model)
    x = _example_inputs(inputs)
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if not layers:
        raise ValueError("the model has no Conv2d or Linear layer whose MACs could be counted")
    total = 0

    def count(module, _inputs, output):
        nonlocal total
        out_features = module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
        positions = output[0].numel() // out_features  # output positions per sample and output channel
        total += positions * int(module.weight.count_nonzero())

    handles = [m.register_forward_hook(count) for m in layers]
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        with eval_mode(model), torch.no_grad():
            model(x[:1].to(device))
    finally:
        for h in handles:
            h.remove()
    return total


def summarize(model: nn.Module, input_size: tuple = (1, 28, 28), device: torch.device | str | None = None) -> str:
    """torchsummary's layer table as a string, with the device passed explicitly (works without a GPU)."""
    from torchsummary import summary

    check_module(model)
    input_size = check_shape(input_size, "input_size")
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    device = torch.device(device)
    buf = io.StringIO()
    with eval_mode(model), contextlib.redirect_stdout(buf), torch.no_grad():
        summary(model, tuple(input_size), device=device.type)
    return buf.getvalue().rstrip()
