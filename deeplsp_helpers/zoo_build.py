"""Building the reference checkpoints: a dense model trained by its recipe (:func:`train_reference`), the language
model by steps, a pruned model made from its dense checkpoint by a chapter's recipe; saved without ever replacing a
better or longer-trained verified checkpoint; recorded in the manifest under a lock; and the command line
(:func:`main`), run as ``python -m deeplsp_helpers.zoo list | verify | train NAME|all``.

What the zoo holds (the recipes, the seed), its manifest and checksums are in :mod:`deeplsp_helpers.zoo_store`.
A learner loads with :func:`deeplsp_helpers.zoo.load_pretrained`, which calls :func:`train_reference` when asked to
retrain; ``deeplsp_helpers.zoo`` re-exports ``train_reference`` and ``main``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from . import seed_everything
from ._validate import check_bool, check_ints
from .files import atomic_write, atomic_write_or_rescue, check_free_space
from .models import LANGUAGE_MODEL_NAMES, build_model
from .recipe import DeepLSPRecipe
from .zoo_store import (
    CHECKPOINT_DIR,
    MANIFEST,
    PRUNED_RECIPES,
    RECIPES,
    SEED,
    ZOO_NAMES,
    CheckpointError,
    _check_name,
    _checkpoint_path,
    _load_checkpoint,
    _retrain_hint,
    _sha256,
    _verified,
    read_manifest,
    verify,
)

__all__ = ["train_reference", "main"]


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
    base_dir = directory if (directory / MANIFEST).exists() else CHECKPOINT_DIR
    dense = _load_checkpoint(recipe["base"], _checkpoint_path(recipe["base"], base_dir))
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
