import gzip
import os

import pytest
import torch

from deeplsp_helpers import data


def test_splits_have_the_designed_sizes_and_are_normalised(splits):
    assert (len(splits.train), len(splits.val), len(splits.test)) == (55000, 5000, 10000)
    X, y = splits.train[0]
    assert X.shape == (1, 28, 28) and isinstance(y, int) and 0 <= y < 10
    mean, std = splits.train.X.mean().item(), splits.train.X.std().item()
    assert abs(mean) < 0.02 and abs(std - 1) < 0.02
    assert set(splits.val.y.tolist()) == set(range(10))


def test_validation_split_is_fixed_and_disjoint_from_train(splits):
    # the same split is drawn again from scratch (not the cached one): same seed, same images
    perm = torch.randperm(60000, generator=torch.Generator().manual_seed(data.SPLIT_SEED))
    from torchvision.datasets import FashionMNIST

    raw = FashionMNIST(str(data.find_data_root(download=False)), train=True, download=False)
    assert torch.equal(raw.targets[perm[:5000].sort().values], splits.val.y)
    assert len(splits.val) == 5000
    # hash each image; validation images must not appear in train (FashionMNIST has few exact duplicates)
    train_keys = {row.tobytes() for row in splits.train.X.flatten(1).numpy()}
    overlap = sum(row.tobytes() in train_keys for row in splits.val.X.flatten(1).numpy())
    assert overlap < 25, overlap


def test_missing_data_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load_fashion_mnist(root=tmp_path / "nope")


def test_no_data_anywhere_names_the_ways_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DEBIAN_DIR", tmp_path / "no-debian")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(data.DataNotFoundError) as info:
        data.find_data_root(empty, download=False)
    msg = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in msg and "DEEPLSP_DATA" in msg and "setup" in msg
    assert isinstance(info.value, FileNotFoundError)


def test_env_variable_pointing_nowhere_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPLSP_DATA", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="DEEPLSP_DATA"):
        data.find_data_root()


SMALL_SHAPES = {"train-images-idx3-ubyte": (2051, (6, 28, 28)), "train-labels-idx1-ubyte": (2049, (6,)),
                "t10k-images-idx3-ubyte": (2051, (2, 28, 28)), "t10k-labels-idx1-ubyte": (2049, (2,))}


def _idx(name: str, fill: int) -> bytes:
    """A well-formed IDX file of ``SMALL_SHAPES[name]``, every byte ``fill``."""
    magic, shape = SMALL_SHAPES[name]
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in shape)
    n = 1
    for d in shape:
        n *= d
    return header + bytes([fill]) * n


@pytest.fixture
def small_files(monkeypatch, tmp_path):
    """Raw files checked against small shapes (the real ones are 55 MB); a Debian folder holding them as .gz."""
    monkeypatch.setattr(data, "RAW_SHAPES", SMALL_SHAPES, raising=False)
    debian = tmp_path / "debian"
    debian.mkdir()
    for i, name in enumerate(data.RAW_FILES):
        with gzip.open(debian / f"{name}.gz", "wb") as f:
            f.write(_idx(name, i))
    monkeypatch.setattr(data, "DEBIAN_DIR", debian)
    target = tmp_path / "target"
    target.mkdir()
    return target, target / "FashionMNIST" / "raw"


def test_debian_files_are_decompressed_atomically(small_files):
    target, raw = small_files
    assert data.find_data_root(target, download=False) == target
    assert sorted(os.listdir(raw)) == sorted(data.RAW_FILES)  # no temporary files left behind
    assert (raw / data.RAW_FILES[2]).read_bytes() == _idx(data.RAW_FILES[2], 2)


def test_a_truncated_file_is_extracted_again_and_a_swapped_one_is_named(small_files, monkeypatch, capsys):
    target, raw = small_files
    data.find_data_root(target, download=False)
    labels = raw / "train-labels-idx1-ubyte"
    labels.write_bytes(_idx("train-labels-idx1-ubyte", 1)[:-3])  # truncated: extracted again from the .gz
    assert data.find_data_root(target, download=False) == target
    assert labels.read_bytes() == _idx("train-labels-idx1-ubyte", 1) and "replaced the damaged" in capsys.readouterr().err
    monkeypatch.setattr(data, "DEBIAN_DIR", target / "no-debian")  # nothing to extract again from
    labels.write_bytes(_idx("t10k-labels-idx1-ubyte", 3))  # the test labels under the training labels' name
    with pytest.raises(data.DataCorruptError, match=r"train-labels-idx1-ubyte holds shape \(2,\), expected \(6,\)"):
        data.find_data_root(target, download=False)
    labels.write_bytes(b"\x00" * 20)
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte is not an IDX file"):
        data.find_data_root(target, download=False)


def test_gz_files_copied_into_the_raw_folder_are_used_as_the_message_says(small_files, monkeypatch):
    target, raw = small_files
    monkeypatch.setattr(data, "DEBIAN_DIR", target / "no-debian")
    raw.mkdir(parents=True)
    for i, name in enumerate(data.RAW_FILES):
        with gzip.open(raw / f"{name}.gz", "wb") as f:
            f.write(_idx(name, i))
    assert data.find_data_root(target, download=False) == target
    assert (raw / data.RAW_FILES[3]).read_bytes() == _idx(data.RAW_FILES[3], 3)


