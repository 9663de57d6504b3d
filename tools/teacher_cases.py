"""Teacher-only cases for the exercises, one function per check: ``teacher_<check>`` takes what the check cell
passes to ``checks.check_<check>`` and asserts on cases that are in neither the notebooks nor the installed package.

Build tooling, not installed with the package: ``tools/nbgrader_course.py`` copies each function, with the call,
into the hidden-tests region (``### BEGIN HIDDEN TESTS``) of its check cell in the nbgrader source notebooks. nbgrader
removes that region from what students receive and puts it back when it autogrades, so a student who reads the
installed package (its public cases) still meets cases they have not seen.

Each function is self-contained (it imports what it uses), so that it runs pasted into a notebook cell; it passes the
reference answers and fails known-wrong ones (``tests/test_nbgrader.py``). Exercises whose answer is read off the
learner's own measurement (``checks.check_answer``) have no teacher-only case: their check already compares the answer
with that measurement.
"""

# ---- chapter 00 ---------------------------------------------------------------------------------------------


def teacher_sparse_storage_bits(sparse_storage_bits):
    import torch
    from torch import nn

    torch.manual_seed(7)
    model = nn.Sequential(nn.Conv1d(3, 5, 2), nn.BatchNorm1d(5), nn.Flatten(), nn.Linear(20, 4))
    with torch.no_grad():
        model[0].weight[:, :2] = 0          # 20 of 30 conv weights are zero
        model[3].weight[1::2] = 0           # half the rows of the linear layer
        model[1].running_mean.zero_()       # zero buffers must not change the answer (parameters only)
    nonzero = sum(int(p.count_nonzero()) for p in model.parameters())
    for data_width, index_width in ((8, 16), (32, 32), (16, 4)):
        got = sparse_storage_bits(model, data_width, index_width)
        want = nonzero * (data_width + index_width)
        assert got == want, f"sparse_storage_bits(model, {data_width}, {index_width}) should be {want}, got {got}"
    print("teacher-only cases of sparse_storage_bits: 3 passed")


def teacher_per_image_ms(per_image_ms):
    from deeplsp_helpers.checks._harness import _Busy  # a stand-in model that busy-waits a known time

    busy = _Busy(0.004)  # a forward pass that takes 4 ms whatever the batch size
    got = per_image_ms(busy, (8, 2))
    assert isinstance(got, dict) and set(got) == {8, 2}, f"per_image_ms(model, (8, 2)) should map 8 and 2 to ms, got {got!r}"
    for bs in (8, 2):
        want = 4.0 / bs
        assert abs(float(got[bs]) - want) < 0.4 * want, \
            f"a 4 ms forward pass at batch size {bs} is {want:.2f} ms per image, got {got[bs]}"
    print("teacher-only cases of per_image_ms: 2 passed")


def teacher_macs_per_second(macs_per_second):
    import time

    import torch
    from torch import nn

    class LinearThatWaits(nn.Module):  # 30 * 20 = 600 MACs per sample, 3 ms per forward pass whatever the batch
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(30, 20)

        def forward(self, x):
            end = time.perf_counter() + 0.003
            y = self.fc(x)
            while time.perf_counter() < end:
                pass
            return y

    from deeplsp_helpers import latency

    model, X = LinearThatWaits(), torch.randn(10, 30)
    got = macs_per_second(model, X)
    slowest = max(0.003, latency.measure_latency(model, X, warmup=1, repeats=5, threads=1).median_ms / 1000)
    low, high = 10 * 600 / (2 * slowest), 1.5 * 10 * 600 / 0.003  # at least 3 ms per pass, more if the machine is busy
    assert low < float(got) < high, f"10 samples of 600 MACs in 3 ms: about {10 * 600 / 0.003:,.0f} MACs per second, got {got}"
    print("teacher-only cases of macs_per_second: 1 passed")

def teacher_pick_on_validation(pick_on_validation):
    from types import SimpleNamespace

    import torch
    from torch import nn

    class Constant(nn.Module):
        def __init__(self, label):
            super().__init__()
            self.label = label
            self.dummy = nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return nn.functional.one_hot(torch.full((x.shape[0],), self.label), 4).float()

    def split(labels):
        return [(torch.randn(len(labels), 6), torch.tensor(labels))]

    models = {"wide": Constant(3), "deep": Constant(2), "small": Constant(0)}
    loaders = SimpleNamespace(train=split([0, 0, 0, 0, 3]), val=split([3, 2, 2, 0, 2, 2]), test=split([3, 3, 3, 3, 3]))
    got = pick_on_validation(models, loaders)
    assert got == "deep", f"validation labels favour 'deep' (the test split favours 'wide'), got {got!r}"
    print("teacher-only cases of pick_on_validation: 1 passed")


