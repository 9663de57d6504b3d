"""Plots for the course. Each function returns its matplotlib Figure and works headless (Agg).

In a notebook, write ``fig = plotting.plot_matrix(w)`` (or end the line with ``;``): the figure is
shown once and no object address is printed.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.colors import ListedColormap
from torch import nn

from ._validate import PRUNABLE as PRUNABLE  # still importable as plotting.PRUNABLE
from .criteria import prunable_layers

__all__ = ["plot_matrix", "plot_tensor_3d", "plot_weight_histograms", "plot_layer_density", "plot_sensitivity",
           "plot_tradeoff", "plot_channel_importance"]

ZERO_COLOR = "#d9d9d9"  # pruned channels in bar charts
PRUNED_COLOR = "#1a1a1a"  # exact zeros in matrices: black, unlike small kept weights (light in coolwarm)


def _as_numpy(t, ndim: int | None = None, name: str = "tensor") -> np.ndarray:
    if isinstance(t, torch.Tensor):
        a = t.detach().cpu().float().numpy()
    elif isinstance(t, np.ndarray):
        a = t.astype(float)
    else:
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(t).__name__}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(a.shape)}")
    if a.size == 0:
        raise ValueError(f"{name} is empty")
    return a


def _layers(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [(n, m.weight.detach()) for n, m in prunable_layers(model).items()]


def plot_matrix(t, title: str | None = None, annotate: bool | None = None, ax=None, fmt: str = "{:.2f}"):
    """A 2-D tensor as a heat map; exact zeros in black (small kept weights are pale, never black); values
    written in the cells when small enough.

    Rows are the first dimension, columns the second, for any shape (square or not).
    """
    a = _as_numpy(t, 2)
    rows, cols = a.shape
    if annotate is None:
        annotate = rows * cols <= 256
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(min(0.45 * cols + 1.5, 12), min(0.45 * rows + 1, 10)))
    vmax = float(np.abs(a).max()) or 1.0
    im = ax.imshow(np.ma.masked_where(a == 0, a), cmap="coolwarm", vmin=-vmax, vmax=vmax, aspect="equal")
    ax.imshow(np.where(a == 0, 1.0, np.nan), cmap=ListedColormap([PRUNED_COLOR]), vmin=0, vmax=1, aspect="equal")
    if annotate:
        for i in range(rows):
            for j in range(cols):
                ax.text(j, i, "0" if a[i, j] == 0 else fmt.format(a[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if a[i, j] == 0 else "black")
    ax.set_xticks(range(cols) if cols <= 32 else [])
    ax.set_yticks(range(rows) if rows <= 32 else [])
    ax.set_title(title or f"{rows}x{cols}, {(a == 0).mean():.0%} zeros")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return fig


def plot_tensor_3d(w, title: str | None = None, ax=None, max_size: int = 32):
    """A 4-D conv weight [out, in, kh, kw] as 3-D blocks: x = output channel, y = input channel,
    z = kernel position (kh*kw); non-zero blocks blue, zero blocks grey and transparent."""
    a = _as_numpy(w, 4, "w")
    out_c, in_c, kh, kw = a.shape
    if out_c > max_size or in_c > max_size:
        raise ValueError(f"tensor {a.shape} too large to draw; slice it to at most {max_size} channels each way")
    filled = np.ones((out_c, in_c, kh * kw), dtype=bool)
    nonzero = a.reshape(out_c, in_c, kh * kw) != 0
    colors = np.empty(filled.shape, dtype=object)
    colors[nonzero] = "#3b75afcc"
    colors[~nonzero] = "#d9d9d944"
    if ax is None:
        fig = plt.figure(figsize=(6, 5))
        ax = fig.add_subplot(projection="3d")
    fig = ax.figure
    ax.voxels(filled, facecolors=colors, edgecolor="#55555533", linewidth=0.3)
    ax.set_xlabel("output channel")
    ax.set_ylabel("input channel")
    ax.set_zlabel("kernel position")
    ax.set_title(title or f"{tuple(a.shape)}, {(a == 0).mean():.0%} zeros")
    return fig


def plot_weight_histograms(model: nn.Module, nonzero_only: bool = False, bins: int = 60, title: str | None = None):
    """Weight distribution of every Conv2d/Linear layer, one panel each."""
    layers = _layers(model)
    ncols = min(4, len(layers))
    nrows = -(-len(layers) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.4 * nrows), squeeze=False)
    for ax, (name, w) in zip(axes.flat, layers):
        v = w.flatten().cpu().numpy()
        if nonzero_only:
            v = v[v != 0]
        ax.hist(v, bins=bins, color="#3b75af")
        ax.set_title(f"{name} ({(w == 0).float().mean().item():.0%} zeros)", fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(layers):]:
        ax.axis("off")
    fig.suptitle(title or ("non-zero weights" if nonzero_only else "weights"))
    fig.tight_layout()
    return fig


def plot_layer_density(model: nn.Module, title: str | None = None):
    """Bar chart of the density (fraction non-zero) of each Conv2d/Linear weight, with its size."""
    layers = _layers(model)
    names = [n for n, _ in layers]
    density = [w.count_nonzero().item() / w.numel() for _, w in layers]
    fig, ax = plt.subplots(figsize=(max(5, 0.7 * len(names) + 2), 3.2))
    bars = ax.bar(range(len(names)), density, color="#3b75af")
    for b, (_, w) in zip(bars, layers):
        ax.text(b.get_x() + b.get_width() / 2, b.get_height() + 0.02, f"{w.numel():,}", ha="center", fontsize=7)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("density (non-zero fraction)")
    ax.set_title(title or "layer density (numbers: weights in the layer)")
    fig.tight_layout()
    return fig


def plot_sensitivity(scan: Mapping[str, tuple[Sequence[float], Sequence[float]]], dense_acc: float | None = None,
                     title: str | None = None):
    """Accuracy vs sparsity, one curve per layer: ``scan = {layer: (sparsities, accuracies)}``."""
    if not isinstance(scan, Mapping) or not scan:
        raise TypeError("scan must be a non-empty dict {layer: (sparsities, accuracies)}")
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, (xs, ys) in scan.items():
        if len(xs) != len(ys):
            raise ValueError(f"layer {name}: {len(xs)} sparsities but {len(ys)} accuracies")
        ax.plot(xs, ys, marker="o", ms=3, label=name)
    if dense_acc is not None:
        ax.axhline(dense_acc, color="k", ls="--", lw=1, label="dense")
    ax.set_xlabel("sparsity of the layer")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(title or "sensitivity: one layer pruned at a time")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def plot_tradeoff(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], xlabel: str = "sparsity",
                  ylabel: str = "accuracy (%)", sizes: Mapping[str, Sequence[float]] | None = None,
                  title: str | None = None, logx: bool = False):
    """Trade-off curves or points: ``series = {label: (xs, ys)}``; optional marker ``sizes`` per label
    (e.g. non-zero parameters) for Pareto plots of accuracy vs measured latency."""
    if not isinstance(series, Mapping) or not series:
        raise TypeError("series must be a non-empty dict {label: (xs, ys)}")
    fig, ax = plt.subplots(figsize=(8.5, 4) if len(series) > 4 else (6.5, 4))
    # one scale for every series, so marker areas compare across labels
    largest = max((float(np.max(v)) for v in (sizes or {}).values() if len(v)), default=1.0) or 1.0
    for label, (xs, ys) in series.items():
        if len(xs) != len(ys):
            raise ValueError(f"{label}: {len(xs)} x values but {len(ys)} y values")
        if sizes is not None and label in sizes:
            s = np.asarray(sizes[label], dtype=float)
            if s.shape != (len(xs),):
                raise ValueError(f"{label}: {len(xs)} points but {s.size} sizes")
            ax.scatter(xs, ys, s=20 + 600 * s / largest, alpha=0.7, label=label)
        else:
            ax.plot(xs, ys, marker="o", ms=4, label=label)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title or f"{ylabel} vs {xlabel}")
    ax.grid(alpha=0.3)
    if len(series) > 4:
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    else:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_channel_importance(importance, title: str | None = None, sort: bool = True, keep: int | None = None):
    """Bar chart of per-channel importance scores (a 1-D tensor, or ``{layer: scores}`` for several panels).

    With ``keep``, the ``keep`` most important channels are drawn in blue and the rest in grey.
    """
    items = importance.items() if isinstance(importance, Mapping) else [(title or "channels", importance)]
    items = [(k, _as_numpy(v, 1, f"importance[{k}]")) for k, v in items]
    fig, axes = plt.subplots(len(items), 1, figsize=(7, 2.4 * len(items)), squeeze=False)
    for ax, (name, v) in zip(axes[:, 0], items):
        order = np.argsort(-v) if sort else np.arange(len(v))
        rank = np.empty(len(v), dtype=int)
        rank[np.argsort(-v)] = np.arange(len(v))
        colors = ["#3b75af" if keep is None or rank[i] < keep else ZERO_COLOR for i in order]
        ax.bar(range(len(v)), v[order], color=colors)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("channel (sorted by importance)" if sort else "channel")
        ax.set_ylabel("importance")
    fig.tight_layout()
    return fig
