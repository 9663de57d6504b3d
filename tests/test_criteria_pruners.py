import pytest
import torch
from torch import nn

from deeplsp_helpers import criteria, data, models, pruners, train

torch.manual_seed(0)
BATCHES = [(torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))) for _ in range(3)]


@pytest.fixture(scope="module")
def lenet():
    torch.manual_seed(0)
    return models.LeNet()


def test_scores_have_the_weights_shapes(lenet):
    for fn in (criteria.random_scores, criteria.magnitude, lambda m: criteria.gradient(m, BATCHES),
               lambda m: criteria.taylor(m, BATCHES), lambda m: criteria.obd(m, BATCHES)):
        scores = fn(lenet)
        assert list(scores) == ["conv1", "conv2", "fc1", "fc2", "fc3"]
        for name, s in scores.items():
            assert s.shape == getattr(lenet, name).weight.shape and (s >= 0).all()


def test_l1_and_l2_rank_elements_identically(lenet):
    l1, l2 = criteria.magnitude(lenet, 1), criteria.magnitude(lenet, 2)
    for n in l1:
        assert torch.equal(torch.argsort(l1[n].flatten(), stable=True), torch.argsort(l2[n].flatten(), stable=True))


def test_gradient_criteria_accumulate_per_batch_and_match_their_formulas(lenet):
    w = lenet.fc3.weight
    grads = []
    for X, y in BATCHES:
        lenet.zero_grad()
        nn.functional.cross_entropy(lenet.eval()(X), y).backward()
        grads.append(w.grad.clone())
    lenet.zero_grad()
    g = torch.stack(grads)
    assert torch.allclose(criteria.gradient(lenet, BATCHES)["fc3"], g.abs().mean(0), atol=1e-7)
    assert torch.allclose(criteria.taylor(lenet, BATCHES)["fc3"], (w.detach() * g).abs().mean(0), atol=1e-7)
    assert torch.allclose(criteria.obd(lenet, BATCHES)["fc3"], 0.5 * g.pow(2).mean(0) * w.detach() ** 2, atol=1e-9)
    # the mean of |g| over batches is not |mean g|: one saved gradient is not the criterion
    assert not torch.allclose(criteria.gradient(lenet, BATCHES)["fc3"], g.mean(0).abs())


def test_bn_scale_and_random(lenet):
    vgg = models.VGG()
    with torch.no_grad():
        vgg.features[0][1].weight[0] = -3.0
    s = criteria.bn_scale(vgg)
    assert s["features.0.1"][0] == 3.0 and len(s) == 6
    assert torch.equal(criteria.random_scores(lenet, 1)["fc1"], criteria.random_scores(lenet, 1)["fc1"])
    with pytest.raises(ValueError, match="BatchNorm"):
        criteria.bn_scale(lenet)


def test_criteria_reject_bad_input(lenet):
    with pytest.raises(TypeError):
        criteria.magnitude("lenet")
    with pytest.raises(ValueError):
        criteria.magnitude(lenet, p=0)
    with pytest.raises(ValueError, match="empty"):
        criteria.taylor(lenet, [])
    with pytest.raises(TypeError):
        criteria.gradient(lenet, None)
    with pytest.raises(ValueError):
        criteria.magnitude(nn.ReLU())


def test_fine_grained_pruner_hits_per_layer_sparsities_and_keeps_them_through_training(splits):
    model = models.LeNet()
    pruner = pruners.FineGrainedPruner(model, {"conv2": 0.5, "fc1": 0.9})
    pruner.apply(model)
    assert (model.fc1.weight == 0).float().mean().item() == pytest.approx(0.9, abs=1e-4)
    assert (model.conv2.weight == 0).float().mean().item() == pytest.approx(0.5, abs=1e-3)
    assert (model.fc2.weight != 0).all()
    small = data.make_loaders(splits, batch_size=128, train_subset=512)
    train.fine_tune(model, small.train, num_epochs=1, lr=0.05, callbacks=[pruner.apply], progress=False)
    assert (model.fc1.weight == 0).float().mean().item() >= 0.9 - 1e-4
    assert pruner.sparsity() == pytest.approx((0.5 * 2400 + 0.9 * 30720) / (2400 + 30720), abs=1e-3)


def test_fine_grained_pruner_uses_given_scores_and_validates():
    model = models.LeNet()
    scores = {"fc3": torch.arange(840.0).reshape(10, 84)}
    pruner = pruners.FineGrainedPruner(model, {"fc3": 0.5}, scores)
    assert pruner.masks["fc3"].flatten()[:420].sum() == 0 and pruner.masks["fc3"].flatten()[420:].all()
    with pytest.raises(ValueError, match="unknown layers"):
        pruners.FineGrainedPruner(model, {"fc9": 0.5})
    with pytest.raises(ValueError):
        pruners.FineGrainedPruner(model, {"fc1": 1.5})
    with pytest.raises(TypeError):
        pruners.FineGrainedPruner(model, {})
    with pytest.raises(ValueError, match="shape"):
        pruners.FineGrainedPruner(model, {"fc3": 0.5}, {"fc3": torch.ones(3)})
    with pytest.raises(ValueError, match="does not match"):
        pruner.apply(models.LeNet(num_classes=5))


def test_global_threshold_sparsities_average_to_the_target():
    model = models.LeNet()
    per_layer = pruners.global_threshold_sparsities(model, 0.8)
    sizes = {n: getattr(model, n).weight.numel() for n in per_layer}
    overall = sum(per_layer[n] * sizes[n] for n in sizes) / sum(sizes.values())
    assert overall == pytest.approx(0.8, abs=1e-4) and len(set(round(v, 3) for v in per_layer.values())) > 1


def test_sensitivity_scan_shape_monotone_ends_and_validation(splits):
    model = models.LeNet()
    loader = data.BatchLoader(data.subset(splits.val, 500), 250)
    dense = train.evaluate(model, loader)
    scan = pruners.sensitivity_scan(model, loader, sparsities=(0.0, 1.0), layers=["fc3"])
    assert list(scan) == ["fc3"] and scan["fc3"][0] == [0.0, 1.0]
    assert scan["fc3"][1][0] == pytest.approx(dense)
    assert (model.fc3.weight != 0).all()  # the model is not modified
    with pytest.raises(ValueError):
        pruners.sensitivity_scan(model, loader, layers=["nope"])
    with pytest.raises(ValueError):
        pruners.sensitivity_scan(model, loader, sparsities=())
