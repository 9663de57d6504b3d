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
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

import torch
from torch import nn

from . import seed_everything
from ._validate import check_bool, check_ints
from .files import atomic_write, atomic_write_or_rescue, check_free_space, regular_file
from .models import LANGUAGE_MODEL_NAMES, MODEL_NAMES, build_model
from .recipe import DeepLSPRecipe

__all__ = ["RECIPES", "PRUNED_RECIPES", "ZOO_NAMES", "CheckpointError", "load_pretrained", "train_reference",
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
        entry = _entry(read_manifest(directory), name, directory)  # a corrupt manifest can be recovered from by retraining too
        path = directory / (entry["file"] if entry else f"{name}.pt")
        if entry is None or not path.is_file():
            raise FileNotFoundError(f"no checkpoint for {name!r} in {directory}; {_retrain_hint(name)}")
        digest = _sha256(path)
        if digest != entry["sha256"]:
            raise CheckpointError(f"checkpoint {path.name} fails its checksum (sha256 {digest[:12]}… != manifest "
                                  f"{entry['sha256'][:12]}…): the file is corrupt or was changed; {_retrain_hint(name)}")
    except (FileNotFoundError, CheckpointError):
        if not retrain:
            raise
        train_reference(name, directory=directory)
        return load_pretrained(name, directory=directory, device=device)
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


def _checkpoint_bytes(name: str) -> int:
    """About how many bytes ``name``'s checkpoint takes (its dense base model's tensors, plus room for the format)."""
    model = build_model(PRUNED_RECIPES[name]["base"] if name in PRUNED_RECIPES else name)
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers())) + (1 << 20)


def _check_replace(directory: Path, name: str, num_epochs: int | None, force: bool) -> None:
    """Refuse, before any work, to overwrite a verified checkpoint with a shorter-trained one unless ``force``."""
    old = _verified(directory, name)
    if name in LANGUAGE_MODEL_NAMES and num_epochs is not None:
        raise ValueError(f"{name} trains for a number of steps (its recipe: {RECIPES[name]['steps']}), not epochs")
    recipe_epochs = RECIPES.get(name, {}).get("num_epochs")
    if old is not None and not force and num_epochs is not None and num_epochs < recipe_epochs:
        raise CheckpointError(f"{directory / old['file']} holds a verified checkpoint (val {old.get('val_acc', '?')} %); "
                              f"training {name} for {num_epochs} epoch(s) instead of the recipe's {recipe_epochs} would "
                              "replace it with a weaker one: pass force=True (CLI: --force) to replace it, or "
                              "directory=... (CLI: --dir FOLDER) to train elsewhere")


def _save_checkpoint(directory: Path, name: str, state, value: float, force: bool, save, metric: str = "val_acc") -> Path:
    """Save ``state`` as ``name``'s checkpoint with ``save(path)``, unless that would replace a verified checkpoint
    with a worse one on validation (``metric``: ``val_acc``, higher is better, or ``val_ppl``, lower is better),
    without ``force``: then the new one goes beside it as ``<name>.rejected.pt`` and a ``CheckpointError`` says so.
    A failed write (full disk) puts the weights elsewhere and says where."""
    path = directory / f"{name}.pt"
    old = _verified(directory, name)
    if old is not None and not force and isinstance(old.get(metric), (int, float)):
        # "not better or equal" rather than "worse": a NaN (a diverged run) compares false with everything
        worse = not (value <= old[metric] if metric == "val_ppl" else value >= old[metric])
        if worse:
            keep = directory / f"{name}.rejected.pt"
            save(keep)
            raise CheckpointError(f"kept {path} ({metric} {old[metric]}): the new {name} reaches only {metric} "
                                  f"{value:.2f}; it was saved as {keep} (pass force=True, CLI --force, to replace the "
                                  "checkpoint)")
    return save(path)


