"""Language-model helpers for chapter 09: perplexity, generation with a KV cache, training and distillation,
and the structured cuts of a decoder (whole blocks, attention heads, MLP neurons).

The model is :class:`deeplsp_helpers.models.TinyGPT` (bytes in, next-byte logits out) and the text comes from
:mod:`deeplsp_helpers.text_data`. Perplexity is per byte: ``exp`` of the mean negative log-likelihood (nats) of
each next byte, so 1 is a model that is always sure and right, and 256 one that guesses uniformly.

- :func:`perplexity` on non-overlapping windows of held-out text;
- :func:`generate` (``use_cache=True``: one new token per step through the KV cache; ``False``: the whole
  sequence recomputed each step; both give the same tokens);
- :func:`train_lm`: AdamW, warm-up then cosine decay, gradient clipping; with ``teacher`` the loss is the
  KL divergence to the teacher's next-byte distribution (logit distillation) instead of the data's next byte;
  the best step on validation is kept;
- :func:`block_influence` (ShortGPT, Men et al., arXiv:2403.03853): ``1 - cos(block input, block output)`` per
  token, averaged; :func:`remove_blocks`;
- :func:`width_importance` (Minitron, Muralidharan et al., arXiv:2407.14679): activation-based importance of
  each head and each MLP neuron on calibration text.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._modes import eval_mode, run_hooked, train_mode
from ._validate import check_bool, check_int, check_module, check_number
from .text_data import encode, eval_windows, random_windows

__all__ = ["perplexity", "nll_from_logits", "generate", "sample_text", "train_lm", "block_influence",
           "remove_blocks", "width_importance", "calibration_text"]


def _check_lm(model) -> nn.Module:
    check_module(model)
    if not (hasattr(model, "blocks") and hasattr(model, "context") and hasattr(model, "new_cache")):
        raise TypeError(f"model must be a language model like models.TinyGPT (blocks, context, new_cache), "
                        f"got {type(model).__name__}")
    return model


def nll_from_logits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood (nats) of ``targets`` [N, T] under ``logits`` [N, T, vocab]."""
    if not isinstance(logits, torch.Tensor) or logits.ndim != 3:
        raise TypeError("logits must be a tensor [batch, tokens, vocab]")
    if not isinstance(targets, torch.Tensor) or targets.shape != logits.shape[:2]:
        raise ValueError(f"targets must be [batch, tokens] = {tuple(logits.shape[:2])}, got "
                         f"{tuple(targets.shape) if isinstance(targets, torch.Tensor) else type(targets).__name__}")
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise TypeError(f"targets must be integer token ids (e.g. torch.int64), got {targets.dtype}")
    vocab = logits.shape[-1]
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= vocab):
        raise ValueError(f"targets must be token ids in [0, {vocab}) (the logits' vocabulary), got "
                         f"{int(targets.min())}..{int(targets.max())}")
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten().long())


def perplexity(model: nn.Module, tokens: torch.Tensor, *, max_windows: int | None = None, batch_size: int = 16) -> float:
    """Per-byte perplexity of ``model`` on ``tokens`` (a 1-D byte tensor, e.g. ``load_text().val``): the text cut
    into non-overlapping windows of the model's context (at most ``max_windows``), every byte after the first of a
    window predicted from the ones before it in the window."""
    _check_lm(model)
    check_int(batch_size, "batch_size", 1)
    x, y = eval_windows(tokens, model.context, max_windows)
    total, count = 0.0, 0
    with eval_mode(model), torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb, yb = x[i:i + batch_size], y[i:i + batch_size]
            total += nll_from_logits(model(xb), yb).item() * yb.numel()
            count += yb.numel()
    return math.exp(total / count)


