"""Train/eval mode for the length of a ``with`` block, every module's own flag restored afterwards; and the
calibration loop that runs batches through a model in eval mode for its forward hooks.

Imports nothing from the package, so every module can import it.
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch
from torch import nn

__all__ = ["eval_mode", "train_mode", "run_hooked"]


@contextlib.contextmanager
def _mode(models: tuple[nn.Module, ...], training: bool) -> Iterator[None]:
    for m in models:
        if not isinstance(m, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(m).__name__}")
    flags = [(m, m.training) for model in models for m in model.modules()]
    try:
        for model in models:
            model.train(training)
        yield
    finally:
        for m, flag in flags:  # per module: a frozen BatchNorm in a training model stays frozen
            m.training = flag


def eval_mode(*models: nn.Module) -> contextlib.AbstractContextManager[None]:
    """``with eval_mode(model): ...`` runs the block with ``model`` (and every submodule) in eval mode, then gives
    each module back the ``training`` flag it had, also when the block raises. Several models may be passed."""
    return _mode(models, False)


def train_mode(*models: nn.Module) -> contextlib.AbstractContextManager[None]:
    """As :func:`eval_mode`, with the models in train mode for the block."""
    return _mode(models, True)


def run_hooked(model: nn.Module, batches: Iterable, handles: list) -> None:
    """Run the calibration ``batches`` (``X`` tensors or ``(X, y)`` pairs; labels unused) through ``model`` in eval
    mode without gradients, so that the forward hooks behind ``handles`` record what they need; then remove the
    hooks, also when a batch fails. ``TypeError`` for a batch that is no tensor, ``ValueError`` when ``batches``
    is empty."""
    n = 0
    try:
        with eval_mode(model), torch.no_grad():
            for batch in batches:
                X = batch[0] if isinstance(batch, (tuple, list)) else batch
                if not isinstance(X, torch.Tensor):
                    raise TypeError(f"a calibration batch must be a tensor or an (X, y) pair, got {type(batch).__name__}")
                model(X)
                n += 1
    finally:
        for h in handles:
            h.remove()
    if n == 0:
        raise ValueError("batches is empty: give at least one calibration batch")
