"""Measured CPU latency: warm-up, a fixed thread count, median and spread.

Speed claims in this course are ratios measured in one run. Use :func:`compare_latency` for
them: it interleaves the models run by run so that a slow moment of the machine hits all of
them alike.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

__all__ = ["LatencyStats", "measure_latency", "compare_latency"]


@dataclass(frozen=True)
class LatencyStats:
    """Latency of one forward pass of a batch, in milliseconds."""

    median_ms: float
    iqr_ms: float  # interquartile range: q3 - q1
    q1_ms: float
    q3_ms: float
    min_ms: float
    runs: int
    threads: int
    batch_size: int

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.median_ms:.3f} ms (IQR {self.iqr_ms:.3f}, n={self.runs}, threads={self.threads}, bs={self.batch_size})"


def _validate(model, inputs, warmup, repeats, threads):
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(inputs, torch.Tensor) or inputs.ndim < 2:
        raise TypeError("inputs must be a batch tensor [N, ...]")
    for name, v, lo in (("warmup", warmup, 1), ("repeats", repeats, 3), ("threads", threads, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")


def _stats(times_s: list[float], threads: int, batch_size: int) -> LatencyStats:
    ms = sorted(t * 1e3 for t in times_s)
    q1, _, q3 = statistics.quantiles(ms, n=4, method="inclusive")
    return LatencyStats(statistics.median(ms), q3 - q1, q1, q3, ms[0], len(ms), threads, batch_size)


def compare_latency(models: dict[str, nn.Module], inputs: torch.Tensor, warmup: int = 10, repeats: int = 50,
                    threads: int = 1) -> dict[str, LatencyStats]:
    """Latency of several models on the same inputs, runs interleaved, one thread count.

    Each model is put in eval mode and run under ``torch.inference_mode``; the first ``warmup``
    calls are never timed; the thread count and each model's mode are restored afterwards.
    """
    if not isinstance(models, dict) or not models:
        raise TypeError("models must be a non-empty dict {name: model}")
    for m in models.values():
        _validate(m, inputs, warmup, repeats, threads)
    old_threads = torch.get_num_threads()
    modes = {k: m.training for k, m in models.items()}
    times: dict[str, list[float]] = {k: [] for k in models}
    try:
        torch.set_num_threads(threads)
        for m in models.values():
            m.eval()
        with torch.inference_mode():
            for m in models.values():
                for _ in range(warmup):
                    m(inputs)
            for _ in range(repeats):
                for k, m in models.items():
                    t0 = time.perf_counter()
                    m(inputs)
                    times[k].append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(old_threads)
        for k, m in models.items():
            m.train(modes[k])
    return {k: _stats(v, threads, inputs.shape[0]) for k, v in times.items()}


def measure_latency(model: nn.Module, inputs: torch.Tensor, warmup: int = 10, repeats: int = 50,
                    threads: int = 1) -> LatencyStats:
    """Latency of ``model(inputs)``: median, IQR and min over ``repeats`` timed runs after ``warmup``.

    Args:
        inputs: the batch to run, e.g. ``torch.randn(1, 1, 28, 28)`` (bs 1) or a [64, 1, 28, 28] batch.
        warmup: untimed calls first (>= 1: the first call, which allocates, is never timed).
        threads: ``torch.set_num_threads`` during the measurement; the old value is restored.
    """
    return compare_latency({"model": model}, inputs, warmup, repeats, threads)["model"]