def train_reference(name: str, *, directory: str | os.PathLike | None = None, num_epochs: int | None = None,
                    progress: bool | None = None, force: bool = False) -> dict:
    """Train ``name`` with its recipe and seed, keep the best validation epoch, save it atomically.

    The test accuracy is measured once, after selection, and only recorded.
    Returns the manifest entry that was written.

    A verified checkpoint already in ``directory`` is replaced only by a model at least as accurate on validation,
    and never by a shorter-trained one (``num_epochs`` below the recipe's): pass ``force=True`` to replace it anyway.
    Raises:
        ValueError: ``num_epochs`` is not a positive int (checked before the data is loaded).
        CheckpointError: the new model would replace a better verified checkpoint (``force=False``).
        OSError: the folder is not writable or the disk too full for the checkpoint (before training), or the save
            failed after training (``files.RescuedWriteError``: the message says where the weights went instead).
    """
    from . import data, train

    name = _check_name(name)
    if num_epochs is not None:
        check_ints(("num_epochs", num_epochs, 1))
    if progress is not None:
        check_bool(progress, "progress")
    check_bool(force, "force")
    directory = Path(directory or CHECKPOINT_DIR)
    _check_writable(directory, _checkpoint_bytes(name))  # before minutes of training, not after
    if name in PRUNED_RECIPES:
        if num_epochs is not None:
            raise ValueError(f"{name} is made by a pruning recipe; its fine-tuning epochs are part of the recipe")
        return _make_pruned(name, directory, progress, force)
    _check_replace(directory, name, num_epochs, force)
    if name in LANGUAGE_MODEL_NAMES:
        return _train_language_model(name, directory, progress, force)
    recipe = dict(RECIPES[name])
    if num_epochs is not None:
        recipe["num_epochs"] = num_epochs
    batch_size = recipe.pop("batch_size")
    seed_everything(SEED)
    splits = data.load_fashion_mnist()
    loaders = data.make_loaders(splits, batch_size=batch_size, seed=SEED)
    model = build_model(name)
    history = train.train(model, loaders.train, loaders.val, select_best=True, device="cpu", progress=progress,
                          **recipe)
    val_acc = train.evaluate(model, loaders.val)
    test_acc = train.evaluate(model, loaders.test)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    path = _save_checkpoint(directory, name, state, val_acc, force, lambda p: atomic_write_or_rescue(
        p, lambda f: torch.save(state, f), what=f"the trained {name} weights", payload=state))
    entry = {
        "file": path.name, "sha256": _sha256(path), "val_acc": round(val_acc, 2), "test_acc": round(test_acc, 2),
        "params": sum(p.numel() for p in model.parameters()), "seed": SEED,
        "recipe": dict(RECIPES[name], **({"num_epochs": num_epochs} if num_epochs is not None else {})),
        "best_epoch": history["best_epoch"], "val_acc_per_epoch": [round(a, 2) for a in history["val_acc"]],
        "train_seconds": round(history["seconds"], 1), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "machine": platform.machine(),
        "trained_on": time.strftime("%Y-%m-%d"),
    }
    _record(directory, name, entry)
    return entry


def _train_language_model(name: str, directory: Path, progress: bool | None, force: bool) -> dict:
    """Train the language model ``name`` on the text corpus's train split by its recipe (:func:`lm.train_lm`), keep
    the best step on validation, record validation and test perplexity (per byte, whole splits)."""
    from . import lm, text_data

    splits = text_data.load_text()
    seed_everything(SEED)
    model = build_model(name)
    history = lm.train_lm(model, splits.train, splits.val, seed=SEED, progress=bool(progress), **RECIPES[name])
    val_ppl = lm.perplexity(model, splits.val)
    test_ppl = lm.perplexity(model, splits.test)  # recorded, never used to choose
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    path = _save_checkpoint(directory, name, state, val_ppl, force, lambda p: atomic_write_or_rescue(
        p, lambda f: torch.save(state, f), what=f"the trained {name} weights", payload=state), metric="val_ppl")
    entry = {
        "file": path.name, "sha256": _sha256(path), "val_ppl": round(val_ppl, 4), "test_ppl": round(test_ppl, 4),
        "params": sum(p.numel() for p in model.parameters()), "seed": SEED, "recipe": dict(RECIPES[name]),
        "best_step": history["best_step"], "val_ppl_per_eval": [round(p, 4) for p in history["val_ppl"]],
        "eval_steps": history["steps"], "train_seconds": round(history["seconds"], 1),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.machine(),
        "trained_on": time.strftime("%Y-%m-%d"),
    }
    _record(directory, name, entry)
    return entry


