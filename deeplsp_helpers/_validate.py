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


def check_ints(*specs: tuple[str, object, int]) -> None:
    """``ValueError`` unless each ``(name, value, lowest)`` has an int ``value >= lowest`` (bools refused)."""
    for name, v, lo in specs:
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")


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
