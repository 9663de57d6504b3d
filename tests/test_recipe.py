"""The DeepLSP recipe: one definition used by the zoo, the command line and chapter 06."""

import copy
import dataclasses
import inspect

import pytest
import torch

from deeplsp_helpers import data, deeplsp, metrics, seed_everything, train, zoo
from deeplsp_helpers.deeplsp_cli import build_parser
from deeplsp_helpers.latency_model import LatencyTable
from deeplsp_helpers.recipe import DEFAULT_RECIPE, DeepLSPRecipe
from deeplsp_helpers.speedup import prune_to_speedup


def test_the_defaults_are_chapter_06s_recipe_and_frozen():
    r = DeepLSPRecipe()
    assert r == DEFAULT_RECIPE
    assert (r.cost, r.lr, r.finetune_samples, r.distill, r.nonzero_factor, r.request_batch_size) == \
        ("none", 0.05, 15_000, True, 10.5, 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.cost = "latency"


@pytest.mark.parametrize("bad, err", [
    (dict(cost="flops"), ValueError), (dict(target_speedup=1.0), ValueError), (dict(target_speedup="2"), ValueError),
    (dict(target_speedup=float("nan")), ValueError), (dict(nonzero_factor=0.5), ValueError), (dict(lr=0), ValueError),
    (dict(distill="yes"), TypeError), (dict(finetune_epochs=-1), ValueError), (dict(calibration_images=10), ValueError),
    (dict(request_batch_size=True), TypeError)])  # _validate's rules: any bad number a ValueError, a non-int a TypeError
def test_a_bad_recipe_is_refused_with_the_field_named(bad, err):
    with pytest.raises(err, match=next(iter(bad))):
        DeepLSPRecipe(**bad)


def test_records_round_trip_and_old_records_take_the_defaults():
    r = DeepLSPRecipe(target_speedup=2.0, cost="latency")
    assert DeepLSPRecipe.from_record({"base": "vgg", "chapter": "06", **r.as_record()}) == r
    old = {k: v for k, v in r.as_record().items() if k != "request_batch_size"}
    assert DeepLSPRecipe.from_record(old).request_batch_size == 1
    with pytest.raises(ValueError, match="steps"):
        DeepLSPRecipe.from_record({**r.as_record(), "steps": 4})


def test_the_zoo_and_the_cli_use_the_recipe():
    def full_budget(request, epochs):  # the whole training split
        return DeepLSPRecipe(target_speedup=request, finetune_epochs=epochs, finetune_samples=55_000)

    for name, base, recipe in (("vgg_deeplsp", "vgg", full_budget(2.5, 4)), ("vgg_deeplsp_3x", "vgg", full_budget(3.0, 8)),
                               ("vgg_deeplsp_halp", "vgg", dataclasses.replace(full_budget(3.0, 8), cost="latency",
                                                                               halp_steps=30)),
                               ("resnet_deeplsp", "resnet", full_budget(2.0, 4))):
        record = zoo.PRUNED_RECIPES[name]
        assert record == {"base": base, "chapter": "06", **recipe.as_record()}
        assert zoo.read_manifest()[name]["recipe"] == record  # and the checkpoints were built with it
    args = build_parser().parse_args(["--model", "vgg", "--out", "x.pt"])
    assert (args.costs, args.lr, args.finetune_samples, args.distill, args.sensitivity_adaptive, args.batch_size,
            2 * args.finetune_epochs) == (DEFAULT_RECIPE.cost, DEFAULT_RECIPE.lr, DEFAULT_RECIPE.finetune_samples,
                                          True, True, DEFAULT_RECIPE.request_batch_size, DEFAULT_RECIPE.finetune_epochs)
    assert args.structured is None and args.target_speedup is None and args.unstructured is None  # -> the recipe's
    assert build_parser().parse_args(["--model", "vgg", "--no-distill", "--uniform", "--out", "x.pt"]).distill is False
    assert inspect.signature(deeplsp.apply_combined_pruning).parameters["cost"].default == DEFAULT_RECIPE.cost
    from deeplsp_helpers import speedup, structured

    for fn in (speedup.prune_to_speedup, speedup.plan_to_speedup, structured.structured_channel_pruning):
        assert inspect.signature(fn).parameters["cost"].default == DEFAULT_RECIPE.cost, fn.__name__


def test_run_is_the_pipeline_chapter_06_builds_step_by_step(splits):
    """The recipe's run, and the same steps written out by hand, give identical weights."""
    dense = zoo.load_pretrained("vgg")  # (LeNet at batch size 1 is mostly per-call overhead: ~1.1x at most)
    r = DeepLSPRecipe(target_speedup=1.3, nonzero_factor=4.0, calibration_images=128, finetune_epochs=2,
                      finetune_samples=512, latency_repeats=3)
    x1 = splits.val.X[:1]
    table = LatencyTable.measure(dense, x1, repeats=3)
    stages = []
    history, val = {}, data.BatchLoader(data.subset(splits.val, 256), 128)
    got, rows = r.run(dense, splits, table=table,
                      after_stage=lambda m, s: stages.append((s, copy.deepcopy(m) if s == "structured" else None)),
                      val_loader=val, history=history)
    assert rows == [] and [s for s, _ in stages] == ["structured", "unstructured"]
    # validation after each epoch (the zoo's budget curve) is recorded, and measuring it changes no weight (below)
    assert list(history) == ["structured", "unstructured"] and all(len(v) == 1 and 0 <= v[0] <= 100 for v in history.values())
    assert history["unstructured"][0] == pytest.approx(train.evaluate(got, val), abs=0.01)

    by_hand = copy.deepcopy(dense)
    ft_data = train.with_teacher_outputs(dense, data.subset(splits.train, 512))
    calib = data.calibration_batches(splits.train, n_batches=2, batch_size=64)

    def finetune(seed):
        seed_everything(seed)
        train.fine_tune(by_hand, data.BatchLoader(ft_data, 128, shuffle=True, seed=seed), num_epochs=1, lr=0.05)

    prune_to_speedup(by_hand, x1, 1.3, table, cost="none")
    finetune(0)
    sens = deeplsp.compute_sensitivity(by_hand, calib)
    deeplsp.prune_sensitivity_adaptive(by_hand, sens, deeplsp.sparsity_for_nonzero_factor(by_hand, dense, 4.0))
    finetune(1)
    deeplsp.remove_pruning_masks(by_hand)
    a, b = got.state_dict(), by_hand.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert metrics.count_parameters(dense) / metrics.count_parameters(got, nonzero_only=True) == pytest.approx(4.0, rel=0.02)
    assert table.dense_ms / table.predict(stages[0][1]) >= 1.3 * 0.99  # the structured stage met the request


def test_a_history_needs_a_validation_loader_and_is_a_dict(splits):
    dense = zoo.load_pretrained("lenet")
    with pytest.raises(ValueError, match="val_loader"):
        DEFAULT_RECIPE.finetune_fn(dense, splits, finetune_data=data.subset(splits.train, 64), history={})
    with pytest.raises(TypeError, match="history must be a dict"):
        DEFAULT_RECIPE.finetune_fn(dense, splits, finetune_data=data.subset(splits.train, 64), history=[],
                                   val_loader=data.BatchLoader(data.subset(splits.val, 64), 64))


def test_a_halp_recipe_needs_the_latency_knapsack_and_a_first_fine_tune():
    assert DeepLSPRecipe(cost="latency", halp_steps=30).halp_steps == 30
    for bad in (dict(halp_steps=30), dict(cost="latency", halp_steps=30, finetune_epochs=1)):
        with pytest.raises(ValueError, match="halp_steps"):
            DeepLSPRecipe(**bad)
    with pytest.raises(ValueError, match="halp_steps"):
        DeepLSPRecipe(cost="latency", halp_steps=-1)
