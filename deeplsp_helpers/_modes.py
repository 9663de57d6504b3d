"""Train/eval mode for the length of a ``with`` block, every module's own flag restored afterwards.

Imports nothing from the package, so every module can import it.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn

__all__ = ["eval_mode", "train_mode"]


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