def calibration_text(tokens: torch.Tensor, n_windows: int = 16, context: int = 256, batch_size: int = 8,
                     seed: int = 0) -> list[torch.Tensor]:
    """``n_windows`` random windows of ``tokens`` (the *training* split) in batches of ``batch_size``: calibration
    input for Wanda, SparseGPT and the importance scores (int64 [batch, context] each)."""
    check_int(n_windows, "n_windows", 1)
    check_int(batch_size, "batch_size", 1)
    g = torch.Generator().manual_seed(seed)
    x, _ = random_windows(tokens, n_windows, context, g)
    return list(x.split(batch_size))


def generate(model: nn.Module, prompt: torch.Tensor, max_new_tokens: int, *, temperature: float = 0.8,
             top_k: int | None = None, seed: int = 0, use_cache: bool = True) -> torch.Tensor:
    """``prompt`` (1-D byte tensor) followed by ``max_new_tokens`` sampled bytes (1-D int64).

    ``temperature`` 0 takes the most likely byte each step (greedy); otherwise sampling from the softmax of
    ``logits / temperature`` (only the ``top_k`` most likely, if given) with a generator seeded by ``seed``.
    With ``use_cache`` the prompt is run once (prefill) and each new byte is one step through the KV cache
    (decode); without it the whole sequence is recomputed for every byte. Both give the same bytes.
    Raises ``ValueError`` if prompt plus new tokens exceed the model's context.
    """
    _check_lm(model)
    check_int(max_new_tokens, "max_new_tokens", 0)
    check_number(temperature, "temperature", 0, strict=False)
    check_bool(use_cache, "use_cache")
    if top_k is not None:
        check_int(top_k, "top_k", 1)
    if not isinstance(prompt, torch.Tensor) or prompt.ndim != 1 or prompt.is_floating_point() or prompt.is_complex() \
            or prompt.dtype == torch.bool:
        raise TypeError("prompt must be a 1-D integer tensor of byte values, e.g. text_data.encode('And God said')")
    if len(prompt) == 0:
        raise ValueError("prompt is empty: give at least one token")
    if len(prompt) + max_new_tokens > model.context:
        raise ValueError(f"prompt ({len(prompt)}) + max_new_tokens ({max_new_tokens}) = "
                         f"{len(prompt) + max_new_tokens} tokens is longer than the model's context ({model.context})")
    g = torch.Generator().manual_seed(seed)
    seq = prompt.long()[None]  # [1, T]
    caches = model.new_cache() if use_cache else None
    with eval_mode(model), torch.no_grad():
        logits = model(seq, caches)[:, -1]
        for _ in range(max_new_tokens):
            if temperature == 0:
                nxt = logits.argmax(dim=-1, keepdim=True)
            else:
                scaled = logits / temperature
                if top_k is not None:
                    kth = scaled.topk(min(top_k, scaled.shape[-1]), dim=-1).values[:, -1:]
                    scaled = scaled.masked_fill(scaled < kth, float("-inf"))
                nxt = torch.multinomial(scaled.softmax(dim=-1), 1, generator=g)
            seq = torch.cat([seq, nxt], dim=1)
            if len(seq[0]) == len(prompt) + max_new_tokens:
                break
            logits = (model(nxt, caches) if use_cache else model(seq))[:, -1]
    return seq[0]


def sample_text(model: nn.Module, prompt: str, max_new_tokens: int = 160, **kwargs) -> str:
    """:func:`generate` from a string prompt; returns the prompt and its continuation as text."""
    from .text_data import decode

    return decode(generate(model, encode(prompt), max_new_tokens, **kwargs))


def _lr_at(step: int, steps: int, warmup: int, lr: float, final: float = 0.1) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress)))


