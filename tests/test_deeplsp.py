import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from deeplsp_helpers import data, deeplsp, metrics, models, serialization

X = torch.randn(8, 1, 28, 28)


@pytest.fixture(scope="module")
def calib(splits):
    return [b for _, b in zip(range(2), data.BatchLoader(splits.val, 64))]


def test_sensitivity_is_a_normalised_deterministic_blend(calib):
    model = models.LeNet()
    s = deeplsp.compute_sensitivity(model, calib)
    assert list(s) == ["conv1", "conv2", "fc1", "fc2", "fc3"]
    assert sum(s.values()) == pytest.approx(1.0)
    assert s == deeplsp.compute_sensitivity(model, calib)
    assert all(p.grad is None for p in model.parameters())  # the model's gradients are not touched
    dummy = deeplsp.compute_sensitivity(model, dummy=True, input_shape=(8, 1, 28, 28))
    assert dummy != s and sum(dummy.values()) == pytest.approx(1.0)


def test_sensitivity_rejects_bad_input(calib):
    with pytest.raises(ValueError, match="calibration batches"):
        deeplsp.compute_sensitivity(models.LeNet())
    with pytest.raises(ValueError, match="input_shape"):
        deeplsp.compute_sensitivity(models.LeNet(), dummy=True)
    with pytest.raises(ValueError):
        deeplsp.compute_sensitivity(models.LeNet(), [])
    with pytest.raises(TypeError):
        deeplsp.compute_sensitivity("lenet", calib)


@pytest.mark.parametrize("name", ["lenet", "vgg", "resnet"])
@pytest.mark.parametrize("target", [0.3, 0.6, 0.9])
def test_latency_aware_ratios_hit_the_budget_and_spare_sensitive_layers(name, target, calib):
    model = models.build_model(name).eval()
    sens = deeplsp.compute_sensitivity(model, calib)
    ratios = deeplsp.prune_latency_aware(model, sens, target)
    assert abs(metrics.weight_sparsity(model) - target) <= 0.005
    assert all(0.0 <= r <= 0.99 for r in ratios.values())
    order = sorted(sens, key=sens.get)  # least sensitive first
    by_sens = [ratios[k] for k in order]
    assert all(a >= b - 1e-9 for a, b in zip(by_sens, by_sens[1:]))  # less sensitive -> pruned more


def test_several_sensitivity_maps_are_combined(calib):
    model = models.LeNet().eval()
    edge = deeplsp.compute_sensitivity(model, calib[:1])
    cloud = deeplsp.compute_sensitivity(model, calib)
    skewed = dict(cloud, fc1=10.0)  # one map says fc1 matters a lot
    ratios = deeplsp.prune_latency_aware(model, [edge, skewed], 0.5)
    assert abs(metrics.weight_sparsity(model) - 0.5) <= 0.005
    assert ratios["fc1"] == min(ratios.values())


def test_latency_aware_rejects_bad_input(calib):
    model = models.LeNet()
    sens = deeplsp.compute_sensitivity(model, calib)
    for bad in (-0.1, 1.0, float("nan"), "0.5"):
        with pytest.raises(ValueError):
            deeplsp.prune_latency_aware(model, sens, bad)
    with pytest.raises(ValueError, match="missing"):
        deeplsp.prune_latency_aware(model, {"conv1": 1.0}, 0.5)
    with pytest.raises(ValueError):
        deeplsp.prune_latency_aware(model, dict(sens, fc1=-1.0), 0.5)
    with pytest.raises(TypeError):
        deeplsp.prune_latency_aware(model, 0.5, 0.5)


def test_uniform_pruning_and_mask_removal():
    model = models.LeNet()
    deeplsp.apply_unstructured_pruning(model, 0.7)
    assert all(abs(s - 0.7) < 0.01 for s in metrics.layer_sparsities(model).values())
    deeplsp.remove_pruning_masks(model)
    keys = list(model.state_dict())
    assert not any(k.endswith(("_orig", "_mask")) for k in keys)
    assert all(len(m._forward_pre_hooks) == 0 for m in model.modules())
    fresh = models.LeNet()
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh(X), model(X))
    for bad in (-0.5, 1.5, None):
        with pytest.raises(ValueError):
            deeplsp.apply_unstructured_pruning(models.LeNet(), bad)


