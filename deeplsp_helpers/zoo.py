"""Reference checkpoints: trained on FashionMNIST's train split, selected on validation.

Checkpoints are plain ``state_dict`` files committed with the package, listed in
``checkpoints/manifest.json`` with their sha256, validation and test accuracy, recipe and seed,
and loaded with ``torch.load(..., weights_only=True)``.

CLI::

    python -m deeplsp_helpers.zoo list            # what is there and how accurate it is
    python -m deeplsp_helpers.zoo verify          # check every file against its sha256
    python -m deeplsp_helpers.zoo train NAME|all  # retrain with the recorded recipe and seed

Besides the dense models, six *pruned* reference models are made from dense ones by the recipes of
chapters 05 and 06 (``PRUNED_RECIPES``): ``vgg_structured`` (half of the channels removed with Torch-Pruning,
fine-tuned), ``vgg_structured_full`` (the same with the whole training split), ``vgg_deeplsp``, ``vgg_deeplsp_3x``
and ``resnet_deeplsp`` (the DeepLSP pipeline at a requested 2.5x, 3x and 2x) and ``vgg_deeplsp_halp`` (at 3x, its
structured stage HALP's). They are saved with
:func:`deeplsp_helpers.serialization.save_pruned` (their shapes differ from a fresh model's) and load the same
way, with ``weights_only=True``; chapters that need them load them instead of pruning and fine-tuning again.

Retraining runs the same recipe with the same seed; on the same machine and thread count it
gives the same weights, elsewhere the same recipe to within floating-point differences.

This module is what a learner's notebook uses: :func:`load_pretrained`, :func:`verify`, :func:`read_manifest`,
``CheckpointError``, ``ZOO_NAMES``, ``RECIPES``, ``PRUNED_RECIPES``. What the zoo holds, its manifest and checksums
are written in :mod:`deeplsp_helpers.zoo_store`; training, pruning, saving and the CLI in
:mod:`deeplsp_helpers.zoo_build`; both are re-exported here.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from torch import nn

from ._validate import check_bool
from .models import build_model as build_model  # re-exported: chapters 04 and 05 build fresh models as zoo.build_model
from .zoo_build import main, train_reference
from .zoo_store import (
    CHECKPOINT_DIR,
    PRUNED_RECIPES,
    RECIPES,
    ZOO_NAMES,
    CheckpointError,
    _check_name,
    _checkpoint_path,
    _load_checkpoint,
    read_manifest,
    verify,
)
from .zoo_store import MANIFEST as MANIFEST
from .zoo_store import SEED as SEED

__all__ = ["RECIPES", "PRUNED_RECIPES", "ZOO_NAMES", "CheckpointError", "load_pretrained", "train_reference",
           "read_manifest", "verify"]


def load_pretrained(name: str, *, retrain: bool = False, directory: str | os.PathLike | None = None,
                    device: torch.device | str = "cpu") -> nn.Module:
    """A trained reference model in eval mode.

    Args:
        name: one of ``lenet``, ``vgg``, ``resnet``, ``mobilenet``, ``vit``, ``gpt`` (chapter 09's byte-level
            language model, ``models.TinyGPT``), or a pruned model:
            ``vgg_structured``, ``vgg_deeplsp``, ``resnet_deeplsp`` (see ``PRUNED_RECIPES``).
        retrain: if the checkpoint is missing or fails its checksum, retrain it (minutes on a CPU)
            instead of raising.
        directory: where the checkpoints and manifest live (default: the package's own).
    Raises:
        FileNotFoundError: the checkpoint is missing (the message gives the retrain command).
        CheckpointError (a ValueError): the file fails its sha256 or does not fit the model.
    """
    name = _check_name(name)
    check_bool(retrain, "retrain")  # retrain="no" would be true, and retrain
    directory = Path(directory or CHECKPOINT_DIR)
    try:
        path = _checkpoint_path(name, directory)  # a corrupt manifest can be recovered from by retraining too
    except (FileNotFoundError, CheckpointError):
        if not retrain:
            raise
        train_reference(name, directory=directory)
        path = _checkpoint_path(name, directory)
    return _load_checkpoint(name, path, device)


if __name__ == "__main__":
    sys.exit(main())
