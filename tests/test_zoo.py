"""The model zoo as a learner uses it: the committed checkpoints load, verify and reach their targets; broken
files and manifests are refused with the retrain command; ``load_pretrained(retrain=True)``. Building the zoo
(training, pruning, saving, the CLI's train): tests/test_zoo_build.py."""

import json
import shutil

import pytest
import torch

from deeplsp_helpers import data, metrics, models, train, zoo, zoo_store

# Accuracy each committed checkpoint must reach, on the validation split (the split checkpoints are selected on;
# the test split is only recorded in the manifest and checked here for reproducibility, never as a target).
TARGETS = {"lenet": 89.0, "vgg": 91.0, "resnet": 91.0, "mobilenet": 89.0, "vit": 88.0}
# Per-byte perplexity the language model must stay below on the validation split of the text corpus (lower is better).
PPL_TARGETS = {"gpt": 4.5}  # recorded: val 4.331, test 4.225 (800 steps, seed 0)


def test_every_checkpoint_is_committed_small_and_verified():
    assert zoo.verify() == {name: "ok" for name in zoo.ZOO_NAMES}
    manifest = zoo.read_manifest()
    assert sorted(manifest) == sorted(zoo.ZOO_NAMES)
    for name, entry in manifest.items():  # the language model: 891,648 float32 parameters, about 3.6 MB
        limit = 6 if name in models.LANGUAGE_MODEL_NAMES else 2
        assert (zoo.CHECKPOINT_DIR / entry["file"]).stat().st_size < limit * 1024 * 1024, name
        assert entry["seed"] == zoo.SEED and entry["recipe"] == {**zoo.RECIPES, **zoo.PRUNED_RECIPES}[name]


@pytest.mark.parametrize("name", sorted(zoo.PRUNED_RECIPES))
def test_a_pruned_reference_model_loads_with_its_widths_and_is_within_a_few_points_of_dense_on_validation(name, splits):
    model = zoo.load_pretrained(name)
    base = zoo.PRUNED_RECIPES[name]["base"]
    entry, dense = zoo.read_manifest()[name], zoo.read_manifest()[base]
    assert not model.training and type(model) is type(models.build_model(base))
    assert metrics.conv_widths(model) == entry["widths"]
    assert sum(p.numel() for p in model.parameters()) == entry["params"] < dense["params"]
    val = train.evaluate(model, data.BatchLoader(splits.val, 1000))
    assert val == pytest.approx(entry["val_acc"], abs=0.011) and val >= dense["val_acc"] - 3.5
    if "deeplsp" in name:  # 1/10.5 of the dense model's non-zero parameters, stored with a bitmask
        assert sum(int(p.count_nonzero()) for p in model.parameters()) == entry["nonzero_params"] <= dense["params"] / 10


@pytest.mark.parametrize("name", models.IMAGE_MODEL_NAMES)
def test_checkpoint_reaches_its_target_and_its_manifest_accuracy(name, splits):
    model = zoo.load_pretrained(name)
    assert not model.training
    entry = zoo.read_manifest()[name]
    val_acc = train.evaluate(model, data.BatchLoader(splits.val, 1000))
    assert val_acc == pytest.approx(entry["val_acc"], abs=0.011) and val_acc >= TARGETS[name]
    test_acc = train.evaluate(model, data.BatchLoader(splits.test, 1000))
    assert test_acc == pytest.approx(entry["test_acc"], abs=0.011)  # the recorded number reproduces


