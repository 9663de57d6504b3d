"""The reference checkpoints as files: which models the zoo holds (the dense models' training recipes, the pruned
models' recipes, the seed), where they are (``CHECKPOINT_DIR``), the manifest that lists each file with its sha256,
and reading one back, verified, with ``torch.load(..., weights_only=True)``.

The learner's entry point is :mod:`deeplsp_helpers.zoo` (``load_pretrained``, ``verify``, ``read_manifest``; it
re-exports everything public here); the building side (training, pruning, saving, recording, the CLI) is
:mod:`deeplsp_helpers.zoo_build`. Both import this module, which imports neither.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import torch
from torch import nn

from .files import regular_file
from .models import MODEL_NAMES, build_model
from .recipe import DeepLSPRecipe

__all__ = ["CHECKPOINT_DIR", "MANIFEST", "RECIPES", "SEED", "PRUNED_RECIPES", "ZOO_NAMES", "CheckpointError",
           "read_manifest", "verify"]

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
MANIFEST = "manifest.json"

# One recipe per model: the full description of how its checkpoint was made.
RECIPES = {
    "lenet": dict(num_epochs=12, lr=3e-3, optimizer="adam", weight_decay=0.0, batch_size=128, schedule="onecycle"),
    "vgg": dict(num_epochs=5, lr=0.1, optimizer="sgd", weight_decay=5e-4, batch_size=128, schedule="onecycle"),
    "resnet": dict(num_epochs=4, lr=0.1, optimizer="sgd", weight_decay=5e-4, batch_size=128, schedule="onecycle"),
    "mobilenet": dict(num_epochs=5, lr=0.1, optimizer="sgd", weight_decay=1e-4, batch_size=128, schedule="onecycle"),
    # a transformer: AdamW (decoupled weight decay); time and accuracy are in the manifest, as for every model
    "vit": dict(num_epochs=12, lr=1e-3, optimizer="adamw", weight_decay=0.05, batch_size=128, schedule="onecycle"),
    # the byte-level language model of chapter 09 (models.TinyGPT), on the King James Bible (text_data): AdamW
    # steps of 32 windows x 256 bytes, warm-up then cosine decay (lm.train_lm); the best step on validation is kept
    "gpt": dict(steps=800, lr=2e-3, batch_size=32, warmup=50, weight_decay=0.1, eval_every=100),
}
SEED = 0

# Pruned reference models: a dense checkpoint (``base``) pruned and fine-tuned by a chapter's recipe.
PRUNED_RECIPES = {
    # chapter 05: Torch-Pruning's BasePruner, L1 group magnitude, half of the channels (the classifier kept),
    # then a short fine-tune with distillation from the dense model
    "vgg_structured": dict(base="vgg", chapter="05", channel_ratio=0.5, finetune_epochs=2,
                           finetune_samples=30_000, lr=0.05, batch_size=128, distill=True),
    # the same with vgg_deeplsp_3x's budget (8 epochs over the whole training split): chapter 06's equal-budget baseline
    "vgg_structured_full": dict(base="vgg", chapter="05", channel_ratio=0.5, finetune_epochs=8,
                                finetune_samples=55_000, lr=0.05, batch_size=128, distill=True),
    # chapter 06's DeepLSP recipe (deeplsp_helpers.recipe.DeepLSPRecipe) with the whole training split for
    # fine-tuning (the budget the chapter cannot afford live): on VGG at a requested 2.5x at batch size 1 (4 epochs,
    # 2 per stage; chapter 07 deploys it) and 3x (8 epochs, 4 per stage; chapter 06's headline), on ResNet at 2x
    # (4 epochs).
    "vgg_deeplsp": dict(base="vgg", chapter="06", **DeepLSPRecipe(target_speedup=2.5, finetune_epochs=4,
                                                                   finetune_samples=55_000).as_record()),
    "vgg_deeplsp_3x": dict(base="vgg", chapter="06", **DeepLSPRecipe(target_speedup=3.0, finetune_epochs=8,
                                                                      finetune_samples=55_000).as_record()),
    # the same with HALP's structured stage (30 steps during the first fine-tune; Taylor importance, latency knapsack)
    "vgg_deeplsp_halp": dict(base="vgg", chapter="06", **DeepLSPRecipe(target_speedup=3.0, cost="latency", halp_steps=30,
                                                                        finetune_epochs=8, finetune_samples=55_000).as_record()),
    "resnet_deeplsp": dict(base="resnet", chapter="06", **DeepLSPRecipe(target_speedup=2.0, finetune_epochs=4,
                                                                         finetune_samples=55_000).as_record()),
}
ZOO_NAMES = MODEL_NAMES + tuple(PRUNED_RECIPES)


class CheckpointError(ValueError):
    """A checkpoint file is corrupt, does not match its manifest, or does not fit its model."""


def _retrain_hint(name: str) -> str:
    return f"rebuild it with:  python -m deeplsp_helpers.zoo train {name}   (or load_pretrained({name!r}, retrain=True))"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_name(name) -> str:
    if not isinstance(name, str):
        raise TypeError(f"model name must be a string, got {type(name).__name__}")
    if name.lower() not in ZOO_NAMES:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(ZOO_NAMES)}")
    return name.lower()


def read_manifest(directory: Path | None = None) -> dict:
    """The manifest as a dict ``{name: entry}``; empty if there is none yet."""
    path = Path(directory or CHECKPOINT_DIR) / MANIFEST
    if not path.exists() and not path.is_symlink():
        return {}
    try:
        regular_file(path, "manifest")  # a FIFO would block the read forever
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{err}; retrain with: python -m deeplsp_helpers.zoo train all") from None
    try:
        manifest = json.loads(path.read_text())
    except ValueError as err:  # invalid JSON or invalid UTF-8
        raise CheckpointError(f"{path} is not valid JSON ({err}); retrain with: python -m deeplsp_helpers.zoo train all") from err
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{path} is not a manifest (expected a JSON object); retrain with: "
                              "python -m deeplsp_helpers.zoo train all")
    return manifest


def _entry(manifest: dict, name: str, directory: Path) -> dict | None:
    """``manifest[name]`` if it is there, ``None`` if not; ``CheckpointError`` naming the manifest and the field if
    the entry lacks a plain file name or a sha256 (a hand-edited or truncated manifest)."""
    entry = manifest.get(name)
    if entry is None:
        return None
    if not isinstance(entry, dict):
        problem = "is not a JSON object"
    elif not isinstance(entry.get("file"), str) or entry["file"] in ("", ".", "..") or Path(entry["file"]).name != entry["file"]:
        problem = f"has no valid 'file' (a file name inside {directory}), got {entry.get('file')!r}"
    elif not isinstance(entry.get("sha256"), str) or not re.fullmatch("[0-9a-f]{64}", entry["sha256"]):
        problem = f"has no valid 'sha256' (64 hex digits), got {entry.get('sha256')!r}"
    else:
        return entry
    raise CheckpointError(f"{directory / MANIFEST}: the entry for {name!r} {problem}; {_retrain_hint(name)}")


def _verified(directory: Path, name: str) -> dict | None:
    """The manifest entry of ``name`` if its file is there and matches its sha256, else ``None``."""
    try:
        entry = _entry(read_manifest(directory), name, directory)
        if entry is not None and (directory / entry["file"]).is_file() and _sha256(directory / entry["file"]) == entry["sha256"]:
            return entry
    except (OSError, ValueError):
        pass
    return None


def _checkpoint_path(name: str, directory: Path) -> Path:
    """The file of ``name``'s checkpoint in ``directory``: listed in the manifest, there, and matching its sha256.
    Raises:
        FileNotFoundError: no entry or no file (the message gives the retrain command).
        CheckpointError: the file fails its sha256, or the manifest or the entry is corrupt (retraining recovers
            from each of these: ``load_pretrained(..., retrain=True)``).
    """
    entry = _entry(read_manifest(directory), name, directory)
    path = directory / (entry["file"] if entry else f"{name}.pt")
    if entry is None or not path.is_file():
        raise FileNotFoundError(f"no checkpoint for {name!r} in {directory}; {_retrain_hint(name)}")
    digest = _sha256(path)
    if digest != entry["sha256"]:
        raise CheckpointError(f"checkpoint {path.name} fails its checksum (sha256 {digest[:12]}… != manifest "
                              f"{entry['sha256'][:12]}…): the file is corrupt or was changed; {_retrain_hint(name)}")
    return path


def _load_checkpoint(name: str, path: Path, device: torch.device | str = "cpu") -> nn.Module:
    """The model ``name`` with the weights in ``path`` (from :func:`_checkpoint_path`), in eval mode on ``device``;
    ``CheckpointError`` if they do not load into it (unpickling error, missing or unexpected keys, wrong shapes)."""
    try:
        if name in PRUNED_RECIPES:
            from .serialization import load_pruned

            model = load_pruned(path)  # torch.load(..., weights_only=True) inside
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            model = build_model(name)
            model.load_state_dict(state)
    except Exception as err:  # unpickling error, missing/unexpected keys, wrong shapes
        raise CheckpointError(f"checkpoint {path.name} does not load into {name}: {err}; {_retrain_hint(name)}") from err
    return model.to(device).eval()


def verify(directory: str | os.PathLike | None = None) -> dict:
    """``{name: 'ok' | problem}`` for every model: is the file there, does its sha256 match?"""
    directory = Path(directory or CHECKPOINT_DIR)
    manifest, result = read_manifest(directory), {}
    for name in ZOO_NAMES:
        try:
            entry = _entry(manifest, name, directory)
        except CheckpointError as err:
            result[name] = f"bad manifest entry ({str(err).split('; ')[0].split(' entry for ')[-1]})"
            continue
        path = directory / (entry["file"] if entry else f"{name}.pt")
        if entry is None or not path.is_file():
            result[name] = "missing"
        elif _sha256(path) != entry["sha256"]:
            result[name] = "checksum mismatch"
        else:
            result[name] = "ok"
    return result
