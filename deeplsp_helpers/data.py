"""FashionMNIST, offline: where to find it, the train/validation/test splits, fast in-memory loaders.

Lookup order for the data folder (the folder that holds ``FashionMNIST/raw``):
``root`` argument -> ``$DEEPLSP_DATA`` -> ``data/`` in the repository. If that folder does
not hold the files yet, they are decompressed into it (atomically) from the Debian package
``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``), or, failing that,
downloaded by torchvision where a network exists.

Run ``python -m deeplsp_helpers.data setup`` to fetch the data once (it installs the Debian
package with apt when run as root).
"""

from __future__ import annotations

import gzip
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator, NamedTuple

import torch
from torch.utils.data import Dataset

from ._validate import check_bool, check_int, check_ints
from .files import atomic_write, clean_stale

__all__ = [
    "CLASSES", "MEAN", "STD", "DataNotFoundError", "DataCorruptError", "ImageTensorDataset", "FashionSplits", "Loaders",
    "BatchLoader", "calibration_batches", "find_data_root", "load_fashion_mnist", "make_loaders", "subset",
]

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
MEAN, STD = 0.2860, 0.3530  # of the FashionMNIST training images, scaled to [0, 1]
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
RAW_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
SPLIT_SEED = 0  # fixes which 5,000 training images form the validation split


# what each raw file must hold: its IDX magic number and shape (the course's splits assume exactly these)
RAW_SHAPES = {"train-images-idx3-ubyte": (2051, (60000, 28, 28)), "train-labels-idx1-ubyte": (2049, (60000,)),
              "t10k-images-idx3-ubyte": (2051, (10000, 28, 28)), "t10k-labels-idx1-ubyte": (2049, (10000,))}


class DataNotFoundError(FileNotFoundError):
    """FashionMNIST is not on this machine and could not be fetched."""


class DataCorruptError(ValueError):
    """A FashionMNIST file is truncated, or is not the file its name says (e.g. the test labels under the training
    labels' name), and no intact copy was found to extract again."""


def _raw_problem(path: Path) -> str | None:
    """What is wrong with the raw file at ``path`` (``None`` if it holds what its name says): header and size."""
    magic, shape = RAW_SHAPES[path.name]
    expected = 4 * (1 + len(shape)) + math.prod(shape)
    try:
        if not path.is_file():
            return "is missing or not a regular file"
        size = path.stat().st_size
        with open(path, "rb") as f:
            header = f.read(4 * (1 + len(shape)))
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    if len(header) < 4 * (1 + len(shape)) or int.from_bytes(header[:4], "big") != magic:
        return f"is not an IDX file of {len(shape)}-D uint8 data (wrong header)"
    dims = tuple(int.from_bytes(header[4 * (i + 1):4 * (i + 2)], "big") for i in range(len(shape)))
    if dims != shape:
        return f"holds shape {dims}, expected {shape} (another file under this name?)"
    if size != expected:
        return f"has {size:,} bytes, expected {expected:,} (truncated or padded)"
    return None


def _repo_data_dir() -> Path:
    repo = Path(__file__).resolve().parents[1]
    return repo / "data" if (repo / "pyproject.toml").exists() else Path.cwd() / "data"


def _raw_dir(root: Path) -> Path:
    return root / "FashionMNIST" / "raw"


def _has_raw(root: Path) -> bool:
    return all((_raw_dir(root) / f).is_file() for f in RAW_FILES)


def _missing_message(target: Path) -> str:
    return (
        f"FashionMNIST was not found in {target} and could not be fetched. Ways to get it:\n"
        "  1. Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist  (files in /usr/share/datasets/fashion-mnist)\n"
        "  2. with a network: python -m deeplsp_helpers.data setup  (torchvision downloads it)\n"
        "  3. copy the four *-ubyte(.gz) files into <folder>/FashionMNIST/raw and set DEEPLSP_DATA=<folder>"
    )


