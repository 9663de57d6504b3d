"""The exercise checks accept a right answer and reject known-wrong ones, with a message, not a crash."""

import copy
import time

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from deeplsp_helpers import checks, criteria, masks, metrics, pruners, train
from deeplsp_helpers.latency import compare_latency

# ---- right answers ------------------------------------------------------------------------------------------


def row_nm_ok(mask, n, m):
    rows, cols = mask.shape
    padded = nn.functional.pad(mask, (0, (-cols) % m))
    return bool((padded.reshape(rows, -1, m).sum(-1) <= n).all())


def fine_grained_mask(w, sparsity):
    k = round(sparsity * w.numel())
    mask = torch.ones(w.numel())
    mask[w.abs().flatten().argsort()[:k]] = 0
    return mask.reshape(w.shape)


def one_layer(score):
    def fn(model, layer_name, batches):
        model.eval()
        w = model.get_submodule(layer_name).weight
        total = torch.zeros_like(w)
        for X, y in batches:
            (g,) = torch.autograd.grad(nn.functional.cross_entropy(model(X), y), [w])
            total += score(w.detach(), g)
        return total / len(batches)
    return fn


def global_masks(scores, sparsity):
    flat = torch.cat([s.flatten() for s in scores.values()])
    keep = torch.ones(flat.numel())
    keep[flat.argsort()[:round(sparsity * flat.numel())]] = 0
    out, i = {}, 0
    for k, s in scores.items():
        out[k] = keep[i:i + s.numel()].reshape(s.shape)
        i += s.numel()
    return out


def iterative_steps(final, n):
    r = 1 - (1 - final) ** (1 / n)
    return [1 - (1 - r) ** k for k in range(1, n + 1)]


def keep_zero(layer_name, mask):
    def callback(model):
        with torch.no_grad():
            model.get_submodule(layer_name).weight.mul_(mask)
    return callback


class ThresholdPruning(prune.BasePruningMethod):
    PRUNING_TYPE = "unstructured"

    def __init__(self, threshold):
        self.threshold = threshold

    def compute_mask(self, t, default_mask):
        return default_mask * (t.abs() >= self.threshold).to(default_mask.dtype)

    @classmethod
    def apply(cls, module, name, threshold):
        return super().apply(module, name, threshold=threshold)


