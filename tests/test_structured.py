import copy

import pytest
import torch
import torch_pruning as tp
from torch import nn

from deeplsp_helpers import latency_model, metrics, models, serialization, structured

X = torch.randn(4, 1, 28, 28)


def _randomise_bn(model, seed=0):
    """Give every BatchNorm non-trivial statistics, as a trained model has."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    return model.eval()


def _dead(conv, bn, idx):
    with torch.no_grad():
        conv.weight[idx] = 0
        if bn is not None:
            bn.weight[idx] = 0
            bn.bias[idx] = 0


def test_collapse_removes_dead_channels_keeps_constant_ones_and_outputs():
    model = _randomise_bn(models.VGG())
    conv, bn = model.features[1][0], model.features[1][1]
    _dead(conv, bn, [0, 1, 2])
    with torch.no_grad():
        conv.weight[[3, 4]] = 0  # zero filters, but BN shifts them: constant channels, not dead
    before_out, before_n = model(X), metrics.count_parameters(model)
    removed = structured.collapse_channels(model, X)
    assert removed == {"features.1.0": 3}
    assert conv.out_channels == 29 and bn.num_features == 29 and model.features[3][0].in_channels == 29
    assert metrics.count_parameters(model) < before_n
    assert (model(X) - before_out).abs().max() <= 1e-5


def test_removing_a_constant_channel_would_change_the_outputs():
    """Why the BN shift matters: pruning the zero-filter channels by hand changes what the model computes."""
    model = _randomise_bn(models.VGG())
    conv = model.features[1][0]
    bn = model.features[1][1]
    with torch.no_grad():
        conv.weight[[3, 4]] = 0
        bn.bias[[3, 4]] = 1.0  # after ReLU these channels carry a constant 1.0-ish signal
    ref = model(X)
    assert structured.collapse_channels(model, X) == {}
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=X)
    dg.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=[3, 4]).prune()
    assert (model(X) - ref).abs().max() > 1e-3


def test_collapse_respects_residual_coupling():
    model = _randomise_bn(models.ResNet())
    block = model.layers[0]  # identity shortcut: the stem's channels are added to block.conv2's
    _dead(block.conv2, block.bn2, [5])
    assert structured.collapse_channels(model, X) == {}  # the stem still feeds channel 5
    _dead(model.stem[0], model.stem[1], [5])
    before = model(X)
    removed = structured.collapse_channels(model, X)
    assert sum(removed.values()) == 1 and model.stem[0].out_channels == 31
    assert (model(X) - before).abs().max() <= 1e-5


def test_collapse_linear_features_but_never_the_output_layer():
    model = models.LeNet().eval()
    with torch.no_grad():
        model.fc1.weight[:10] = 0
        model.fc1.bias[:10] = 0
        model.fc1.bias[10] = 1.0
        model.fc1.weight[10] = 0  # zero row with a bias: constant feature, kept
        model.fc3.weight[0] = 0
        model.fc3.bias[0] = 0
    before = model(X)
    assert structured.collapse_channels(model, X) == {"fc1": 10}
    assert model.fc2.in_features == 110 and model.fc3.out_features == 10
    assert (model(X) - before).abs().max() <= 1e-5


def test_collapse_rejects_bad_input():
    with pytest.raises(TypeError):
        structured.collapse_channels("vgg", X)
    with pytest.raises(TypeError):
        structured.collapse_channels(models.LeNet(), [1, 28, 28])


def test_latency_aware_importance_divides_magnitude_by_cost():
    model = models.VGG().eval()
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=X[:1])
    conv = model.features[1][0]
    group = dg.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=list(range(conv.out_channels)))
    cheap = structured.LatencyAwareImportance({m: 0.01 for m in model.modules() if isinstance(m, nn.Conv2d)})
    costly = structured.LatencyAwareImportance({m: 0.05 for m in model.modules() if isinstance(m, nn.Conv2d)})
    a, b = cheap(group), costly(group)
    assert a.std() > 0  # not a constant
    assert torch.allclose(a, 5 * b)
    with pytest.raises(ValueError):
        structured.LatencyAwareImportance({})


def test_layer_costs_sum_to_one_and_macs_match_torchprofile():
    model = models.VGG().eval()
    macs = latency_model.layer_costs(model, X[:1], "macs")
    assert sum(macs.values()) == pytest.approx(1.0)
    c1, c2 = model.features[1][0], model.features[4][0]
    ratio = metrics.count_macs(c1, (32, 28, 28)) / metrics.count_macs(c2, (64, 14, 14))
    assert macs[c1] / macs[c2] == pytest.approx(ratio)
    lat = latency_model.layer_costs(model, X[:1], "latency", repeats=5)
    assert sum(lat.values()) == pytest.approx(1.0) and all(v > 0 for v in lat.values())
    with pytest.raises(ValueError):
        latency_model.layer_costs(model, X[:1], "flops")


@pytest.mark.parametrize("name", ["vgg", "resnet", "mobilenet"])
def test_structured_pruning_shrinks_and_saves_round_trip(name, tmp_path):
    model = _randomise_bn(models.build_model(name))
    macs = metrics.count_macs(model, X[:1])
    structured.structured_channel_pruning(model, X[:1], 0.5,
                                          importance=structured.LatencyAwareImportance.from_model(model, X[:1], "macs"))
    assert metrics.count_macs(model, X[:1]) < 0.6 * macs
    assert model(X).shape == (4, 10)
    path = serialization.save_pruned(model, name, tmp_path / "p.pt")
    again = serialization.load_pruned(path)
    assert torch.equal(again(X), model.eval()(X))


def test_structured_pruning_validates_ratios():
    for bad in (-0.1, 1.0, "0.5"):
        with pytest.raises(ValueError):
            structured.structured_channel_pruning(models.VGG(), X[:1], bad)
    with pytest.raises(ValueError):
        structured.structured_channel_pruning(models.VGG(), X[:1], 0.5, iterative_steps=0)


def test_ratio_pruning_gives_the_model_back_in_the_mode_it_came_in():
    model = models.VGG().train()  # pruned in eval mode (as the speed-up path does), then its own flags come back
    structured.structured_channel_pruning(model, X[:1], 0.3)
    assert all(m.training for m in model.modules())


def test_save_and_load_errors(tmp_path):
    from torch.nn.utils import prune

    model = models.LeNet()
    prune.l1_unstructured(model.fc1, "weight", amount=0.5)
    with pytest.raises(ValueError, match="remove_pruning_masks"):
        serialization.save_pruned(model, "lenet", tmp_path / "m.pt")
    with pytest.raises(ValueError):
        serialization.save_pruned(models.LeNet(), "alexnet", tmp_path / "m.pt")
    with pytest.raises(FileNotFoundError):
        serialization.load_pruned(tmp_path / "missing.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="save_pruned"):
        serialization.load_pruned(tmp_path / "other.pt")
    assert not list(tmp_path.glob("*.tmp"))


def test_structured_pruning_options_round_to_ignored_layers_cap_and_steps():
    model = _randomise_bn(models.VGG())
    keep = model.features[1][0]
    structured.structured_channel_pruning(model, X[:1], 0.5, importance=tp.importance.GroupMagnitudeImportance(p=1),
                                          round_to=8, ignored_layers=[keep, model.classifier], iterative_steps=2,
                                          max_pruning_ratio=0.6)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert keep.out_channels == 32  # an ignored layer keeps its outputs
    assert all(c.out_channels % 8 == 0 for c in convs)  # round_to
    dense = [32, 32, 64, 64, 128, 128]
    assert all(c.out_channels >= round(0.4 * d) - 8 for c, d in zip(convs, dense))  # nobody loses > 60 % (+ rounding)
    assert sum(c.out_channels for c in convs) < sum(dense)  # and something was pruned, over two steps
    assert model(X).shape == (4, 10)
    with pytest.raises(ValueError, match="max_pruning_ratio"):
        structured.structured_channel_pruning(models.VGG(), X[:1], 0.5, max_pruning_ratio=0.4)
    with pytest.raises(ValueError, match="exactly one"):
        structured.structured_channel_pruning(models.VGG(), X[:1])


def test_the_default_importance_is_plain_l1_group_magnitude():
    torch.manual_seed(0)
    a = _randomise_bn(models.build_model("vgg"))
    b = copy.deepcopy(a)
    structured.structured_channel_pruning(a, X[:1], 0.4)
    structured.structured_channel_pruning(b, X[:1], 0.4, importance=tp.importance.GroupMagnitudeImportance(p=1))
    assert [p.shape for p in a.parameters()] == [p.shape for p in b.parameters()]
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_uniform_channel_pruning_cuts_every_group_by_the_same_fraction():
    from deeplsp_helpers import channels, metrics, models

    model = models.VGG().eval()
    x = torch.randn(1, 1, 28, 28)
    assert channels.uniform_channel_pruning(model, x, 0.5) is model
    assert metrics.conv_widths(model) == [16, 16, 32, 32, 64, 64]  # half of every layer, not a global ranking
    assert model.classifier.out_features == 10 and model(x).shape == (1, 10)  # the output layer kept
