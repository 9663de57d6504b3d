"""Building the model zoo (deeplsp_helpers.zoo_build): training by the recipes, never losing a better checkpoint,
recording the manifest, the language model by steps, and the CLI. Loading: tests/test_zoo.py."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_zoo import _no_training, _one_verified_lenet

from deeplsp_helpers import data, models, train, zoo, zoo_build, zoo_store


def test_a_pruned_recipe_refuses_an_epoch_override(tmp_path):
    with pytest.raises(ValueError, match="part of the recipe"):
        zoo_build.train_reference("vgg_structured", directory=tmp_path, num_epochs=1)


def test_retrain_writes_atomically_and_records_the_recipe(tmp_path):
    entry = zoo_build.train_reference("lenet", directory=tmp_path, num_epochs=1, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lenet.pt", "manifest.json"]  # no temp files
    assert entry["sha256"] == zoo_store._sha256(tmp_path / "lenet.pt")
    assert entry["recipe"]["num_epochs"] == 1 and entry["best_epoch"] == 1
    assert entry["val_acc"] > 70  # one epoch of LeNet is far above chance (10 %)
    model = zoo.load_pretrained("lenet", directory=tmp_path)
    assert isinstance(model, models.LeNet)


def test_training_into_a_read_only_folder_fails_before_training(tmp_path, monkeypatch):
    import os

    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o500)
    if os.access(ro, os.W_OK):  # root ignores permissions: simulate the failing write instead
        monkeypatch.setattr(zoo_build.Path, "write_bytes", lambda self, b: (_ for _ in ()).throw(PermissionError(13, "ro")))
    started = []
    monkeypatch.setattr(train, "train", lambda *a, **k: started.append(1))
    with pytest.raises(PermissionError, match="--dir"):
        zoo_build.train_reference("lenet", directory=ro)
    assert started == []
    assert zoo_build.main(["train", "lenet", "--dir", str(ro)]) == 2


def test_zoo_cli_list_and_verify(capsys):
    assert zoo_build.main(["verify"]) == 0
    assert all(line.endswith("ok") for line in capsys.readouterr().out.strip().splitlines())
    assert zoo_build.main(["list"]) == 0
    assert "vgg" in capsys.readouterr().out


@pytest.mark.parametrize("epochs", ["0", "-3", "two"])
def test_non_positive_epochs_are_refused_before_the_data_is_loaded(tmp_path, monkeypatch, capsys, epochs):
    loaded = []
    monkeypatch.setattr(data, "load_fashion_mnist", lambda *a, **k: loaded.append(1))
    with pytest.raises(SystemExit) as exit_:
        zoo_build.main(["train", "lenet", "--epochs", epochs, "--dir", str(tmp_path)])
    assert exit_.value.code == 2 and "--epochs" in capsys.readouterr().err
    with pytest.raises(ValueError, match="num_epochs must be an int >= 1"):
        zoo_build.train_reference("lenet", directory=tmp_path, num_epochs=0)
    with pytest.raises(TypeError, match="force must be True or False"):
        zoo_build.train_reference("lenet", directory=tmp_path, force="no")
    assert loaded == [] and list(tmp_path.iterdir()) == []


def test_a_shorter_training_never_replaces_a_verified_checkpoint_without_force(tmp_path, monkeypatch, capsys):
    ckpt = tmp_path / "ckpt"
    _one_verified_lenet(ckpt)
    before = (ckpt / "lenet.pt").read_bytes(), (ckpt / "manifest.json").read_text()
    calls = _no_training(monkeypatch)
    assert zoo_build.main(["train", "lenet", "--epochs", "1", "--dir", str(ckpt)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "lenet.pt" in err and "--force" in err and "1 epoch" in err
    with pytest.raises(zoo.CheckpointError, match="force=True"):
        zoo_build.train_reference("lenet", directory=ckpt, num_epochs=1)
    assert calls == [] and ((ckpt / "lenet.pt").read_bytes(), (ckpt / "manifest.json").read_text()) == before


def test_a_less_accurate_model_is_kept_beside_the_checkpoint_not_over_it(tmp_path, monkeypatch, capsys):
    ckpt = tmp_path / "ckpt"
    old = _one_verified_lenet(ckpt)
    before = (ckpt / "lenet.pt").read_bytes(), (ckpt / "manifest.json").read_text()
    _no_training(monkeypatch)  # the full recipe, but the model that comes out is untrained (about 10 %)
    with pytest.raises(zoo.CheckpointError, match=r"kept .*lenet\.pt .*only val") as info:
        zoo_build.train_reference("lenet", directory=ckpt)
    assert "lenet.rejected.pt" in str(info.value) and str(old["val_acc"]) in str(info.value)
    assert ((ckpt / "lenet.pt").read_bytes(), (ckpt / "manifest.json").read_text()) == before
    assert zoo.verify(ckpt)["lenet"] == "ok"
    rejected = torch.load(ckpt / "lenet.rejected.pt", weights_only=True)  # the new weights are not lost either
    assert set(rejected) == set(models.LeNet().state_dict())
    assert zoo_build.main(["train", "lenet", "--dir", str(ckpt)]) == 1  # the CLI says it in one line
    assert capsys.readouterr().err.count("\n") == 1
    entry = zoo_build.train_reference("lenet", directory=ckpt, force=True)  # asked for explicitly: replaced
    assert entry["val_acc"] < old["val_acc"] and zoo.read_manifest(ckpt)["lenet"]["sha256"] == entry["sha256"]


def test_a_full_disk_is_found_before_training(tmp_path, monkeypatch):
    import collections

    from deeplsp_helpers import files

    calls = _no_training(monkeypatch)
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(files.shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 4096, 4096))
    with pytest.raises(OSError, match="disk full") as info:
        zoo_build.train_reference("vgg", directory=tmp_path)
    assert str(tmp_path) in str(info.value) and calls == []
    assert zoo_build.main(["train", "vgg", "--dir", str(tmp_path)]) == 2 and calls == []


def test_trained_weights_survive_a_final_save_that_fails_for_a_full_disk(tmp_path, monkeypatch):
    import errno
    import tempfile
    from pathlib import Path

    from deeplsp_helpers import files

    ckpt, spare = tmp_path / "ckpt", tmp_path / "spare"
    spare.mkdir()
    _no_training(monkeypatch)
    real_mkstemp = files.tempfile.mkstemp

    def full_disk(*a, dir=None, **k):  # noqa: A002 - mkstemp's own name
        if dir is not None and Path(dir) == ckpt:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_mkstemp(*a, dir=dir, **k)

    monkeypatch.setattr(files.tempfile, "mkstemp", full_disk)
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(spare))
    with pytest.raises(OSError, match="disk full") as info:
        zoo_build.train_reference("lenet", directory=ckpt)
    rescued = info.value.rescued
    assert rescued.parent == spare and str(rescued) in str(info.value) and "lenet.pt" in str(info.value)
    models.LeNet().load_state_dict(torch.load(rescued, weights_only=True))  # the weights are there, and load
    assert not (ckpt / "lenet.pt").exists() and not (ckpt / "manifest.json").exists()


def test_two_writers_of_the_manifest_lose_no_entry(tmp_path, monkeypatch):
    import threading
    import time

    real_read = zoo.read_manifest

    def slow_read(directory=None):  # widen the read-modify-write window, as a busy machine does
        manifest = real_read(directory)
        time.sleep(0.02)
        return manifest

    monkeypatch.setattr(zoo_build, "read_manifest", slow_read)  # the name _record reads the manifest by

    def writer(k):
        for i in range(8):
            zoo_build._record(tmp_path, f"m{k}_{i}", {"i": i})

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(real_read(tmp_path)) == 24
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]  # no lock or temp file left


def test_the_cli_takes_model_names_in_any_case(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(zoo_build, "train_reference", lambda name, **k: seen.append(name) or
                        {"val_acc": 1.0, "test_acc": 1.0, "train_seconds": 0.0})
    assert zoo_build.main(["train", "LENET", "--dir", str(tmp_path)]) == 0 and seen == ["lenet"]


# --- the language model (chapter 09) in the zoo ------------------------------------------------------------------

@pytest.fixture
def tiny_gpt_recipe(monkeypatch):
    """RECIPES["gpt"] of a few steps, a tiny TinyGPT and a small repeated text in place of the corpus (on one
    thread: fastest for a tiny model, and not slowed down by other work on the cores)."""
    from deeplsp_helpers import text_data

    threads = torch.get_num_threads()
    torch.set_num_threads(1)

    tiny = dict(steps=6, lr=1e-2, batch_size=4, warmup=1, weight_decay=0.1, eval_every=3)
    monkeypatch.setitem(zoo.RECIPES, "gpt", tiny)
    real_build = models.build_model

    def build(name):
        return models.TinyGPT(context=32, dim=16, depth=2, num_heads=2, mlp_hidden=32) if name == "gpt" \
            else real_build(name)

    monkeypatch.setattr(zoo_build, "build_model", build)  # training
    monkeypatch.setattr(zoo_store, "build_model", build)  # loading it back
    text = text_data.encode("In the beginning God created the heaven and the earth. " * 30)
    splits = text_data.TextSplits(text[:1200].clone(), text[1200:1400].clone(), text[1400:1600].clone())
    monkeypatch.setattr(text_data, "load_text", lambda: splits)
    yield tiny, splits
    torch.set_num_threads(threads)


def test_the_language_model_trains_by_steps_and_records_its_perplexity(tmp_path, monkeypatch, capsys, tiny_gpt_recipe):
    from deeplsp_helpers import lm

    tiny, splits = tiny_gpt_recipe
    entry = zoo_build.train_reference("gpt", directory=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpt.pt", "manifest.json"]
    assert entry["recipe"] == tiny and entry["eval_steps"] == [3, 6] and entry["best_step"] in (3, 6)
    assert entry["sha256"] == zoo_store._sha256(tmp_path / "gpt.pt") and zoo.verify(tmp_path)["gpt"] == "ok"
    model = zoo.load_pretrained("gpt", directory=tmp_path)
    assert isinstance(model, models.TinyGPT) and entry["params"] == sum(p.numel() for p in model.parameters())
    assert lm.perplexity(model, splits.val) == pytest.approx(entry["val_ppl"], rel=1e-3) and entry["val_ppl"] < 256
    assert lm.perplexity(model, splits.test) == pytest.approx(entry["test_ppl"], rel=1e-3)
    assert min(entry["val_ppl_per_eval"]) == pytest.approx(entry["val_ppl_per_eval"][entry["eval_steps"].index(
        entry["best_step"])])
    monkeypatch.setattr(zoo_store, "CHECKPOINT_DIR", tmp_path)  # where read_manifest() looks by default
    assert zoo_build.main(["list"]) == 0
    assert f"val perplexity {entry['val_ppl']:.3f}" in capsys.readouterr().out


def test_a_worse_language_model_is_kept_beside_the_checkpoint_not_over_it(tmp_path, monkeypatch, tiny_gpt_recipe):
    from deeplsp_helpers import lm

    old = zoo_build.train_reference("gpt", directory=tmp_path)
    before = (tmp_path / "gpt.pt").read_bytes(), (tmp_path / "manifest.json").read_text()
    monkeypatch.setattr(lm, "train_lm", lambda model, *a, **k: {"steps": [], "val_ppl": [], "best_step": 0,
                                                                 "seconds": 0.0})  # untrained: about 256
    with pytest.raises(zoo.CheckpointError, match=r"kept .*gpt\.pt \(val_ppl .*gpt\.rejected\.pt"):
        zoo_build.train_reference("gpt", directory=tmp_path)
    assert ((tmp_path / "gpt.pt").read_bytes(), (tmp_path / "manifest.json").read_text()) == before
    assert set(torch.load(tmp_path / "gpt.rejected.pt", weights_only=True)) == set(zoo_build.build_model("gpt").state_dict())
    entry = zoo_build.train_reference("gpt", directory=tmp_path, force=True)
    assert entry["val_ppl"] > old["val_ppl"] and zoo.read_manifest(tmp_path)["gpt"]["sha256"] == entry["sha256"]


def _verified_checkpoint(directory, name, **scores):
    directory.mkdir(exist_ok=True)
    torch.save({"w": torch.zeros(2)}, directory / f"{name}.pt")
    entry = {"file": f"{name}.pt", "sha256": zoo_store._sha256(directory / f"{name}.pt"), **scores}
    (directory / "manifest.json").write_text(json.dumps({name: entry}))
    return (directory / f"{name}.pt").read_bytes()


@pytest.mark.parametrize("value", [3.5, float("nan"), float("inf")])
def test_save_checkpoint_keeps_a_lower_perplexity_and_sets_a_higher_one_aside(tmp_path, value):
    ckpt = tmp_path / "ckpt"
    old = _verified_checkpoint(ckpt, "gpt", val_ppl=3.0)
    new = {"w": torch.ones(2)}

    def save(path):
        torch.save(new, path)
        return path

    with pytest.raises(zoo.CheckpointError, match=r"kept .*gpt\.pt \(val_ppl 3\.0\).*gpt\.rejected\.pt"):
        zoo_build._save_checkpoint(ckpt, "gpt", new, value, False, save, metric="val_ppl")  # NaN: a diverged run
    assert (ckpt / "gpt.pt").read_bytes() == old
    assert torch.equal(torch.load(ckpt / "gpt.rejected.pt", weights_only=True)["w"], torch.ones(2))
    assert zoo_build._save_checkpoint(ckpt, "gpt", new, value, True, save, metric="val_ppl") == ckpt / "gpt.pt"  # force
    assert (ckpt / "gpt.pt").read_bytes() != old


@pytest.mark.parametrize("value", [2.5, 3.0])
def test_save_checkpoint_replaces_a_checkpoint_by_a_lower_or_equal_perplexity(tmp_path, value):
    ckpt = tmp_path / "ckpt"
    old = _verified_checkpoint(ckpt, "gpt", val_ppl=3.0, val_acc=99.0)  # val_acc is not the metric here
    saved = zoo_build._save_checkpoint(ckpt, "gpt", None, value, False,
                                 lambda path: torch.save({"w": torch.ones(2)}, path) or path, metric="val_ppl")
    assert saved == ckpt / "gpt.pt" and saved.read_bytes() != old and not (ckpt / "gpt.rejected.pt").exists()


def test_save_checkpoint_sets_aside_a_less_accurate_or_nan_classifier(tmp_path):
    ckpt = tmp_path / "ckpt"
    old = _verified_checkpoint(ckpt, "lenet", val_acc=90.0)
    for value in (89.0, float("nan")):
        with pytest.raises(zoo.CheckpointError, match="lenet.rejected.pt"):
            zoo_build._save_checkpoint(ckpt, "lenet", None, value, False, lambda p: torch.save({}, p) or p)
        assert (ckpt / "lenet.pt").read_bytes() == old


def test_the_language_model_refuses_epochs(tmp_path, monkeypatch, capsys):
    from deeplsp_helpers import text_data

    loaded = []
    monkeypatch.setattr(text_data, "load_text", lambda: loaded.append(1))
    assert zoo_build.main(["train", "gpt", "--epochs", "1", "--dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "steps" in err and "--epochs" in err and err.count("\n") == 1
    with pytest.raises(ValueError, match="gpt trains for a number of steps"):
        zoo_build.train_reference("gpt", directory=tmp_path, num_epochs=1)
    assert loaded == [] and list(tmp_path.iterdir()) == []


def test_zoo_re_exports_the_builder_and_the_store():
    assert zoo.train_reference is zoo_build.train_reference and zoo.main is zoo_build.main
    for name in ("RECIPES", "PRUNED_RECIPES", "SEED", "ZOO_NAMES", "CHECKPOINT_DIR", "MANIFEST", "CheckpointError",
                 "read_manifest", "verify"):
        assert getattr(zoo, name) is getattr(zoo_store, name), name
    assert zoo.build_model is models.build_model


def test_the_cli_runs_as_python_m_deeplsp_helpers_zoo():
    """``python -m deeplsp_helpers.zoo`` runs zoo_build.main (zoo.py delegates to it)."""
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-m", "deeplsp_helpers.zoo", "verify"], cwd=root, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert sorted(line.split()[0] for line in done.stdout.splitlines()) == sorted(zoo.ZOO_NAMES)
    assert all(line.endswith("ok") for line in done.stdout.splitlines())
