"""Teacher-only cases of chapters 04-06 (torch.nn.utils.prune, structured pruning, DeepLSP): one ``teacher_<check>`` per check.

Part of ``tools/teacher_cases.py``, which gathers the cases of every chapter and says how they are used.
"""

# ---- chapter 04 ---------------------------------------------------------------------------------------------


def teacher_compound_sparsity(sparsity_after, compound_sparsity):
    import copy

    import torch
    from torch import nn
    from torch.nn.utils import prune

    torch.manual_seed(6)
    layer = nn.Conv1d(4, 10, 5)                               # 200 weights, 60 of them exactly zero
    with torch.no_grad():
        layer.weight.view(-1)[torch.randperm(200)[:60]] = 0
    for amounts in ([0.1, 0.1], [0.2, 0.25], [0.5]):
        probe = copy.deepcopy(layer)
        for a in amounts:
            prune.l1_unstructured(probe, "weight", amount=a)
        want = float((probe.weight == 0).double().mean())
        got = sparsity_after(layer, amounts)
        assert abs(float(got) - want) < 1e-6, \
            f"sparsity_after on a Conv1d with 30 % zeros, amounts {amounts}: should be {want}, got {got}"
        assert not prune.is_pruned(layer), "sparsity_after must prune a copy, not the layer"
        predicted = compound_sparsity(0.3, amounts)
        assert abs(float(predicted) - want) <= (len(amounts) + 0.5) / 200, \
            f"compound_sparsity(0.3, {amounts}) should predict {want}, got {predicted}"
    print("teacher-only cases of sparsity_after and compound_sparsity: 6 passed")


def teacher_threshold_pruning(method):
    import torch
    from torch import nn
    from torch.nn.utils import prune

    conv = nn.Conv1d(1, 2, 4)
    w = torch.tensor([[[0.25, -0.25, 0.24, -0.9]], [[0.0, 0.3, -0.1, 0.26]]])
    with torch.no_grad():
        conv.weight.copy_(w)
    torch.manual_seed(1)
    prune.random_unstructured(conv, "weight", amount=0.25)    # an earlier pruning of the same tensor
    earlier = conv.weight_mask.clone()
    method.apply(conv, "weight", threshold=0.25)
    want = (w.abs() >= 0.25) & (earlier == 1)
    assert torch.equal(conv.weight != 0, want), \
        f"threshold 0.25 after a random pruning must keep {want.int().tolist()}, kept {(conv.weight != 0).int().tolist()}"
    emb = nn.Embedding(3, 2)
    with torch.no_grad():
        emb.weight.copy_(torch.tensor([[0.5, -0.01], [-0.02, 0.02], [0.02, 1.0]]))
    method.apply(emb, "weight", threshold=0.02)              # any module, ties at the threshold stay
    assert torch.equal(emb.weight != 0, torch.tensor([[True, False], [True, True], [True, True]])), \
        f"an Embedding at threshold 0.02 kept {(emb.weight != 0).int().tolist()}"
    print("teacher-only cases of ThresholdPruning: 2 passed")


def teacher_strip_pruning(strip_pruning):
    import torch
    from torch import nn
    from torch.nn.utils import prune

    torch.manual_seed(12)
    model = nn.Sequential(nn.Conv1d(2, 3, 3), nn.Flatten(),
                          nn.ModuleList([nn.Sequential(nn.Linear(9, 5), nn.LayerNorm(5))])).eval()
    inner = model[2][0]
    prune.global_unstructured([(model[0], "weight"), (inner[0], "weight")], prune.L1Unstructured, amount=0.5)
    prune.l1_unstructured(inner[1], "weight", amount=0.4)    # a LayerNorm, deep inside a ModuleList
    x = torch.randn(4, 2, 5)

    def run(m):
        return m[2][0](m[1](m[0](x)))

    want = run(model).detach()
    got = strip_pruning(model)
    assert got is model, "strip_pruning must return the model it changed in place"
    left = [n for n, _ in model.named_buffers() if n.endswith("_mask")] + \
           [n for n, _ in model.named_parameters() if n.endswith("_orig")]
    assert not left, f"after strip_pruning these remain: {left}"
    assert torch.allclose(run(model), want, atol=1e-6), "the stripped model must compute what the pruned one did"
    assert {n for n, _ in model.named_parameters()} == {"0.weight", "0.bias", "2.0.0.weight", "2.0.0.bias",
                                                        "2.0.1.weight", "2.0.1.bias"}, "every weight a parameter again"
    print("teacher-only cases of strip_pruning: 1 passed")


