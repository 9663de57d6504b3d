import copy
import itertools
import math
import random

import pytest
import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from deeplsp_helpers import halp, models, speedup
from deeplsp_helpers.latency_model import FORMAT, LatencyTable, _grid, _input_shapes, _signature, layer_widths

X = torch.randn(2, 1, 28, 28)


def _small_vgg():
    torch.manual_seed(0)
    return models.VGG(cfg=(16, "M", 32, "M", 32)).eval()


def _batches(n=2, size=4, shape=(1, 28, 28), classes=10):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(size, *shape, generator=g), torch.randint(0, classes, (size,), generator=g)) for _ in range(n)]


def _synthetic_table(model, x, round_to=8):
    """A table built without timing anything: every width on the grid, latency a known function of the widths
    (MACs, as tests/test_latency_model.py's ``_synthetic``), so tests are deterministic and cheap."""
    movable, shapes, widths = speedup.prunable_dims(model, x), _input_shapes(model, x), layer_widths(model)
    layers = {}
    for name, m in model.named_modules():
        if not isinstance(m, (nn.Conv2d, nn.Linear)):
            continue
        cin, cout = widths[name]
        cin_grid = _grid(cin, f"{name}.in" not in movable, round_to, cin // round_to + 2)
        cout_grid = _grid(cout, f"{name}.out" not in movable, round_to, cout // round_to + 2)
        pos = math.prod(shapes[name][1][2:]) if len(shapes[name][1]) > 2 else 1
        layers[name] = {"kind": type(m).__name__, "depthwise": False, "dense": [cin, cout], "cin_grid": cin_grid,
                        "cout_grid": cout_grid, "out_positions": pos, "signature": _signature(m),
                        "ms": [[0.01 + 1e-6 * ci * co * pos for co in cout_grid] for ci in cin_grid]}
    meta = {"format": FORMAT, "batch_size": int(x.shape[0]), "threads": 1, "round_to": round_to,
            "torch": torch.__version__, "machine": "synthetic", "input_shape": list(x.shape[1:])}
    return LatencyTable(meta, layers, [[0.1, 0.06], [1.0, 0.15]])


@pytest.fixture(scope="module")
def table():
    return _synthetic_table(_small_vgg(), X)


# -- Taylor importance --------------------------------------------------------------------------------------------
class TwoBranch(nn.Module):
    """Two conv-BN branches added together: their output channels form one coupled group with two BNs."""

    def __init__(self):
        super().__init__()
        self.a, self.bn_a = nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.b, self.bn_b = nn.Conv2d(2, 4, 1), nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 3)
        for bn in (self.bn_a, self.bn_b):
            nn.init.normal_(bn.weight)
            nn.init.normal_(bn.bias)

    def forward(self, x):
        h = F.relu(self.bn_a(self.a(x)) + self.bn_b(self.b(x)))
        return self.head(h.mean((2, 3)))


def test_taylor_group_importance_matches_a_hand_computation():
    torch.manual_seed(0)
    model = TwoBranch().eval()
    batches = _batches(3, 5, (2, 6, 6), 3)
    by_hand = copy.deepcopy(model).train()
    bns = (by_hand.bn_a, by_hand.bn_b)
    per_batch = []
    for x, y in batches:
        params = [p for bn in bns for p in (bn.weight, bn.bias)]
        grads = torch.autograd.grad(F.cross_entropy(by_hand(x), y), params)
        terms = [p.detach() * g for p, g in zip(params, grads)]  # gamma*dL/dgamma, beta*dL/dbeta, for both BNs
        per_batch.append(sum(terms))  # summed over the group's BNs
    expected = torch.stack(per_batch).abs().mean(0)  # then |.| per batch, then the mean over batches (HALP's order)

    before = {k: v.clone() for k, v in model.state_dict().items()}
    imp = halp.TaylorBNImportance(model, batches)
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=batches[0][0][:1])
    group = dg.get_pruning_group(model.a, tp.prune_conv_out_channels, idxs=list(range(4)))
    assert torch.allclose(imp(group), expected, rtol=1e-5, atol=1e-8)
    raw = halp.taylor_bn_importance(model, batches)  # signed terms, one row per batch
    assert raw["bn_a"].shape == (3, 4) and raw["a"].shape == (3, 4)
    assert torch.allclose(raw["bn_a"] + raw["bn_b"], torch.stack(per_batch), rtol=1e-5, atol=1e-8)
    per_bn_abs = (raw["bn_a"].abs() + raw["bn_b"].abs()).mean(0)  # |.| taken per BN: not HALP's order
    assert expected.abs().sum() > 0 and not torch.allclose(imp(group), per_bn_abs)
    # weights, BN running statistics, mode and gradients are as they were
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.training and all(p.grad is None for p in model.parameters())