def train_lm(model: nn.Module, train_tokens: torch.Tensor, val_tokens: torch.Tensor | None = None, *, steps: int,
             lr: float = 2e-3, batch_size: int = 32, warmup: int = 50, weight_decay: float = 0.1,
             eval_every: int = 100, eval_windows: int = 64, teacher: nn.Module | None = None, seed: int = 0,
             progress: bool = False) -> dict:
    """Train ``model`` for ``steps`` AdamW steps on random windows of ``train_tokens`` (warm-up, cosine decay to
    10 % of ``lr``, gradients clipped at norm 1); returns ``{"steps", "val_ppl", "seconds", "best_step", ...}``.

    With ``teacher`` (a dense model) the loss is ``KL(teacher || model)`` of the next-byte distributions at every
    position (logit distillation, as Minitron's retraining), not the data's next byte. Every ``eval_every``
    steps (and at the end) the validation perplexity on ``eval_windows`` windows of ``val_tokens`` is recorded,
    and the model ends with the weights of the best one (selection on validation). ``progress`` prints a line
    per evaluation.
    """
    _check_lm(model)
    check_int(steps, "steps", 1)
    check_int(warmup, "warmup", 0)
    check_int(eval_every, "eval_every", 1)
    check_number(lr, "lr", 0)
    check_number(weight_decay, "weight_decay", 0, strict=False)
    if teacher is not None:
        _check_lm(teacher)
    g = torch.Generator().manual_seed(seed)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "pos_embed" not in n]
    other = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "pos_embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95))
    history = {"steps": [], "val_ppl": [], "train_loss": []}
    best, best_state = float("inf"), None
    start, running = time.perf_counter(), []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, steps, warmup, lr)
        x, y = random_windows(train_tokens, batch_size, model.context, g)
        with train_mode(model):
            logits = model(x)
            if teacher is None:
                loss = nll_from_logits(logits, y)
            else:
                with eval_mode(teacher), torch.no_grad():
                    target = teacher(x).log_softmax(-1)
                if target.shape != logits.shape:
                    raise ValueError(f"the teacher's logits {tuple(target.shape)} do not match the model's "
                                     f"{tuple(logits.shape)}: distillation needs the same vocabulary (byte values)")
                loss = F.kl_div(logits.log_softmax(-1).flatten(0, 1), target.flatten(0, 1), log_target=True,
                                reduction="batchmean")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running.append(loss.item())
        if val_tokens is not None and ((step + 1) % eval_every == 0 or step + 1 == steps):
            ppl = perplexity(model, val_tokens, max_windows=eval_windows)
            history["steps"].append(step + 1)
            history["val_ppl"].append(ppl)
            history["train_loss"].append(sum(running) / len(running))
            running = []
            if ppl < best:
                best, best_state = ppl, copy.deepcopy(model.state_dict())
            if progress:
                print(f"step {step + 1}/{steps}: train loss {history['train_loss'][-1]:.3f}, val perplexity "
                      f"{ppl:.3f} ({time.perf_counter() - start:.0f} s)", flush=True)
    if best_state is not None:
        model.load_state_dict(best_state)
        history["best_step"] = history["steps"][history["val_ppl"].index(best)]
    else:  # no validation text (or no finite perplexity): the model keeps the last step's weights
        history["best_step"] = steps
    history["seconds"] = time.perf_counter() - start
    return history


def _check_batches(batches) -> Iterable:
    """``batches`` itself unless it is a single tensor (iterating one would feed its rows as 1-D "batches")."""
    if isinstance(batches, torch.Tensor):
        raise TypeError(f"batches must be an iterable of [batch, tokens] tensors (e.g. calibration_text(...)), got a "
                        f"single tensor of shape {tuple(batches.shape)}: wrap it in a list, [x]")
    return batches


def _block_io(model: nn.Module, batches: Iterable) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    batches = _check_batches(batches)
    records = [[] for _ in model.blocks]

    def hook(b):
        def fn(module, inputs, output):
            records[b].append((inputs[0].detach(), output.detach()))
        return fn

    run_hooked(model, batches, [blk.register_forward_hook(hook(b)) for b, blk in enumerate(model.blocks)])
    return records