# ---- chapter 05 ---------------------------------------------------------------------------------------------


def teacher_coupled_layers(coupled_layers):
    import torch
    from torch import nn

    class Net(nn.Module):  # conv -> bn -> conv -> bn -> pool -> flatten -> linear
        def __init__(self):
            super().__init__()
            self.c1, self.b1 = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
            self.c2, self.b2 = nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6)
            self.fc = nn.Linear(6 * 2 * 2, 5)

        def forward(self, x):
            x = torch.relu(self.b1(self.c1(x)))
            x = nn.functional.max_pool2d(torch.relu(self.b2(self.c2(x))), 2)
            return self.fc(x.flatten(1))

    x = torch.randn(1, 1, 4, 4)
    for layer, want in (("c1", {"c1", "b1", "c2"}), ("c2", {"c2", "b2", "fc"})):
        got = coupled_layers(Net(), x, layer)
        assert set(got) == want, f"coupled_layers(net, x, {layer!r}) should be {sorted(want)}, got {sorted(got)}"
    print("teacher-only cases of coupled_layers: 2 passed")


def teacher_keep_inputs(keep_inputs):
    import torch
    from torch import nn

    torch.manual_seed(13)
    fc = nn.Linear(9, 2)
    keep = torch.tensor([8, 0, 4, 6])
    new = keep_inputs(fc, keep)
    assert isinstance(new, nn.Linear) and (new.in_features, new.out_features) == (4, 2), "a Linear(4, 2)"
    assert torch.equal(new.weight, fc.weight[:, keep]) and torch.equal(new.bias, fc.bias), \
        "the weight's columns in the order of keep, and the same bias"
    assert new.weight.data_ptr() != fc.weight.data_ptr() and new.weight.requires_grad, "a new, trainable copy"
    print("teacher-only cases of keep_inputs: 1 passed")


def teacher_speedup_at(speedup_at):
    import torch

    from deeplsp_helpers.checks._harness import _Busy  # a stand-in model that busy-waits a known time
    from deeplsp_helpers.latency import Speedup

    got = speedup_at(_Busy(0.003), _Busy(0.001), torch.zeros(3, 2))
    assert isinstance(got, Speedup), f"a latency.Speedup, got {type(got).__name__}"
    assert abs(got.median - 3.0) < 0.75, f"a 3 ms model against a 1 ms one is about 3x, got {got.median:.2f}x"
    print("teacher-only cases of speedup_at: 1 passed")


# ---- chapter 06 ---------------------------------------------------------------------------------------------


def teacher_is_dead(is_dead):
    import torch
    from torch import nn

    conv, bn = nn.Conv2d(4, 4, 3, groups=2, bias=False), nn.BatchNorm2d(4).eval()
    with torch.no_grad():
        conv.weight[1:].zero_()                               # channels 1, 2, 3 have zero filters; no bias at all
        bn.running_mean.copy_(torch.tensor([0.0, 0.5, 0.0, 0.0]))
        bn.weight.copy_(torch.tensor([1.0, 0.0, 2.0, 1.0]))   # channel 1: γ = 0, so its running mean does not matter
        bn.bias.copy_(torch.tensor([0.0, 0.0, 0.0, -0.1]))    # channel 3: a constant -0.1, not zero
    for c, want in ((0, False), (1, True), (2, True), (3, False)):
        got = is_dead(conv, bn, c)
        assert type(got) is bool and got == want, f"channel {c} of a grouped conv without bias: should be {want}, got {got!r}"
    print("teacher-only cases of is_dead: 4 passed")


def teacher_global_sparsity(global_sparsity):
    ratios, sizes = {"b": 0.5, "a": 0.9}, {"a": 100, "b": 300, "c": 1000}
    got = global_sparsity(ratios, sizes)
    assert abs(float(got) - 0.6) < 1e-6, f"(0.9·100 + 0.5·300) / 400 = 0.6, got {got}"
    print("teacher-only cases of global_sparsity: 1 passed")


def teacher_speedup(speedup):
    import torch

    from deeplsp_helpers.checks._harness import _Busy  # a stand-in model that busy-waits a known time

    got = speedup(_Busy(0.002), _Busy(0.004), torch.zeros(2, 3))
    assert abs(float(got) - 0.5) < 0.125, f"a candidate twice as slow as the baseline is 0.5x, got {got}"
    print("teacher-only cases of speedup: 1 passed")
