"""A latency model of this machine: each prunable layer's measured latency as a function of its widths.

:meth:`LatencyTable.measure` times every Conv2d/Linear of a model *on its own*, at the input size it
sees inside the model, for a grid of input and output widths (multiples of ``round_to``), one
thread count, one batch size, cells interleaved round by round and the median kept. What the table
does not cover (BatchNorm, activations, pooling, additions, Python overhead) is modelled as a function
of the activation volume of the convolutions (relative to the dense model), interpolated between four
whole models measured interleaved: the dense one and copies with 1/2, 3/4 and 7/8 of every layer's
channels removed (per-call overheads do not shrink with the width, so the curve is not a straight line).
:meth:`LatencyTable.predict` then predicts any pruned variant's latency from its layer widths, without running it.

This is the per-layer "lookup table" latency model of NetAdapt (Yang et al., arXiv:1804.03230) and
HALP (Shen et al., "Structural Pruning via Latency-Saliency Knapsack", arXiv:2210.06659).
:func:`plan_to_speedup` (in :mod:`deeplsp_helpers.speedup`) uses it to prune to a requested speed-up.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from ._modes import eval_mode
from ._validate import PRUNABLE, check_batch, check_ints, check_module, check_number
from .channels import is_depthwise, layer_widths, prunable_dims, table_layers, uniform_channel_pruning
from .files import atomic_write, regular_file
from .latency import time_calls

_is_depthwise = is_depthwise  # the name other modules used before channels.py

__all__ = ["LatencyTable", "layer_widths", "table_layers", "layer_costs"]

FORMAT = 1


def _grid(full: int, fixed: bool, round_to: int, points: int) -> list[int]:
    if fixed or full <= round_to:
        return [full]
    steps = full / round_to
    vals = {min(full, round_to * max(1, round(1 + (steps - 1) * i / (points - 1)))) for i in range(points)}
    return sorted(vals | {full})


def _interp1(grid: list[int], x: float) -> tuple[int, int, float]:
    """Indices (i, j) of the grid points around x and the weight of j (clamped at both ends)."""
    if len(grid) == 1 or x <= grid[0]:
        return 0, 0, 0.0
    if x >= grid[-1]:
        return len(grid) - 1, len(grid) - 1, 0.0
    j = next(k for k, g in enumerate(grid) if g >= x)
    i = j - 1
    return i, j, (x - grid[i]) / (grid[j] - grid[i])


def _input_shapes(model: nn.Module, example_inputs: torch.Tensor) -> dict[str, list[int]]:
    shapes: dict[str, list[int]] = {}
    layers = table_layers(model)

    def record(name):
        def hook(mod, inp, out):
            shapes.setdefault(name, [list(inp[0].shape), list(out.shape)])  # returns None: output unchanged
        return hook

    hooks = [m.register_forward_hook(record(n)) for n, m in layers.items()]
    try:
        with eval_mode(model), torch.inference_mode():
            model(example_inputs)
    finally:
        for h in hooks:
            h.remove()
    missing = set(layers) - set(shapes)
    if missing:
        raise ValueError(f"layers never called in the forward pass: {sorted(missing)}")
    return shapes


def _standalone(m: nn.Module, cin: int, cout: int) -> nn.Module:
    if isinstance(m, nn.Conv2d):
        groups = cin if is_depthwise(m) else 1
        if is_depthwise(m):
            cout = cin
        return nn.Conv2d(cin, cout, m.kernel_size, m.stride, m.padding, m.dilation, groups, m.bias is not None,
                         padding_mode=m.padding_mode).eval()
    return nn.Linear(cin, cout, bias=m.bias is not None).eval()


def time_interleaved(calls: list, warmup: int, repeats: int, threads: int) -> list[float]:
    """Median milliseconds of each zero-argument callable, runs interleaved round by round."""
    return [1e3 * statistics.median(s) for s in time_calls(calls, warmup, repeats, threads)]


class LatencyTable:
    """Measured per-layer latency of one model on this machine, at one batch size and thread count."""

    def __init__(self, meta: dict, layers: dict[str, dict], residual: list[list[float]]):
        _check_contents(meta, layers, residual)
        self.meta, self.layers = meta, layers
        self.residual = sorted([float(a), float(ms)] for a, ms in residual)  # [activation fraction, ms] points

    # -- measuring ---------------------------------------------------------------------------------------------
    @classmethod
    def measure(cls, model: nn.Module, example_inputs: torch.Tensor, *, round_to: int = 8, grid_points: int = 5,
                threads: int = 1, warmup: int = 3, repeats: int = 15, fixed: set[str] | None = None,
                verbose: bool = False) -> "LatencyTable":
        """Measure the table for ``model`` at the batch size of ``example_inputs``.

        Args:
            round_to: widths on the grid are multiples of this (the pruner keeps widths on it too).
            grid_points: grid points per width dimension (the dense width is always one of them).
            fixed: ``"name.in"`` / ``"name.out"`` dimensions that pruning never changes (e.g. the first
                layer's input, the classifier's output); default: found with Torch-Pruning's dependency graph.
        """
        check_module(model)
        check_batch(example_inputs)
        check_ints(("round_to", round_to, 1), ("grid_points", grid_points, 2), ("threads", threads, 1),
                   ("warmup", warmup, 1), ("repeats", repeats, 3))
        start = time.perf_counter()
        layers = table_layers(model)
        if not layers:
            raise ValueError("model has no Conv2d or Linear layers")
        shapes = _input_shapes(model, example_inputs)
        movable = prunable_dims(model, example_inputs) if fixed is None else \
            {f"{n}.{d}" for n in layers for d in ("in", "out")} - set(fixed)
        dense = layer_widths(model)
        grouped = [n for n, m in layers.items() if isinstance(m, nn.Conv2d) and m.groups > 1 and not is_depthwise(m)]
        if grouped:
            raise ValueError(f"grouped convolutions other than depthwise are not supported: {grouped}")
        entries, calls, cells = {}, [], []
        for name, m in layers.items():
            cin, cout = dense[name]
            depthwise = is_depthwise(m)
            cin_grid = _grid(cin, f"{name}.in" not in movable and not depthwise, round_to, grid_points)
            cout_grid = [0] if depthwise else _grid(cout, f"{name}.out" not in movable, round_to, grid_points)
            in_shape, out_shape = shapes[name]
            entries[name] = {"kind": type(m).__name__, "depthwise": depthwise, "dense": [cin, cout],
                             "cin_grid": cin_grid, "cout_grid": cout_grid,
                             "out_positions": math.prod(out_shape[2:]) if len(out_shape) > 2 else 1,
                             "signature": _signature(m), "ms": [[0.0] * len(cout_grid) for _ in cin_grid]}
            x_full = torch.randn(*in_shape)
            for i, ci in enumerate(cin_grid):
                x = x_full.narrow(1, 0, ci).contiguous()
                for j, co in enumerate(cout_grid):
                    mod = _standalone(m, ci, co or ci)
                    calls.append(lambda mod=mod, x=x: mod(x))
                    cells.append((name, i, j))
        for (name, i, j), ms in zip(cells, time_interleaved(calls, warmup, repeats, threads)):
            entries[name]["ms"][i][j] = ms
        meta = {"format": FORMAT, "batch_size": int(example_inputs.shape[0]), "threads": threads,
                "round_to": round_to, "torch": torch.__version__, "machine": _machine(),
                "input_shape": list(example_inputs.shape[1:])}
        table = cls(meta, entries, [[1.0, 0.0]])
        table._fit_residual(model, example_inputs, warmup, repeats, threads, round_to)
        table.meta["seconds"] = round(time.perf_counter() - start, 1)
        if verbose:
            print(f"latency table: {len(calls)} layer shapes measured in {table.meta['seconds']:.1f} s", flush=True)
        return table

    def _fit_residual(self, model, example_inputs, warmup, repeats, threads, round_to):
        """Measure what the layers do not cover on the dense model and on uniformly narrowed copies."""
        import copy

        variants = [copy.deepcopy(model).eval()]
        for ratio in (0.5, 0.75, 0.875):
            variants.append(uniform_channel_pruning(copy.deepcopy(model).eval(), example_inputs[:1], ratio,
                                                    round_to=round_to))
        totals = time_interleaved([lambda m=m: m(example_inputs) for m in variants], warmup, repeats * 2, threads)
        points = {}
        for m, total in zip(variants, totals):
            widths = layer_widths(m)
            points[round(self.activation_fraction(widths), 6)] = max(0.0, total - self.layer_sum(widths))
        self.residual = sorted([a, ms] for a, ms in points.items())
        self.meta["dense_measured_ms"] = totals[0]

    def residual_ms(self, fraction: float) -> float:
        """What the table's layers do not cover, at this activation fraction (interpolated, flat outside)."""
        pts = self.residual
        if fraction <= pts[0][0]:
            return pts[0][1]
        for (a0, m0), (a1, m1) in zip(pts, pts[1:]):
            if fraction <= a1:
                return m0 + (m1 - m0) * (fraction - a0) / (a1 - a0)
        return pts[-1][1]

    # -- predicting --------------------------------------------------------------------------------------------
    def layer_ms(self, name: str, cin: float, cout: float) -> float:
        """Interpolated latency of one layer at widths (cin, cout), bilinear on the measured grid."""
        e = self.layers[name]
        if e["depthwise"]:
            cout = 0
        i0, i1, wi = _interp1(e["cin_grid"], cin)
        j0, j1, wj = _interp1(e["cout_grid"], cout)
        ms = e["ms"]
        top = ms[i0][j0] * (1 - wj) + ms[i0][j1] * wj
        bottom = ms[i1][j0] * (1 - wj) + ms[i1][j1] * wj
        return top * (1 - wi) + bottom * wi

    def layer_sum(self, widths: dict[str, tuple[int, int]]) -> float:
        return sum(self.layer_ms(n, *widths[n]) for n in self.layers)

    def activation_fraction(self, widths: dict[str, tuple[int, int]]) -> float:
        vol = sum(widths[n][1] * e["out_positions"] for n, e in self.layers.items())
        dense = sum(e["dense"][1] * e["out_positions"] for e in self.layers.values())
        return vol / dense

    def predict_widths(self, widths: dict[str, tuple[int, int]]) -> float:
        """Predicted latency (ms) of the model with these ``{layer: (input width, output width)}``."""
        missing, extra = set(self.layers) - set(widths), set(widths) - set(self.layers)
        if missing or extra:
            raise ValueError(f"widths do not match the table's layers (missing {sorted(missing)}, "
                             f"unknown {sorted(extra)}): is this table from another model?")
        for n, (cin, cout) in widths.items():
            dcin, dcout = self.layers[n]["dense"]
            if not (0 < cin <= dcin and 0 < cout <= dcout):
                raise ValueError(f"layer {n}: widths ({cin}, {cout}) outside the table's (1..{dcin}, 1..{dcout})")
        ms = self.layer_sum(widths) + self.residual_ms(self.activation_fraction(widths))
        if not (math.isfinite(ms) and ms > 0):  # a table changed after loading: never plan on a NaN
            raise ValueError(f"the latency table predicts {ms!r} ms for these widths; its entries must be finite and "
                             "positive: measure it again with LatencyTable.measure")
        return ms

    def predict(self, model: nn.Module) -> float:
        """Predicted latency (ms) of ``model`` (the dense model or a pruned variant of it) at the table's batch size."""
        self.check_model(model)
        return self.predict_widths(layer_widths(model))

    @property
    def dense_ms(self) -> float:
        return self.predict_widths({n: tuple(e["dense"]) for n, e in self.layers.items()})

    def check_model(self, model: nn.Module, batch_size: int | None = None) -> None:
        """``ValueError`` unless ``model`` has this table's layers (same names and kernels) and, if given,
        ``batch_size`` is the table's."""
        check_module(model)
        layers = table_layers(model)
        if set(layers) != set(self.layers):
            raise ValueError("this latency table was measured on another model: layers "
                             f"{sorted(set(layers) ^ set(self.layers))[:4]} differ")
        for n, m in layers.items():
            if _signature(m) != self.layers[n]["signature"]:
                raise ValueError(f"this latency table was measured on another model: layer {n} is "
                                 f"{_signature(m)}, the table's is {self.layers[n]['signature']}")
        if batch_size is not None and batch_size != self.meta["batch_size"]:
            raise ValueError(f"the table was measured at batch size {self.meta['batch_size']}, not {batch_size}: "
                             "measure one at this batch size")

    # -- saving ------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"meta": self.meta, "residual": list(self.residual), "layers": self.layers}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the table as JSON, atomically, with the machine, torch version, threads and batch size."""
        text = json.dumps(self.to_dict(), indent=1)
        return atomic_write(path, lambda f: f.write(text.encode()))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LatencyTable":
        path = Path(path)
        try:
            regular_file(path, "latency table")  # a FIFO would block the read forever
            blob = json.loads(path.read_text())
            if blob["meta"]["format"] != FORMAT:
                raise ValueError(f"format {blob['meta']['format']}, expected {FORMAT}")
            table = cls(blob["meta"], blob["layers"], blob["residual"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path} is not a latency table written by LatencyTable.save: {err}") from None
        return table

    def __repr__(self) -> str:
        m = self.meta
        return (f"LatencyTable({len(self.layers)} layers, batch size {m['batch_size']}, {m['threads']} thread(s), "
                f"torch {m['torch']}, {m['machine']}, dense predicted {self.dense_ms:.3f} ms)")


def _check_contents(meta, layers, residual) -> None:
    """``ValueError`` naming the first entry that is not what :meth:`LatencyTable.measure` writes: milliseconds
    finite and >= 0, grids of positive widths that match the ``ms`` rows and columns, a usable residual curve."""
    if not isinstance(meta, dict) or not isinstance(layers, dict) or not layers:
        raise ValueError("meta must be a dict and layers a non-empty dict {layer name: entry}")
    if isinstance(meta.get("batch_size"), bool) or not isinstance(meta.get("batch_size"), int) or meta["batch_size"] < 1:
        raise ValueError(f"meta['batch_size'] must be an int >= 1, got {meta.get('batch_size')!r}")
    for name, e in layers.items():
        try:
            cin_grid, cout_grid, ms, dense = e["cin_grid"], e["cout_grid"], e["ms"], e["dense"]
            e["depthwise"], e["out_positions"], e["signature"]  # noqa: B018 - present
            ok_shape = (all(isinstance(g, list) and g for g in (cin_grid, cout_grid)) and len(dense) == 2
                        and len(ms) == len(cin_grid) and all(len(row) == len(cout_grid) for row in ms))
            widths = [check_number(w, f"layer {name!r}: a grid width", 0, strict=False) for w in (*cin_grid, *cout_grid)]
            widths += [check_number(w, f"layer {name!r}: a dense width", 1, strict=False) for w in dense]
            for row in ms:
                for v in row:
                    check_number(v, f"layer {name!r}: a latency (ms)", 0, strict=False)
        except (KeyError, TypeError) as err:
            raise ValueError(f"layer {name!r}: entry lacks or mistypes {err}") from None
        if not (ok_shape and all(a < b for g in (cin_grid, cout_grid) for a, b in zip(g, g[1:]))
                and all(w.is_integer() for w in widths)):
            raise ValueError(f"layer {name!r}: its grids, dense widths and ms table do not fit together")
    if not isinstance(residual, list) or not residual or not all(isinstance(pt, (list, tuple)) and len(pt) == 2
                                                                 for pt in residual):
        raise ValueError(f"residual must be a non-empty list of [activation fraction, ms] pairs, got {str(residual)[:80]}")
    for fraction, point_ms in residual:
        check_number(fraction, "a residual activation fraction", 0, strict=False)
        check_number(point_ms, "a residual latency (ms)", 0, strict=False)
    if len({float(pt[0]) for pt in residual}) != len(residual):
        raise ValueError("residual lists an activation fraction twice")


def _signature(m: nn.Module) -> str:
    if isinstance(m, nn.Conv2d):
        return f"Conv2d(k={tuple(m.kernel_size)}, s={tuple(m.stride)}, p={m.padding}, dw={is_depthwise(m)})"
    return "Linear"


def _machine() -> str:
    return f"{platform.machine()} {platform.processor() or platform.system()} ({os.cpu_count()} cpus)"


def layer_costs(model: nn.Module, example_inputs: torch.Tensor, measure: str = "latency", *, warmup: int = 3,
                repeats: int = 20, threads: int = 1) -> dict[nn.Module, float]:
    """Each Conv2d/Linear layer's share of the model's cost, summing to 1.

    ``measure='latency'`` times every layer with forward hooks (median over ``repeats`` runs after
    ``warmup``, ``threads`` threads); ``measure='macs'`` counts its multiply-accumulates instead.
    """
    check_module(model)
    check_batch(example_inputs)
    if measure not in ("latency", "macs"):
        raise ValueError(f"measure must be 'latency' or 'macs', got {measure!r}")
    layers = [m for m in model.modules() if isinstance(m, PRUNABLE)]
    if not layers:
        raise ValueError("model has no Conv2d or Linear layers")
    samples: dict[nn.Module, list[float]] = {m: [] for m in layers}
    macs: dict[nn.Module, float] = {}
    start: dict[nn.Module, float] = {}

    def pre(mod, inp):
        start[mod] = time.perf_counter()

    def post(mod, inp, out):
        samples[mod].append(time.perf_counter() - start[mod])
        if isinstance(mod, nn.Conv2d):
            macs[mod] = out[0].numel() * mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]
        else:
            macs[mod] = out[0].numel() * mod.in_features

    hooks = [h for m in layers for h in (m.register_forward_pre_hook(pre), m.register_forward_hook(post))]
    old_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        with eval_mode(model), torch.inference_mode():
            for _ in range(warmup if measure == "latency" else 0):
                model(example_inputs)
            for s in samples.values():
                s.clear()
            for _ in range(repeats if measure == "latency" else 1):
                model(example_inputs)
    finally:
        for h in hooks:
            h.remove()
        torch.set_num_threads(old_threads)
    raw = {m: statistics.median(samples[m]) for m in layers} if measure == "latency" else macs
    total = sum(raw.values())
    return {m: v / total for m, v in raw.items()}