def test_combined_pipeline_reports_every_stage_and_leaves_the_input_alone():
    model = models.VGG().eval()
    ref = model(X)
    calls = []
    pruned, rows = deeplsp.apply_combined_pruning(model, X, 0.5, 0.5, finetune=lambda m, stage: calls.append(stage),
                                                  latency_repeats=3)
    assert torch.equal(model(X), ref)  # input untouched
    assert [r["stage"] for r in rows] == ["dense", "structured", "structured + fine-tune", "unstructured", "final"]
    assert calls == ["structured", "unstructured"]
    final = rows[-1]
    assert final["params"] < rows[0]["params"] and final["nonzero"] < 0.55 * final["params"]
    assert abs(metrics.weight_sparsity(pruned) - 0.5) < 0.01
    assert final["macs"] < rows[0]["macs"]
    lo, hi = final["speedup1_interval"]
    assert lo <= final["speedup1"] <= hi
    assert "test_acc" not in final  # no loaders, no accuracy; test accuracy is only ever in the final row
    assert not any(k.endswith("_mask") for k in pruned.state_dict())
    report = deeplsp.format_report(rows).splitlines()
    assert len(report) == 2 + len(rows) and report[2].startswith("dense") and report[-1].startswith("final")


def test_combined_pipeline_validates(calib):
    with pytest.raises(ValueError):
        deeplsp.apply_combined_pruning(models.LeNet(), X, 1.0, 0.5)
    with pytest.raises(ValueError):
        deeplsp.apply_combined_pruning(models.LeNet(), X, 0.5, -0.1)
    with pytest.raises(TypeError):
        deeplsp.apply_combined_pruning(models.LeNet(), X[0], 0.5, 0.5)
    with pytest.raises(ValueError, match="sensitivities, calibration batches or loaders"):
        deeplsp.apply_combined_pruning(models.LeNet(), X, 0.0, 0.5, latency_aware=True, report=False)
    with pytest.raises(ValueError, match="not both"):
        deeplsp.apply_combined_pruning(models.VGG(), X, 0.5, 0.5, target_speedup=2.0, report=False)
    for bad in (1.0, 0.5, -2, float("nan")):
        with pytest.raises(ValueError, match="target_speedup"):
            deeplsp.apply_combined_pruning(models.VGG(), X, None, 0.0, target_speedup=bad, report=False)
    with pytest.raises(ValueError, match="cost_measure"):
        deeplsp.apply_combined_pruning(models.LeNet(), X, 0.5, 0.5, report=False, cost_measure="flops")


def test_mac_costs_make_the_structured_stage_repeatable():
    torch.manual_seed(0)
    model = models.VGG().eval()
    widths = []
    for _ in range(2):
        pruned, _ = deeplsp.apply_combined_pruning(model, X, 0.5, 0.0, report=False, cost_measure="macs")
        widths.append([m.out_channels for m in pruned.modules() if isinstance(m, nn.Conv2d)])
    assert widths[0] == widths[1] and sum(widths[0]) < sum(m.out_channels for m in model.modules()
                                                          if isinstance(m, nn.Conv2d))


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "deeplsp_helpers.deeplsp", *args], capture_output=True, text=True,
                          timeout=600)


