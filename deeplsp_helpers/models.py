"""Small reference models: for 28x28x1 FashionMNIST images, and a byte-level language model.

The four convolutional networks (``CNN_NAMES``) are sized so that a fine-tuning epoch on 10k samples takes
well under a minute on two CPU cores, while their convolutions are large enough that removing channels gives a
measurable CPU speed-up. The Vision Transformer (``TRANSFORMER_NAMES``, chapter 08) is written so that its
attention heads and MLP neurons can be removed physically (:mod:`deeplsp_helpers.transformer_pruning`).
The language model (``LANGUAGE_MODEL_NAMES``, chapter 09) is a small decoder built from the same sublayers, with
causal attention and a KV cache for generation (:class:`TinyGPT`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._validate import check_ints

__all__ = ["LeNet", "VGG", "ResNet", "MobileNet", "SelfAttention", "MLP", "TransformerBlock", "ViT", "CNN_NAMES",
           "CausalSelfAttention", "DecoderBlock", "TinyGPT", "TRANSFORMER_NAMES", "LANGUAGE_MODEL_NAMES",
           "IMAGE_MODEL_NAMES", "MODEL_NAMES", "build_model"]

NUM_CLASSES = 10


class LeNet(nn.Module):
    """LeNet-5 style: two 5x5 convolutions and three linear layers (LeCun et al., 1998)."""

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, kernel_size=5)  # [N,1,28,28] -> [N,6,24,24]
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5)  # [N,6,12,12] -> [N,16,8,8]
        self.pool = nn.MaxPool2d(2)
        self.relu = nn.ReLU()
        self.fc1 = nn.Linear(16 * 4 * 4, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu(self.conv1(x)))  # [N,6,12,12]
        x = self.pool(self.relu(self.conv2(x)))  # [N,16,4,4]
        x = torch.flatten(x, 1)  # [N,256]
        x = self.relu(self.fc1(x))
        x = self.relu(self.fc2(x))
        return self.fc3(x)


def _conv_bn_relu(cin: int, cout: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class VGG(nn.Module):
    """A small VGG (Simonyan & Zisserman, arXiv:1409.1556): conv-BN-ReLU blocks and max-pooling."""

    default_cfg = (32, 32, "M", 64, 64, "M", 128, 128, "M")

    def __init__(self, cfg=default_cfg, num_classes: int = NUM_CLASSES):
        super().__init__()
        layers, cin = [], 1
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers.append(_conv_bn_relu(cin, int(v)))
                cin = int(v)
        self.features = nn.Sequential(*layers)  # [N,1,28,28] -> [N,128,3,3]
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x)).flatten(1)  # [N,128]
        return self.classifier(x)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 projection) shortcut (He et al., arXiv:1512.03385)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """A small ResNet: a stem and three stages of one BasicBlock each (32, 64, 128 channels)."""

    def __init__(self, widths=(32, 64, 128), num_classes: int = NUM_CLASSES):
        super().__init__()
        self.stem = _conv_bn_relu(1, widths[0])  # [N,1,28,28] -> [N,32,28,28]
        blocks, cin = [], widths[0]
        for i, w in enumerate(widths):
            blocks.append(BasicBlock(cin, w, stride=1 if i == 0 else 2))
            cin = w
        self.layers = nn.Sequential(*blocks)  # -> [N,128,7,7]
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.classifier(self.pool(x).flatten(1))


class DepthwiseSeparable(nn.Module):
    """3x3 depthwise conv-BN-ReLU then 1x1 pointwise conv-BN-ReLU (Howard et al., arXiv:1704.04861)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.depthwise = _conv_bn_relu(cin, cin, stride=stride, groups=cin)
        self.pointwise = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class MobileNet(nn.Module):
    """A small MobileNet (v1 style) built from depthwise-separable blocks."""

    default_cfg = ((32, 1), (64, 2), (64, 1), (128, 2), (128, 1))

    def __init__(self, cfg=default_cfg, stem: int = 16, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.stem = _conv_bn_relu(1, stem)  # [N,1,28,28] -> [N,16,28,28]
        blocks, cin = [], stem
        for cout, stride in cfg:
            blocks.append(DepthwiseSeparable(cin, cout, stride))
            cin = cout
        self.layers = nn.Sequential(*blocks)  # -> [N,128,7,7]
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.classifier(self.pool(x).flatten(1))


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


class ViT(nn.Module):
    """A small Vision Transformer (Dosovitskiy et al., arXiv:2010.11929) for 28x28x1 images.

    4x4 patches embedded by a strided convolution (49 tokens) and a class token, a learned position embedding,
    ``depth`` pre-norm blocks of multi-head self-attention and an MLP, a final LayerNorm and a linear head on
    the class token. Defaults: width 64, 4 heads of 16, MLP 128, 4 blocks: 139,018 parameters (0.56 MB as a
    state_dict), and a training step at batch size 128 costs about 0.12 s on one CPU core, 0.6 of the same model
    with 6 blocks: in a few minutes of training, more epochs of the smaller model reach more.
    Weights are initialised as in DeiT (Touvron et al., arXiv:2012.12877): truncated normal, std 0.02.
    """

    def __init__(self, patch_size: int = 4, dim: int = 64, depth: int = 4, num_heads: int = 4, mlp_hidden: int = 128,
                 num_classes: int = NUM_CLASSES, image_size: int = 28):
        super().__init__()
        check_ints(("patch_size", patch_size, 1), ("depth", depth, 1), ("mlp_hidden", mlp_hidden, 1))
        if image_size % patch_size:
            raise ValueError(f"patch_size {patch_size} does not divide the image size {image_size}")
        num_patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(1, dim, patch_size, stride=patch_size)  # [N,1,28,28] -> [N,D,7,7]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, dim))
        self.blocks = nn.Sequential(*[TransformerBlock(dim, num_heads, mlp_hidden) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # [N,D,7,7] -> [N,49,D]
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1) + self.pos_embed  # [N,50,D]
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])  # the class token: [N,D] -> [N,10]


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


_REGISTRY = {"lenet": LeNet, "vgg": VGG, "resnet": ResNet, "mobilenet": MobileNet, "vit": ViT, "gpt": TinyGPT}
CNN_NAMES = ("lenet", "vgg", "resnet", "mobilenet")  # convolutional: the channel-pruning chapters (01-07) use these
TRANSFORMER_NAMES = ("vit",)  # chapter 08: heads and MLP neurons, Wanda, SparseGPT
IMAGE_MODEL_NAMES = CNN_NAMES + TRANSFORMER_NAMES  # FashionMNIST classifiers
LANGUAGE_MODEL_NAMES = ("gpt",)  # chapter 09: a byte-level decoder trained on a text corpus
MODEL_NAMES = tuple(_REGISTRY)


def build_model(name: str) -> nn.Module:
    """A freshly initialised model by name: one of ``MODEL_NAMES``."""
    if not isinstance(name, str):
        raise TypeError(f"model name must be a string, got {type(name).__name__}")
    key = name.lower()
    if key not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}")
    return _REGISTRY[key]()