def test_taylor_importance_plugs_into_plan_to_speedup(table):
    model = _small_vgg()
    plan = speedup.plan_to_speedup(model, X, 1.3, table, importance=halp.TaylorBNImportance(model, _batches()))
    assert plan["predicted_speedup"] >= 1.3


# -- knapsack -----------------------------------------------------------------------------------------------------
def _instance(rng):
    groups = rng.choice([3, 4])
    sizes = [rng.choice([8, 12, 16, 20, 24, 28, 32]) for _ in range(groups)]
    scores = [[rng.random() ** 2 for _ in range(n)] for n in sizes]
    coef = [(rng.uniform(0.5, 2.0), rng.uniform(0.0, 1.0)) for _ in range(groups)]

    def term(g, kp, k):  # layer g: its input width is group g-1's (3 image channels for the first)
        a, b = coef[g]
        return 0.05 + 1e-3 * (a * (3 if kp is None else kp) * k + b * k)

    def latency(keeps):
        return sum(term(g, keeps[g - 1] if g else None, k) for g, k in enumerate(keeps))

    return scores, sizes, term, latency


def _kept(scores, keeps):
    return sum(sum(sorted(s, reverse=True)[:k]) for s, k in zip(scores, keeps))


def test_greedy_knapsack_is_close_to_the_exact_optimum():
    rng, chunk, bins = random.Random(0), 4, 4000
    ratios, lost_ratios = [], []
    for _ in range(60):
        scores, sizes, term, latency = _instance(rng)
        lowest = [chunk] * len(sizes)
        budget = rng.uniform(0.35, 0.8) * latency(tuple(sizes))
        if latency(tuple(lowest)) > budget:
            continue
        exact = halp.knapsack_exact(scores, term, budget, chunk=chunk, lowest=lowest, bins=bins)
        greedy = halp.knapsack_greedy(scores, latency, budget, chunk=chunk, lowest=lowest)
        assert latency(exact) <= budget and latency(greedy) <= budget
        # the DP is exact up to its discretisation: compare with brute force over every choice
        choices = [range(n, chunk - 1, -chunk) for n in sizes]
        feasible = [(latency(ks), _kept(scores, ks)) for ks in itertools.product(*choices)]
        slack = len(sizes) * budget / bins
        assert _kept(scores, exact) <= max(v for ms, v in feasible if ms <= budget) + 1e-9
        assert _kept(scores, exact) >= max(v for ms, v in feasible if ms <= budget - slack) - 1e-9
        ratios.append(_kept(scores, greedy) / _kept(scores, exact))
        total = sum(map(sum, scores))
        lost_ratios.append((total - _kept(scores, greedy)) / (total - _kept(scores, exact)))
    assert len(ratios) >= 40
    print(f"\ngreedy/exact kept importance over {len(ratios)} instances: min {min(ratios):.4f}, mean "
          f"{sum(ratios) / len(ratios):.4f}; greedy/exact importance removed: max {max(lost_ratios):.3f}, "
          f"mean {sum(lost_ratios) / len(lost_ratios):.3f}")
    assert min(ratios) >= 0.9


def test_knapsack_bad_inputs():
    with pytest.raises(ValueError, match="budget"):
        halp.knapsack_greedy([[1.0, 2.0]], lambda ks: 1.0, 0)
    with pytest.raises(ValueError, match="chunk"):
        halp.knapsack_greedy([[1.0, 2.0]], lambda ks: 1.0, 1.0, chunk=0)
    with pytest.raises(ValueError, match="lowest"):
        halp.knapsack_exact([[1.0, 2.0]], lambda g, kp, k: 1.0, 1.0, lowest=[3])
    with pytest.raises(ValueError, match="no choice"):
        halp.knapsack_exact([[1.0, 2.0]], lambda g, kp, k: 5.0, 1.0)