@contextlib.contextmanager
def _manifest_lock(directory: Path):
    """An exclusive lock on ``directory`` (``flock`` on the folder itself: no lock file to leave behind), so that two
    processes updating the manifest read-modify-write it one after the other instead of losing entries."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _record(directory: Path, name: str, entry: dict) -> None:
    """Write ``entry`` into the manifest, atomically and under a lock; a corrupt manifest is set aside and a new one
    started."""
    with _manifest_lock(directory):
        try:
            manifest = read_manifest(directory)
        except CheckpointError as err:  # keep the corrupt file for inspection; start a new manifest with this entry
            corrupt = directory / f"{MANIFEST}.corrupt"
            os.replace(directory / MANIFEST, corrupt)
            print(f"warning: {err.args[0].split(';')[0]}; moved it to {corrupt.name} and started a new manifest "
                  "(retrain the other models to list them again)", file=sys.stderr)
            manifest = {}
        manifest[name] = entry
        text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
        atomic_write(directory / MANIFEST, lambda f: f.write(text.encode()))


def _make_pruned(name: str, directory: Path, progress: bool | None, force: bool = False) -> dict:
    """Prune the dense ``base`` checkpoint by ``PRUNED_RECIPES[name]``, save it with ``save_pruned``, record it."""
    import copy

    from . import data, metrics, train
    from .channels import uniform_channel_pruning
    from .serialization import save_pruned

    recipe = PRUNED_RECIPES[name]
    start = time.perf_counter()
    dense = load_pretrained(recipe["base"], directory=directory if (directory / MANIFEST).exists() else None)
    seed_everything(SEED)
    splits = data.load_fashion_mnist()
    loaders = data.make_loaders(splits, batch_size=recipe["batch_size"], seed=SEED)
    x1 = splits.val.X[:1]
    model = copy.deepcopy(dense)
    if "channel_ratio" in recipe:
        uniform_channel_pruning(model, x1, recipe["channel_ratio"], ignored_layers=[model.classifier])
        ft = data.make_loaders(splits, batch_size=recipe["batch_size"], train_subset=recipe["finetune_samples"],
                               seed=SEED).train
        done = train.fine_tune(model, ft, num_epochs=recipe["finetune_epochs"], lr=recipe["lr"], teacher=dense,
                               progress=progress, val_loader=loaders.val)
        history = {"structured": [round(a, 2) for a in done["val_acc"]]}
        sparse = False
    else:
        history = {}
        model, _ = DeepLSPRecipe.from_record(recipe).run(dense, splits, progress=progress, val_loader=loaders.val,
                                                         history=history)
        sparse = True
    model.eval()
    val_acc = train.evaluate(model, loaders.val)
    test_acc = train.evaluate(model, loaders.test)  # recorded, never used to choose
    path = _save_checkpoint(directory, name, model, val_acc, force,
                            lambda p: save_pruned(model, recipe["base"], p, sparse=sparse))
    entry = {
        "file": path.name, "sha256": _sha256(path), "val_acc": round(val_acc, 2), "test_acc": round(test_acc, 2),
        "params": metrics.count_parameters(model), "nonzero_params": metrics.count_parameters(model, nonzero_only=True),
        "widths": metrics.conv_widths(model),
        "finetune_images": recipe["finetune_epochs"] * recipe["finetune_samples"],
        "val_acc_per_epoch": history,  # after every fine-tuning epoch, per stage: the budget curve
        "seed": SEED, "recipe": dict(recipe), "train_seconds": round(time.perf_counter() - start, 1),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.machine(),
        "trained_on": time.strftime("%Y-%m-%d"),
    }
    _record(directory, name, entry)
    return entry


def _check_writable(directory: Path, needed: int = 0) -> None:
    """``PermissionError`` with a way out unless checkpoints can be written into ``directory``; ``OSError`` (ENOSPC,
    "disk full") unless it has ``needed`` bytes free (an empty probe file is written even on a full disk)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise OSError(errno.ENOSPC, f"disk full: cannot write checkpoints into {directory}") from None
        raise PermissionError(f"cannot write checkpoints into {directory} ({err.strerror or err}); pass "
                              "directory=... (CLI: --dir FOLDER) to train into a folder you can write") from None
    check_free_space(directory, needed, "the checkpoint")


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


