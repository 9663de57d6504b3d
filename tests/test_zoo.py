import json
import shutil

import pytest
import torch

from deeplsp_helpers import data, models, train, zoo

# Accuracy each committed checkpoint must reach, on the validation split (the split checkpoints are selected on;
# the test split is only recorded in the manifest and checked here for reproducibility, never as a target).
TARGETS = {"lenet": 89.0, "vgg": 91.0, "resnet": 91.0, "mobilenet": 89.0, "vit": 88.0}


def test_every_checkpoint_is_committed_small_and_verified():
    assert zoo.verify() == {name: "ok" for name in zoo.ZOO_NAMES}
    manifest = zoo.read_manifest()
    assert sorted(manifest) == sorted(zoo.ZOO_NAMES)
    for name, entry in manifest.items():
        assert (zoo.CHECKPOINT_DIR / entry["file"]).stat().st_size < 2 * 1024 * 1024
        assert entry["seed"] == zoo.SEED and entry["recipe"] == {**zoo.RECIPES, **zoo.PRUNED_RECIPES}[name]


@pytest.mark.parametrize("name", sorted(zoo.PRUNED_RECIPES))
def test_a_pruned_reference_model_loads_with_its_widths_and_is_within_a_few_points_of_dense_on_validation(name, splits):
    model = zoo.load_pretrained(name)
    base = zoo.PRUNED_RECIPES[name]["base"]
    entry, dense = zoo.read_manifest()[name], zoo.read_manifest()[base]
    assert not model.training and type(model) is type(models.build_model(base))
    assert [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)] == entry["widths"]
    assert sum(p.numel() for p in model.parameters()) == entry["params"] < dense["params"]
    val = train.evaluate(model, data.BatchLoader(splits.val, 1000))
    assert val == pytest.approx(entry["val_acc"], abs=0.011) and val >= dense["val_acc"] - 3.5
    if "deeplsp" in name:  # 1/10.5 of the dense model's non-zero parameters, stored with a bitmask
        assert sum(int(p.count_nonzero()) for p in model.parameters()) == entry["nonzero_params"] <= dense["params"] / 10


def test_a_pruned_recipe_refuses_an_epoch_override(tmp_path):
    with pytest.raises(ValueError, match="part of the recipe"):
        zoo.train_reference("vgg_structured", directory=tmp_path, num_epochs=1)


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_checkpoint_reaches_its_target_and_its_manifest_accuracy(name, splits):
    model = zoo.load_pretrained(name)
    assert not model.training
    entry = zoo.read_manifest()[name]
    val_acc = train.evaluate(model, data.BatchLoader(splits.val, 1000))
    assert val_acc == pytest.approx(entry["val_acc"], abs=0.011) and val_acc >= TARGETS[name]
    test_acc = train.evaluate(model, data.BatchLoader(splits.test, 1000))
    assert test_acc == pytest.approx(entry["test_acc"], abs=0.011)  # the recorded number reproduces


@pytest.fixture
def zoo_copy(tmp_path):
    shutil.copytree(zoo.CHECKPOINT_DIR, tmp_path / "ckpt")
    return tmp_path / "ckpt"


def test_corrupt_checkpoint_is_refused_with_the_retrain_command(zoo_copy):
    path = zoo_copy / "lenet.pt"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(zoo.CheckpointError, match="python -m deeplsp_helpers.zoo train lenet"):
        zoo.load_pretrained("lenet", directory=zoo_copy)
    assert isinstance(zoo.CheckpointError("x"), ValueError)


def test_missing_checkpoint_is_a_file_not_found_error(zoo_copy):
    (zoo_copy / "vgg.pt").unlink()
    with pytest.raises(FileNotFoundError, match="zoo train vgg"):
        zoo.load_pretrained("vgg", directory=zoo_copy)
    assert zoo.verify(zoo_copy)["vgg"] == "missing"


def test_pickled_code_is_not_loaded(zoo_copy):
    """A checkpoint holding arbitrary objects fails weights_only loading even with a matching sha256."""
    path = zoo_copy / "lenet.pt"
    torch.save({"payload": zoo.CheckpointError("not a tensor")}, path)
    manifest = json.loads((zoo_copy / "manifest.json").read_text())
    manifest["lenet"]["sha256"] = zoo._sha256(path)
    (zoo_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(zoo.CheckpointError, match="does not load"):
        zoo.load_pretrained("lenet", directory=zoo_copy)


def test_unknown_model_name():
    with pytest.raises(ValueError, match="known models"):
        zoo.load_pretrained("alexnet")


def test_retrain_writes_atomically_and_records_the_recipe(tmp_path):
    entry = zoo.train_reference("lenet", directory=tmp_path, num_epochs=1, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lenet.pt", "manifest.json"]  # no temp files
    assert entry["sha256"] == zoo._sha256(tmp_path / "lenet.pt")
    assert entry["recipe"]["num_epochs"] == 1 and entry["best_epoch"] == 1
    assert entry["val_acc"] > 70  # one epoch of LeNet is far above chance (10 %)
    model = zoo.load_pretrained("lenet", directory=tmp_path)
    assert isinstance(model, models.LeNet)


def test_retrain_flag_rebuilds_a_missing_checkpoint(tmp_path, monkeypatch):
    calls = []
    real_train = zoo.train_reference

    def fake_train(name, directory):  # one epoch instead of the recipe's twelve
        calls.append(name)
        return real_train(name, directory=directory, num_epochs=1, progress=False)

    monkeypatch.setattr(zoo, "train_reference", fake_train)
    model = zoo.load_pretrained("lenet", directory=tmp_path, retrain=True)
    assert calls == ["lenet"] and isinstance(model, models.LeNet)


def test_a_corrupt_manifest_is_recovered_by_retraining_without_losing_the_work(zoo_copy, monkeypatch, capsys):
    (zoo_copy / "manifest.json").write_text("{ not json")
    with pytest.raises(zoo.CheckpointError, match="zoo train"):
        zoo.load_pretrained("lenet", directory=zoo_copy)
    real_train = zoo.train_reference
    monkeypatch.setattr(zoo, "train_reference",
                        lambda name, directory: real_train(name, directory=directory, num_epochs=1, progress=False))
    model = zoo.load_pretrained("lenet", directory=zoo_copy, retrain=True)  # used to fail after training
    assert isinstance(model, models.LeNet)
    assert set(zoo.read_manifest(zoo_copy)) == {"lenet"}  # a fresh manifest holds the retrained entry
    assert (zoo_copy / "manifest.json.corrupt").read_text() == "{ not json"  # kept for inspection
    assert "moved it to manifest.json.corrupt" in capsys.readouterr().err


def test_training_into_a_read_only_folder_fails_before_training(tmp_path, monkeypatch):
    import os

    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o500)
    if os.access(ro, os.W_OK):  # root ignores permissions: simulate the failing write instead
        monkeypatch.setattr(zoo.Path, "write_bytes", lambda self, b: (_ for _ in ()).throw(PermissionError(13, "ro")))
    started = []
    monkeypatch.setattr(train, "train", lambda *a, **k: started.append(1))
    with pytest.raises(PermissionError, match="--dir"):
        zoo.train_reference("lenet", directory=ro)
    assert started == []
    assert zoo.main(["train", "lenet", "--dir", str(ro)]) == 2


def test_zoo_cli_list_and_verify(capsys):
    assert zoo.main(["verify"]) == 0
    assert all(line.endswith("ok") for line in capsys.readouterr().out.strip().splitlines())
    assert zoo.main(["list"]) == 0
    assert "vgg" in capsys.readouterr().out