# ---- chapter 01 ---------------------------------------------------------------------------------------------


def teacher_row_nm_ok(row_nm_ok):
    import torch

    def truth(mask, n, m):
        rows, cols = mask.shape
        padded = torch.nn.functional.pad(mask.float(), (0, (-cols) % m))
        return bool((padded.reshape(rows, -1, m).sum(-1) <= n).all())

    ok = torch.tensor([[1, 0, 0, 1, 0, 1, 1, 0, 1, 0], [0, 0, 1, 1, 1, 0, 0, 1, 0, 1], [1, 1, 0, 0, 0, 0, 1, 1, 0, 0.]])
    tail = ok.clone()
    tail[1, 8:] = 1                                           # the last, partial group of 2 holds 2 ones: fine at 2:4
    cases = [(ok, 2, 4), (tail, 2, 4), (tail, 1, 4), (ok.bool(), 3, 5), (ok[:, :3], 1, 4), (ok.T.contiguous(), 2, 3)]
    for mask, n, m in cases:
        got, want = row_nm_ok(mask, n, m), truth(mask, n, m)
        assert type(got) is bool and got == want, \
            f"row_nm_ok on a {tuple(mask.shape)} mask, {n}:{m}: should be {want}, got {got!r}"
    print(f"teacher-only cases of row_nm_ok: {len(cases)} passed")


def teacher_csr_break_even(csr_bits, csr_break_even):
    import math

    import torch

    w = torch.zeros(5, 7)
    w[0, 1], w[2, 6], w[2, 0], w[4, 3] = 1.0, -2.0, 0.5, 3.0
    want = 32 * (2 * 4 + 5 + 1)                               # values and column indices of 4 non-zeros, 6 row pointers
    got = csr_bits(w)
    assert float(got) == want, f"csr_bits of a 5x7 tensor with 4 non-zeros should be {want}, got {got}"
    for rows, cols in ((5, 7), (6, 3), (1, 9)):
        zeros = (rows * cols + rows + 1) // 2 + 1            # 32·(2·non-zeros + rows + 1) < 32·rows·cols
        want = zeros / (rows * cols)
        got = csr_break_even(rows, cols)
        assert math.isclose(float(got), want, rel_tol=1e-6), f"csr_break_even({rows}, {cols}) should be {want:.6f}, got {got}"
    print("teacher-only cases of csr_bits and csr_break_even: 4 passed")


def teacher_fine_grained_mask(fine_grained_mask):
    import torch

    torch.manual_seed(11)
    w = torch.randn(2, 3, 5)
    w[0, 0, :3] = torch.tensor([0.2, -0.2, 0.2])              # ties with opposite signs
    v = torch.tensor([-3.0, 0.5, 0.1, -0.1, 2.0, 0.0, 0.7])
    for tensor, sparsity in ((w, 0.3), (w, 0.0), (v, 0.75), (v, 0.5)):
        before = tensor.clone()
        mask = fine_grained_mask(tensor, sparsity)
        assert torch.equal(tensor, before), "fine_grained_mask must leave w unchanged"
        assert isinstance(mask, torch.Tensor) and mask.shape == tensor.shape, \
            f"the mask must have w's shape {tuple(tensor.shape)}"
        assert mask.dtype == torch.bool or bool(((mask == 0) | (mask == 1)).all()), "the mask must hold only 0 and 1"
        pruned = mask == 0
        want = round(sparsity * tensor.numel())
        assert int(pruned.sum()) == want, \
            f"sparsity {sparsity} of {tensor.numel()} entries must zero {want}, zeroed {int(pruned.sum())}"
        if 0 < want < tensor.numel():
            assert tensor.abs()[pruned].max() <= tensor.abs()[~pruned].min(), "the zeroed entries must have the smallest |w|"
    print("teacher-only cases of fine_grained_mask: 4 passed")


# ---- chapter 02 ---------------------------------------------------------------------------------------------


