"""Chapter 09, pruning language models: perplexity from logits, a block's influence (ShortGPT), one decoding step
with a KV cache."""

from __future__ import annotations

import math

import torch

from ._harness import CheckFailed, _as_real, _call, _callable, _expect, _own_rng, _passed, _show

_TOL = 1e-4  # relative (and absolute): answers are computed in float32, the expected values in float64


def _close(got, want):
    value = _as_real(got)[0]
    return value is not None and math.isfinite(value) and math.isclose(value, want, rel_tol=_TOL, abs_tol=_TOL)


def _diagnose(answers, variants, default=""):
    """The message of the only known-wrong variant (``(its values on every case, message)``) that agrees with all the
    answers (at ``_TOL``; a case where the variant is not a finite number is not compared); ``default`` otherwise."""
    fits = {message for values, message in variants
            if all(_close(a, v) for a, v in zip(answers, values) if math.isfinite(v))}
    return fits.pop() if len(fits) == 1 else default


def _one_number(name, got, where, what):
    """``got`` must be a number (a float or a one-element tensor), not one value per sequence or token."""
    if _as_real(got)[0] is None:
        many = isinstance(got, torch.Tensor) and got.numel() > 1
        raise CheckFailed(f"{name} on {where}: return one number (a float), got {_show(got)}"
                          + (f": {what}" if many else ""))


def _inputs_kept(name, inputs, before):
    _expect(all(torch.equal(a, b) for a, b in zip(inputs, before)),
            f"{name} must not change its inputs (an in-place operation such as x /= … or x.div_() changes the "
            f"caller's tensor: write x = x / … instead)")


# ---- perplexity ----------------------------------------------------------------------------------------------

def _ppl_variants(logits, targets):
    """``{name: value}`` of the right perplexity and of the known-wrong ones, in float64."""
    x, y = logits.double(), targets[..., None]
    logp = x.log_softmax(-1).gather(-1, y)[..., 0]           # [N, T]
    nll = -logp.mean().item()

    def shifted(a, b):  # the perplexity of logits a for targets b
        return math.exp(-a.log_softmax(-1).gather(-1, b[..., None]).mean().item())

    return {
        "right": math.exp(nll),
        "no exp": nll,
        "base 2": 2 ** nll, "base 2 of bits": math.exp(nll / math.log(2)), "base 10": 10 ** nll,
        "per sequence": (-logp.mean(1)).exp().mean().item(), "per token": (-logp).exp().mean().item(),
        "probability": 1 / logp.exp().mean().item(), "exp of -p": math.exp(-logp.exp().mean().item()),
        "shifted": shifted(x[:, :-1], targets[:, 1:]), "shifted back": shifted(x[:, 1:], targets[:, :-1]),
        "dim 1": math.exp(-x.log_softmax(1).gather(-1, y).mean().item()),
        "dim 0": math.exp(-x.log_softmax(0).gather(-1, y).mean().item()),
    }


_PPL_HINTS = {
    "no exp": "that is the cross-entropy in nats (the mean negative log-likelihood): perplexity is exp of it",
    "base 2": "perplexity is e ** (the mean NLL in nats), torch.exp; 2 ** … goes with the NLL in bits (log2)",
    "base 2 of bits": "perplexity is e ** (the mean NLL in nats), torch.exp; 2 ** … goes with the NLL in bits (log2)",
    "base 10": "perplexity is e ** (the mean NLL in nats), torch.exp, not 10 ** …",
    "per sequence": "average the log-likelihoods over all N·T tokens, then exponentiate once (not a mean of "
                    "per-sequence or per-token perplexities)",
    "per token": "average the log-likelihoods over all N·T tokens, then exponentiate once (not a mean of "
                 "per-sequence or per-token perplexities)",
    "probability": "average the log-probabilities log p(target), not the probabilities: exp(mean of −log p)",
    "exp of -p": "average the log-probabilities log p(target), not the probabilities: exp(mean of −log p)",
    "shifted": "targets are already the next tokens (targets[n, t] is what logits[n, t] predicts): do not shift "
               "them again",
    "shifted back": "targets are already the next tokens (targets[n, t] is what logits[n, t] predicts): do not "
                    "shift them again",
    "dim 1": "the softmax runs over the vocabulary, the last dimension (dim=-1) of logits [N, T, V]",
    "dim 0": "the softmax runs over the vocabulary, the last dimension (dim=-1) of logits [N, T, V]",
}


