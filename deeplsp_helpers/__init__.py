"""Helpers for the DeepLSP pruning course.

Nothing happens on import: no seeding, no downloads, no global state. Import the
submodules you need, e.g. ``from deeplsp_helpers import data, metrics``.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from ._validate import check_int

__all__ = ["seed_everything", "get_device", "__version__"]
__version__ = "0.1.0"


def seed_everything(seed: int = 0) -> int:
    """Seed Python, NumPy and PyTorch (CPU and, where present, CUDA).

    Args:
        seed: a non-negative integer.
    Returns:
        The seed, so a notebook cell can show which one was used.
    """
    check_int(seed, "seed", 0)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    # PYTHONHASHSEED is not set here: it only takes effect when an interpreter starts, so setting it now would
    # change nothing for this one (string hashing order does not enter any computation of the course).
    return seed


def get_device(prefer: str | None = None) -> torch.device:
    """The device to run on: ``prefer`` if given and available, else CUDA if present, else CPU.

    Never fails for lack of a GPU: the whole course runs on the CPU.
    """
    if prefer is not None:
        if not isinstance(prefer, str):
            raise TypeError(f"prefer must be a string such as 'cpu' or 'cuda', got {type(prefer).__name__}")
        dev = torch.device(prefer)  # raises RuntimeError on nonsense like 'gpu0'
        if dev.type == "cuda" and not torch.cuda.is_available():
            return torch.device("cpu")
        return dev
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
