"""Chapter 00, getting started: what sparse storage costs, MACs per second measured, choices made on validation."""

from __future__ import annotations

import math
from collections import namedtuple

import torch
from torch import nn

from .. import latency
from ._harness import (
    CheckFailed,
    _as_real,
    _Busy,
    _call,
    _callable,
    _expect,
    _number,
    _own_rng,
    _passed,
    _tiny_mlp,
)

_Loaders = namedtuple("Loaders", "train val test")


def _same_number(got, want, rel=1e-6):
    """An int, float, NumPy scalar or one-element tensor (not a bool) equal to ``want`` up to ``rel``."""
    value, _ = _as_real(got)
    return value is not None and abs(value - want) <= rel * max(1.0, abs(want))


@_own_rng
def check_sparse_storage_bits(sparse_storage_bits):
    """sparse_storage_bits(model, data_width=32, index_width=32): bits to store only the non-zero parameters,
    each with its value (data_width bits) and its position (index_width bits)."""
    _callable(sparse_storage_bits, "sparse_storage_bits")
    mlp = _tiny_mlp()
    with torch.no_grad():
        mlp.hidden.weight[:, :6] = 0
        mlp.out.bias[0] = 0
    torch.manual_seed(1)
    conv_bn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))  # BN buffers are not parameters
    with torch.no_grad():
        conv_bn[0].weight[:2] = 0
    cases = [(mlp, 32, 32), (conv_bn, 32, 32), (mlp, 8, 16), (conv_bn, 16, 8)]
    for model, data_width, index_width in cases:
        numel = sum(p.numel() for p in model.parameters())
        nnz = sum(int(p.count_nonzero()) for p in model.parameters())
        buffers = sum(int(b.count_nonzero()) for b in model.buffers())
        want = nnz * (data_width + index_width)
        got = _call("sparse_storage_bits", sparse_storage_bits, model, data_width=data_width,
                    index_width=index_width)
        if _same_number(got, want):
            continue
        why = "count each non-zero parameter once, with its value and its index"
        if _same_number(got, numel * data_width):
            why = "that is the dense size: store only the non-zero parameters"
        elif _same_number(got, nnz * data_width):
            why = f"each stored non-zero also needs its {index_width}-bit index"
        elif buffers and _same_number(got, (nnz + buffers) * (data_width + index_width)):
            why = "count parameters only (model.parameters()), not buffers such as BatchNorm's running statistics"
        elif _same_number(got, numel * (data_width + index_width)):
            why = "the zeros are not stored at all: count only the non-zero parameters"
        _expect(False, f"sparse_storage_bits(model with {nnz:,} non-zero of {numel:,} parameters, data_width="
                       f"{data_width}, index_width={index_width}) should be {want:,}, got {_number(got)!r}: {why}")
    _passed("sparse_storage_bits", len(cases))


@_own_rng
def check_per_image_ms(per_image_ms):
    """per_image_ms(model, batch_sizes): {batch size: milliseconds per image}, measured at each batch size."""
    _callable(per_image_ms, "per_image_ms")
    cases = [("a fixed 2 ms per call", _Busy(0.002), lambda bs: 2.0 / bs),
             ("0.1 ms per image", _Busy(0.0, 0.0001), lambda bs: 0.1)]
    sizes = (1, 4, 16)
    for label, model, want in cases:
        got = _call("per_image_ms", per_image_ms, model, sizes)
        _expect(isinstance(got, dict) and sorted(got) == list(sizes),
                f"per_image_ms(model, {sizes}) should return a dict with one entry per batch size {sizes}, "
                f"got {type(got).__name__}{'' if not isinstance(got, dict) else f' with keys {sorted(got)}'}")
        for bs in sizes:
            value, _ = _as_real(got[bs])
            _expect(value is not None and value > 0,
                    f"per_image_ms(...)[{bs}] should be a positive number of milliseconds, got {got[bs]!r}")
            hint = ""
            if abs(value - want(bs) * bs) < 0.3 * want(bs) * bs and bs > 1:
                hint = ": that is the time of the whole batch; divide by the batch size"
            elif abs(value - want(bs) / 1000) < 0.3 * want(bs) / 1000:
                hint = ": that looks like seconds; report milliseconds"
            _expect(abs(value - want(bs)) < 0.4 * want(bs) + 0.05,
                    f"for a model that takes {label}, per_image_ms(...)[{bs}] should be about {want(bs):.3f} ms, "
                    f"got {value:.4f}{hint}")
    _passed("per_image_ms", len(cases))


class _LinearBusy(_Busy):
    """A linear layer (``in_features * out_features`` MACs per sample) whose forward pass takes at least ``seconds``
    per call, whatever the batch size (``_Busy``'s busy-wait, then the layer)."""

    def __init__(self, in_features, out_features, seconds):
        super().__init__(seconds)
        self.fc = nn.Linear(in_features, out_features)

    def forward(self, x):
        return self.fc(super().forward(x))


def _forward_seconds(model, X):
    """The median forward time as the check measures it (a stand-in's nominal time, more on a loaded machine)."""
    return latency.measure_latency(model, X, warmup=1, repeats=5, threads=1).median_ms / 1000