@_own_rng
def check_perplexity_from_logits(perplexity_from_logits):
    """perplexity_from_logits(logits, targets): ``exp`` of the mean over all ``N·T`` positions of ``−log softmax
    (logits[n, t])[targets[n, t]]``, for ``logits [N, T, V]`` and ``targets [N, T]`` (already the next tokens); a
    number (a float, or a one-element tensor)."""
    name = "perplexity_from_logits"
    _callable(perplexity_from_logits, name)
    gen = torch.Generator().manual_seed(0)
    cases = []
    for n, t, v, kind in ((2, 3, 5, "zeros"), (1, 4, 7, "constant"), (2, 4, 6, "peaked"), (3, 5, 7, "random"),
                          (2, 6, 11, "unequal"), (4, 2, 3, "random"), (1, 9, 4, "random")):
        targets = torch.randint(0, v, (n, t), generator=gen)
        logits = torch.randn(n, t, v, generator=gen) * 2
        if kind == "zeros":                           # uniform over the vocabulary: the perplexity is V exactly
            logits = torch.zeros(n, t, v)
        elif kind == "constant":
            logits = torch.full((n, t, v), 7.5)
        elif kind == "peaked":                        # sure and right every time: the perplexity is about 1
            logits = torch.zeros(n, t, v).scatter_(-1, targets[..., None], 30.0)
        elif kind == "unequal":                       # one confident sequence, one unsure: per-sequence losses differ
            logits[0] *= 4
            logits[1] *= 0.2
        cases.append((logits, targets, kind))
    answers, wanted = [], []
    for logits, targets, kind in cases:
        where = f"logits {list(logits.shape)} ({kind}) and targets {list(targets.shape)}"
        before = logits.clone(), targets.clone()
        try:
            got = _call(name, perplexity_from_logits, logits, targets)
        except CheckFailed as failed:
            hint = ("; cross_entropy wants the classes in dim 1: flatten to logits [N·T, V] and targets [N·T] "
                    "(or pass logits.transpose(1, 2))" if "Expected target size" in str(failed) else "")
            raise (failed if "not written yet" in str(failed) else CheckFailed(f"{failed} ({where}){hint}")) from None
        _inputs_kept(name, (logits, targets), before)
        _one_number(name, got, where, "the mean over all N·T tokens, exponentiated: one perplexity for the batch")
        answers.append(got)
        wanted.append(_ppl_variants(logits, targets))
    variants = [([w[key] for w in wanted], hint) for key, hint in _PPL_HINTS.items()]
    why = _diagnose(answers, variants, "exp of the mean over all N·T tokens of −log softmax(logits)[target]")
    for (logits, _, kind), got, want in zip(cases, answers, wanted):
        _expect(_close(got, want["right"]), f"{name} on logits {list(logits.shape)} ({kind}) should be "
                                            f"{want['right']:.8g}, got {_show(got)}: {why}")
    _passed(name, len(cases))


# ---- block influence -----------------------------------------------------------------------------------------

def _cos(a, b, dim):
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=dim)


def _bi_variants(x_in, x_out):
    a, b = x_in.double(), x_out.double()
    bi = 1 - _cos(a, b, -1).mean().item()
    return {
        "right": bi,
        "cos": 1 - bi, "dim 1": 1 - _cos(a, b, 1).mean().item(), "dim 0": 1 - _cos(a, b, 0).mean().item(),
        "flat": 1 - _cos(a.flatten(), b.flatten(), 0).item(),
        "l2": (b - a).norm(dim=-1).mean().item(), "dist": (b - a).norm().item(), "mse": (b - a).pow(2).mean().item(),
        "mean vectors": 1 - _cos(a.mean((0, 1)), b.mean((0, 1)), 0).item(),
        "mean per sequence": 1 - _cos(a.mean(1), b.mean(1), -1).mean().item(),
    }


_BI_HINTS = {
    "cos": "that is the mean cosine similarity: the influence is 1 − cos (0 for a block that changes nothing)",
    "dim 1": "one cosine per token, over the feature dimension D (dim=-1), not over the tokens",
    "dim 0": "one cosine per token, over the feature dimension D (dim=-1), not over the batch",
    "flat": "one cosine per token, over the feature dimension D (dim=-1), then the mean: not one cosine of the "
            "whole tensors flattened",
    "l2": "a distance depends on scale; BI is scale-free: use the cosine",
    "dist": "a distance depends on scale; BI is scale-free: use the cosine",
    "mse": "a distance depends on scale; BI is scale-free: use the cosine",
    "mean vectors": "average the per-token values 1 − cos(x_in[n, t], x_out[n, t]), not the vectors",
    "mean per sequence": "average the per-token values 1 − cos(x_in[n, t], x_out[n, t]), not the vectors",
}


