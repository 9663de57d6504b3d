import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from deeplsp_helpers import metrics, models

LENET_MACS = 6 * 24 * 24 * 25 + 16 * 8 * 8 * 150 + 256 * 120 + 120 * 84 + 84 * 10  # 281,640 by hand


def test_sparsity_of_tensors():
    assert metrics.sparsity(torch.tensor([0.0, 1.0, -2.0, 0.0])) == 0.5
    assert metrics.sparsity(torch.zeros(3, 5)) == 1.0
    with pytest.raises(ValueError):
        metrics.sparsity(torch.empty(0))
    with pytest.raises(TypeError):
        metrics.sparsity([0.0, 1.0])


def test_parameter_counts_and_sizes():
    model = models.LeNet()
    assert metrics.count_parameters(model) == 44426
    with torch.no_grad():
        model.fc1.weight.zero_()
    assert metrics.count_parameters(model, nonzero_only=True) == 44426 - 256 * 120
    assert metrics.model_sparsity(model) == pytest.approx(256 * 120 / 44426)
    assert metrics.model_size(model) == 44426 * 32
    assert metrics.model_size(model, data_width=8, nonzero_only=True) == (44426 - 256 * 120) * 8
    for bad, err in ((0, ValueError), (-8, ValueError), (4.0, TypeError), (True, TypeError)):  # check_ints' rule
        with pytest.raises(err):
            metrics.model_size(model, data_width=bad)
    with pytest.raises(TypeError):
        metrics.count_parameters("lenet")


def test_metrics_see_through_prune_masks():
    model = models.LeNet()
    prune.l1_unstructured(model.fc1, "weight", amount=0.5)
    assert metrics.count_parameters(model) == 44426  # weight_orig counted once, as weight
    assert metrics.count_parameters(model, nonzero_only=True) == 44426 - 256 * 120 // 2
    assert metrics.layer_sparsities(model)["fc1"] == 0.5


def test_count_macs_is_per_sample_and_matches_a_hand_count():
    model = models.LeNet().train()
    assert metrics.count_macs(model, torch.randn(1, 1, 28, 28)) == LENET_MACS
    assert metrics.count_macs(model, torch.randn(8, 1, 28, 28)) == LENET_MACS
    assert metrics.count_macs(model, (1, 28, 28)) == LENET_MACS
    assert model.training  # mode restored
    with pytest.raises(TypeError):
        metrics.count_macs(model, "1x28x28")
    with pytest.raises(ValueError):
        metrics.count_macs(model, torch.randn(28))


def test_count_macs_still_counts_zeros():
    model = models.LeNet()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    assert metrics.count_macs(model, (1, 28, 28)) == LENET_MACS


def test_summarize_works_on_cpu():
    text = metrics.summarize(models.LeNet(), (1, 28, 28), device="cpu")
    assert "Total params: 44,426" in text
    with pytest.raises(TypeError):
        metrics.summarize(models.LeNet(), 28)


def test_effective_parameters_of_a_plain_layer():
    layer = nn.Linear(3, 2)
    names = [n for n, _ in metrics.effective_parameters(layer)]
    assert names == ["weight", "bias"]
    with torch.no_grad():
        layer.weight[0] = 0  # 3 of the 8 effective parameters are zero
    assert metrics.model_sparsity(layer) == pytest.approx(3 / 8)


def test_weight_sparsity_counts_conv_and_linear_weights_only():
    model = models.LeNet()
    with torch.no_grad():
        model.fc1.weight.zero_()
        model.fc1.bias.zero_()  # biases do not count
    total = sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert metrics.weight_sparsity(model) == pytest.approx(model.fc1.weight.numel() / total)
    with pytest.raises(ValueError):
        metrics.weight_sparsity(nn.ReLU())


def test_conv_widths_lists_every_convolution_in_module_order():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Sequential(nn.Conv2d(4, 6, 1), nn.Linear(6, 2)))
    assert metrics.conv_widths(model) == [4, 6]
    assert metrics.conv_widths(nn.Linear(2, 2)) == []
    with pytest.raises(TypeError, match="torch.nn.Module"):
        metrics.conv_widths([4, 6])


def test_nonzero_macs_counts_each_non_zero_weight_at_every_output_position():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 3 * 3, 5))
    conv, fc = model[0], model[4]
    dense = 6 * 6 * conv.weight.numel() + fc.weight.numel()  # the conv's weights at 36 positions, fc's once
    assert metrics.nonzero_macs(model, (2, 6, 6)) == dense
    assert metrics.nonzero_macs(model, torch.randn(7, 2, 6, 6)) == dense  # per sample, whatever the batch
    with torch.no_grad():
        conv.weight[:, 0] = 0  # half of the conv's weights
    assert metrics.nonzero_macs(model, (2, 6, 6)) == 36 * conv.weight.numel() // 2 + fc.weight.numel()
    prune.l1_unstructured(fc, "weight", amount=0.4)  # a prune-masked layer counts its masked weight
    assert metrics.nonzero_macs(model, (2, 6, 6)) == 36 * conv.weight.numel() // 2 + 180 - 72  # 40 % of 180 gone
    assert not any(m._forward_hooks for m in (conv, fc) if not hasattr(m, "weight_mask"))  # hooks removed
    assert model.training  # mode restored


def test_nonzero_macs_refuses_a_model_without_conv_or_linear():
    with pytest.raises(ValueError, match="no Conv2d or Linear"):
        metrics.nonzero_macs(nn.Sequential(nn.ReLU()), (1, 4, 4))