def _copy_from_debian(target: Path, debian_dir: Path, replace: frozenset = frozenset()) -> bool:
    """Decompress the files of ``debian_dir`` (``<name>.gz`` or ``<name>``) into ``target``, each atomically: the
    missing ones, and those named in ``replace`` (found damaged). ``debian_dir`` may be the raw folder itself, whose
    ``.gz`` files are then extracted beside them. False if a needed source is not there."""
    raw = _raw_dir(target)
    todo = [n for n in RAW_FILES if n in replace or not (raw / n).is_file()]
    sources = {}
    for name in todo:
        src_gz, src = debian_dir / f"{name}.gz", debian_dir / name
        if src_gz.is_file():
            sources[name] = src_gz
        elif src.is_file() and src.resolve() != (raw / name).resolve():
            sources[name] = src
        else:
            return False
    raw.mkdir(parents=True, exist_ok=True)
    for name, src in sources.items():
        def copy(out, src=src):
            with (gzip.open(src, "rb") if src.suffix == ".gz" else open(src, "rb")) as inp:
                shutil.copyfileobj(inp, out)

        try:
            atomic_write(raw / name, copy)
        except (OSError, EOFError, gzip.BadGzipFile) as err:  # a truncated .gz: the file in place is left as it was
            print(f"warning: could not extract {src}: {err}", file=sys.stderr)
            return False
        if name in replace:
            print(f"warning: replaced the damaged {raw / name} by a fresh copy from {src}", file=sys.stderr)
    return True


def _repair(target: Path) -> None:
    """Check the four raw files; extract damaged ones again (from ``.gz`` files beside them or the Debian package)
    and raise ``DataCorruptError`` naming each file and its fault if that is not possible."""
    raw = _raw_dir(target)
    for name in RAW_FILES:
        clean_stale(raw, f".{name}.", ".tmp")  # what a killed extraction left behind
    bad = {n: p for n in RAW_FILES if (p := _raw_problem(raw / n))}
    if not bad:
        return
    for source in (raw, DEBIAN_DIR):
        if _copy_from_debian(target, source, frozenset(bad)):
            bad = {n: p for n in RAW_FILES if (p := _raw_problem(raw / n))}
            if not bad:
                return
    raise DataCorruptError("; ".join(f"{raw / n} {p}" for n, p in bad.items()) +
                           ". Delete the damaged file(s) and run: python -m deeplsp_helpers.data setup")


DOWNLOAD_TIMEOUT_S = 20  # per network operation: a network that drops packets fails fast, not after minutes


def _download(target: Path) -> bool:
    import socket

    from torchvision.datasets import FashionMNIST

    old = socket.getdefaulttimeout()
    try:
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # torchvision's urllib calls have no timeout of their own
        for train in (True, False):
            FashionMNIST(str(target), train=train, download=True)
    except Exception as err:  # no network, DNS failure, HTTP error, timeout ...
        print(f"torchvision download failed: {err}", file=sys.stderr)
        return False
    finally:
        socket.setdefaulttimeout(old)
    return _has_raw(target)


def find_data_root(root: str | os.PathLike | None = None, *, download: bool = True) -> Path:
    """The folder holding ``FashionMNIST/raw``, fetching the files into it if needed.

    Args:
        root: a folder to use; must exist. Default: ``$DEEPLSP_DATA`` if set, else ``data/`` in the repo.
        download: allow torchvision's download as the last resort.
    Raises:
        FileNotFoundError: ``root`` (or ``$DEEPLSP_DATA``) names a folder that does not exist.
        DataNotFoundError: the data is nowhere and could not be fetched (the message lists the ways).
    """
    check_bool(download, "download")
    if root is not None or os.environ.get("DEEPLSP_DATA"):
        source = "root" if root is not None else "DEEPLSP_DATA"
        target = Path(root if root is not None else os.environ["DEEPLSP_DATA"]).expanduser()
        if not target.is_dir():
            raise FileNotFoundError(f"data directory {target} (from {source}) does not exist or is not a folder")
    else:
        target = _repo_data_dir()
    if _has_raw(target):
        _repair(target)
        return target
    target.mkdir(parents=True, exist_ok=True)
    for source in (_raw_dir(target), DEBIAN_DIR):  # .gz files copied into the raw folder are extracted too
        if _copy_from_debian(target, source) and _has_raw(target):
            _repair(target)
            return target
    if download and _download(target):
        _repair(target)
        return target
    raise DataNotFoundError(_missing_message(target))