def teacher_taylor_one_layer(taylor_one_layer):
    import copy
    from collections import OrderedDict

    import torch
    from torch import nn

    torch.manual_seed(5)
    model = nn.Sequential(OrderedDict(inp=nn.Linear(6, 8), norm=nn.BatchNorm1d(8), act=nn.ReLU(), drop=nn.Dropout(0.3),
                                      out=nn.Linear(8, 4)))
    model.train()(torch.randn(32, 6))                          # running statistics that differ from a batch's own
    batches = [(torch.randn(n, 6), torch.randint(0, 4, (n,))) for n in (3, 9)]
    reference = copy.deepcopy(model).eval()
    w = reference.inp.weight
    want = torch.zeros_like(w)
    for X, y in batches:
        (g,) = torch.autograd.grad(nn.functional.cross_entropy(reference(X), y), [w])
        want += (w * g).abs().detach()
    want /= len(batches)
    got = taylor_one_layer(model, "inp", batches)
    assert isinstance(got, torch.Tensor) and got.shape == w.shape, f"the scores must have the weight's shape {tuple(w.shape)}"
    assert torch.allclose(got.detach().float(), want, rtol=1e-4, atol=1e-7), \
        "mean over the batches of |w · dL/dw|, with the model in eval mode (BatchNorm's running statistics, no dropout)"
    print("teacher-only cases of taylor_one_layer: 1 passed")


def teacher_obs_step(obs_step):
    import torch

    # three coupled weights, H known in closed form: removing w_1 = 1 with H^-1 below costs 1 / (2 * 0.5) = 1
    h_inv = torch.tensor([[1.0, 0.25, 0.0], [0.25, 0.5, 0.25], [0.0, 0.25, 1.0]], dtype=torch.float64)
    w = torch.tensor([2.0, 1.0, -1.0], dtype=torch.float64)
    got_increase, got_w = obs_step(w.clone(), h_inv.clone(), 1)
    got_increase = float(got_increase)
    assert abs(got_increase - 1.0) < 1e-4, f"removing w_1 should cost w_1^2 / (2 [H^-1]_11) = 1.0, got {got_increase}"
    want_w = torch.tensor([1.5, 0.0, -1.5], dtype=torch.float64)  # w - (w_1 / 0.5) * column 1 of H^-1
    assert torch.allclose(torch.as_tensor(got_w).double(), want_w, atol=1e-4), f"new_w should be {want_w.tolist()}, got {got_w}"
    print("teacher-only cases of obs_step: 1 passed")


def teacher_global_masks(global_masks):
    import torch

    torch.manual_seed(4)
    scores = {"conv": torch.rand(3, 2, 2) + 1.0, "fc": torch.rand(5, 4), "head": torch.rand(6) * 0.1}
    flat = torch.cat([s.flatten() for s in scores.values()])
    for sparsity in (0.4, 0.15):
        keep = torch.ones(flat.numel())
        keep[flat.argsort()[:round(sparsity * flat.numel())]] = 0
        got, start = global_masks(scores, sparsity), 0
        assert set(got) == set(scores), f"one mask per layer {sorted(scores)}, got {sorted(got)}"
        for name, s in scores.items():
            want = keep[start:start + s.numel()].reshape(s.shape)
            start += s.numel()
            mask = got[name]
            assert isinstance(mask, torch.Tensor) and mask.is_floating_point(), f"{name}: a float 0/1 mask"
            assert torch.equal(mask.float(), want), f"{name} at global sparsity {sparsity}: one threshold over all layers"
    print("teacher-only cases of global_masks: 2 passed")


# ---- chapter 03 ---------------------------------------------------------------------------------------------


def teacher_iterative_steps(iterative_steps):
    import math

    for final, n in ((0.9, 3), (0.5, 1), (0.99, 5)):
        r = 1 - (1 - final) ** (1 / n)
        want = [1 - (1 - r) ** k for k in range(1, n + 1)]
        got = iterative_steps(final, n)
        assert isinstance(got, list) and len(got) == n, f"iterative_steps({final}, {n}) should be a list of {n} sparsities"
        assert all(math.isclose(float(g), w, abs_tol=1e-6) for g, w in zip(got, want)), \
            f"iterative_steps({final}, {n}) should be {[round(x, 6) for x in want]}, got {got}"
    print("teacher-only cases of iterative_steps: 3 passed")


