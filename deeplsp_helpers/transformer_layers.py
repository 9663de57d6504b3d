"""The transformer's sublayers, shared by the Vision Transformer (``models.ViT``, chapter 08) and the language model
(``language_models.TinyGPT``, chapter 09): multi-head self-attention with one projection per role, the MLP, and the
pre-norm block that joins them. Written so that attention heads and MLP neurons can be removed physically
(:mod:`deeplsp_helpers.transformer_pruning`). ``deeplsp_helpers.models`` re-exports all three.
"""

from __future__ import annotations

import torch
from torch import nn

from ._validate import check_ints

__all__ = ["SelfAttention", "MLP", "TransformerBlock"]


class SelfAttention(nn.Module):
    """Multi-head self-attention written out, with separate ``q_proj``, ``k_proj``, ``v_proj`` and ``out_proj``.

    Head ``h`` owns rows ``h*head_dim:(h+1)*head_dim`` of the q/k/v projections and the same columns of
    ``out_proj``, so a head is removed by slicing those four weights (``transformer_pruning.remove_heads``).
    ``num_heads`` is read off the weights (``q_proj.out_features // head_dim``): a model resized by
    ``serialization.load_pruned`` or by any other surgery runs with the heads it has. Assigning ``num_heads``
    (as Torch-Pruning users do after pruning) is accepted only if it agrees with the weights.
    Vaswani et al., "Attention Is All You Need", arXiv:1706.03762.
    """

    def __init__(self, dim: int, num_heads: int, head_dim: int | None = None):
        super().__init__()
        check_ints(("dim", dim, 1), ("num_heads", num_heads, 1))
        if head_dim is None:
            if dim % num_heads:
                raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}; pass head_dim")
            head_dim = dim // num_heads
        check_ints(("head_dim", head_dim, 1))
        self.head_dim = head_dim
        inner = num_heads * head_dim
        self.q_proj = nn.Linear(dim, inner)
        self.k_proj = nn.Linear(dim, inner)
        self.v_proj = nn.Linear(dim, inner)
        self.out_proj = nn.Linear(inner, dim)

    @property
    def num_heads(self) -> int:
        return self.q_proj.out_features // self.head_dim

    @num_heads.setter
    def num_heads(self, value: int) -> None:
        if value != self.num_heads:
            raise ValueError(f"num_heads follows from the weights: q_proj has {self.q_proj.out_features} rows = "
                             f"{self.num_heads} heads of {self.head_dim}, not {value!r}")

    def _check_shapes(self) -> None:
        inner = self.q_proj.out_features
        if inner % self.head_dim or {self.k_proj.out_features, self.v_proj.out_features, self.out_proj.in_features} != {inner}:
            raise RuntimeError(f"attention projections disagree: q/k/v rows {self.q_proj.out_features}/"
                               f"{self.k_proj.out_features}/{self.v_proj.out_features}, out_proj columns "
                               f"{self.out_proj.in_features}; each must be num_heads x head_dim ({self.head_dim})")

    def _split_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values of ``x`` [N,T,D], each [N,h,T,d]: head ``h`` is its block of rows."""
        self._check_shapes()
        n, t, _ = x.shape
        h, d = self.num_heads, self.head_dim
        return tuple(p(x).view(n, t, h, d).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))

    def _merge_heads(self, out: torch.Tensor) -> torch.Tensor:
        """The heads' outputs [N,h,T,d] side by side, [N,T,h*d], through ``out_proj`` -> [N,T,D]."""
        n, h, t, d = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(n, t, h * d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split_heads(x)
        attn = (q @ k.transpose(-2, -1)) * self.head_dim ** -0.5  # [N,h,T,T]
        return self._merge_heads(attn.softmax(dim=-1) @ v)  # [N,h,T,d] -> [N,T,D]


class MLP(nn.Module):
    """The transformer's feed-forward sublayer: ``fc1`` -> GELU -> ``fc2``; hidden neuron ``j`` is row ``j`` of
    ``fc1`` (and its bias) and column ``j`` of ``fc2``."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))  # [N,T,D] -> [N,T,hidden] -> [N,T,D]


class TransformerBlock(nn.Module):
    """Pre-norm block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``. Heads and hidden neurons are internal to
    their sublayer: removing them leaves the residual stream's width, and every other layer, unchanged."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))