def strip_pruning(model):
    for mod in model.modules():
        for hook in list(mod._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                prune.remove(mod, hook._tensor_name)
    return model


def keep_inputs(fc, keep):
    new = nn.Linear(len(keep), fc.out_features, bias=fc.bias is not None)
    new.weight.data = fc.weight.data[:, keep].clone()
    if fc.bias is not None:
        new.bias.data = fc.bias.data.clone()
    return new


def is_dead(conv, bn, c):
    if conv.weight[c].abs().max() > 0 or (conv.bias is not None and conv.bias[c] != 0):
        return False
    out = bn.bias[c] - bn.weight[c] * bn.running_mean[c] / torch.sqrt(bn.running_var[c] + bn.eps)
    return bool(out.abs() <= 1e-12)


def speedup(baseline, candidate, inputs):
    res = compare_latency({"base": baseline, "cand": candidate}, inputs, warmup=3, repeats=15, threads=1)
    return res["base"].median_ms / res["cand"].median_ms


# ---- chapter 00, 02, 05 answers (merged into tests/test_checks.py) -----------------------------------------


def sparse_storage_bits(model, data_width=32, index_width=32):
    return sum(int(p.count_nonzero()) for p in model.parameters()) * (data_width + index_width)


def per_image_ms(model, batch_sizes):
    from deeplsp_helpers import latency

    return {bs: latency.measure_latency(model, torch.zeros(bs, 1, 4, 4), warmup=2, repeats=8, threads=1).median_ms / bs
            for bs in batch_sizes}


def pick_on_validation(models, loaders):
    from deeplsp_helpers import train

    return max(models, key=lambda name: train.evaluate(models[name], loaders.val))


def obs_step(w, H_inv, q):
    increase = w[q].item() ** 2 / (2 * H_inv[q, q].item())
    return increase, w - w[q] / H_inv[q, q] * H_inv[:, q]


def obs_step_solved(w, H_inv, q):  # another correct answer: from H, in float32, as a list
    H = torch.linalg.inv(H_inv).float()
    keep = [i for i in range(len(w)) if i != q]
    new_w = w.float().clone()
    new_w[q] = 0.0
    if keep:  # the others minimise 1/2 d^T H d given d_q = -w_q: H_kk d_k = H_kq w_q
        new_w[keep] = w[keep].float() + torch.linalg.solve(H[keep][:, keep], H[keep, q] * w[q].float())
    d = new_w - w.float()
    return [float(0.5 * d @ H @ d), new_w]


def coupled_layers(model, example_inputs, layer_name):
    import torch_pruning as tp

    names = {m: n for n, m in model.named_modules()}
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
    group = graph.get_pruning_group(model.get_submodule(layer_name), tp.prune_conv_out_channels, idxs=[0])
    return {names[dep.target.module] for dep, _ in group if dep.target.module in names}


def speedup_at(dense, pruned, inputs):
    from deeplsp_helpers import latency

    return latency.compare_speedups({"d": dense, "p": pruned}, inputs, baseline="d", warmup=2, repeats=10)[1]["p"]


def _global_threshold_masks(scores, sparsity):  # one global threshold that prunes every score tied with it
    flat = torch.cat([v.flatten() for v in scores.values()])
    k = round(sparsity * flat.numel())
    if k == 0:
        return {n: torch.ones_like(v) for n, v in scores.items()}
    t = flat.kthvalue(k).values
    return {n: (v > t).float() for n, v in scores.items()}


def _no_eval(model, layer_name, batches):  # the right formula, but dropout left on
    w = model.get_submodule(layer_name).weight
    total = torch.zeros_like(w)
    for X, y in batches:
        (g,) = torch.autograd.grad(nn.functional.cross_entropy(model(X), y), [w])
        total += (w.detach() * g).abs()
    return total / len(batches)


def _taylor_variant(reduction="mean", accumulate=False, abs_of_mean=False):
    def fn(model, layer_name, batches):
        model.eval()
        w = model.get_submodule(layer_name).weight
        total, running, grads = torch.zeros_like(w), torch.zeros_like(w), []
        for X, y in batches:
            (g,) = torch.autograd.grad(nn.functional.cross_entropy(model(X), y, reduction=reduction), [w])
            running = running + g
            grads.append(running if accumulate else g)
            total += (w.detach() * grads[-1]).abs()
        return (w.detach() * torch.stack(grads).mean(0)).abs() if abs_of_mean else total / len(batches)
    return fn


# ---- wrong answers --------------------------------------------------------------------------------------------


class SignedThreshold(ThresholdPruning):
    def compute_mask(self, t, default_mask):
        return default_mask * (t >= self.threshold).to(default_mask.dtype)


class StrictThreshold(ThresholdPruning):
    def compute_mask(self, t, default_mask):
        return default_mask * (t.abs() > self.threshold).to(default_mask.dtype)


def _mask_with_ties_over(w, sparsity):  # a threshold that prunes every tie: too many zeros
    k = round(sparsity * w.numel())
    if k == 0:
        return torch.ones_like(w)
    return (w.abs() > w.abs().flatten().kthvalue(k).values).float()


def _signed_mask(w, sparsity):
    mask = torch.ones(w.numel())
    mask[w.flatten().argsort()[:round(sparsity * w.numel())]] = 0
    return mask.reshape(w.shape)


def _bn_of_zero(bn, c):
    return bn.bias[c] - bn.weight[c] * bn.running_mean[c] / (bn.running_var[c] + bn.eps).sqrt()


def _per_layer_masks(scores, sparsity):
    return {k: fine_grained_mask(s, sparsity) for k, s in scores.items()}


def _remove_weight_only(model):
    for mod in model.modules():
        if prune.is_pruned(mod) and hasattr(mod, "weight_orig"):
            prune.remove(mod, "weight")
    return model


def _drop_hooks(model):
    for mod in model.modules():
        mod._forward_pre_hooks.clear()
    return model


def _no_bias(fc, keep):
    new = nn.Linear(len(keep), fc.out_features, bias=False)
    new.weight.data = fc.weight.data[:, keep].clone()
    return new


def _view_not_copy(fc, keep):
    new = nn.Linear(len(keep), fc.out_features, bias=fc.bias is not None)
    new.weight.data = fc.weight.data[:, keep].clone()
    if fc.bias is not None:
        new.bias.data = fc.bias.data  # shared with the old layer
    return new



# ---- chapters 01, 03, 04, 06, 07, 08: every right alternative the tasks allow, and wrong answers with their cause ----
# A check that takes several functions (an experiment: a measurement and an answer read off it) gets a tuple.


def csr_bits(w):
    t = w.to_sparse_csr()
    return 32 * (t.values().numel() + t.col_indices().numel() + t.crow_indices().numel())


def _with_zeros(rows, cols, zeros):
    w = torch.ones(rows * cols)
    w[:zeros] = 0
    return w.reshape(rows, cols)


def break_even_by(bits):
    def csr_break_even(rows, cols):
        low, high = 0, rows * cols  # bits fall as zeros grow: bisect for the first count below dense
        while low < high:
            mid = (low + high) // 2
            if bits(_with_zeros(rows, cols, mid)) < 32 * rows * cols:
                high = mid
            else:
                low = mid + 1
        return low / (rows * cols)
    return csr_break_even


def _csr_bits_int32(w):  # the real arrays, with 32-bit indices, counted in bytes
    t = w.to_sparse_csr()
    real = torch.sparse_csr_tensor(t.crow_indices().int(), t.col_indices().int(), t.values(), t.shape)
    return 8 * sum(a.numel() * a.element_size() for a in (real.values(), real.col_indices(), real.crow_indices()))


def _break_even_closed_form(rows, cols):  # nnz < (rows·cols - rows - 1) / 2
    nnz = (rows * cols - rows - 1) // 2 if (rows * cols - rows - 1) % 2 else (rows * cols - rows - 1) // 2 - 1
    return (rows * cols - nnz) / (rows * cols)


def _csr_bits_rows(w):
    return 64 * int((w != 0).sum()) + 32 * w.shape[0]


def _csr_bits_int64(w):
    t = w.to_sparse_csr()
    return 8 * sum(a.numel() * a.element_size() for a in (t.values(), t.col_indices(), t.crow_indices()))


def _fine_grained_bool(w, sparsity):
    return fine_grained_mask(w, sparsity).bool()


def _fine_grained_int(w, sparsity):
    mask = torch.ones(w.numel())
    mask[w.abs().flatten().argsort()[:int(sparsity * w.numel())]] = 0
    return mask.reshape(w.shape)


def _fine_grained_in_place(w, sparsity):
    w.abs_()
    return fine_grained_mask(w, sparsity)


def accuracy_at(model, sparsity, X, y):
    probe = copy.deepcopy(model).eval()
    pruners.FineGrainedPruner(probe, pruners.global_threshold_sparsities(probe, sparsity)).apply(probe)
    with torch.no_grad():
        return 100.0 * (probe(X).argmax(1) == y).float().mean().item()


def one_shot_limit(accuracies, dense, drop):
    over = [s for s in sorted(accuracies) if dense - accuracies[s] > drop]
    return over[0] if over else None


def _accuracy_torch_prune(model, sparsity, X, y):  # the same global magnitude cut through torch.nn.utils.prune
    probe = copy.deepcopy(model).eval()
    layers = [(m, "weight") for m in probe.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    prune.global_unstructured(layers, pruning_method=prune.L1Unstructured, amount=sparsity)
    with torch.no_grad():
        return 100 * (probe(X).argmax(1) == y).float().mean()  # a float32 tensor


def _accuracy_in_place(model, sparsity, X, y):
    pruners.FineGrainedPruner(model, pruners.global_threshold_sparsities(model, sparsity)).apply(model)
    with torch.no_grad():
        return 100.0 * (model.eval()(X).argmax(1) == y).float().mean().item()


def _accuracy_train_mode(model, sparsity, X, y):
    probe = copy.deepcopy(model)
    pruners.FineGrainedPruner(probe, pruners.global_threshold_sparsities(probe, sparsity)).apply(probe)
    with torch.no_grad():
        return 100.0 * (probe(X).argmax(1) == y).float().mean().item()


def _limit_at_least(accuracies, dense, drop):
    over = [s for s in sorted(accuracies) if dense - accuracies[s] >= drop]
    return over[0] if over else None


def _limit_in_dict_order(accuracies, dense, drop):
    return next((s for s, a in accuracies.items() if dense - a > drop), None)


def _largest_safe(accuracies, dense, drop):
    return max((s for s, a in accuracies.items() if dense - a <= drop), default=None)


def _limit_abs(accuracies, dense, drop):
    return min((s for s, a in accuracies.items() if abs(dense - a) > drop), default=None)


def sparsity_after(layer, amounts):
    probe = copy.deepcopy(layer)
    for a in amounts:
        prune.l1_unstructured(probe, "weight", amount=a)
    return float((probe.weight == 0).float().mean())


def compound_sparsity(zeros, amounts):
    left = 1.0
    for a in amounts:
        left *= 1 - a
    return max(zeros, 1 - left)


def _sparsity_after_tensor(layer, amounts):  # a float32 0-d tensor is a fine answer
    probe = copy.deepcopy(layer)
    for a in amounts:
        prune.l1_unstructured(probe, "weight", amount=a)
    return (probe.weight == 0).float().mean()


def _formula(zeros, amounts):
    left = 1.0
    for a in amounts:
        left *= 1 - a
    return 1 - left


def _mask_zeros(layer, amounts):
    probe = copy.deepcopy(layer)
    for a in amounts:
        prune.l1_unstructured(probe, "weight", amount=a)
    return float((probe.weight_mask == 0).float().mean()) if amounts else float((probe.weight == 0).float().mean())


def _sparsity_in_place(layer, amounts):
    for a in amounts:
        prune.l1_unstructured(layer, "weight", amount=a)
    return float((layer.weight == 0).float().mean())


class BoolThreshold(ThresholdPruning):  # a bool mask is a mask too
    def compute_mask(self, t, default_mask):
        return (t.abs() >= self.threshold) & default_mask.bool()


class GlobalThreshold(ThresholdPruning):  # sees the whole tensor inside a container, so it combines the masks
    PRUNING_TYPE = "global"


class ZeroInPlace(ThresholdPruning):  # zeroes the weights, registers no mask
    @classmethod
    def apply(cls, module, name, threshold):
        with torch.no_grad():
            t = getattr(module, name)
            t[t.abs() < threshold] = 0


class ValuesNotMask(ThresholdPruning):
    def compute_mask(self, t, default_mask):
        return default_mask * t * (t.abs() >= self.threshold)


def _strip_by_buffers(model):
    for mod in model.modules():
        for name in [n[:-len("_mask")] for n, _ in mod.named_buffers(recurse=False) if n.endswith("_mask")]:
            prune.remove(mod, name)
    return model


def _strip_children_only(model):
    for mod in model.children():
        for hook in list(mod._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                prune.remove(mod, hook._tensor_name)
    return model


def _strip_weight_and_bias(model):
    for mod in model.modules():
        for name in ("weight", "bias"):
            if hasattr(mod, f"{name}_mask"):
                prune.remove(mod, name)
    return model


def _strip_everything(model):
    for mod in model.modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
            prune.remove(mod, "weight")
    return model


def _strip_a_copy(model):
    return copy.deepcopy(strip_pruning(model))


def _keep_zero_data(name, mask):
    def callback(model):
        w = model.get_submodule(name).weight
        w.data = w.data * mask  # a new tensor, but inside the same Parameter: the optimizer still holds it
    return callback


def _keep_zero_index(name, mask):
    def callback(model):
        with torch.no_grad():
            model.get_submodule(name).weight[mask == 0] = 0
    return callback


def _keep_zero_new_parameter(name, mask):
    def callback(model):
        layer = model.get_submodule(name)
        layer.weight = nn.Parameter(layer.weight.detach() * mask)  # the optimizer keeps the old tensor
    return callback


def _keep_zero_once(name, mask):
    done = []

    def callback(model):
        if not done:
            with torch.no_grad():
                model.get_submodule(name).weight.mul_(mask)
            done.append(True)
    return callback


def _keep_zero_getattr(name, mask):
    def callback(model):
        with torch.no_grad():
            getattr(model, name).weight.mul_(mask)  # no dotted names
    return callback


def _is_dead_by_running(conv, bn, c):  # measured: feed random inputs through conv and BN
    x = torch.randn(4, conv.in_channels, 7, 7, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return bool((bn.eval()(conv(x))[:, c] == 0).all())


def _is_dead_after_relu(conv, bn, c):  # assumes a ReLU: a negative constant is dead
    if conv.weight[c].abs().max() > 0:
        return False
    b = conv.bias[c] if conv.bias is not None else 0.0
    out = bn.bias[c] + bn.weight[c] * (b - bn.running_mean[c]) / torch.sqrt(bn.running_var[c] + bn.eps)
    return bool(out <= 0)


def _is_dead_no_bias_check(conv, bn, c):
    if conv.weight[c].abs().max() > 0 or conv.bias[c] != 0:
        return False
    return bool(_bn_of_zero(bn, c).abs() <= 1e-12)


def _speedup_macs(baseline, candidate, inputs):
    return metrics.count_macs(baseline, inputs) / metrics.count_macs(candidate, inputs)


def _speedup_params(baseline, candidate, inputs):
    return metrics.count_parameters(baseline) / metrics.count_parameters(candidate)


def ort_predict(session, X):
    name = session.get_inputs()[0].name
    return torch.from_numpy(session.run(None, {name: X.detach().cpu().float().numpy()})[0]).argmax(1)


def _ort_predict_numpy(session, X):
    return session.run(None, {session.get_inputs()[0].name: X.detach().numpy().astype("float32")})[0].argmax(1)


def _masked_no_root(model):
    return {name for name in masked_layers(model) if name}


def masked_layers(model):
    return {name for name, m in model.named_modules()
            if any(isinstance(h, prune.BasePruningMethod) for h in m._forward_pre_hooks.values())}


def _masked_by_buffers(model):
    return [name for name, m in model.named_modules() if any(b.endswith("_mask") for b, _ in m.named_buffers(recurse=False))]


def _masked_weight_only(model):
    return {name for name, m in model.named_modules() if hasattr(m, "weight_mask")}


def _masked_children_only(model):
    return {name for name, m in model.named_children() if prune.is_pruned(m) and hasattr(m, "weight_mask")}


def wanda_mask(weight, input_norms, sparsity):
    scores = weight.abs() * input_norms  # [out, in] * [in]: input j scales column j
    k = round(sparsity * weight.shape[1])
    mask = torch.ones_like(weight)
    mask.scatter_(1, scores.argsort(dim=1)[:, :k], 0.0)
    return mask


def _wanda_with_package(weight, input_norms, sparsity):
    from deeplsp_helpers import transformer_pruning

    return transformer_pruning.row_mask(transformer_pruning.wanda_scores(weight, input_norms), sparsity).bool()


def _wanda_keep_lowest(weight, input_norms, sparsity):
    return 1 - wanda_mask(weight, input_norms, 1 - sparsity)


def _wanda_row_norms(weight, input_norms, sparsity):  # input_norms[j] applied to row j
    scores = weight.abs() * input_norms[:, None]
    k = round(sparsity * weight.shape[1])
    return torch.ones_like(weight).scatter_(1, scores.argsort(dim=1)[:, :k], 0.0)


def _wanda_floor(weight, input_norms, sparsity):  # int() instead of round()
    scores = weight.abs() * input_norms
    return torch.ones_like(weight).scatter_(1, scores.argsort(dim=1)[:, :int(sparsity * weight.shape[1])], 0.0)


def _wanda_global(weight, input_norms, sparsity):  # one threshold over the whole layer
    flat = (weight.abs() * input_norms).flatten()
    mask = torch.ones_like(flat)
    mask[flat.argsort()[:round(sparsity * weight.shape[1]) * weight.shape[0]]] = 0
    return mask.view_as(weight)


def nm_mask_rows(scores, n, m):
    groups = scores.reshape(scores.shape[0], -1, m)  # [out, in/m, m]
    return torch.zeros_like(groups).scatter_(2, groups.topk(n, dim=2).indices, 1.0).reshape(scores.shape)


def _nm_with_package(scores, n, m):
    return masks.nm_mask(scores, n, m, dim=1)


def _keep_head_features(attn, keep):
    """Keep only the features ``keep`` of q/k/v (rows) and out_proj (columns), as new Linear layers."""
    for name in ("q_proj", "k_proj", "v_proj"):
        old = getattr(attn, name)
        new = nn.Linear(old.in_features, len(keep))
        new.weight.data, new.bias.data = old.weight.data[keep].clone(), old.bias.data[keep].clone()
        setattr(attn, name, new)
    old = attn.out_proj
    new = nn.Linear(len(keep), old.out_features)
    new.weight.data, new.bias.data = old.weight.data[:, keep].clone(), old.bias.data.clone()
    attn.out_proj = new
    return attn


def remove_head(attn, h):
    d = attn.head_dim
    return _keep_head_features(attn, torch.tensor([i for i in range(attn.num_heads * d) if i // d != h]))


def _remove_head_with_package(attn, h):
    from deeplsp_helpers import transformer_pruning

    return transformer_pruning.remove_heads(attn, [h])


def _remove_head_rows(attn, h):  # removes rows h .. h + d - 1 instead of the head's block h·d ..
    d = attn.head_dim
    return _keep_head_features(attn, torch.tensor([i for i in range(attn.num_heads * d) if not h <= i < h + d]))


def _remove_head_keep_out_proj(attn, h):
    out = attn.out_proj
    remove_head(attn, h)
    attn.out_proj = out
    return attn


def _remove_head_copy(attn, h):
    return remove_head(copy.deepcopy(attn), h)


RIGHT_ALSO = {  # the first answer is the notebook's; each one must pass
    "row_nm_ok": [row_nm_ok, lambda mask, n, m: row_nm_ok(mask.float(), n, m)],
    "csr_break_even": [(csr_bits, break_even_by(csr_bits)), (_csr_bits_int32, _break_even_closed_form),
                       (lambda w: torch.tensor(float(csr_bits(w))), break_even_by(csr_bits))],
    "fine_grained_mask": [fine_grained_mask, _fine_grained_bool, lambda w, s: fine_grained_mask(w, s).double()],
    "iterative_steps": [iterative_steps,
                        lambda final, n: [torch.tensor(s, dtype=torch.float32) for s in iterative_steps(final, n)]],
    "keep_zero": [keep_zero, _keep_zero_data, _keep_zero_index],
    "one_shot_limit": [(accuracy_at, one_shot_limit), (_accuracy_torch_prune, one_shot_limit)],
    "compound_sparsity": [(sparsity_after, compound_sparsity),
                          (_sparsity_after_tensor, lambda z, a: torch.tensor(compound_sparsity(z, a), dtype=torch.float32))],
    "threshold_pruning": [ThresholdPruning, BoolThreshold, GlobalThreshold],
    "strip_pruning": [strip_pruning, _strip_by_buffers],
    "is_dead": [is_dead, _is_dead_by_running],
    "global_sparsity": [lambda ratios, sizes: sum(r * sizes[k] for k, r in ratios.items()) / sum(sizes[k] for k in ratios),
                        lambda ratios, sizes: (torch.tensor([ratios[k] for k in ratios], dtype=torch.float32)
                                               @ torch.tensor([float(sizes[k]) for k in ratios]))
                        / sum(sizes[k] for k in ratios)],
    "speedup": [speedup],
    "ort_predict": [ort_predict, _ort_predict_numpy],
    "masked_layers": [masked_layers, _masked_by_buffers],
    "wanda_mask": [wanda_mask, _wanda_with_package],
    "nm_mask_rows": [nm_mask_rows, _nm_with_package],
    "remove_head": [remove_head, _remove_head_with_package],
}

WRONG_TOLD = {  # (wrong answer, what the message must say)
    "row_nm_ok": [
        (lambda mask, n, m: row_nm_ok(mask[:, : mask.shape[1] // m * m], n, m) if mask.shape[1] >= m else True,
         "shorter group"),
        (lambda mask, n, m: row_nm_ok(mask.T.contiguous(), n, m), "along each row"),
        (lambda mask, n, m: bool((nn.functional.pad(mask.float(), (0, (-mask.shape[1]) % m))
                                  .reshape(mask.shape[0], -1, m).sum(-1) < n).all()), "exactly n ones"),
        (lambda mask, n, m: bool((mask.float().sum(1) <= n * -(-mask.shape[1] // m)).all()), "not the row on average"),
        (lambda mask, n, m: torch.tensor(row_nm_ok(mask, n, m)), "Python bool"),
    ],
    "csr_break_even": [
        ((_csr_bits_rows, break_even_by(_csr_bits_rows)), "rows \\+ 1"),
        ((_csr_bits_int64, break_even_by(_csr_bits_int64)), "32 bits per index"),
        ((lambda w: csr_bits(w) // 8, break_even_by(csr_bits)), "bits, not bytes"),
        ((lambda w: 32 * w.numel(), break_even_by(csr_bits)), "that is the dense storage"),
        ((csr_bits, lambda rows, cols: (rows * cols + rows + 1) / (2 * rows * cols)), "not|equal"),
        ((csr_bits, break_even_by(lambda w: csr_bits(w) - 1)), "not fewer|equal is not smaller"),
        ((csr_bits, lambda rows, cols: break_even_by(csr_bits)(rows, cols) + 1 / (rows * cols)), "not the smallest"),
    ],
    "fine_grained_mask": [
        (_signed_mask, "not by the signed value"),
        (_mask_with_ties_over, "split the ties"),
        (lambda w, s: fine_grained_mask(w, s)[0], "shape"),
        (_fine_grained_int, "int\\(\\) truncates"),
        (lambda w, s: w * fine_grained_mask(w, s), "only 0 and 1"),
        (lambda w, s: fine_grained_mask(w, s).long(), "float 0/1 tensor or a bool tensor"),
        (_fine_grained_in_place, "leave w unchanged"),
    ],
    "iterative_steps": [
        (lambda final, n: [final * k / n for k in range(1, n + 1)], "remaining weights"),
        (lambda final, n: [1 - (1 - final) ** (1 / n)] * n, "the rate r"),
        (lambda final, n: [0.0] + iterative_steps(final, n), "leave out the starting 0"),
        (lambda final, n: (s for s in iterative_steps(final, n)), "return a list"),
    ],
    "keep_zero": [
        (lambda name, mask: (lambda model: None), "are not zero"),
        (lambda name, mask: (lambda model: model.get_submodule(name).weight.data.mul_(1 - mask)), "the mask is 1 = keep"),
        (lambda name, mask: (lambda model: [p.data.mul_(0) for p in model.get_submodule(name).parameters()]),
         "changed out.bias"),
        (_keep_zero_new_parameter, "optimizer still updates the old one"),
        (_keep_zero_once, "after every step"),
        (_keep_zero_getattr, "AttributeError"),
        (lambda name, mask: 0, "must return a callback"),
    ],
    "one_shot_limit": [
        ((_accuracy_in_place, one_shot_limit), "changed the model"),
        ((_accuracy_train_mode, one_shot_limit), "eval mode"),
        ((lambda *args: accuracy_at(*args) / 100, one_shot_limit), "percent"),
        ((lambda model, s, X, y: accuracy_at(model, 0.0, X, y), one_shot_limit), "dense model's accuracy"),
        ((accuracy_at, _limit_at_least), "exactly drop points is not more"),
        ((accuracy_at, _limit_in_dict_order), "not in order"),
        ((accuracy_at, _largest_safe), "largest sparsity that stays within"),
        ((accuracy_at, _limit_abs), "more accurate than dense"),
        ((accuracy_at, lambda acc, dense, drop: one_shot_limit(acc, dense, drop) or max(acc)), "return None"),
    ],
    "compound_sparsity": [
        ((_mask_zeros, compound_sparsity), "mask's zeros"),
        ((_sparsity_in_place, compound_sparsity), "changed the layer"),
        ((lambda layer, amounts: _formula(0, amounts), compound_sparsity), "that is the formula"),
        ((lambda layer, amounts: 100 * sparsity_after(layer, amounts), compound_sparsity), "not a percentage"),
        ((sparsity_after, _formula), "prunes them first"),
        ((sparsity_after, lambda z, a: z + (1 - z) * _formula(z, a)), "not spared"),
        ((sparsity_after, lambda z, a: min(1.0, sum(a))), "fraction of what the earlier calls left"),
    ],
    "threshold_pruning": [
        (SignedThreshold, "magnitude"), (StrictThreshold, "exactly at the threshold stays"),
        (ZeroInPlace, "super\\(\\).apply"),
        (ValuesNotMask, "only 0 and 1"),
    ],
    "strip_pruning": [
        (_remove_weight_only, "these remain"), (_drop_hooks, "these remain"),
        (lambda model: strip_pruning(model) and None, "return it"), (_strip_a_copy, "the same object"),
        (_strip_children_only, "nested"), (_strip_weight_and_bias, "whatever its name"),
        (_strip_everything, "ValueError"),
    ],
    "is_dead": [
        (lambda conv, bn, c: bool((conv.weight[c] == 0).all()), "should be alive"),
        (lambda conv, bn, c: bool((conv.weight[c] == 0).all() and bn.weight[c] == 0 and bn.bias[c] == 0),
         "running mean 0 and beta 0"),
        (lambda conv, bn, c: bool((conv.weight[c] == 0).all() and _bn_of_zero(bn, c) == 0), "conv bias"),
        (lambda conv, bn, c: bool(conv.weight[c].sum() == 0 and conv.bias[c] == 0 and _bn_of_zero(bn, c) == 0),
         "sums to zero"),
        (lambda conv, bn, c: bool((conv.weight[c] == 0).all() and conv.bias[c] == 0 and bn.bias[c] == 0),
         "running mean 0.4"),
        (_is_dead_after_relu, "a constant channel is not dead"),
        (lambda conv, bn, c: torch.tensor(is_dead(conv, bn, c)), "Python bool"),
        (_is_dead_no_bias_check, "TypeError"),
    ],
    "global_sparsity": [
        (lambda ratios, sizes: sum(ratios.values()) / len(ratios), "weight each layer"),
        (lambda ratios, sizes: sum(r * sizes[k] for k, r in ratios.items()) / sum(sizes.values()), "layers in ratios"),
        (lambda ratios, sizes: sum(r * s for r, s in zip(ratios.values(), sizes.values())) / sum(sizes[k] for k in ratios),
         "by layer name"),
    ],
    "speedup": [
        (lambda b, c, x: 1 / speedup(b, c, x), "upside down"), (lambda b, c, x: 1.0, "> 3x faster"),
        (_speedup_macs, "That is the MAC ratio"), (_speedup_params, "42 layers"),
        (lambda b, c, x: None, "positive number"),
    ],
    "ort_predict": [
        (lambda session, X: torch.from_numpy(session.run(None, {session.get_inputs()[0].name: X.detach().float().numpy()})[0]),
         "argmax over the classes"),
        (lambda session, X: ort_predict(session, X).float(), "1-D integer tensor"),
        (lambda session, X: torch.from_numpy(session.run(None, {"input": X.detach().float().numpy()})[0]).argmax(1),
         "session.get_inputs"),
        (lambda session, X: torch.from_numpy(session.run(None, {session.get_inputs()[0].name: X.detach().numpy()})[0])
         .argmax(1), "float32"),
        (lambda session, X: torch.from_numpy(session.run(None, {session.get_inputs()[0].name: X.detach().float().numpy()})
                                             [0]).argmax(0), "argmax over the batch"),
        (lambda session, X: torch.from_numpy(session.run(None, {session.get_inputs()[0].name: X.float().numpy()})[0])
         .argmax(1), "detach"),
    ],
    "masked_layers": [
        (_masked_weight_only, "not only weight_mask"), (_masked_children_only, "named_children"),
        (lambda model: {m for _, m in model.named_modules() if prune.is_pruned(m)}, "module names"),
        (lambda model: prune.is_pruned(model), "set of module names"),
        (lambda model: masked_layers(model) | {"body.conv"}, "prune.remove"),
        (_masked_no_root, "the model itself"),
    ],
    "wanda_mask": [
        (lambda w, norms, s: wanda_mask(w, torch.ones_like(norms), s), "magnitude pruning"),
        (_wanda_keep_lowest, "keep the highest"),
        (_wanda_row_norms, "RuntimeError|column j"),
        (_wanda_global, "within each output row"),
        (lambda w, norms, s: w.abs() * norms, "only 0 and 1"),
        (_wanda_floor, "rounds .* down"),
    ],
    "nm_mask_rows": [
        (lambda scores, n, m: nm_mask_rows(-scores, n, m), "not the lowest"),
        (lambda scores, n, m: torch.zeros_like(scores).scatter_(1, scores.topk(n * scores.shape[1] // m, dim=1).indices,
                                                                1.0), "of the row"),
        (lambda scores, n, m: nm_mask_rows(scores.T.contiguous(), n, m).T, "RuntimeError|not down the columns"),
        (lambda scores, n, m: nm_mask_rows(scores, n, m).long(), "float 0/1 tensor or a bool"),
    ],
    "remove_head": [
        (_remove_head_rows, "rows"), (_remove_head_keep_out_proj, "columns"), (_remove_head_copy, "in place"),
        (lambda attn, h: None, "in place and return"),
    ],
}



WRONG_TOLD_00_02_05 = {  # chapters 00, 02, 05: (wrong answer, what the message must say)
    "sparse_storage_bits": [
        (lambda m, data_width=32, index_width=32: sum(p.numel() for p in m.parameters()) * data_width, "dense size"),
        (lambda m, data_width=32, index_width=32: sum(int(p.count_nonzero()) for p in m.parameters()) * data_width,
         "index"),
        (lambda m, data_width=32, index_width=32: sum(int(t.count_nonzero()) for t in m.state_dict().values())
         * (data_width + index_width), "not buffers"),
        (lambda m, data_width=32, index_width=32: sum(p.numel() for p in m.parameters()) * (data_width + index_width),
         "zeros are not stored"),
    ],
    "per_image_ms": [
        (lambda m, sizes: {bs: v * bs for bs, v in per_image_ms(m, sizes).items()}, "whole batch"),
        (lambda m, sizes: {bs: v / 1000 for bs, v in per_image_ms(m, sizes).items()}, "seconds"),
        (lambda m, sizes: [per_image_ms(m, sizes)[bs] for bs in sizes], "dict"),
    ],
    "pick_on_validation": [
        (lambda models, loaders: max(models, key=lambda n: train.evaluate(models[n], loaders.test)), "test split"),
        (lambda models, loaders: max(models, key=lambda n: train.evaluate(models[n], loaders.train)), "training split"),
        (lambda models, loaders: models[pick_on_validation(models, loaders)], "name"),
        (lambda models, loaders: next(iter(models)), "best model on validation"),
    ],
    "obs_step": [
        (lambda w, H_inv, q: (0.5 * torch.linalg.inv(H_inv)[q, q].item() * w[q].item() ** 2, obs_step(w, H_inv, q)[1]),
         "OBD's"),
        (lambda w, H_inv, q: (2 * obs_step(w, H_inv, q)[0], obs_step(w, H_inv, q)[1]), "factor 1/2"),
        (lambda w, H_inv, q: (obs_step(w, H_inv, q)[0], torch.where(torch.arange(len(w)) == q, 0.0, w)),
         "compensate"),
        (lambda w, H_inv, q: (obs_step(w, H_inv, q)[0], w + w[q] / H_inv[q, q] * H_inv[:, q]), "sign"),
        (lambda w, H_inv, q: obs_step(w, H_inv, q)[1], "pair"),
        (lambda w, H_inv, q: (0.5 * H_inv[q, q].item() * w[q].item() ** 2, obs_step(w, H_inv, q)[1]), "divide"),
    ],
    "taylor_one_layer": [
        (_no_eval, "eval mode"),
        (_taylor_variant(reduction="sum"), "not the sum"),
        (_taylor_variant(accumulate=True), "accumulated"),
        (_taylor_variant(abs_of_mean=True), "mean g"),
        (lambda model, name, batches: one_layer(lambda w, g: (w * g).abs())(model, name, batches).sum(0), "shape"),
    ],
    "global_masks": [
        (_global_threshold_masks, "tie"),
        (lambda scores, s: {k: m.bool() for k, m in global_masks(scores, s).items()}, "float masks"),
    ],
    "coupled_layers": [
        (lambda m, x, layer: {layer}, "missing"),
        (lambda m, x, layer: coupled_layers(m, x, layer) | {"_ElementWiseOp"}, "not modules"),
        (lambda m, x, layer: sorted(coupled_layers(m, x, layer)).__len__(), "set of module names"),
    ],
    "speedup_at": [
        (lambda d, p, x: speedup_at(p, d, x), "the other way round"),
        (lambda d, p, x: speedup_at(d, p, x).median, "latency.Speedup"),
        (lambda d, p, x: speedup_at(d, d, x), "should be about"),
    ],
}

WRONG = {
    **{name: [answer for answer, _ in told] for name, told in WRONG_TOLD.items()},
    "taylor_one_layer": [
        one_layer(lambda w, g: w * g),                                            # no absolute value
        lambda model, name, batches: one_layer(lambda w, g: (w * g).abs())(model, name, batches[:1]),  # 1 batch
    ],
    "global_masks": [_per_layer_masks,
                     lambda scores, s: {k: _mask_with_ties_over(v, s) for k, v in scores.items()}],
    "keep_inputs": [_no_bias, _view_not_copy,
                    lambda fc, keep: keep_inputs(fc, keep.sort().values)],        # reorders the inputs
}
for _name, _told in WRONG_TOLD_00_02_05.items():  # added to, not replacing, the wrong answers listed above
    WRONG[_name] = WRONG.get(_name, []) + [answer for answer, _ in _told]

RIGHT = {
    "sparse_storage_bits": sparse_storage_bits, "per_image_ms": per_image_ms,
    "pick_on_validation": pick_on_validation, "obs_step": obs_step,
    "taylor_one_layer": one_layer(lambda w, g: (w * g).abs()), "global_masks": global_masks,
    "coupled_layers": coupled_layers, "keep_inputs": keep_inputs, "speedup_at": speedup_at,
    **{name: answers[0] for name, answers in RIGHT_ALSO.items()},  # chapters 01, 03, 04, 06-08: the notebook's answer
}


def test_every_check_has_a_right_and_wrong_answers():
    names = sorted(n[len("check_"):] for n in checks.__all__ if n.startswith("check_") and n != "check_answer")
    assert names == sorted(RIGHT) == sorted(WRONG)
    assert all(len(v) >= 2 for v in WRONG.values())


def test_every_check_of_chapters_01_03_04_06_07_08_has_right_alternatives_and_wrong_answers_with_causes():
    from deeplsp_helpers.checks import (
        ch01_granularity,
        ch03_timing,
        ch04_torch_prune,
        ch06_deeplsp,
        ch07_deployment,
        ch08_transformers,
    )

    modules = (ch01_granularity, ch03_timing, ch04_torch_prune, ch06_deeplsp, ch07_deployment, ch08_transformers)
    names = sorted(n[len("check_"):] for m in modules for n in vars(m) if n.startswith("check_"))
    assert names == sorted(RIGHT_ALSO) == sorted(WRONG_TOLD)
    assert all(f"check_{n}" in checks.__all__ for n in names)
    assert all(len(v) >= 2 for v in WRONG_TOLD.values())


def _args(answer):
    """A check's arguments: one function, or a tuple of them (an experiment: the measurement, then the answer)."""
    return answer if isinstance(answer, tuple) else (answer,)


@pytest.mark.parametrize("name", sorted(RIGHT))
def test_right_answer_passes(name, capsys):
    getattr(checks, f"check_{name}")(*_args(RIGHT[name]))
    assert "hidden cases passed" in capsys.readouterr().out


@pytest.mark.parametrize("name,index", [(n, i) for n in sorted(RIGHT_ALSO) for i in range(len(RIGHT_ALSO[n]))])
def test_every_right_alternative_passes(name, index, capsys):
    getattr(checks, f"check_{name}")(*_args(RIGHT_ALSO[name][index]))
    assert "hidden cases passed" in capsys.readouterr().out


@pytest.mark.parametrize("name,index", [(n, i) for n in sorted(WRONG) for i in range(len(WRONG[n]))])
def test_wrong_answer_fails_with_a_message(name, index):
    with pytest.raises(checks.CheckFailed) as info:
        getattr(checks, f"check_{name}")(*_args(WRONG[name][index]))
    assert len(str(info.value)) > 20
    assert info.value._render_traceback_() == [f"CheckFailed: {info.value}"]


@pytest.mark.parametrize("name,index", [(n, i) for n in sorted(WRONG_TOLD) for i in range(len(WRONG_TOLD[n]))])
def test_wrong_answer_is_told_what_is_wrong(name, index):
    answer, says = WRONG_TOLD[name][index]
    with pytest.raises(checks.CheckFailed, match=says):
        getattr(checks, f"check_{name}")(*_args(answer))


@pytest.mark.parametrize("name", sorted(RIGHT))
def test_unwritten_exercise_says_so(name):
    def unwritten(*args, **kwargs):
        raise NotImplementedError("Exercise: write it")

    stub = unwritten
    if name == "threshold_pruning":
        stub = type("Stub", (prune.BasePruningMethod,), {"PRUNING_TYPE": "unstructured", "compute_mask": unwritten,
                                                          "apply": classmethod(unwritten)})
    with pytest.raises(checks.CheckFailed, match="not written yet"):
        getattr(checks, f"check_{name}")(*[stub] * len(_args(RIGHT[name])))


def test_obs_step_accepts_any_correct_answer(capsys):
    checks.check_obs_step(obs_step_solved)  # solved from H, float32, returned as a list
    checks.check_obs_step(lambda w, H_inv, q: (torch.tensor(obs_step(w, H_inv, q)[0]), obs_step(w, H_inv, q)[1].float()))
    assert capsys.readouterr().out.count("hidden cases passed") == 2


def test_checks_reject_a_value_instead_of_a_function():
    with pytest.raises(TypeError, match="your function"):
        checks.check_global_sparsity(0.5)
    with pytest.raises(TypeError, match="BasePruningMethod"):
        checks.check_threshold_pruning(strip_pruning)


def test_reference_answers_agree_with_the_package():
    torch.manual_seed(0)
    w = torch.randn(6, 9)
    assert torch.equal(fine_grained_mask(w, 0.4), masks.fine_grained_mask(w, 0.4).float())
    model = nn.Sequential(nn.Linear(4, 3))
    batches = [(torch.randn(5, 4), torch.randint(0, 3, (5,)))]
    assert torch.allclose(one_layer(lambda w, g: (w * g).abs())(model, "0", batches), criteria.taylor(model, batches)["0"])
    assert torch.allclose(one_layer(lambda w, g: g.abs())(model, "0", batches), criteria.gradient(model, batches)["0"])


def test_a_check_leaves_the_global_random_state_alone():
    import torch

    from deeplsp_helpers import checks

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    checks.check_fine_grained_mask(fine_grained_mask)  # this check seeds the RNG for its hidden cases
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("name", sorted(RIGHT_ALSO))
def test_checks_of_chapters_01_03_04_06_07_08_leave_the_random_state_alone_and_are_fast(name, capsys):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    start = time.perf_counter()
    getattr(checks, f"check_{name}")(*_args(RIGHT[name]))
    seconds = time.perf_counter() - start
    assert torch.equal(torch.rand(3), expected)
    assert seconds < 10, f"check_{name} took {seconds:.1f} s (meant to take under 1.5 s; generous on a busy machine)"
    capsys.readouterr()


@pytest.mark.parametrize("name", sorted(n for n in RIGHT_ALSO if isinstance(RIGHT[n], tuple)))
def test_an_experiment_check_says_which_function_is_not_written(name):
    def unwritten(*args, **kwargs):
        raise NotImplementedError("Exercise: write it")

    measure, answer = RIGHT[name]
    with pytest.raises(checks.CheckFailed, match="not written yet"):
        getattr(checks, f"check_{name}")(measure, unwritten)
    with pytest.raises(TypeError, match="your function"):
        getattr(checks, f"check_{name}")(measure, 0.5)  # a value, not the function



@pytest.mark.parametrize("name,index", [(n, i) for n in sorted(WRONG_TOLD_00_02_05)
                                        for i in range(len(WRONG_TOLD_00_02_05[n]))])
def test_wrong_answers_of_chapters_00_02_05_are_told_what_is_wrong(name, index):
    answer, says = WRONG_TOLD_00_02_05[name][index]
    with pytest.raises(checks.CheckFailed, match=says):
        getattr(checks, f"check_{name}")(answer)


def test_an_answer_read_off_a_measurement_is_checked_against_that_measurement(capsys):
    measured = {"lenet": 6.0, "vgg": 1.8}
    checks.check_answer("the model batching helps most", "lenet", lambda: max(measured, key=measured.get))
    assert "as your measurement says" in capsys.readouterr().out
    checks.check_answer("a ratio", torch.tensor(0.5, dtype=torch.float32), 0.5)  # a float32 tensor is fine
    with pytest.raises(checks.CheckFailed, match="your own measurement above gives 'lenet'"):
        checks.check_answer("the model batching helps most", "vgg", lambda: max(measured, key=measured.get))
    with pytest.raises(checks.CheckFailed, match="not written yet"):
        checks.check_answer("q", ..., lambda: 1 / 0)  # the expected value is not computed before an answer exists
    with pytest.raises(checks.CheckFailed, match="has not run"):
        checks.check_answer("q", "lenet", lambda: undefined_measurement)  # noqa: F821 - the measurement never ran
    import numpy as np
    checks.check_answer("a numpy flag", True, lambda: np.bool_(True))
    with pytest.raises(checks.CheckFailed):
        checks.check_answer("a flag", 1, True)  # 1 is not True: a yes/no question takes a bool
    with pytest.raises(TypeError):
        checks.check_answer("", 1, 1)
