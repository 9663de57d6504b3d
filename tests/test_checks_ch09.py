"""Chapter 09 (pruning language models): its exercise checks accept right answers and reject known-wrong ones, with a
message."""

import math

import torch
from check_cases import chapter_tests
from torch.nn import functional as F

from deeplsp_helpers.checks import ch09_language_models


def perplexity_from_logits(logits, targets):
    nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())  # mean over all N·T tokens
    return float(torch.exp(nll))


def _ppl_gather(logits, targets):  # a 0-d tensor is a fine answer
    return torch.exp(-logits.log_softmax(-1).gather(-1, targets[..., None]).mean())


def _ppl_bits(logits, targets):  # 2 ** (the mean NLL in bits) is the same number
    bits = F.cross_entropy(logits.flatten(0, 1), targets.flatten()) / math.log(2)
    return 2 ** bits.item()


def _ppl_loop(logits, targets):  # plain Python, float64
    n, t, _ = logits.shape
    logp = logits.double().log_softmax(-1)
    return math.exp(-sum(logp[i, j, targets[i, j]].item() for i in range(n) for j in range(t)) / (n * t))


def _nll(logits, targets, reduction="mean"):
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction=reduction)


def _ppl_transposed(logits, targets):  # cross_entropy with the classes in dim 1: logits [N, V, T]
    return F.cross_entropy(logits.transpose(1, 2), targets).exp()


def _ppl_in_place(logits, targets):  # subtracts the max in place: the same perplexity, but the caller's logits change
    logits -= logits.max(-1, keepdim=True).values
    return perplexity_from_logits(logits, targets)


def block_influence(x_in, x_out):
    cos = torch.nn.functional.cosine_similarity(x_in, x_out, dim=-1)  # [N, T]
    return float(1 - cos.mean())


def _bi_by_hand(x_in, x_out):  # a float32 0-d tensor
    cos = (x_in * x_out).sum(-1) / (x_in.norm(dim=-1) * x_out.norm(dim=-1))
    return 1 - cos.mean()


def _bi_per_sequence(x_in, x_out):  # the mean of the sequences' means: the same, all sequences being as long
    return (1 - F.cosine_similarity(x_in, x_out, dim=-1)).mean(1).mean().item()


def _bi_in_place(x_in, x_out):
    x_in /= x_in.norm(dim=-1, keepdim=True)
    x_out /= x_out.norm(dim=-1, keepdim=True)
    return float(1 - (x_in * x_out).sum(-1).mean())


def decode_step(q, k_new, v_new, k_cache, v_cache):
    k = torch.cat([k_cache, k_new], dim=1)
    v = torch.cat([v_cache, v_new], dim=1)
    att = (q @ k.transpose(-2, -1)) / q.shape[-1] ** 0.5
    return att.softmax(dim=-1) @ v, k, v


def _decode_sdpa(q, k_new, v_new, k_cache, v_cache):
    k, v = torch.cat([k_cache, k_new], 1), torch.cat([v_cache, v_new], 1)
    return F.scaled_dot_product_attention(q, k, v), k, v


def _decode_einsum(q, k_new, v_new, k_cache, v_cache):
    k, v = torch.cat((k_cache, k_new), dim=-2), torch.cat((v_cache, v_new), dim=-2)
    weights = torch.einsum("hqd,hkd->hqk", q, k).div(math.sqrt(q.shape[-1])).softmax(-1)
    return torch.einsum("hqk,hkd->hqd", weights, v), k, v


def _decode_with(scale=None, dim=-1, cat_dim=1, attend_cache=False, old_cache=False, prepend=False):
    """decode_step with one mistake: the scale of the scores, the softmax's dim, the concatenation's dim, attending
    to the old cache only, returning the old caches, or putting the new token first."""
    def step(q, k_new, v_new, k_cache, v_cache):
        pair = lambda cache, new: torch.cat([new, cache] if prepend else [cache, new], dim=cat_dim)  # noqa: E731
        k, v = pair(k_cache, k_new), pair(v_cache, v_new)
        keys, values = (k_cache, v_cache) if attend_cache else (k, v)
        s = q.shape[-1] ** -0.5 if scale is None else scale
        out = (q @ keys.transpose(-2, -1) * s).softmax(dim=dim) @ values
        return (out, k_cache, v_cache) if old_cache else (out, k, v)
    return step


def _decode_causal(q, k_new, v_new, k_cache, v_cache):  # is_causal with one query: it sees the first key only
    k, v = torch.cat([k_cache, k_new], 1), torch.cat([v_cache, v_new], 1)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True), k, v


