"""Argument checks shared by the package's modules: one test and one message per kind of mistake.

Imports nothing from the package, so every module can import it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

PRUNABLE = (nn.Conv2d, nn.Linear)  # the layers the course prunes, scores and measures


def check_module(model, name: str = "model") -> nn.Module:
    """``model`` itself; ``TypeError`` unless it is a ``torch.nn.Module``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {type(model).__name__}")
    return model


def check_batch(x, name: str = "example_inputs") -> None:
    """``TypeError`` unless ``x`` is a tensor with a batch dimension first (at least 2-D)."""
    if not isinstance(x, torch.Tensor) or x.ndim < 2:
        raise TypeError(f"{name} must be a batch tensor [N, ...], e.g. torch.randn(1, 1, 28, 28)")


def check_tensor(t, name: str = "tensor", *, floating: bool = False, ndim: int | None = None, min_ndim: int = 0,
                 dims: str = "", finite: bool = False, allow_empty: bool = False) -> torch.Tensor:
    """``t.detach()`` if ``t`` is a non-empty tensor (``allow_empty``: or an empty one); ``floating``: of a
    floating-point dtype; ``ndim``: with exactly that many dimensions (``dims`` names them in the message, e.g.
    ``" [out_features, in_features]"``); ``min_ndim``: at least that many; ``finite``: no NaN or infinity.
    ``TypeError`` for a non-tensor or a wrong dtype, ``ValueError`` otherwise."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if floating and not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if ndim is not None and t.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions{dims}, got shape {tuple(t.shape)}")
    if t.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimension(s), got shape {tuple(t.shape)}")
    if t.numel() == 0 and not allow_empty:
        raise ValueError(f"{name} is empty")
    if finite:
        check_finite(t, name)
    return t.detach()


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(value, name: str, lowest: int | None, highest: int | None = None) -> int:
    """``value`` itself if it is an int from ``lowest`` to ``highest`` (``None``: no bound; ``lowest=None``: any int);
    ``TypeError`` for a value that is no int (bools refused), ``ValueError`` for one out of range; the same message
    either way."""
    in_range = _is_int(value) and (lowest is None or value >= lowest) and (highest is None or value <= highest)
    if not in_range:
        bounds = "" if lowest is None else f" >= {lowest}" if highest is None else f" in {lowest}..{highest}"
        raise (ValueError if _is_int(value) else TypeError)(f"{name} must be an int{bounds}, got {value!r}")
    return value


def check_ints(*specs: tuple) -> None:
    """:func:`check_int` on each ``(name, value, lowest)`` or ``(name, value, lowest, highest)``, in order: the same
    ``TypeError`` for a value that is no int (bools refused) and ``ValueError`` for one out of range."""
    for name, v, lo, *hi in specs:
        check_int(v, name, lo, hi[0] if hi else None)


def check_shape(shape, name: str = "input_size", *, min_len: int = 1, example: str = "(1, 28, 28)") -> tuple[int, ...]:
    """``tuple(shape)`` if ``shape`` is a tuple or list of at least ``min_len`` sizes, each an int >= 1 (e.g. an
    input size ``(C, H, W)``). ``TypeError`` for anything else or an entry that is no int (bools refused: ``True``
    is no size 1), ``ValueError`` for too few sizes or a size below 1."""
    count = f"at least {min_len} " if min_len > 1 else ""
    message = f"{name} must be a tuple of {count}positive ints such as {example}, got {shape!r}"
    if not isinstance(shape, (tuple, list)) or not all(_is_int(d) for d in shape):
        raise TypeError(message)
    if len(shape) < min_len or any(d < 1 for d in shape):
        raise ValueError(message)
    return tuple(shape)


def check_number(value, name: str, lowest: float, *, strict: bool = True, hint: str = "") -> float:
    """``float(value)`` if it is a finite number above ``lowest`` (``strict=False``: at least ``lowest``);
    ``ValueError`` otherwise (bools, NaN and infinities refused). ``hint`` follows the bound in the message."""
    finite = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not finite or not (value > lowest if strict else value >= lowest):
        raise ValueError(f"{name} must be a number {'>' if strict else '>='} {lowest}{hint}, got {value!r}")
    return float(value)


def check_fraction(value, name: str, low: float = 0, high: float = 1, *, low_open: bool = False,
                   high_open: bool = True) -> float:
    """``float(value)`` if ``value`` is a number from ``low`` to ``high``, by default in [0, 1); ``low_open`` /
    ``high_open`` exclude that end. ``ValueError`` otherwise (bools and NaN refused)."""
    interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    nan = isinstance(value, float) and math.isnan(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or nan:
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}")
    if not ((low < value if low_open else low <= value) and (value < high if high_open else value <= high)):
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
    return float(value)


def check_bool(value, name: str) -> bool:
    """``value`` itself; ``TypeError`` unless it is ``True`` or ``False`` (a string such as ``"no"`` is refused)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def check_labels(y, outputs: torch.Tensor, name: str = "labels") -> None:
    """``ValueError`` unless ``y`` holds one integer class index per row of ``outputs`` ([N, classes]): shape [N],
    an integer dtype, values in 0..classes-1. (Labels shaped [N, 1] broadcast against [N] and one-hot labels never
    equal an index: both give a wrong accuracy without an error.)"""
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{name} must be a tensor of class indices [N], got {type(y).__name__}")
    if outputs.ndim != 2:
        raise ValueError(f"the model's outputs must be logits [N, classes] to compare with {name}, got shape "
                         f"{tuple(outputs.shape)}")
    n = outputs.shape[0]
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"{name} must be class indices of shape [N] = [{n}] (one per input), got shape "
                         f"{tuple(y.shape)}; one-hot labels: pass y.argmax(1), [N, 1] labels: pass y.squeeze(1)")
    if y.is_complex() or y.dtype == torch.bool or (y.is_floating_point() and not bool((y == y.round()).all())):
        raise ValueError(f"{name} must be integer class indices (e.g. torch.int64), got dtype {y.dtype}"
                         + (" with fractions" if y.is_floating_point() else ""))
    classes = outputs.shape[1]
    if n and (int(y.min()) < 0 or int(y.max()) >= classes):
        raise ValueError(f"{name} must be class indices in 0..{classes - 1} (the model has {classes} outputs), got "
                         f"values from {int(y.min())} to {int(y.max())}")


def check_finite(t: torch.Tensor, name: str) -> None:
    """``ValueError`` naming ``name`` if the tensor holds NaN or an infinity."""
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} holds NaN or infinite values; check the inputs or the model that produced them")
