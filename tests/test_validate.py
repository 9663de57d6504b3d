"""The package's one path for argument checks: ints, numbers, tensors, per-layer scores."""

import math

import pytest
import torch
from torch import nn

from deeplsp_helpers import criteria, data, deploy, masks, pruners, seed_everything
from deeplsp_helpers._validate import check_int, check_ints, check_number, check_tensor


def test_ints_wrong_type_and_range_have_the_same_message():
    assert check_int(3, "k", 1) == 3
    with pytest.raises(TypeError, match=r"k must be an int >= 1, got 1\.5"):
        check_int(1.5, "k", 1)
    with pytest.raises(TypeError, match="got True"):
        check_int(True, "k", 0)
    with pytest.raises(ValueError, match=r"k must be an int in 0\.\.9, got 10"):
        check_int(10, "k", 0, 9)
    check_ints(("a", 0, 0), ("b", 9, 0, 9))
    for bad in [("a", 1.0, 0), ("a", -1, 0), ("b", 10, 0, 9), ("b", False, 0, 9)]:
        with pytest.raises(ValueError, match=f"{bad[0]} must be an int"):
            check_ints(bad)


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