def _positive_int(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an int") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value} (0 epochs would save an untrained model)")
    return value


def _describe(name: str, e) -> str:
    """One line of ``list`` for a manifest entry; a malformed entry says what is wrong instead of a KeyError."""
    try:
        r = e["recipe"]
        if "val_ppl" in e:
            return (f"{name:14s} val perplexity {e['val_ppl']:.3f}  test {e['test_ppl']:.3f}  params {e['params']:,}  "
                    f"steps {r['steps']}  seed {e['seed']}")
        how = (f"epochs {r['num_epochs']}" if "num_epochs" in r
               else f"pruned from {r['base']} by chapter {r['chapter']}'s recipe")
        return (f"{name:14s} val {e['val_acc']:6.2f} %  test {e['test_acc']:6.2f} %  params {e['params']:,}  "
                f"{how}  seed {e['seed']}")
    except (KeyError, TypeError, ValueError) as err:
        return f"{name:14s} bad manifest entry ({type(err).__name__}: {err}); {_retrain_hint(name)}"


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m deeplsp_helpers.zoo", description="Reference checkpoints.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="show each checkpoint's accuracy and recipe")
    sub.add_parser("verify", help="check every checkpoint against its sha256")
    p_train = sub.add_parser("train", help="retrain a reference model with its recorded recipe and seed")
    p_train.add_argument("name", type=str.lower, choices=[*ZOO_NAMES, "all"])
    p_train.add_argument("--epochs", type=_positive_int, default=None, help="override the recipe's number of epochs")
    p_train.add_argument("--dir", default=None, help="where to write the checkpoints and manifest "
                                                     "(default: the package's own folder)")
    p_train.add_argument("--force", action="store_true",
                         help="replace a verified checkpoint even by a shorter-trained or less accurate model")
    args = parser.parse_args(argv)
    if args.command == "train":
        directory = Path(args.dir or CHECKPOINT_DIR)
        names = ZOO_NAMES if args.name == "all" else [args.name]
        try:
            if args.epochs is not None and args.name in LANGUAGE_MODEL_NAMES:
                raise ValueError(f"{args.name} trains for a number of steps (its recipe: {RECIPES[args.name]['steps']}), "
                                 "not epochs: drop --epochs")
            _check_writable(directory, max(_checkpoint_bytes(n) for n in names))
            for name in names:
                if name not in PRUNED_RECIPES:
                    _check_replace(directory, name, None if name in LANGUAGE_MODEL_NAMES else args.epochs, args.force)
        except (OSError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        for name in names:  # dense ones first: the pruned start from them
            try:
                entry = train_reference(name, num_epochs=None if name in PRUNED_RECIPES or name in LANGUAGE_MODEL_NAMES
                                        else args.epochs,
                                        directory=directory, force=args.force)
            except (OSError, CheckpointError) as err:
                print(f"error: {err}", file=sys.stderr)
                return 1
            scores = (f"val perplexity {entry['val_ppl']:.3f}  test {entry['test_ppl']:.3f}" if "val_ppl" in entry
                      else f"val {entry['val_acc']:.2f} %  test {entry['test_acc']:.2f} %")
            print(f"{name}: {scores}  "
                  f"({entry['train_seconds']:.0f} s" + (f", best epoch {entry['best_epoch']})" if "best_epoch" in entry
                                                       else ")"), flush=True)
        return 0
    try:
        manifest = read_manifest()
    except (CheckpointError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.command == "verify":
        status = verify()
        for name, s in status.items():
            print(f"{name:10s} {s}")
        return 0 if all(s == "ok" for s in status.values()) else 1
    lines = [_describe(name, e) for name, e in manifest.items()]
    print("\n".join(lines))
    return 1 if any("bad manifest entry" in line for line in lines) else 0


if __name__ == "__main__":
    sys.exit(main())
