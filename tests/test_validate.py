"""The package's one path for argument checks: ints, numbers, tensors, per-layer scores."""

import math

import pytest
import torch
from torch import nn

from deeplsp_helpers import (
    criteria,
    data,
    deeplsp,
    deploy,
    halp,
    latency,
    masks,
    metrics,
    models,
    pruners,
    seed_everything,
    structured,
)
from deeplsp_helpers._validate import check_int, check_ints, check_number, check_shape, check_tensor


def test_ints_wrong_type_and_range_have_the_same_message():
    assert check_int(3, "k", 1) == 3
    with pytest.raises(TypeError, match=r"k must be an int >= 1, got 1\.5"):
        check_int(1.5, "k", 1)
    with pytest.raises(TypeError, match="got True"):
        check_int(True, "k", 0)
    with pytest.raises(ValueError, match=r"k must be an int in 0\.\.9, got 10"):
        check_int(10, "k", 0, 9)
    assert check_int(-7, "i", None) == -7  # lowest=None: any int
    with pytest.raises(TypeError, match="i must be an int, got '1'"):
        check_int("1", "i", None)


@pytest.mark.parametrize("bad, err", [(("a", 1.0, 0), TypeError), (("b", False, 0, 9), TypeError), (("a", "1", 0), TypeError),
                                      (("a", -1, 0), ValueError), (("b", 10, 0, 9), ValueError)])
def test_check_ints_raises_what_check_int_raises(bad, err):
    check_ints(("a", 0, 0), ("b", 9, 0, 9))
    name, value, *bounds = bad
    with pytest.raises(err, match=f"{name} must be an int") as from_ints:
        check_ints(bad)
    with pytest.raises(err) as from_int:
        check_int(value, name, *bounds)
    assert str(from_ints.value) == str(from_int.value)  # one rule: wrong type TypeError, out of range ValueError


def test_shapes_refuse_bools_and_non_positive_sizes():
    assert check_shape((1, 28, 28)) == (1, 28, 28) and check_shape([3, 4], "s", min_len=2) == (3, 4)
    for bad in [(True, 28, 28), (1, 28.0, 28), "1x28x28", 28, None]:
        with pytest.raises(TypeError, match="input_size must be a tuple of positive ints"):
            check_shape(bad)
    for bad in [(), (0, 28, 28), (1, -1)]:
        with pytest.raises(ValueError, match="input_size must be a tuple of positive ints"):
            check_shape(bad)
    with pytest.raises(ValueError, match="at least 2"):
        check_shape((8,), min_len=2)


def test_the_three_shape_arguments_go_through_check_shape():
    lenet = models.LeNet()
    assert metrics.count_macs(lenet, (1, 28, 28)) == metrics.count_macs(lenet, torch.zeros(1, 1, 28, 28))
    with pytest.raises(TypeError, match=r"got \(True, 28, 28\)"):  # True is no size 1
        metrics.count_macs(lenet, (True, 28, 28))
    with pytest.raises(TypeError, match=r"got \(True, 28, 28\)"):
        metrics.nonzero_macs(lenet, (True, 28, 28))
    with pytest.raises(TypeError, match=r"input_size .*got \(True, 28, 28\)"):
        metrics.summarize(lenet, (True, 28, 28), device="cpu")
    with pytest.raises(TypeError, match="input_shape"):
        deeplsp.compute_sensitivity(lenet, dummy=True, input_shape=(8, True, 28, 28))
    with pytest.raises(ValueError, match="input_shape must be a tuple of at least 2"):
        deeplsp.compute_sensitivity(lenet, dummy=True, input_shape=(8,))