def test_temporary_files_a_killed_extraction_left_are_removed(small_files):
    import time

    target, raw = small_files
    data.find_data_root(target, download=False)
    dead = raw / ".train-images-idx3-ubyte.999999999.k3x9.tmp"  # the pid of a process that no longer runs
    live = raw / f".train-images-idx3-ubyte.{os.getpid()}.a1b2.tmp"  # a write in progress: kept
    for f in (dead, live):
        f.write_bytes(b"x" * 1000)
        os.utime(f, (time.time() - 600, time.time() - 600))
    data.find_data_root(target, download=False)
    assert not dead.exists() and live.exists()


def test_the_real_files_hold_the_counts_the_splits_expect():
    raw = data.find_data_root(download=False) / "FashionMNIST" / "raw"
    assert all(data._raw_problem(raw / name) is None for name in data.RAW_FILES)


@pytest.mark.parametrize("bad, err", [(0, ValueError), (60000, ValueError), (1.5, TypeError)])
def test_bad_val_size(bad, err):
    with pytest.raises(err):
        data.load_fashion_mnist(val_size=bad)


def test_batch_loader_covers_every_sample_once_and_reshuffles_reproducibly(splits):
    ds = data.subset(splits.val, 1000, seed=1)
    loader = data.BatchLoader(ds, batch_size=128, shuffle=True, seed=5)
    assert len(loader) == 8
    first = torch.cat([y for _, y in loader])
    second = torch.cat([y for _, y in loader])
    assert len(first) == 1000 and torch.equal(first.sort().values, ds.y.sort().values)
    assert not torch.equal(first, second)  # a new order each pass
    again = torch.cat([y for _, y in data.BatchLoader(ds, batch_size=128, shuffle=True, seed=5)])
    assert torch.equal(first, again)
    assert len(data.BatchLoader(ds, batch_size=128, drop_last=True)) == 7


def test_make_loaders_and_subset_validate_input(splits):
    loaders = data.make_loaders(splits, batch_size=64, train_subset=640)
    assert len(loaders.train) == 10 and len(loaders.test.dataset) == 10000
    with pytest.raises(TypeError):
        data.make_loaders([splits.train, splits.val, splits.test])
    with pytest.raises(ValueError):
        data.subset(splits.val, 0)
    with pytest.raises(ValueError):
        data.subset(splits.val, 5001)
    with pytest.raises(ValueError):
        data.BatchLoader(splits.val, batch_size=0)
    with pytest.raises(ValueError):
        data.ImageTensorDataset(torch.zeros(3, 28, 28), torch.zeros(3))


def test_calibration_batches_are_fixed_distinct_and_validated(splits):
    a = data.calibration_batches(splits.train, 3, 16)
    b = data.calibration_batches(splits.train, 3, 16)
    assert len(a) == 3 and all(X.shape == (16, 1, 28, 28) and y.shape == (16,) for X, y in a)
    assert all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(a, b))  # the same images every call
    flat = torch.cat([X.flatten(1) for X, _ in a])
    assert len(torch.unique(flat, dim=0)) == 48  # drawn without replacement
    assert not torch.equal(a[0][0], data.calibration_batches(splits.train, 3, 16, seed=1)[0][0])
    for bad in (dict(n_batches=0), dict(batch_size=-1), dict(n_batches=10**6)):
        with pytest.raises(ValueError):
            data.calibration_batches(splits.train, **{"n_batches": 2, "batch_size": 8, **bad})
    with pytest.raises(TypeError):
        data.calibration_batches(splits.train.X)


def test_a_stalled_download_gives_up_within_the_timeout(tmp_path, monkeypatch):
    import socket

    seen = []

    class Stalls:
        def __init__(self, root, train, download):
            seen.append(socket.getdefaulttimeout())
            raise socket.timeout("timed out")

    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", Stalls)
    before = socket.getdefaulttimeout()
    assert data._download(tmp_path) is False
    assert seen == [data.DOWNLOAD_TIMEOUT_S] and socket.getdefaulttimeout() == before


def test_setup_installs_the_debian_package_when_root_and_reports_where(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setenv("DEEPLSP_DATA", str(tmp_path))
    monkeypatch.setattr(data, "DEBIAN_DIR", tmp_path / "no-debian")
    monkeypatch.setattr(data.os, "geteuid", lambda: 0)
    monkeypatch.setattr(data.shutil, "which", lambda name: "/usr/bin/apt-get")
    monkeypatch.setattr(data.subprocess, "run", lambda cmd, **kw: calls.append(cmd[:2]))
    assert data.main(["setup", "--no-download"]) == 1  # apt was stubbed, so the data is still missing
    assert ["apt-get", "update"] in calls and ["apt-get", "install"] in calls
    assert "dataset-fashion-mnist" in capsys.readouterr().err


def test_flags_given_as_strings_are_refused_not_taken_as_true(splits):
    with pytest.raises(TypeError, match="shuffle must be True or False, got 'no'"):
        data.BatchLoader(splits.val, 100, shuffle="no")
    with pytest.raises(TypeError, match="drop_last must be True or False"):
        data.BatchLoader(splits.val, 100, drop_last="false")
    with pytest.raises(TypeError, match="download must be True or False"):
        data.find_data_root(download="no")