def teacher_keep_zero(keep_zero):
    from collections import OrderedDict

    import torch
    from torch import nn

    torch.manual_seed(8)
    model = nn.Sequential(OrderedDict(first=nn.Linear(5, 6), act=nn.Tanh(), last=nn.Linear(6, 3)))
    mask = (torch.rand(3, 6) > 0.5).float()
    weight, start = model.last.weight, model.last.weight.detach().clone()
    callback = keep_zero("last", mask)
    callback(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    X, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    for _ in range(4):
        opt.zero_grad()
        nn.functional.cross_entropy(model(X), y).backward()
        opt.step()
        callback(model)
    assert model.last.weight is weight, "keep the layer's weight parameter (the optimizer updates that one)"
    assert bool((model.last.weight[mask == 0] == 0).all()), "pruned weights of 'last' must stay zero after every step"
    assert not torch.equal(model.last.weight[mask == 1], start[mask == 1]), "the kept weights must keep training"
    print("teacher-only cases of keep_zero: 3 passed")


def teacher_one_shot_limit(accuracy_at, one_shot_limit):
    import torch
    from torch import nn

    cases = [({0.9: 70.0, 0.5: 88.0, 0.7: 85.0}, 89.0, 2.0, 0.7), ({0.5: 87.0, 0.8: 86.9}, 89.0, 2.0, 0.8),
             ({0.3: 90.0, 0.6: 88.5}, 89.0, 1.0, None)]
    for accuracies, dense, drop, want in cases:
        got = one_shot_limit(dict(accuracies), dense, drop)
        assert got == want, f"one_shot_limit({accuracies}, {dense}, {drop}) should be {want}, got {got!r}"
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(4, 10), nn.ReLU(), nn.Dropout(0.6), nn.Linear(10, 3)).train()
    X = torch.randn(40, 4)
    with torch.no_grad():
        y = model.eval()(X).argmax(1)
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    got = accuracy_at(model, 0.0, X, y)
    assert abs(float(got) - 100.0) < 1e-6, f"at sparsity 0, in eval mode, the model is right on every sample: 100 %, got {got}"
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items()), "accuracy_at must leave the model unchanged"
    print("teacher-only cases of accuracy_at and one_shot_limit: 4 passed")


def teacher_sparsity_plan(sparsities, task):
    import copy

    import torch
    from torch import nn
    from torch.nn.utils import prune

    # the same plan measured another way: torch.nn.utils.prune's L1 pruning per layer (an independent implementation
    # of magnitude pruning within each layer), on every held-out image
    setting = task()
    plan = sparsities() if callable(sparsities) else sparsities
    model = copy.deepcopy(setting["model"]).eval()
    layers = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    for name, s in plan.items():
        prune.l1_unstructured(layers[name], "weight", amount=float(s))
    nonzero = sum(int(m.weight.count_nonzero()) for m in layers.values())
    assert nonzero <= setting["max_nonzero"], \
        f"the plan leaves {nonzero} non-zero weights, at most {setting['max_nonzero']} allowed"
    with torch.no_grad():
        accuracy = 100.0 * (model(setting["X"]).argmax(1) == setting["y"]).double().mean().item()
    assert accuracy >= setting["floor"], f"the plan reaches {accuracy:.2f} %, below the floor of {setting['floor']} %"
    print("teacher-only cases of sparsity_plan: 2 passed")


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


# ---- chapter 07 ---------------------------------------------------------------------------------------------


def teacher_ort_predict(ort_predict):
    import tempfile
    import warnings
    from pathlib import Path

    import torch
    from torch import nn

    from deeplsp_helpers.deploy import ort_session

    torch.manual_seed(21)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 3 * 3, 7)).eval()
    X = torch.randn(9, 2, 5, 5)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "teacher.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (X[:1],), str(path), input_names=["images"], output_names=["logits"],
                              dynamic_axes={"images": {0: "b"}, "logits": {0: "b"}}, opset_version=17, dynamo=False)
        session = ort_session(path, threads=1)
    want = model(X).argmax(1).tolist()
    got = ort_predict(session, X.transpose(2, 3).contiguous().transpose(2, 3))  # the same values, not contiguous
    labels = got.tolist() if hasattr(got, "tolist") else got
    assert labels == want, f"ort_predict on a conv model with input 'images' should give {want}, got {labels}"
    print("teacher-only cases of ort_predict: 1 passed")


