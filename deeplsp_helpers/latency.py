"""Measured CPU latency: warm-up, a fixed thread count, median and spread.

Speed claims in this course are ratios measured in one run. Use :func:`compare_latency` for
them: it interleaves the models run by run so that a slow moment of the machine hits all of
them alike. A "model" here is a ``torch.nn.Module`` or any callable that takes the input tensor,
e.g. an ONNX Runtime session wrapped by :class:`deeplsp_helpers.deploy.OrtModel`, so that PyTorch
and another runtime are timed in the same run.
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
from torch import nn

from ._modes import eval_mode
from ._validate import check_batch, check_ints, check_number

__all__ = ["LatencyStats", "Speedup", "measure_latency", "compare_latency", "compare_speedups", "paired_speedup",
           "time_calls"]


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


@dataclass(frozen=True)
class Speedup:
    """How many times faster a model ran than a baseline, from one interleaved run.

    ``median`` is the median over rounds of ``baseline time / model time`` (both timed in the same round);
    ``low``-``high`` is a 95 % bootstrap interval of that median. Call it "faster" only when ``low > 1``,
    "slower" when ``high < 1``, and "no measurable speed-up" when the interval holds 1 (:meth:`verdict`).
    """

    median: float
    low: float
    high: float
    rounds: int

    def verdict(self) -> str:
        if self.low > 1.0:
            return "faster"
        if self.high < 1.0:
            return "slower"
        return "no measurable speed-up"

    def __str__(self) -> str:
        return f"{self.median:.2f}x [{self.low:.2f}, {self.high:.2f}]"


def _bootstrap_median(ratios: list[float], resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    r = torch.tensor(ratios, dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(r), (resamples, len(r)), generator=gen)
    medians = r[idx].quantile(0.5, dim=1)  # the mean of the two middle values, as statistics.median
    return float(torch.quantile(medians, 0.025)), float(torch.quantile(medians, 0.975))


def _validate(model, inputs, warmup, repeats, threads):
    if not isinstance(model, nn.Module) and not callable(model):
        raise TypeError(f"model must be a torch.nn.Module or a callable taking the input tensor, got "
                        f"{type(model).__name__}")
    check_batch(inputs, "inputs")
    check_ints(("warmup", warmup, 1), ("repeats", repeats, 3), ("threads", threads, 1))
    own = getattr(model, "threads", None)  # a runtime with its own thread pool, e.g. deploy.OrtModel
    if not isinstance(model, nn.Module) and isinstance(own, int) and own != threads:
        raise ValueError(f"{type(model).__name__} runs with {own} threads (0: its runtime's default) but "
                         f"threads={threads}: build it with the same thread count, or the comparison is not like "
                         "for like")


def _stats(times_s: list[float], threads: int, batch_size: int) -> LatencyStats:
    ms = sorted(t * 1e3 for t in times_s)
    q1, _, q3 = statistics.quantiles(ms, n=4, method="inclusive")
    return LatencyStats(statistics.median(ms), q3 - q1, q1, q3, ms[0], len(ms), threads, batch_size)


def compare_latency(models: dict[str, nn.Module | Callable], inputs: torch.Tensor, warmup: int = 10,
                    repeats: int = 50, threads: int = 1) -> dict[str, LatencyStats]:
    """Latency of several models on the same inputs, runs interleaved (shuffled each round), one thread count.

    Each model is put in eval mode and run under ``torch.inference_mode``; the first ``warmup``
    calls are never timed; the thread count and each model's mode are restored afterwards.
    A model may also be any callable taking ``inputs`` (e.g. :class:`deeplsp_helpers.deploy.OrtModel`);
    one with a ``threads`` attribute must have been built with ``threads``.
    """
    times = _interleaved(models, inputs, warmup, repeats, threads)
    return {k: _stats(v, threads, inputs.shape[0]) for k, v in times.items()}


def compare_speedups(models: dict[str, nn.Module | Callable], inputs: torch.Tensor, baseline: str, warmup: int = 10,
                     repeats: int = 50, threads: int = 1) -> tuple[dict[str, LatencyStats], dict[str, Speedup]]:
    """:func:`compare_latency` plus each model's :class:`Speedup` over ``models[baseline]``, with its spread.

    Put a second copy of the baseline among ``models`` to see the noise floor: its speed-up should
    come out as "no measurable speed-up".
    """
    if not isinstance(models, dict) or baseline not in models:
        raise ValueError(f"baseline must name one of the models, got {baseline!r}")
    times = _interleaved(models, inputs, warmup, repeats, threads)
    speedups = {k: paired_speedup(times[baseline], v) for k, v in times.items()}
    return {k: _stats(v, threads, inputs.shape[0]) for k, v in times.items()}, speedups


def paired_speedup(baseline_times: list[float], times: list[float]) -> Speedup:
    """:class:`Speedup` of one callable over a baseline from round-paired times of one interleaved run
    (``times[r]`` and ``baseline_times[r]`` measured in the same round, e.g. two lists of :func:`time_calls`)."""
    if not isinstance(baseline_times, (list, tuple)) or not isinstance(times, (list, tuple)):
        raise TypeError("baseline_times and times must be lists of seconds, one per round")
    if len(baseline_times) != len(times) or len(times) < 3:
        raise ValueError(f"need the same number (>= 3) of rounds for both, got {len(baseline_times)} and {len(times)}")
    for name, values in (("baseline_times", baseline_times), ("times", times)):
        for t in values:
            check_number(t, name, 0, hint=" (positive, finite seconds)")
    ratios = [b / t for b, t in zip(baseline_times, times)]
    low, high = _bootstrap_median(ratios)
    return Speedup(statistics.median(ratios), low, high, len(ratios))


def _interleaved(models, inputs, warmup, repeats, threads) -> dict[str, list[float]]:
    if not isinstance(models, dict) or not models:
        raise TypeError("models must be a non-empty dict {name: model}")
    for m in models.values():
        _validate(m, inputs, warmup, repeats, threads)
    modules = {k: m for k, m in models.items() if isinstance(m, nn.Module)}
    with eval_mode(*modules.values()):
        samples = time_calls([lambda m=m: m(inputs) for m in models.values()], warmup, repeats, threads)
    return dict(zip(models, samples))


def time_calls(calls: list, warmup: int, repeats: int, threads: int, seed: int = 0) -> list[list[float]]:
    """Seconds of each zero-argument callable, ``repeats`` rounds interleaved (one call of each per round, in
    an order shuffled every round, so that no callable always runs right after the same neighbour: caches
    left warm by the one before would otherwise favour it), after ``warmup`` untimed calls of each, under
    ``torch.inference_mode`` with ``threads`` threads. ``times[k][r]`` is callable k in round r."""
    if not calls or not all(callable(f) for f in calls):
        raise TypeError("calls must be a non-empty list of zero-argument callables")
    check_ints(("warmup", warmup, 0), ("repeats", repeats, 1), ("threads", threads, 1))
    old_threads = torch.get_num_threads()
    times: list[list[float]] = [[] for _ in calls]
    order = list(range(len(calls)))
    rng = random.Random(seed)
    try:
        torch.set_num_threads(threads)
        with torch.inference_mode():
            for f in calls:
                for _ in range(warmup):
                    f()
            for _ in range(repeats):
                rng.shuffle(order)
                for k in order:
                    t0 = time.perf_counter()
                    calls[k]()
                    times[k].append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(old_threads)
    return times


def measure_latency(model: nn.Module | Callable, inputs: torch.Tensor, warmup: int = 10, repeats: int = 50,
                    threads: int = 1) -> LatencyStats:
    """Latency of ``model(inputs)``: median, IQR and min over ``repeats`` timed runs after ``warmup``.

    Args:
        inputs: the batch to run, e.g. ``torch.randn(1, 1, 28, 28)`` (bs 1) or a [64, 1, 28, 28] batch.
        warmup: untimed calls first (>= 1: the first call, which allocates, is never timed).
        threads: ``torch.set_num_threads`` during the measurement; the old value is restored.
    """
    return compare_latency({"model": model}, inputs, warmup, repeats, threads)["model"]