@_own_rng
def check_block_influence(block_influence):
    """block_influence(x_in, x_out): ``1 − mean over all N·T tokens of cos(x_in[n, t, :], x_out[n, t, :])`` for the
    residual stream ``[N, T, D]`` entering and leaving a block (ShortGPT's Block Influence); a number."""
    name = "block_influence"
    _callable(block_influence, name)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, 8, generator=gen)
    turned = torch.stack([-x[..., 1::2], x[..., 0::2]], -1).flatten(-2)   # each pair (a, b) -> (-b, a): orthogonal
    y = torch.randn(3, 7, 16, generator=gen)
    near = y + torch.randn(3, 7, 16, generator=gen) * torch.linspace(0.05, 2.0, 7)[:, None]  # later tokens change more
    cases = [(x, x.clone(), "x_out = x_in"), (x, -x, "x_out = −x_in"), (x, 3 * x, "x_out = 3·x_in"),
             (x, turned, "x_out orthogonal to x_in"), (y, near, "x_out = x_in + noise"),
             (torch.randn(4, 3, 6, generator=gen), torch.randn(4, 3, 6, generator=gen), "random"),
             (torch.randn(1, 6, 5, generator=gen), torch.randn(1, 6, 5, generator=gen) + 1, "random")]
    answers, wanted = [], []
    for x_in, x_out, kind in cases:
        where = f"x_in, x_out {list(x_in.shape)} ({kind})"
        before = x_in.clone(), x_out.clone()
        got = _call(name, block_influence, x_in, x_out)
        _inputs_kept(name, (x_in, x_out), before)
        _one_number(name, got, where, "the mean over all N·T tokens of 1 − cos: one number for the block")
        answers.append(got)
        wanted.append(_bi_variants(x_in, x_out))
    variants = [([w[key] for w in wanted], hint) for key, hint in _BI_HINTS.items()]
    default = "1 − the mean over all N·T tokens of the cosine between x_in[n, t, :] and x_out[n, t, :]"
    if _close(answers[0], 0.0) and not _close(answers[2], 0.0):
        default = "a block that only scales its input (x_out = 3·x_in) has influence 0: BI is scale-free, use the " \
                  "cosine"
    why = _diagnose(answers, variants, default)
    for (x_in, _, kind), got, want in zip(cases, answers, wanted):
        _expect(_close(got, want["right"]), f"{name} on x_in, x_out {list(x_in.shape)} ({kind}) should be "
                                            f"{want['right']:.8g}, got {_show(got)}: {why}")
    _passed(name, len(cases))


# ---- decoding with a KV cache ----------------------------------------------------------------------------------

def _attend(q, k, v, scale=None, dim=-1):
    scores = q.double() @ k.double().transpose(-2, -1) * (q.shape[-1] ** -0.5 if scale is None else scale)
    return (scores.softmax(dim=dim) @ v.double()).float()


def _decode_call(decode_step, q, k_new, v_new, k_cache, v_cache, where):
    """Call decode_step and check what it returns: ``(out, k_cache2, v_cache2)``, each of the right shape."""
    name = "decode_step"
    before = [a.clone() for a in (q, k_new, v_new, k_cache, v_cache)]
    try:
        got = _call(name, decode_step, q, k_new, v_new, k_cache, v_cache)
    except CheckFailed as failed:
        hint = ("; concatenate along dim 1, the tokens: the caches are [H, t, d] and k_new/v_new [H, 1, d]"
                if "Sizes of tensors must match" in str(failed) else "")
        raise (failed if "not written yet" in str(failed) else CheckFailed(f"{failed} ({where}){hint}")) from None
    _inputs_kept(name, (q, k_new, v_new, k_cache, v_cache), before)
    _expect(isinstance(got, (tuple, list)) and len(got) == 3 and all(isinstance(g, torch.Tensor) for g in got),
            f"{name} must return three tensors (out, k_cache2, v_cache2), got {_show(got)}")
    h, t, d = k_cache.shape
    for which, cache, grown in (("k", k_cache, got[1]), ("v", v_cache, got[2])):
        shape = list(grown.shape)
        if shape == [h, t + 1, d]:
            continue
        if grown is cache or shape == [h, t, d]:
            why = f"return the grown cache cat([{which}_cache, {which}_new], dim=1), not the one passed in"
        elif shape in ([2 * h, 1, d], [h, 1, 2 * d]):
            why = "concatenate along dim 1, the tokens, not along the heads or the features"
        else:
            why = f"append {which}_new along dim 1, the tokens"
        raise CheckFailed(f"{name} on {where}: {which}_cache2 should have shape {[h, t + 1, d]} (the {t} earlier "
                          f"tokens and the new one), got {shape}: {why}")
    _expect(list(got[0].shape) == [h, 1, d], f"{name} on {where}: out should have shape {[h, 1, d]} (one new token "
                                             f"per head, like q), got {list(got[0].shape)}")
    return got