def teacher_pruning_gain_per_runtime(pruning_gain_per_runtime):
    import torch

    from deeplsp_helpers.checks._harness import _Busy  # a stand-in model that busy-waits a known time
    from deeplsp_helpers.latency import Speedup

    calls = {("structured", "int8"): _Busy(0.0005), ("dense", "int8"): _Busy(0.0015),  # structured listed first
             ("structured", "ORT, 2 threads"): _Busy(0.001), ("dense", "ORT, 2 threads"): _Busy(0.0005)}
    got = pruning_gain_per_runtime(calls, torch.zeros(4, 2))
    assert set(got) == {"int8", "ORT, 2 threads"}, f"one key per runtime, got {sorted(map(repr, got))}"
    assert all(isinstance(s, Speedup) for s in got.values()), "each value a latency.Speedup"
    assert abs(got["int8"].median - 3.0) < 1.05, f"1.5 ms against 0.5 ms is about 3x, got {got['int8'].median:.2f}x"
    slower = got["ORT, 2 threads"].median
    assert abs(slower - 0.5) < 0.175, f"0.5 ms against 1 ms is about 0.5x (pruned slower here), got {slower:.2f}x"
    print("teacher-only cases of pruning_gain_per_runtime: 1 passed")


def teacher_masked_layers(masked_layers):
    import torch
    from torch import nn
    from torch.nn.utils import prune

    torch.manual_seed(22)
    model = nn.ModuleDict({"enc": nn.ModuleList([nn.Linear(4, 4), nn.LayerNorm(4)]), "dec": nn.Linear(4, 2)})
    prune.random_unstructured(model["enc"][1], "weight", amount=0.5)   # a LayerNorm inside a ModuleList
    prune.l1_unstructured(model["dec"], "weight", amount=0.5)
    prune.l1_unstructured(model["dec"], "weight", amount=0.5)          # twice: a PruningContainer
    prune.l1_unstructured(model["enc"][0], "bias", amount=0.5)
    prune.remove(model["enc"][0], "bias")                              # made permanent
    got = set(masked_layers(model))
    assert got == {"enc.1", "dec"}, f"masked_layers should be ['dec', 'enc.1'], got {sorted(got)}"
    print("teacher-only cases of masked_layers: 1 passed")


# ---- chapter 08 ---------------------------------------------------------------------------------------------


def teacher_wanda_mask(wanda_mask):
    import torch

    gen = torch.Generator().manual_seed(31)
    w = torch.randn(5, 12, generator=gen)
    norms = torch.rand(12, generator=gen) + 0.5
    norms[[2, 7]] = torch.tensor([0.01, 30.0])               # a silent input and a loud one
    for sparsity in (0.25, 0.75):
        k = round(sparsity * 12)
        scores = w.abs() * norms
        want = torch.ones_like(w).scatter_(1, scores.argsort(dim=1)[:, :k], 0.0)
        got = wanda_mask(w, norms, sparsity)
        assert torch.equal(got.float(), want), f"wanda_mask on a 5x12 weight at sparsity {sparsity}: wrong mask"
    print("teacher-only cases of wanda_mask: 2 passed")


def teacher_nm_mask_rows(nm_mask_rows):
    import torch

    gen = torch.Generator().manual_seed(32)
    for rows, cols, n, m in ((5, 12, 2, 4), (3, 8, 3, 4), (2, 10, 1, 2)):
        scores = torch.rand(rows, cols, generator=gen)
        groups = scores.reshape(rows, -1, m)
        want = torch.zeros_like(groups).scatter_(2, groups.topk(n, dim=2).indices, 1.0).reshape(rows, cols)
        got = nm_mask_rows(scores, n, m)
        assert torch.equal(got.float(), want), f"nm_mask_rows on scores {rows}x{cols}, {n}:{m}: wrong mask"
    print("teacher-only cases of nm_mask_rows: 3 passed")


def teacher_remove_head(remove_head):
    import copy

    import torch

    from deeplsp_helpers.models import SelfAttention

    torch.manual_seed(33)
    attn = SelfAttention(16, 4).eval()
    x = torch.randn(3, 7, 16)
    silenced = copy.deepcopy(attn)
    with torch.no_grad():
        silenced.out_proj.weight[:, 8:12] = 0                  # head 2 of 4 (head_dim 4)
    want = silenced(x)
    remove_head(attn, 2)
    remove_head(attn, 0)                                       # twice: head 0 of the 3 left
    with torch.no_grad():
        silenced.out_proj.weight[:, 0:4] = 0
    assert attn.num_heads == 2 and attn.q_proj.weight.shape == (8, 16), "two heads of 4 should remain"
    assert torch.allclose(attn(x), silenced(x), atol=1e-6), "removing heads 2 then 0 must equal silencing them"
    assert want.shape == attn(x).shape
    print("teacher-only cases of remove_head: 1 passed")


# ---- chapter 09 ---------------------------------------------------------------------------------------------


