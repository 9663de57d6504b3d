"""Teacher-only cases of chapters 07-09 (deployment, transformers, language models): one ``teacher_<check>`` per check.

Part of ``tools/teacher_cases.py``, which gathers the cases of every chapter and says how they are used.
"""

# ---- chapter 07 ---------------------------------------------------------------------------------------------


def teacher_ort_predict(ort_predict):
    import tempfile
    from pathlib import Path

    import torch
    from torch import nn

    from deeplsp_helpers.deploy import export_onnx, ort_session

    torch.manual_seed(21)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 3 * 3, 7)).eval()
    X = torch.randn(9, 2, 5, 5)
    with tempfile.TemporaryDirectory() as tmp:  # an input named "images", not export_onnx's default "input"
        path = export_onnx(model, X[:1], Path(tmp) / "teacher.onnx", input_name="images", output_name="logits")
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