class ImageTensorDataset(Dataset):
    """Normalised images ``X`` [N,1,28,28] (float32) and labels ``y`` [N] (int64), held in memory.

    ``soft`` (optional, [N, classes]) holds a teacher's logits for each image, computed once by
    :func:`deeplsp_helpers.train.with_teacher_outputs`; a :class:`BatchLoader` then yields
    ``(X, y, soft)`` batches and training distils from them without running the teacher again.
    """

    def __init__(self, X: torch.Tensor, y: torch.Tensor, classes=CLASSES, soft: torch.Tensor | None = None):
        if not isinstance(X, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise TypeError("X and y must be tensors")
        if X.ndim != 4 or y.ndim != 1 or len(X) != len(y):
            raise ValueError(f"expected X [N,C,H,W] and y [N]; got {tuple(X.shape)} and {tuple(y.shape)}")
        if soft is not None and (not isinstance(soft, torch.Tensor) or soft.ndim != 2 or len(soft) != len(y)):
            raise ValueError("soft must be a [N, classes] tensor of teacher logits, one row per image")
        self.X, self.y, self.classes, self.soft = X, y, tuple(classes), soft

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        if self.soft is not None:
            return self.X[i], int(self.y[i]), self.soft[i]
        return self.X[i], int(self.y[i])

    def __repr__(self) -> str:
        return f"ImageTensorDataset(n={len(self)}, image_shape={tuple(self.X.shape[1:])})"


class FashionSplits(NamedTuple):
    train: ImageTensorDataset
    val: ImageTensorDataset
    test: ImageTensorDataset


_CACHE: dict = {}


def _normalise(images_uint8: torch.Tensor) -> torch.Tensor:
    return ((images_uint8.float().div_(255.0) - MEAN) / STD).unsqueeze(1)  # [N,28,28] -> [N,1,28,28]


def load_fashion_mnist(root: str | os.PathLike | None = None, val_size: int = 5000, *,
                       download: bool = True) -> FashionSplits:
    """FashionMNIST as three in-memory splits: train (60,000 - val_size), validation (val_size), test (10,000).

    The files are read with ``torchvision.datasets.FashionMNIST``. The validation images are a
    fixed random subset (seed ``SPLIT_SEED``) of the official training split; the test split is
    the official one and is only for reporting.

    The splits are read once per process and then **shared**: every call returns the same tensors
    (loading them again would cost seconds and 200 MB). Never modify ``X`` or ``y`` in place; take a
    ``.clone()`` (or :func:`subset`, which copies) if you want to change images.
    """
    check_int(val_size, "val_size", 1, 59999)
    data_root = find_data_root(root, download=download)
    key = (str(data_root.resolve()), val_size)
    if key not in _CACHE:
        from torchvision.datasets import FashionMNIST

        train_raw = FashionMNIST(str(data_root), train=True, download=False)
        test_raw = FashionMNIST(str(data_root), train=False, download=False)
        sizes = (len(train_raw.data), len(train_raw.targets), len(test_raw.data), len(test_raw.targets))
        if sizes != (60000, 60000, 10000, 10000):  # _repair checked the files; this guards the reader too
            raise DataCorruptError(f"FashionMNIST in {data_root} has {sizes[0]:,} training images, {sizes[1]:,} "
                                   f"training labels, {sizes[2]:,} test images and {sizes[3]:,} test labels; expected "
                                   "60,000, 60,000, 10,000 and 10,000")
        X_all, y_all = _normalise(train_raw.data), train_raw.targets.long()
        perm = torch.randperm(len(y_all), generator=torch.Generator().manual_seed(SPLIT_SEED))
        val_idx, train_idx = perm[:val_size].sort().values, perm[val_size:].sort().values
        _CACHE[key] = FashionSplits(
            train=ImageTensorDataset(X_all[train_idx], y_all[train_idx]),
            val=ImageTensorDataset(X_all[val_idx], y_all[val_idx]),
            test=ImageTensorDataset(_normalise(test_raw.data), test_raw.targets.long()),
        )
    return _CACHE[key]


def subset(dataset: ImageTensorDataset, n: int, seed: int = 0) -> ImageTensorDataset:
    """A random subset of ``n`` samples (fixed by ``seed``), e.g. for quick fine-tuning."""
    if not isinstance(dataset, ImageTensorDataset):
        raise TypeError("subset expects an ImageTensorDataset from load_fashion_mnist()")
    check_ints(("n", n, 1, len(dataset)))
    idx = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    soft = dataset.soft[idx] if dataset.soft is not None else None
    return ImageTensorDataset(dataset.X[idx], dataset.y[idx], dataset.classes, soft)


def calibration_batches(dataset: ImageTensorDataset, n_batches: int = 4, batch_size: int = 128,
                        seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A fixed list of ``n_batches`` ``(X, y)`` batches drawn without replacement from ``dataset`` (seeded).

    For data-driven criteria (gradient, Taylor, OBD, sensitivity): draw them from the **training** split,
    so the validation images the criteria are then scored on stay unseen.
    """
    if not isinstance(dataset, ImageTensorDataset):
        raise TypeError("calibration_batches expects an ImageTensorDataset (e.g. splits.train)")
    check_ints(("n_batches", n_batches, 1), ("batch_size", batch_size, 1))
    if n_batches * batch_size > len(dataset):
        raise ValueError(f"{n_batches} x {batch_size} images requested, the dataset has {len(dataset)}")
    idx = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n_batches * batch_size]
    return [(dataset.X[b], dataset.y[b]) for b in idx.view(n_batches, batch_size)]


class BatchLoader:
    """Batches straight from in-memory tensors: much faster than a DataLoader over PIL images.

    Each pass with ``shuffle=True`` uses a new, reproducible order (``seed`` + pass number).
    Batches are ``(X, y)``, or ``(X, y, soft)`` when the dataset carries teacher logits.
    """

    def __init__(self, dataset: ImageTensorDataset, batch_size: int = 128, shuffle: bool = False,
                 seed: int = 0, drop_last: bool = False):
        if not isinstance(dataset, ImageTensorDataset):
            raise TypeError("BatchLoader expects an ImageTensorDataset")
        check_ints(("batch_size", batch_size, 1))
        check_bool(shuffle, "shuffle")  # shuffle="no" would shuffle
        check_bool(drop_last, "drop_last")
        self.dataset, self.batch_size, self.shuffle = dataset, batch_size, shuffle
        self.seed, self.drop_last, self._epoch = seed, drop_last, 0

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.dataset)
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + self._epoch))
            self._epoch += 1
        else:
            order = None
        tensors = (self.dataset.X, self.dataset.y) + ((self.dataset.soft,) if self.dataset.soft is not None else ())
        for b in range(len(self)):
            sl = slice(b * self.batch_size, min(n, (b + 1) * self.batch_size))
            idx = sl if order is None else order[sl]
            yield tuple(t[idx] for t in tensors)


class Loaders(NamedTuple):
    train: BatchLoader
    val: BatchLoader
    test: BatchLoader


def make_loaders(splits: FashionSplits, batch_size: int = 128, eval_batch_size: int = 1000,
                 train_subset: int | None = None, seed: int = 0) -> Loaders:
    """Loaders for the three splits: shuffled training batches, fixed-order evaluation batches.

    Args:
        train_subset: if given, train on a fixed random subset of this many samples.
    """
    if not isinstance(splits, FashionSplits):
        raise TypeError("make_loaders expects the FashionSplits returned by load_fashion_mnist()")
    train = splits.train if train_subset is None else subset(splits.train, train_subset, seed)
    return Loaders(
        train=BatchLoader(train, batch_size, shuffle=True, seed=seed),
        val=BatchLoader(splits.val, eval_batch_size),
        test=BatchLoader(splits.test, eval_batch_size),
    )


def setup(download: bool = True) -> Path:
    """Make the data available: install the Debian package when root with apt, else download."""
    try:
        return find_data_root(download=False)
    except DataNotFoundError:
        pass
    if not DEBIAN_DIR.is_dir() and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        print("installing the Debian package dataset-fashion-mnist ...", flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "dataset-fashion-mnist"], check=False, env=env)
    return find_data_root(download=download)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m deeplsp_helpers.data", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["setup", "where"], help="setup: fetch the data if needed; where: print its folder")
    parser.add_argument("--no-download", action="store_true", help="never try torchvision's download")
    args = parser.parse_args(argv)
    try:
        root = setup(download=not args.no_download) if args.command == "setup" else find_data_root(download=False)
    except FileNotFoundError as err:
        print(err, file=sys.stderr)
        return 1
    print(f"FashionMNIST ready in {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