def test_cli_help_and_bad_options():
    out = _cli("--help")
    assert out.returncode == 0
    for opt in ("--model", "--structured", "--target-speedup", "--batch-size", "--unstructured",
                "--sensitivity-adaptive", "--latency-aware", "--costs", "--distill", "--finetune-epochs", "--sparse",
                "--halp-steps",
                "--out"):
        assert opt in out.stdout
    bad = _cli("--model", "vgg", "--structured", "1.5", "--out", "x.pt")
    assert bad.returncode == 2 and "outside [0, 1)" in bad.stderr
    bad = _cli("--model", "alexnet", "--out", "x.pt")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
    for halp in (("--halp-steps", "-1"), ("--halp-steps", "5"), ("--halp-steps", "5", "--costs", "latency",
                                                                  "--structured", "0.5")):
        bad = _cli("--model", "vgg", *halp, "--out", "x.pt")
        assert bad.returncode == 2 and "--halp-steps" in bad.stderr, bad.stderr
    bad = _cli("--model", "lenet", "--finetune-epochs", "-1", "--out", "x.pt")
    assert bad.returncode == 2
    bad = _cli("--model", "lenet", "--costs", "flops", "--out", "x.pt")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
    bad = _cli("--model", "vgg", "--unstructured", "0.995", "--out", "x.pt")  # rejected by the parser, not later
    assert bad.returncode == 2 and "outside [0, 0.99]" in bad.stderr and "Traceback" not in bad.stderr
    for speedup in ("1", "0.5", "nan"):
        bad = _cli("--model", "vgg", "--target-speedup", speedup, "--out", "x.pt")
        assert bad.returncode == 2 and "Traceback" not in bad.stderr
    bad = _cli("--model", "vgg", "--structured", "0.5", "--target-speedup", "2", "--out", "x.pt")
    assert bad.returncode == 2 and "not allowed with" in bad.stderr
    bad = _cli("--model", "vgg", "--out", "/nonexistent-folder/x.pt")
    assert bad.returncode == 2 and "writable folder" in bad.stderr


def test_cli_offers_the_cnns_and_refuses_a_transformer_with_the_reason(capsys):
    from deeplsp_helpers import deeplsp_cli

    parser = deeplsp_cli.build_parser()
    assert parser.parse_args(["--model", "resnet", "--out", "x.pt"]).model == "resnet"
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["--model", "vit", "--out", "x.pt"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "vit is a transformer" in err and "transformer_pruning" in err
    with pytest.raises(SystemExit):
        parser.parse_args(["--model", "alexnet", "--out", "x.pt"])
    assert "choose from 'lenet', 'vgg', 'resnet', 'mobilenet')" in capsys.readouterr().err


def test_cli_errors_at_run_time_are_one_line_and_write_nothing(tmp_path):
    out = tmp_path / "x.pt"
    res = subprocess.run([sys.executable, "-m", "deeplsp_helpers.deeplsp", "--model", "lenet", "--out", str(out)],
                         capture_output=True, text=True, timeout=600,
                         env={**__import__("os").environ, "DEEPLSP_DATA": str(tmp_path / "no-data")},
                         cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and res.stderr.startswith("error:")
    assert not out.exists()


def test_cli_prunes_reports_and_saves_a_model_that_loads(tmp_path):
    out = tmp_path / "lenet_pruned.pt"
    res = _cli("--model", "lenet", "--structured", "0.3", "--unstructured", "0.5", "--sensitivity-adaptive",
               "--costs", "none", "--finetune-epochs", "0", "--sparse", "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert "final" in res.stdout and "dense" in res.stdout
    model = serialization.load_pruned(out)
    assert model(X).shape == (8, 10)
    assert metrics.count_parameters(model, nonzero_only=True) < 0.5 * 44426


def test_cli_with_mac_costs_and_distillation(tmp_path):
    out = tmp_path / "lenet_kd.pt"
    res = _cli("--model", "lenet", "--structured", "0.3", "--unstructured", "0.5", "--costs", "macs", "--distill",
               "--finetune-epochs", "1", "--finetune-samples", "1024", "--out", str(out))
    assert res.returncode == 0, res.stderr
    rows = [line.split() for line in res.stdout.splitlines() if line.startswith("final")]
    assert rows and float(rows[0][4]) > 50  # validation accuracy after distilled fine-tuning, far above chance
    assert serialization.load_pruned(out)(X).shape == (8, 10)


def test_sparsity_for_nonzero_factor_leaves_the_promised_non_zero_count():
    from deeplsp_helpers import metrics

    torch.manual_seed(0)
    dense = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8 * 26 * 26, 10))
    small = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))
    s = deeplsp.sparsity_for_nonzero_factor(small, dense, 10)
    deeplsp.apply_unstructured_pruning(small, s)
    deeplsp.remove_pruning_masks(small)
    nonzero = metrics.count_parameters(small, nonzero_only=True)
    assert nonzero == pytest.approx(metrics.count_parameters(dense) / 10, rel=0.01)
    assert deeplsp.sparsity_for_nonzero_factor(small, dense, 1.0) == 0.0   # the small model is already below
    with pytest.raises(ValueError, match=">= 1"):
        deeplsp.sparsity_for_nonzero_factor(small, dense, 0.5)
    with pytest.raises(TypeError, match="dense must be"):
        deeplsp.sparsity_for_nonzero_factor(small, "vgg", 2)