def _decode_in_place(q, k_new, v_new, k_cache, v_cache):
    q /= q.shape[-1] ** 0.5
    k, v = torch.cat([k_cache, k_new], 1), torch.cat([v_cache, v_new], 1)
    return (q @ k.transpose(-2, -1)).softmax(-1) @ v, k, v


RIGHT_ALSO = {  # the first answer is the notebook's; each one must pass
    "perplexity_from_logits": [perplexity_from_logits, _ppl_gather, _ppl_bits, _ppl_loop,
                               _ppl_transposed],
    "block_influence": [block_influence, _bi_by_hand, _bi_per_sequence],
    "decode_step": [decode_step, _decode_sdpa, _decode_einsum],
}
RIGHT = {name: answers[0] for name, answers in RIGHT_ALSO.items()}

WRONG_TOLD = {  # (wrong answer, what the message must say)
    "perplexity_from_logits": [
        (lambda logits, targets: _nll(logits, targets).item(), "the cross-entropy in nats.*perplexity is exp of it"),
        (lambda logits, targets: 2 ** _nll(logits, targets).item(), "2 \\*\\* … goes with the NLL in bits"),
        (lambda logits, targets: _nll(logits, targets, "none").view(targets.shape).mean(1).exp().mean().item(),
         "average the log-likelihoods over all N·T tokens, then exponentiate"),
        (lambda logits, targets: _nll(logits, targets, "none").exp().mean().item(),
         "average the log-likelihoods over all N·T tokens, then exponentiate"),
        (lambda logits, targets: 1 / logits.softmax(-1).gather(-1, targets[..., None]).mean().item(),
         "not the probabilities"),
        (lambda logits, targets: math.exp(_nll(logits[:, :-1], targets[:, 1:]).item()),
         "already the next tokens.*do not shift them again"),
        (lambda logits, targets: math.exp(-logits.log_softmax(1).gather(-1, targets[..., None]).mean().item()),
         "softmax runs over the vocabulary, the last dimension"),
        (lambda logits, targets: F.cross_entropy(logits, targets).exp().item(), "classes in dim 1"),
        (lambda logits, targets: _nll(logits, targets, "none").view(targets.shape).mean(1).exp(),
         "return one number.*one perplexity for the batch"),
        (_ppl_in_place, "must not change its inputs"),
    ],
    "block_influence": [
        (lambda x_in, x_out: float(F.cosine_similarity(x_in, x_out, dim=-1).mean()), "influence is 1 − cos"),
        (lambda x_in, x_out: float(1 - F.cosine_similarity(x_in, x_out, dim=1).mean()),
         "cosine per token, over the feature dimension D.*not over the tokens"),
        (lambda x_in, x_out: float(1 - F.cosine_similarity(x_in.flatten(), x_out.flatten(), dim=0)),
         "cosine per token, over the feature dimension D.*flattened"),
        (lambda x_in, x_out: float((x_out - x_in).norm(dim=-1).mean()),
         "a distance depends on scale; BI is scale-free: use the cosine"),
        (lambda x_in, x_out: float(F.mse_loss(x_out, x_in)), "a distance depends on scale; BI is scale-free"),
        (lambda x_in, x_out: float(1 - F.cosine_similarity(x_in.mean((0, 1)), x_out.mean((0, 1)), dim=0)),
         "average the per-token values .*not the vectors"),
        (lambda x_in, x_out: 1 - F.cosine_similarity(x_in, x_out, dim=-1), "return one number"),
        (_bi_in_place, "must not change its inputs"),
    ],
    "decode_step": [
        (_decode_with(scale=1.0), "by 1/sqrt\\(d\\)"),
        (lambda q, *args: _decode_with(scale=1 / q.shape[-1])(q, *args), "1/sqrt\\(d\\), not 1/d"),
        (_decode_with(attend_cache=True), "the new token attends to itself too: append k_new/v_new"),
        (_decode_with(old_cache=True), "return the grown cache.*not the one passed in"),
        (_decode_with(dim=-2), "softmax over the keys"),
        (_decode_with(dim=0), "softmax over the keys"),
        (_decode_with(cat_dim=0), "concatenate along dim 1"),
        (_decode_with(cat_dim=-1), "concatenate along dim 1"),
        (_decode_with(prepend=True), "at the end of the cache"),
        (_decode_causal, "no mask is needed.*top-left"),
        (_decode_in_place, "must not change its inputs"),
        (lambda *args: decode_step(*args)[0][:, 0], "three tensors"),
        (lambda *args: (decode_step(*args)[0][:, 0], *decode_step(*args)[1:]), "out should have shape"),
    ],
}

WRONG = {name: [answer for answer, _ in told] for name, told in WRONG_TOLD.items()}

# test_… functions for pytest
globals().update(chapter_tests(ch09_language_models, RIGHT, WRONG, WRONG_TOLD, RIGHT_ALSO))