def teacher_perplexity_from_logits(perplexity_from_logits):
    import math

    import torch

    gen = torch.Generator().manual_seed(41)
    targets = torch.randint(0, 2, (2, 5), generator=gen)      # two tokens; p(target) = 0.8 everywhere: perplexity 1.25
    logits = torch.where(targets[..., None] == torch.arange(2), math.log(0.8), math.log(0.2))
    got = perplexity_from_logits(logits, targets)
    assert abs(float(got) - 1.25) < 1e-4, f"p(target) = 0.8 at every token: perplexity 1 / 0.8 = 1.25, got {got}"
    logits = torch.randn(3, 6, 9, generator=gen) * 3
    logits[1] *= 0.1                                           # one sequence far less sure than the others
    targets = torch.randint(0, 9, (3, 6), generator=gen)
    before = logits.clone()
    want = math.exp(-logits.double().log_softmax(-1).gather(-1, targets[..., None]).mean().item())
    got = perplexity_from_logits(logits, targets)
    assert torch.equal(logits, before), "perplexity_from_logits must not change the logits"
    assert math.isclose(float(got), want, rel_tol=1e-4), f"on logits [3, 6, 9]: should be {want:.6g}, got {got}"
    print("teacher-only cases of perplexity_from_logits: 2 passed")


def teacher_block_influence(block_influence):
    import torch
    from torch.nn import functional as F

    gen = torch.Generator().manual_seed(42)
    x_in = torch.randn(2, 3, 4, generator=gen)
    x_out = torch.stack([x_in[0], -5 * x_in[1]])               # sequence 0 unchanged (cos 1), 1 reversed (cos -1)
    got = block_influence(x_in, x_out)
    assert abs(float(got) - 1.0) < 1e-4, f"half the tokens unchanged, half reversed: 1 − (1 − 1) / 2 = 1, got {got}"
    x_in, x_out = torch.randn(3, 5, 7, generator=gen), torch.randn(3, 5, 7, generator=gen)
    x_out[:, :2] = x_in[:, :2] * 0.5 + 0.1 * x_out[:, :2]      # the first two tokens barely turned
    want = 1 - F.cosine_similarity(x_in.double(), x_out.double(), dim=-1).mean().item()
    before = x_in.clone(), x_out.clone()
    got = block_influence(x_in, x_out)
    assert torch.equal(x_in, before[0]) and torch.equal(x_out, before[1]), "block_influence must not change its inputs"
    assert abs(float(got) - want) < 1e-4, f"on x_in, x_out [3, 5, 7]: should be {want:.6g}, got {got}"
    print("teacher-only cases of block_influence: 2 passed")


def teacher_decode_step(decode_step):
    import torch

    gen = torch.Generator().manual_seed(43)
    h, d, steps = 4, 2, 5                                      # more heads than features per head
    q, k, v = (torch.randn(h, steps, d, generator=gen) * 2 for _ in range(3))
    causal = torch.ones(steps, steps).tril().bool()
    scores = (q @ k.transpose(-2, -1) / d ** 0.5).masked_fill(~causal, float("-inf"))
    want = scores.softmax(-1) @ v                              # causal attention over the whole sequence
    inputs = q.clone(), k.clone(), v.clone()
    k_cache, v_cache = torch.zeros(h, 0, d), torch.zeros(h, 0, d)
    for i in range(steps):
        before = k_cache.clone(), v_cache.clone()
        out, k2, v2 = decode_step(q[:, i:i + 1], k[:, i:i + 1], v[:, i:i + 1], k_cache, v_cache)
        assert torch.equal(k_cache, before[0]) and torch.equal(v_cache, before[1]), "decode_step changed the caches"
        assert k2.shape == v2.shape == (h, i + 1, d), f"step {i}: the caches should be [{h}, {i + 1}, {d}], got " \
                                                      f"{list(k2.shape)} and {list(v2.shape)}"
        assert torch.equal(k2, k[:, :i + 1]) and torch.equal(v2, v[:, :i + 1]), f"step {i}: wrong caches"
        assert torch.allclose(out.float(), want[:, i:i + 1], atol=1e-5), f"step {i} of {steps}: out differs from " \
                                                                         f"causal attention at position {i}"
        k_cache, v_cache = k2, v2
    assert all(torch.equal(a, b) for a, b in zip((q, k, v), inputs)), "decode_step must not change q, k_new, v_new"
    print(f"teacher-only cases of decode_step: {steps} passed")