@pytest.mark.parametrize("out", ["", "   ", "{tmp}", "{tmp}/"])
def test_cli_refuses_an_out_that_is_no_file_before_any_work(tmp_path, monkeypatch, capsys, out):
    from deeplsp_helpers import data, deeplsp_cli

    loaded = []
    monkeypatch.setattr(data, "load_fashion_mnist", lambda *a, **k: loaded.append(1))
    with pytest.raises(SystemExit) as exit_:
        deeplsp_cli.main(["--model", "lenet", "--out", out.format(tmp=tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and loaded == [] and "--out" in err[-1] and "Traceback" not in "".join(err)


def _fake_pipeline(monkeypatch, models_in_order):
    """The CLI with its minutes of pruning replaced: each run returns the next of ``models_in_order``."""
    from deeplsp_helpers import deeplsp_cli

    queue = list(models_in_order)
    monkeypatch.setattr(deeplsp_cli, "apply_combined_pruning", lambda *a, **k: (queue.pop(0), []))
    monkeypatch.setattr(deeplsp_cli, "format_report", lambda rows: "report")


def test_two_cli_runs_writing_the_same_out_do_not_share_a_temporary_file(tmp_path, monkeypatch):
    from deeplsp_helpers import deeplsp_cli

    torch.manual_seed(1)
    first, second = models.LeNet().eval(), models.LeNet().eval()
    _fake_pipeline(monkeypatch, [first, second])
    out = tmp_path / "m.pt"
    args = ["--model", "lenet", "--finetune-epochs", "0", "--out", str(out)]
    real_load, codes, partials = serialization.load_pruned, [], []

    def load_while_another_run_saves(path):  # the second run saves and finishes while the first checks its file
        partials.append(path.name)
        if len(partials) == 1:
            codes.append(deeplsp_cli.main(args))
        return real_load(path)

    monkeypatch.setattr(deeplsp_cli, "load_pruned", load_while_another_run_saves)
    codes.append(deeplsp_cli.main(args))
    assert codes == [0, 0] and len(set(partials)) == 2 and f".{out.name}.partial" not in partials
    with torch.inference_mode():  # the run that reported success last wrote the file, and it holds its model
        assert torch.equal(serialization.load_pruned(out)(X), first(X))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


def test_a_partial_file_a_killed_cli_run_left_is_removed_by_the_next_run(tmp_path, monkeypatch):
    import os
    import time

    from deeplsp_helpers import deeplsp_cli

    _fake_pipeline(monkeypatch, [models.LeNet().eval()])
    left = tmp_path / ".m.pt.999999999.0badc0de.partial"
    left.write_bytes(b"x" * 1000)
    os.utime(left, (time.time() - 600, time.time() - 600))
    assert deeplsp_cli.main(["--model", "lenet", "--finetune-epochs", "0", "--out", str(tmp_path / "m.pt")]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


def test_cli_finds_a_full_disk_before_any_work(tmp_path, monkeypatch, capsys):
    import collections

    from deeplsp_helpers import deeplsp_cli, files

    loaded = []
    monkeypatch.setattr(data, "load_fashion_mnist", lambda *a, **k: loaded.append(1))
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(files.shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 100, 100))
    with pytest.raises(SystemExit) as exit_:
        deeplsp_cli.main(["--model", "vgg", "--out", str(tmp_path / "m.pt")])
    assert exit_.value.code == 2 and loaded == [] and "disk full" in capsys.readouterr().err


def test_the_cli_takes_model_names_in_any_case():
    from deeplsp_helpers.deeplsp_cli import build_parser

    args = build_parser().parse_args(["--model", "VGG", "--structured", "0.5", "--out", "x.pt"])
    assert args.model == "vgg"  # as load_pretrained("VGG") takes it


def test_remove_pruning_masks_also_makes_a_mask_pair_without_its_hook_permanent():
    layer = nn.Linear(4, 3)
    prune.l1_unstructured(layer, "weight", amount=0.5)
    expected = layer.weight.detach().clone()
    for k in list(layer._forward_pre_hooks):  # e.g. a model whose hooks were lost on the way
        del layer._forward_pre_hooks[k]
    deeplsp.remove_pruning_masks(layer)
    assert set(dict(layer.named_parameters())) == {"weight", "bias"} and not list(layer.named_buffers())
    assert torch.equal(layer.weight, expected) and int((layer.weight == 0).sum()) == 6


def test_the_second_fine_tune_runs_even_when_the_structured_stage_met_the_nonzero_budget():
    """At a large request the structured stage alone can leave fewer non-zero parameters than the budget allows;
    the unstructured stage then zeroes nothing, but its half of the fine-tuning budget is still spent."""
    model = models.VGG().eval()
    calls = []
    pruned, _ = deeplsp.apply_combined_pruning(model, X, 0.75, nonzero_factor=1.5, sensitivity_adaptive=False,
                                               finetune=lambda m, stage: calls.append(stage), latency_repeats=3)
    assert metrics.count_parameters(model) / metrics.count_parameters(pruned) > 1.5  # the budget was already met
    assert metrics.weight_sparsity(pruned) == 0  # nothing zeroed
    assert calls == ["structured", "unstructured"]
    calls.clear()
    deeplsp.apply_combined_pruning(model, X, 0.5, finetune=lambda m, stage: calls.append(stage), latency_repeats=3)
    assert calls == ["structured"]  # no unstructured stage asked for: no second fine-tune


def test_halp_steps_reach_the_request_in_steps_with_a_fine_tune_call_after_each(calib):
    """halp_steps: the structured stage is HALP's (Taylor scores on the calibration batches, latency knapsack), with
    finetune(model, "structured k/K") after each step instead of one "structured" call."""
    from test_halp import _synthetic_table  # tests/ is on sys.path (pytest prepends it)

    model = models.VGG(cfg=(16, "M", 32, "M", 32)).eval()
    table = _synthetic_table(model, X[:1])
    calls = []
    pruned, _ = deeplsp.apply_combined_pruning(model, X, target_speedup=1.5, latency_table=table, cost="latency",
                                               calibration=calib, halp_steps=3, nonzero_factor=3.0, report=False,
                                               finetune=lambda m, stage: calls.append(stage))
    assert calls == ["structured 1/3", "structured 2/3", "structured 3/3", "unstructured"]
    assert table.dense_ms / table.predict(pruned) >= 1.5 * (1 - 1e-9)
    assert metrics.count_parameters(model) / metrics.count_parameters(pruned, nonzero_only=True) >= 3.0 * 0.99
    for bad in (dict(cost="none"), dict(calibration=None), dict(target_speedup=None, structured_ratio=0.5)):
        kwargs = dict(target_speedup=1.5, latency_table=table, cost="latency", calibration=calib, halp_steps=3,
                      report=False) | bad
        with pytest.raises(ValueError, match="halp_steps needs"):
            deeplsp.apply_combined_pruning(model, X, **kwargs)