@_own_rng
def check_macs_per_second(macs_per_second):
    """macs_per_second(model, X): the MACs of the whole batch X divided by the median forward time in seconds."""
    _callable(macs_per_second, "macs_per_second")
    torch.manual_seed(0)
    cases = [(100, 50, 0.002, 16), (64, 32, 0.001, 32)]  # in, out, seconds per call (at least), batch size
    for in_features, out_features, seconds, bs in cases:
        model, X = _LinearBusy(in_features, out_features, seconds), torch.randn(bs, in_features)
        per_sample = in_features * out_features

        before = _forward_seconds(model, X)
        got = _call("macs_per_second", macs_per_second, model, X)
        slowest = max(before, _forward_seconds(model, X), seconds)
        value, _ = _as_real(got)
        _expect(value is not None and value > 0,
                f"macs_per_second(model, X) should return a positive number of MACs per second, got {got!r}")
        # a forward pass cannot take less than `seconds`; a busy machine can make it take longer
        high, low = 1.5 * bs * per_sample / seconds, bs * per_sample / (2 * slowest)
        if low < value < high:
            continue
        typical = bs * per_sample / (seconds * slowest) ** 0.5
        factor = min((1, bs, 1000, 1000 * bs), key=lambda f: abs(math.log(typical / f / value)))
        hint = {bs: ": that is one sample's MACs per batch time; count the MACs of the whole batch "
                    "(metrics.count_macs gives them per sample)",
                1000: ": that is per millisecond; divide by the time in seconds",
                1000 * bs: ": that is one sample's MACs per millisecond; count the whole batch and divide by "
                           "seconds"}.get(factor, "")
        _expect(False, f"a model of {per_sample:,} MACs per sample whose forward pass takes {seconds * 1e3:g} ms "
                       f"per call (here {slowest * 1e3:.1f} ms at the slowest), on a batch of {bs}: about "
                       f"{bs * per_sample / seconds:,.0f} MACs per second, got {value:,.0f}{hint}")
    _passed("macs_per_second", len(cases))


class _Constant(nn.Module):
    """Predicts the same class for every input."""

    def __init__(self, label, classes=3):
        super().__init__()
        self.label, self.classes = label, classes
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        out = torch.zeros(x.shape[0], self.classes)
        out[:, self.label] = 1.0
        return out


class _Forbidden:
    """A loader that must not be read: iterating it fails the check with the reason."""

    def __iter__(self):
        raise _TestSplitRead("pick_on_validation read the test split: choices are made on the validation "
                             "split only, the test split is reported once, at the end")

    def __len__(self):
        return 1


class _TestSplitRead(CheckFailed):
    """Raised inside the learner's code; the harness's call passes a CheckFailed on unchanged."""


def _split(labels, features=5):
    y = torch.tensor(labels)
    return [(torch.randn(len(y), features), y)]


@_own_rng
def check_pick_on_validation(pick_on_validation):
    """pick_on_validation(models, loaders): the name of the model with the best validation accuracy."""
    _callable(pick_on_validation, "pick_on_validation")
    torch.manual_seed(0)
    # train favours "a", validation favours "b"; the test split must not be read at all
    cases = [({"a": _Constant(0), "b": _Constant(1)}, [0, 0, 0, 1], [1, 1, 1, 0], "b"),
             ({"c": _Constant(2), "a": _Constant(0), "b": _Constant(1)}, [0, 0, 2, 2, 2], [0, 0, 0, 1, 2], "a"),
             ({"a": _Constant(0), "b": _Constant(1), "c": _Constant(2)}, [2, 2, 2, 0, 1], [0, 0, 0, 2, 2, 1], "a")]
    answers = []
    for models, train_labels, val_labels, _ in cases:
        loaders = _Loaders(_split(train_labels), _split(val_labels), _Forbidden())
        got = _call("pick_on_validation", pick_on_validation, models, loaders)
        _expect(isinstance(got, str), f"pick_on_validation should return the model's name (a key of `models`), "
                                      f"got {type(got).__name__}")
        answers.append(got)

    def accuracy(models, labels):
        return {name: sum(model.label == y for y in labels) for name, model in models.items()}

    picks = {"train": [], "worst": []}  # what the usual mistakes answer, case by case
    for models, train_labels, val_labels, _ in cases:
        on_train, on_val = accuracy(models, train_labels), accuracy(models, val_labels)
        picks["train"].append(max(on_train, key=on_train.get))
        picks["worst"].append(min(on_val, key=on_val.get))
    fits = [why for key, why in (("train", ": that one is best on the training split; choose on the validation split"),
                                 ("worst", ": that one has the lowest validation accuracy; take the highest (max)"))
            if picks[key] == answers]
    for (_, _, val_labels, want), got in zip(cases, answers):
        _expect(got == want, f"with validation labels {val_labels}, the best model on validation is {want!r}, "
                             f"got {got!r}{fits[0] if len(fits) == 1 else ''}")
    _passed("pick_on_validation", len(cases))