@_own_rng
def check_decode_step(decode_step):
    """decode_step(q, k_new, v_new, k_cache, v_cache): append the new token's key and value (``[H, 1, d]``) to the
    caches (``[H, t, d]``, t may be 0) along the tokens, and return ``(out, k_cache2, v_cache2)`` with ``out [H, 1, d]
    = softmax(q k_cache2ᵀ / sqrt(d)) v_cache2``; the inputs are left unchanged."""
    name = "decode_step"
    _callable(decode_step, name)
    gen = torch.Generator().manual_seed(2)
    cases = [(1, 0, 4), (3, 0, 8), (1, 1, 4), (3, 5, 8), (2, 7, 4), (3, 1, 8), (4, 3, 6)]
    for h, t, d in cases:
        q, k_new, v_new = (torch.randn(h, 1, d, generator=gen) * 2 for _ in range(3))
        k_cache, v_cache = torch.randn(h, t, d, generator=gen) * 2, torch.randn(h, t, d, generator=gen)
        where = f"H={h} heads, a cache of t={t} tokens, d={d}"
        out, k2, v2 = _decode_call(decode_step, q, k_new, v_new, k_cache, v_cache, where)
        k, v = torch.cat([k_cache, k_new], 1), torch.cat([v_cache, v_new], 1)
        for which, grown, want, new in (("k", k2, k, k_new), ("v", v2, v, v_new)):
            if not torch.equal(grown, want):
                why = f"append {which}_new to {which}_cache: cat([{which}_cache, {which}_new], dim=1)"
                if torch.equal(grown, torch.cat([new, want[:, :t]], 1)):
                    why = f"the new token goes at the end of the cache: cat([{which}_cache, {which}_new], dim=1)"
                elif torch.equal(grown, (v if which == "k" else k)):
                    why = "k_cache2 holds the keys and v_cache2 the values: they are swapped"
                raise CheckFailed(f"{name} on {where}: wrong {which}_cache2: {why}")
        out, want = out.float(), _attend(q, k, v)
        if torch.allclose(out, want, atol=1e-5, rtol=1e-4):
            continue
        # the first key only comes before the cache only: at t = 1 both are v_cache, and attending to the cache only
        # is already wrong at t = 0 (the first cases)
        variants = [(_attend(q, k, v, scale=1.0), "scale the scores q·kᵀ by 1/sqrt(d) (d = q.shape[-1])"),
                    (_attend(q, k, v, scale=1 / d), "scale the scores by 1/sqrt(d), not 1/d"),
                    (v[:, :1], "no mask is needed: the new token sees every cached token (is_causal=True with one "
                               "query lets it see only the first key: PyTorch aligns the causal mask top-left)"),
                    (_attend(q, k_cache, v_cache), "the new token attends to itself too: append k_new/v_new to "
                                                   "the caches before attending"),
                    (_attend(q, k, v, dim=-2), "softmax over the keys, the last dim of the scores [H, 1, t+1]"),
                    (_attend(q, k, v, dim=0), "softmax over the keys, the last dim of the scores [H, 1, t+1]")]
        why = next((message for value, message in variants if torch.allclose(out, value, atol=1e-5, rtol=1e-4)),
                   "out = softmax(q k_cache2ᵀ / sqrt(d), over the keys) v_cache2")
        raise CheckFailed(f"{name} on {where}: wrong out" + (" (with an empty cache it is v_new itself: the token "
                                                             "attends only to itself)" if t == 0 else "") + f": {why}")
    h, steps, d = 2, 6, 8                               # token by token, from an empty cache: causal attention
    q, k, v = (torch.randn(h, steps, d, generator=gen) for _ in range(3))
    k_cache, v_cache, outs = torch.zeros(h, 0, d), torch.zeros(h, 0, d), []
    for i in range(steps):
        out, k_cache, v_cache = _decode_call(decode_step, q[:, i:i + 1], k[:, i:i + 1], v[:, i:i + 1], k_cache,
                                             v_cache, f"step {i} of decoding {steps} tokens one by one")
        outs.append(out.float())
    full = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    wrong = [i for i in range(steps) if not torch.allclose(outs[i][:, 0], full[:, i], atol=1e-5, rtol=1e-4)]
    _expect(not wrong, f"{name}: decoding {steps} tokens one by one, each step fed the caches the previous one "
                       f"returned, should reproduce causal attention over the whole sequence; positions {wrong} differ")
    _passed(name, len(cases) + 1)
