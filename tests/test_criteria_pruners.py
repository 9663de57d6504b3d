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
    # obd's "batch" option squares each batch-mean gradient: the seed's form, kept to show the difference
    assert torch.allclose(criteria.obd(lenet, BATCHES, fisher="batch")["fc3"], 0.5 * g.pow(2).mean(0) * w.detach() ** 2,
                          atol=1e-9)
    # the mean of |g| over batches is not |mean g|: one saved gradient is not the criterion
    assert not torch.allclose(criteria.gradient(lenet, BATCHES)["fc3"], g.mean(0).abs())


def _tiny_net():
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 4))


def test_obd_is_half_w_squared_times_the_per_example_empirical_fisher():
    model = _tiny_net()
    model[1].running_mean.uniform_(-0.5, 0.5)  # eval-mode BatchNorm with non-trivial statistics
    batches = [(torch.randn(n, 2, 6, 6), torch.randint(0, 4, (n,))) for n in (5, 3)]  # unequal batch sizes
    model.train()
    weights = {"0": model[0].weight, "4": model[4].weight}
    squares = {n: torch.zeros_like(w) for n, w in weights.items()}
    count = 0
    model.eval()
    for X, y in batches:
        for i in range(len(y)):  # one example at a time: its own loss, its own gradient
            grads = torch.autograd.grad(nn.functional.cross_entropy(model(X[i:i + 1]), y[i:i + 1]), list(weights.values()))
            for n, g in zip(weights, grads):
                squares[n] += g.pow(2)
            count += 1
    model.train()
    got = criteria.obd(model, batches)
    assert model.training  # the model's mode is restored
    assert list(got) == ["0", "4"]
    for n, w in weights.items():
        want = 0.5 * (squares[n] / count) * w.detach().pow(2)
        assert torch.allclose(got[n], want, rtol=1e-4, atol=1e-12)
    for chunk in (1, 2):  # chunking the vectorised per-example gradients does not change the result
        assert torch.allclose(criteria.obd(model, batches, chunk_size=chunk)["4"], got["4"], rtol=1e-5, atol=1e-12)
    # the batch form is a different quantity: squaring batch-mean gradients drops most of the variance term
    assert not torch.allclose(criteria.obd(model, batches, fisher="batch")["4"], got["4"], rtol=1e-2)
    with pytest.raises(ValueError, match="fisher"):
        criteria.obd(model, batches, fisher="hessian")
    with pytest.raises(ValueError, match="chunk_size"):
        criteria.obd(model, batches, chunk_size=0)
    with pytest.raises(ValueError, match="empty"):
        criteria.obd(model, [])
    assert list(criteria.obd(nn.Linear(3, 2), [(torch.randn(4, 3), torch.tensor([0, 1, 1, 0]))])) == [""]
    torch.nn.utils.prune.l1_unstructured(model[4], "weight", 0.5)  # weight = weight_orig * mask, recomputed
    for fn in (criteria.obd, criteria.taylor):  # a gradient w.r.t. it would be zero (or fail): refused by name
        with pytest.raises(ValueError, match="prune.remove"):
            fn(model, batches)


def _quadratic(n, seed):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=gen, dtype=torch.float64)
    return a @ a.T + 0.5 * torch.eye(n, dtype=torch.float64), torch.randn(n, generator=gen, dtype=torch.float64)


def test_obs_prune_takes_the_cheapest_weight_and_the_constrained_minimum():
    h, w = _quadratic(6, 0)
    h_inv = torch.linalg.inv(h)
    cost = w.pow(2) / (2 * h_inv.diagonal())
    q = int(cost.argmin())
    got = pruners.obs_prune(w, h, 1 / 6, damp=0.0)
    assert got[q] == 0 and int((got == 0).sum()) == 1
    # the constrained minimum of 1/2 d^T H d with d_q = -w_q, solved from H itself (the KKT system)
    kkt = torch.zeros(7, 7, dtype=torch.float64)
    kkt[:6, :6], kkt[6, q], kkt[q, 6] = h, 1.0, 1.0
    d = torch.linalg.solve(kkt, torch.cat([torch.zeros(6, dtype=torch.float64), -w[q:q + 1]]))[:6]
    assert torch.allclose(got, w + d, atol=1e-10)
    assert 0.5 * d @ h @ d == pytest.approx(cost[q].item(), rel=1e-9)
    # compensation never costs more than zeroing the same weights and leaving the others alone
    for sparsity in (0.5, 5 / 6):
        pruned = pruners.obs_prune(w, h, sparsity, damp=0.0)
        plain = torch.where(pruned == 0, torch.zeros_like(w), w)
        assert int((pruned == 0).sum()) == round(sparsity * 6)
        assert (pruned - w) @ h @ (pruned - w) <= (plain - w) @ h @ (plain - w) + 1e-12
    assert torch.equal(pruners.obs_prune(w, h, 1.0), torch.zeros_like(w))
    assert torch.equal(pruners.obs_prune(w, h, 0.0), w)


def test_obs_prune_with_a_diagonal_hessian_is_obd_without_updates():
    h = torch.diag(torch.tensor([4.0, 1.0, 0.25, 2.0]))
    w = torch.tensor([[0.5, -1.0], [1.5, 0.6]])  # OBD: 1/2 h w^2 = 0.5, 0.5, 0.28, 0.36
    got = pruners.obs_prune(w, h, 0.5, damp=0.0)
    assert got.shape == w.shape and got.dtype == w.dtype
    assert torch.equal(got, torch.tensor([[0.5, -1.0], [0.0, 0.0]]))  # the two smallest, the others untouched
    assert torch.equal(w, torch.tensor([[0.5, -1.0], [1.5, 0.6]]))  # the input is not modified


def test_obs_prune_rejects_bad_input():
    h, w = _quadratic(4, 1)
    with pytest.raises(ValueError, match=r"\[4, 4\]"):
        pruners.obs_prune(w, h[:3, :3], 0.5)
    with pytest.raises(ValueError, match="sparsity"):
        pruners.obs_prune(w, h, 1.5)
    with pytest.raises(ValueError, match="damp"):
        pruners.obs_prune(w, h, 0.5, damp=-1)
    with pytest.raises(TypeError, match="floating-point"):
        pruners.obs_prune(torch.arange(4), h, 0.5)
    with pytest.raises(ValueError, match="singular"):
        pruners.obs_prune(w, torch.zeros(4, 4), 0.5, damp=0.0)


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