def block_influence(model: nn.Module, batches: Iterable) -> list[float]:
    """ShortGPT's block influence of every block: ``1 - cos(x_in, x_out)`` between the residual stream entering
    and leaving the block, per token, averaged over the calibration tokens. Low influence: the block changes
    the stream little, and removing it should hurt least."""
    _check_lm(model)
    out = []
    for rec in _block_io(model, batches):
        cos = torch.cat([F.cosine_similarity(i, o, dim=-1).flatten() for i, o in rec])
        out.append(float(1 - cos.mean()))
    return out


def remove_blocks(model: nn.Module, indices: Sequence[int]) -> nn.Module:
    """A copy of ``model`` without the blocks at ``indices`` (depth pruning); the residual stream, embeddings and
    head are unchanged, so the model runs as before with fewer blocks."""
    _check_lm(model)
    depth = len(model.blocks)
    if isinstance(indices, torch.Tensor):
        if indices.ndim != 1 or indices.is_floating_point() or indices.dtype == torch.bool:
            raise TypeError(f"indices must be a sequence of block indices or a 1-D integer tensor, got "
                            f"{indices.dtype} of shape {tuple(indices.shape)}")
        indices = indices.tolist()
    if isinstance(indices, (str, bytes)) or not isinstance(indices, Iterable):
        raise TypeError(f"indices must be a sequence of block indices, e.g. [{depth - 1}], got {indices!r}")
    indices = list(indices)
    idx = [int(check_int(i, "block index", 0, depth - 1)) for i in indices]
    if len(set(idx)) != len(idx):
        raise ValueError(f"block indices repeat: {list(indices)}")
    if len(idx) >= depth:
        raise ValueError(f"cannot remove all {depth} blocks")
    slim = copy.deepcopy(model)
    slim.blocks = nn.ModuleList([b for i, b in enumerate(slim.blocks) if i not in idx])
    return slim


def width_importance(model: nn.Module, batches: Iterable) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Minitron's activation-based importance, on calibration text, aggregated as the paper recommends (mean over
    the positions of a sequence, then L2 norm over the sequences; NVIDIA Model Optimizer does the same): an MLP
    neuron's importance is the L2 norm over sequences of the mean over positions of ``|activation|`` (after GELU,
    the input of ``fc2``, where Model Optimizer measures it); an attention head's is the same aggregation of the
    L2 norm of its output (its slice of ``out_proj``'s input) at each position.
    Returns ``({attn name: [heads]}, {mlp name: [neurons]})``, keyed like
    :func:`transformer_pruning.remove_heads` / ``remove_mlp_neurons`` expect (the block's ``attn`` / ``mlp``)."""
    _check_lm(model)
    batches = _check_batches(batches)
    heads, neurons = {}, {}
    handles = []

    def on_attn_out(name, attn):
        def fn(module, inputs, output):
            x = inputs[0].detach()  # [N,T,h*d]: the heads' outputs side by side
            n, t, _ = x.shape
            per_head = x.view(n, t, attn.num_heads, attn.head_dim).norm(dim=-1)  # [N,T,h]
            heads[name] = heads.get(name, 0) + per_head.mean(dim=1).square().sum(dim=0)  # mean over T; squares over N
        return fn

    def on_act(name):
        def fn(module, inputs, output):
            a = output.detach()  # [N,T,hidden] after GELU
            neurons[name] = neurons.get(name, 0) + a.abs().mean(dim=1).square().sum(dim=0)
        return fn

    for b, blk in enumerate(model.blocks):
        handles.append(blk.attn.out_proj.register_forward_hook(on_attn_out(f"blocks.{b}.attn", blk.attn)))
        handles.append(blk.mlp.act.register_forward_hook(on_act(f"blocks.{b}.mlp")))
    run_hooked(model, batches, handles)
    return ({k: v.sqrt() for k, v in heads.items()}, {k: v.sqrt() for k, v in neurons.items()})  # L2 over sequences
