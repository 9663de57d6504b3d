"""Teacher-only cases of chapters 00-03 (sizes and sparse storage, masks, criteria, timing): one ``teacher_<check>`` per check.

Part of ``tools/teacher_cases.py``, which gathers the cases of every chapter and says how they are used.
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


def teacher_macs_by_layer(macs_by_layer):
    import torch
    from torch import nn

    class TwoPaths(nn.Module):  # a layer used on two branches of different size, one that never runs, a 1x1 conv
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(2, 6, 5, stride=2, padding=2, bias=False)   # [N,2,12,12] -> [N,6,6,6]
            self.mix = nn.Conv2d(6, 4, 1)                                       # -> [N,4,6,6]
            self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)                   # depthwise
            self.head = nn.Linear(4 * 6 * 6, 3)
            self.spare = nn.Conv2d(4, 4, 3)                                     # never called

        def forward(self, x):
            return self.head(self.dw(self.mix(self.stem(x))).flatten(1))

    torch.manual_seed(3)
    model = TwoPaths()
    with torch.no_grad():
        model.mix.weight.zero_()  # all zero: still 144 output positions x 6 input channels each
    want = {"stem": 6 * 6 * 6 * 2 * 25, "mix": 4 * 6 * 6 * 6, "dw": 4 * 6 * 6 * 9, "head": 3 * 144}
    got = macs_by_layer(model, torch.randn(5, 2, 12, 12))
    assert isinstance(got, dict) and set(got) == set(want), f"layers that run: {sorted(want)}, got {got!r}"
    for name, macs in want.items():
        assert int(got[name]) == macs, f"layer {name} does {macs} MACs per sample, got {got[name]}"
    print("teacher-only cases of macs_by_layer: 4 passed")


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
