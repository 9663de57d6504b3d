"""Draw the course's static figures with matplotlib: ``python images/make_images.py``.

Every image under images/ is produced here, so it can be regenerated and changed.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
BLUE, GREY, RED = "#3b75af", "#c8c8c8", "#c44e52"


def _network(ax, title, dropped_edges=(), dropped_nodes=()):
    layers = [3, 4, 2]
    pos = {(li, ni): (li * 2.0, (n - 1) / 2 - ni) for li, n in enumerate(layers) for ni in range(n)}
    for li in range(len(layers) - 1):
        for a in range(layers[li]):
            for b in range(layers[li + 1]):
                gone = ((li, a), (li + 1, b)) in dropped_edges or (li, a) in dropped_nodes or (li + 1, b) in dropped_nodes
                (x0, y0), (x1, y1) = pos[(li, a)], pos[(li + 1, b)]
                ax.plot([x0, x1], [y0, y1], color=GREY if gone else BLUE, lw=0.8 if gone else 1.6,
                        ls=":" if gone else "-", zorder=1)
    for node, (x, y) in pos.items():
        gone = node in dropped_nodes
        ax.scatter([x], [y], s=420, color="white" if gone else BLUE, edgecolor=GREY if gone else BLUE, lw=2, zorder=2)
    ax.set_title(title, fontsize=11)
    ax.set_xlim(-0.6, 4.6)
    ax.set_ylim(-2.2, 2.2)
    ax.axis("off")


def pruning_overview(path: Path) -> None:
    """Dense network, pruned synapses (weights) and pruned neurons (channels)."""
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.2))
    _network(axes[0], "dense")
    edges = {((0, 0), (1, 1)), ((0, 1), (1, 0)), ((0, 2), (1, 3)), ((1, 0), (2, 1)), ((1, 2), (2, 0)), ((0, 1), (1, 2))}
    _network(axes[1], "synapses pruned\n(fine-grained: sparse weights)", dropped_edges=edges)
    _network(axes[2], "neurons pruned\n(structured: smaller layers)", dropped_nodes={(1, 1), (1, 3)})
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def granularity(path: Path) -> None:
    """One convolution weight [out 6, in 4, 3x3] pruned to 50 % at each granularity of chapter 01, with the
    package's own masks (deeplsp_helpers.masks). Each row is one filter, its in x kh x kw weights flattened
    (input channel by input channel, each 3x3 kernel row by row). 2:4 groups 4 input channels at one kernel
    position (columns j, j + 9, j + 18, j + 27 of a row), as sparse tensor cores do; one group is outlined."""
    from deeplsp_helpers import masks

    out_ch, in_ch, k = 6, 4, 3
    w = torch.randn(out_ch, in_ch, k, k, generator=torch.Generator().manual_seed(0))
    drawn = {
        "fine-grained: single weights": masks.fine_grained_mask(w, 0.5),
        "2:4: 2 of every 4 input channels, at each kernel position": masks.nm_mask(w, 2, 4),
        "vector: one row of a kernel (3 weights)": masks.vector_mask(w, 0.5),
        "kernel: one 3×3 kernel": masks.kernel_mask(w, 0.5),
        "filter: one output channel, w[o]": masks.filter_mask(w, 0.5),
        "channel: one input channel, w[:, i]": masks.channel_mask(w, 0.5),
    }
    cols = in_ch * k * k
    fig, axes = plt.subplots(3, 2, figsize=(11, 4.6))
    for ax, (name, m) in zip(axes.flat, drawn.items()):
        m = m.reshape(out_ch, cols).numpy()
        ax.imshow(m, cmap=matplotlib.colors.ListedColormap([GREY, BLUE]), vmin=0, vmax=1)
        ax.set_xticks(np.arange(-0.5, cols, 1), minor=True)
        ax.set_yticks(np.arange(-0.5, out_ch, 1), minor=True)
        ax.grid(which="minor", color="white", lw=1)
        for c in range(k, cols, k):  # kernel rows (every kw columns), input channels (every kh x kw)
            ax.axvline(c - 0.5, color="black" if c % (k * k) == 0 else "#7f7f7f", lw=1.4 if c % (k * k) == 0 else 0.6)
        ax.set_xticks([i * k * k + (k * k - 1) / 2 for i in range(in_ch)], [f"in {i}" for i in range(in_ch)])
        ax.set_yticks(range(out_ch), [f"out {o}" for o in range(out_ch)])
        ax.tick_params(which="both", length=0, labelsize=7)
        if name.startswith("2:4"):  # outline one group: out 0, kernel position (0, 0), input channels 0..3
            for i in range(in_ch):
                ax.add_patch(plt.Rectangle((i * k * k - 0.5, -0.5), 1, 1, fill=False, edgecolor=RED, lw=2.5, zorder=10))
        ax.set_title(f"{name} ({1 - m.mean():.0%} pruned)", fontsize=10)
    fig.suptitle(f"one convolution weight [out {out_ch}, in {in_ch}, {k}×{k}] at six granularities (blue = kept, "
                 f"grey = pruned)\neach row is one filter: its {in_ch} kernels side by side, each kernel row by row; "
                 f"red: one 2:4 group",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def course_map(path: Path) -> None:
    """The chapters as a left-to-right flow."""
    steps = ["00\ngetting\nstarted", "01\ngranularity", "02\ncriteria", "03\ntiming", "04\ntorch.nn.utils\n.prune",
             "05\nstructured", "06\nDeepLSP\ncombined"]
    fig, ax = plt.subplots(figsize=(11, 1.9))
    for i, s in enumerate(steps):
        ax.add_patch(plt.Rectangle((i * 1.5, 0), 1.2, 1, color=BLUE if i < 6 else RED, alpha=0.9))
        ax.text(i * 1.5 + 0.6, 0.5, s, color="white", ha="center", va="center", fontsize=9, weight="bold")
        if i:
            ax.annotate("", xy=(i * 1.5, 0.5), xytext=(i * 1.5 - 0.3, 0.5), arrowprops=dict(arrowstyle="->", lw=1.5))
    ax.set_xlim(-0.1, len(steps) * 1.5)
    ax.set_ylim(-0.1, 1.1)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


FIGURES = {"pruning_overview.png": pruning_overview, "granularity.png": granularity, "course_map.png": course_map}

if __name__ == "__main__":
    for name, draw in FIGURES.items():
        draw(HERE / name)
        print(f"wrote images/{name}")