@pytest.mark.parametrize("name", models.LANGUAGE_MODEL_NAMES)
def test_the_language_model_reproduces_its_manifest_perplexity_and_reaches_its_target(name):
    from deeplsp_helpers import lm, text_data

    model = zoo.load_pretrained(name)
    entry = zoo.read_manifest()[name]
    assert not model.training and isinstance(model, models.TinyGPT)
    assert {"val_ppl", "test_ppl"} <= set(entry) and entry["params"] == sum(p.numel() for p in model.parameters())
    assert entry["best_step"] in entry["eval_steps"] and entry["recipe"]["steps"] == entry["eval_steps"][-1]
    val_ppl = lm.perplexity(model, text_data.load_text().val, batch_size=64)  # the whole split, as recorded
    assert val_ppl == pytest.approx(entry["val_ppl"], rel=1e-3) and val_ppl < PPL_TARGETS[name]
    assert entry["test_ppl"] < PPL_TARGETS[name] * 1.1  # recorded, never selected on: close to validation


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
    manifest["lenet"]["sha256"] = zoo_store._sha256(path)
    (zoo_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(zoo.CheckpointError, match="does not load"):
        zoo.load_pretrained("lenet", directory=zoo_copy)


def test_unknown_model_name():
    with pytest.raises(ValueError, match="known models"):
        zoo.load_pretrained("alexnet")


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


# --- hardening (issue 26): nothing lost, nothing silently wrong ---------------------------------------------------

def _one_verified_lenet(directory):
    """``directory`` holding only the committed LeNet checkpoint and its manifest entry (verified)."""
    directory.mkdir()
    shutil.copy(zoo.CHECKPOINT_DIR / "lenet.pt", directory / "lenet.pt")
    entry = zoo.read_manifest()["lenet"]
    (directory / "manifest.json").write_text(json.dumps({"lenet": entry}))
    assert zoo.verify(directory)["lenet"] == "ok"
    return entry


def _no_training(monkeypatch):
    """train.train does nothing (an untrained model comes out, in no time); returns the list of calls."""
    calls = []

    def fake(model, *a, **k):
        calls.append(k.get("num_epochs"))
        return {"train_loss": [], "val_acc": [], "best_epoch": None, "seconds": 0.0}

    monkeypatch.setattr(train, "train", fake)
    return calls


def test_a_manifest_entry_without_its_fields_is_named_not_a_key_error(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    entry = _one_verified_lenet(ckpt)
    for field, value in (("sha256", None), ("file", "../../lenet.pt"), ("sha256", "abc")):
        bad = dict(entry)
        bad.pop(field) if value is None else bad.update({field: value})
        (ckpt / "manifest.json").write_text(json.dumps({"lenet": bad}))
        with pytest.raises(zoo.CheckpointError, match=f"manifest.json: the entry for 'lenet' has no valid '{field}'"):
            zoo.load_pretrained("lenet", directory=ckpt)
        assert zoo.verify(ckpt)["lenet"].startswith("bad manifest entry")
    (ckpt / "manifest.json").write_text(json.dumps({"lenet": {"file": "lenet.pt"}}))
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(zoo_store, "CHECKPOINT_DIR", ckpt)  # where read_manifest() and verify() look by default
    try:
        assert zoo.main(["list"]) == 1
    finally:
        monkeypatch.undo()
    assert "lenet" in capsys.readouterr().out


def test_a_fifo_in_place_of_the_manifest_is_refused_not_waited_on(tmp_path):
    import os
    import threading

    os.mkfifo(tmp_path / "manifest.json")
    result = []

    def read():
        try:
            zoo.read_manifest(tmp_path)
        except Exception as err:  # noqa: BLE001 - what the test inspects
            result.append(err)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(5)
    if t.is_alive():  # the old behaviour: blocked on open(); release it before failing
        os.close(os.open(tmp_path / "manifest.json", os.O_WRONLY | os.O_NONBLOCK))
    assert result and isinstance(result[0], zoo.CheckpointError) and "not a regular file" in str(result[0])


def test_retrain_given_as_a_string_is_refused_not_taken_as_true(tmp_path, monkeypatch):
    calls = _no_training(monkeypatch)
    with pytest.raises(TypeError, match="retrain must be True or False, got 'no'"):
        zoo.load_pretrained("lenet", directory=tmp_path, retrain="no")  # used to start training
    assert calls == [] and list(tmp_path.iterdir()) == []