def test_bools_are_refused_as_halp_steps_latency_times_and_structured_costs():
    g = torch.Generator().manual_seed(0)
    ft = data.ImageTensorDataset(torch.randn(8, 1, 28, 28, generator=g), torch.randint(0, 10, (8,), generator=g))
    fine_tune = halp.progressive_fine_tune(ft, 2, num_epochs=1, lr=0.01, batch_size=4)
    with pytest.raises(TypeError, match="step must be an int in 1..2, got True"):
        fine_tune(models.LeNet(), True)
    with pytest.raises(ValueError, match="step must be an int in 1..2, got 3"):
        fine_tune(models.LeNet(), 3)
    base = [0.01, 0.02, 0.01]
    for bad in (True, math.nan, math.inf, "0.01", 0):
        with pytest.raises(ValueError, match="times must be a number > 0"):
            latency.paired_speedup(base, [0.01, bad, 0.01])
    with pytest.raises(ValueError, match="baseline_times must be a number > 0"):
        latency.paired_speedup([True, 0.02, 0.01], base)
    conv = nn.Conv2d(1, 2, 3)
    for bad in (True, -0.1, math.nan, "0.5"):
        with pytest.raises(ValueError, match="cost share"):
            structured.LatencyAwareImportance({conv: bad})
    assert structured.LatencyAwareImportance({conv: 0}).costs == {conv: 0}  # a share of 0 is allowed


def test_numbers_refuse_bools_nan_and_infinity():
    assert check_number(2, "lr", 0) == 2.0 and check_number(1, "factor", 1, strict=False) == 1.0
    for bad in [0, -1, True, math.nan, math.inf, "1", None]:
        with pytest.raises(ValueError, match="lr must be a number > 0"):
            check_number(bad, "lr", 0)
    with pytest.raises(ValueError, match=r"p must be a number > 0 \(1 for L1, 2 for L2\), got 0"):
        check_number(0, "p", 0, hint=" (1 for L1, 2 for L2)")


def test_tensors():
    assert check_tensor(torch.ones(2, 3, requires_grad=True), "w", ndim=2).requires_grad is False  # detached
    with pytest.raises(TypeError, match="w must be a torch.Tensor, got list"):
        check_tensor([1.0], "w")
    with pytest.raises(TypeError, match="floating-point"):
        check_tensor(torch.ones(2, dtype=torch.int64), "w", floating=True)
    with pytest.raises(ValueError, match=r"w must have 2 dimensions \[out, in\], got shape \(3,\)"):
        check_tensor(torch.ones(3), "w", ndim=2, dims=" [out, in]")
    with pytest.raises(ValueError, match="at least 2"):
        check_tensor(torch.ones(3), "w", min_ndim=2)
    with pytest.raises(ValueError, match="w is empty"):
        check_tensor(torch.ones(0, 3), "w")
    assert check_tensor(torch.ones(0, 3), "w", allow_empty=True).shape == (0, 3)
    with pytest.raises(ValueError, match="NaN or infinite"):
        check_tensor(torch.tensor([1.0, math.inf]), "w", finite=True)


def test_package_functions_go_through_the_same_checks():
    with pytest.raises(TypeError, match="seed must be an int >= 0"):
        seed_everything("0")
    with pytest.raises(ValueError, match="seed must be an int >= 0, got -1"):
        seed_everything(-1)
    with pytest.raises(ValueError, match=r"val_size must be an int in 1\.\.59999"):
        data.load_fashion_mnist(val_size=60000)
    with pytest.raises(ValueError, match="p must be a number > 0"):
        criteria.magnitude(nn.Linear(2, 2), p=0)
    with pytest.raises(ValueError, match="p must be a number > 0"):
        masks.filter_mask(torch.randn(4, 2, 3, 3), 0.5, p=-1)
    with pytest.raises(ValueError, match=r"level must be an int in 0\.\.9"):
        deploy.zipped_size(__file__, level=10)


def test_layer_scores_default_to_magnitude_and_name_what_is_missing():
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2))
    layers = criteria.prunable_layers(model)
    default = criteria.layer_scores(layers)
    assert all(torch.equal(default[n], m.weight.detach().abs()) for n, m in layers.items())
    with pytest.raises(ValueError, match="scores has no entry for '2'"):
        criteria.layer_scores(layers, {"0": torch.ones(2, 3)})
    with pytest.raises(ValueError, match=r"scores\['0'\] must be a tensor of the weight's shape \(2, 3\)"):
        pruners.global_threshold_sparsities(model, 0.5, {"0": torch.ones(3, 2), "2": torch.ones(2, 2)})
    with pytest.raises(TypeError, match="scores must be a dict"):
        pruners.FineGrainedPruner(model, {"0": 0.5}, scores=[torch.ones(2, 3)])
    pruners.FineGrainedPruner(model, {"0": 0.5}, scores={"0": torch.rand(2, 3)})  # only the pruned layers needed
