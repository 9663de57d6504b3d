"""The byte-level language model of chapter 09: :class:`TinyGPT`, a small decoder built from the ViT's sublayers
(:mod:`deeplsp_helpers.transformer_layers`) with causal attention and a KV cache for generation.

``deeplsp_helpers.models`` re-exports these classes and builds ``TinyGPT`` as ``build_model("gpt")``; training,
perplexity, generation and the structured cuts of a decoder are in :mod:`deeplsp_helpers.lm`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._validate import check_ints
from .transformer_layers import SelfAttention, TransformerBlock

__all__ = ["CausalSelfAttention", "DecoderBlock", "TinyGPT"]


class CausalSelfAttention(SelfAttention):
    """:class:`SelfAttention` for a decoder: token ``t`` attends to tokens ``0..t`` only, and an optional KV cache.

    ``cache`` is a dict owned by the caller (one per block, from :meth:`TinyGPT.new_cache`): on every call the keys
    and values of the new tokens are appended to ``cache["k"]`` / ``cache["v"]`` ([N, heads, tokens so far,
    head_dim]), so generating one token costs one row of attention instead of recomputing the whole prefix.
    The same ``q_proj``/``k_proj``/``v_proj``/``out_proj`` layout as the ViT's: heads are removed the same way.
    """

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        q, k, v = self._split_heads(x)  # [N,h,T,d] each
        h, t, d = q.shape[1:]
        past = 0
        if cache is not None:
            if "k" in cache:
                if cache["k"].shape[1] != h or cache["k"].shape[3] != d:
                    raise ValueError(f"the KV cache holds {cache['k'].shape[1]} heads of {cache['k'].shape[3]}, the "
                                     f"attention now has {h} of {d} (heads removed?): start a new cache")
                past = cache["k"].shape[2]
                k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)  # [N,h,past+T,d]
            cache["k"], cache["v"] = k, v
        if past == 0:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # [N,h,T,d]
        elif t == 1:  # one new token sees every cached one
            out = F.scaled_dot_product_attention(q, k, v)
        else:  # new token i (position past+i) sees keys 0..past+i
            allowed = torch.ones(t, past + t, dtype=torch.bool, device=x.device).tril(diagonal=past)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return self._merge_heads(out)


class DecoderBlock(TransformerBlock):
    """:class:`TransformerBlock` with causal attention: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int):
        super().__init__(dim, num_heads, mlp_hidden)
        self.attn = CausalSelfAttention(dim, num_heads)

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cache)
        return x + self.mlp(self.norm2(x))


class TinyGPT(nn.Module):
    """A small decoder-only language model over bytes (GPT-2's layout, Radford et al. 2019, scaled down).

    Tokens are the 256 byte values, so no tokenizer is needed: the text's UTF-8 bytes are the input. A token
    embedding plus a learned position embedding, ``depth`` pre-norm :class:`DecoderBlock` s, a final LayerNorm and
    a linear head to 256 logits (not tied to the embedding, so it can be pruned on its own). ``blocks`` is an
    ``nn.ModuleList``: deleting an entry removes a block (depth pruning) and the model runs with the rest.

    ``forward(idx, caches=None)``: ``idx`` [N, T] int64 byte values -> logits [N, T, 256]; position ``t``'s
    logits predict byte ``t+1``. With ``caches`` (from :meth:`new_cache`) the positions continue after the
    cached tokens. ``T`` (plus the cached tokens) must not exceed ``context``.
    """

    def __init__(self, vocab_size: int = 256, context: int = 256, dim: int = 128, depth: int = 4, num_heads: int = 4,
                 mlp_hidden: int = 512):
        super().__init__()
        check_ints(("vocab_size", vocab_size, 2), ("context", context, 1), ("depth", depth, 1),
                   ("mlp_hidden", mlp_hidden, 1))
        self.context = context
        self.tok_embed = nn.Embedding(vocab_size, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, context, dim))
        self.blocks = nn.ModuleList([DecoderBlock(dim, num_heads, mlp_hidden) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size, bias=False)
        nn.init.normal_(self.tok_embed.weight, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @property
    def vocab_size(self) -> int:
        return self.tok_embed.num_embeddings

    def new_cache(self) -> list[dict]:
        """An empty KV cache: one dict per block, filled by :meth:`forward`."""
        return [{} for _ in self.blocks]

    def forward(self, idx: torch.Tensor, caches: list[dict] | None = None) -> torch.Tensor:
        if not isinstance(idx, torch.Tensor) or idx.ndim != 2 or idx.dtype not in (torch.int64, torch.int32, torch.uint8):
            raise TypeError("idx must be an integer tensor [batch, tokens] of byte values, got "
                            + (f"{idx.dtype} of shape {tuple(idx.shape)}" if isinstance(idx, torch.Tensor)
                               else type(idx).__name__))
        if caches is not None and (not isinstance(caches, list) or len(caches) != len(self.blocks)
                                   or not all(isinstance(c, dict) for c in caches)):
            raise ValueError(f"caches must be the list from new_cache(), one dict per block ({len(self.blocks)})")
        n, t = idx.shape
        if n == 0 or t == 0:
            raise ValueError(f"idx holds no tokens (shape {tuple(idx.shape)}): give at least one sequence of one")
        past = 0
        if caches and "k" in caches[0]:
            past, cached_n = caches[0]["k"].shape[2], caches[0]["k"].shape[0]
            if cached_n != n:
                raise ValueError(f"the cache holds a batch of {cached_n} sequences, idx has {n}: continue the same "
                                 "batch, or start a new cache with new_cache()")
        if past + t > self.context:
            raise ValueError(f"a sequence of {past + t} tokens is longer than the model's context ({self.context}): "
                             "crop it to the last context tokens")
        idx = idx.long()
        if int(idx.min()) < 0 or int(idx.max()) >= self.vocab_size:
            raise ValueError(f"token ids must lie in [0, {self.vocab_size}), got {int(idx.min())}..{int(idx.max())}")
        x = self.tok_embed(idx) + self.pos_embed[:, past:past + t]  # [N,T,D]
        for b, block in enumerate(self.blocks):
            x = block(x, None if caches is None else caches[b])
        return self.head(self.norm(x))  # [N,T,vocab]
