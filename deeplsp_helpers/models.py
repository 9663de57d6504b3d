"""Small reference models: for 28x28x1 FashionMNIST images, and a byte-level language model.

The four convolutional networks (``CNN_NAMES``) are sized so that a fine-tuning epoch on 10k samples takes
well under a minute on two CPU cores, while their convolutions are large enough that removing channels gives a
measurable CPU speed-up. The Vision Transformer (``TRANSFORMER_NAMES``, chapter 08) is written so that its
attention heads and MLP neurons can be removed physically (:mod:`deeplsp_helpers.transformer_pruning`).
The language model (``LANGUAGE_MODEL_NAMES``, chapter 09) is a small decoder built from the same sublayers, with
causal attention and a KV cache for generation (:class:`TinyGPT`).

The transformer sublayers (``SelfAttention``, ``MLP``, ``TransformerBlock``) are written in
:mod:`deeplsp_helpers.transformer_layers` and the language model's classes (``CausalSelfAttention``,
``DecoderBlock``, ``TinyGPT``) in :mod:`deeplsp_helpers.language_models`; this module re-exports them, so
``models.TinyGPT`` and the rest work as before.
"""

from __future__ import annotations

import torch
from torch import nn

from ._validate import check_ints
from .language_models import CausalSelfAttention, DecoderBlock, TinyGPT
from .transformer_layers import MLP, SelfAttention, TransformerBlock

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