# -- the progressive schedule -------------------------------------------------------------------------------------
def test_halp_meets_the_request_in_steps_and_keeps_the_first_conv(table):
    model, calls = _small_vgg(), []
    report = halp.halp_prune(model, X, 1.5, table, _batches(), steps=3, fine_tune=lambda m, s: calls.append(s))
    assert calls == [1, 2, 3]
    assert report["reached"] and report["predicted_speedup"] >= 1.5 * (1 - 1e-9)
    assert [s["target_speedup"] for s in report["steps"]] == pytest.approx([1.5 ** (1 / 3), 1.5 ** (2 / 3), 1.5])
    assert all(s["predicted_ms"] <= s["target_ms"] * (1 + 1e-9) for s in report["steps"])
    assert [s["predicted_ms"] for s in report["steps"]] == sorted((s["predicted_ms"] for s in report["steps"]),
                                                                  reverse=True)
    widths = layer_widths(model)
    assert widths["features.0.0"] == (1, 16) and widths == report["widths"]
    assert table.predict(model) == pytest.approx(report["predicted_ms"])
    assert model(X).shape == (2, 10)


def test_progressive_fine_tune_spends_exactly_one_fine_tune_of_budget_across_the_steps(table, monkeypatch):
    from deeplsp_helpers import data, train

    g = torch.Generator().manual_seed(2)
    ft = data.ImageTensorDataset(torch.randn(200, 1, 28, 28, generator=g), torch.randint(0, 10, (200,), generator=g))
    segments, optimizer_steps = [], []
    fine_tune = halp.progressive_fine_tune(ft, 4, num_epochs=2, lr=0.01, batch_size=32, prune_fraction=0.5,
                                           after_step=lambda m, k, done, total: segments.append((k, done, total)))
    model, real = _small_vgg(), train.fine_tune

    def counting(model, loader, **kw):
        optimizer_steps.append((kw["start_step"], kw["stop_step"]))
        return real(model, loader, **kw)

    monkeypatch.setattr(train, "fine_tune", counting)
    report = halp.halp_prune(model, X, 1.5, table, _batches(), steps=4, fine_tune=fine_tune)
    total = 2 * 7  # 2 epochs of ceil(200 / 32) batches: what train.fine_tune(num_epochs=2) would take
    # steps at 0, 1/8, 2/8, 3/8 of the run (the first half spread over 4 steps), then on to its end
    assert optimizer_steps == [(0, 1), (1, 3), (3, 5), (5, 14)]
    assert segments == [(1, 1, total), (2, 3, total), (3, 5, total), (4, 14, total)]
    assert report["reached"] and model(X).shape == (2, 10)
    with pytest.raises(ValueError, match="prune_fraction"):
        halp.progressive_fine_tune(ft, 4, num_epochs=1, lr=0.01, prune_fraction=1.0)
    with pytest.raises(ValueError, match=r"step must be an int in 1\.\.4, got 5"):
        fine_tune(model, 5)


def test_resnet_residual_groups_are_scored_together_and_the_stem_group_is_kept():
    torch.manual_seed(0)
    model = models.ResNet(widths=(16, 16, 32)).eval()
    report = halp.halp_prune(model, X, 1.3, _synthetic_table(model, X), _batches(), steps=2)
    widths = layer_widths(model)
    assert report["reached"] and widths["stem.0"] == (1, 16)
    assert widths["layers.0.conv2"][1] == 16  # added to the stem's output by the identity shortcut: same group
    assert model(X).shape == (2, 10)


def test_an_unreachable_request_fails_before_any_work(table):
    model = _small_vgg()
    top = speedup.reachable_speedup(model, X, table, ignored_layers=[model.classifier, model.features[0][0]])

    def never(m, s):
        raise AssertionError("fine_tune called")

    with pytest.raises(ValueError, match=f"at most {top:.2f}x"):
        halp.halp_prune(model, X, top * 1.2, table, _batches(), fine_tune=never)
    assert layer_widths(model) == layer_widths(_small_vgg())


@pytest.mark.parametrize("kwargs, err, match", [
    ({"steps": 0}, ValueError, "steps"),
    ({"target_speedup": 1.0}, ValueError, "target_speedup"),
    ({"calibration_batches": []}, ValueError, "empty"),
    ({"calibration_batches": X}, TypeError, "iterable"),
    ({"calibration_batches": [X]}, TypeError, r"\(X, y\)"),
    ({"fine_tune": "yes"}, TypeError, "fine_tune"),
    ({"table": {"not": "a table"}}, TypeError, "LatencyTable"),
    ({"protect_first_conv": "no"}, TypeError, "protect_first_conv"),
])
def test_bad_inputs_are_refused_clearly(table, kwargs, err, match):
    args = {"target_speedup": 1.3, "table": table, "calibration_batches": _batches(1), **kwargs}
    with pytest.raises(err, match=match):
        halp.halp_prune(_small_vgg(), X, args.pop("target_speedup"), args.pop("table"),
                        args.pop("calibration_batches"), **args)
