"""Chapter 00, getting started: what sparse storage costs, MACs counted from shapes, choices made on validation."""

from __future__ import annotations

from collections import namedtuple

import torch
from torch import nn

from ._harness import (
    CheckFailed,
    _as_real,
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


def _shape_macs(model, X):
    """{name: MACs per sample} of every Conv2d and Linear that runs on ``X``, from shapes (the check's own count),
    and {name: calls}."""
    names = {module: name for name, module in model.named_modules()}
    out, calls, hooks = {}, {}, []

    def hook(module, inputs, output):
        per_sample = output[0].numel()  # output elements of one sample
        if isinstance(module, nn.Conv2d):
            k = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        else:
            k = module.in_features
        out[names[module]] = out.get(names[module], 0) + per_sample * k
        calls[names[module]] = calls.get(names[module], 0) + 1

    for module in names:
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(X)
    finally:
        for h in hooks:
            h.remove()
    return out, calls


class _Tokens(nn.Module):
    """A linear layer applied to every row of a [N, T, F] sample, then one head run twice (on the mean and on the
    largest of the rows); one unused layer."""

    def __init__(self):
        super().__init__()
        self.mix, self.head, self.unused = nn.Linear(6, 5), nn.Linear(5, 3, bias=False), nn.Linear(6, 6)

    def forward(self, x):
        h = torch.relu(self.mix(x))
        return self.head(h.mean(1)) + self.head(h.amax(1))


def _macs_models():
    """(description, model, input batch) for check_macs_by_layer: strides, padding, groups, depthwise, a
    non-square kernel, no bias, zeroed weights, rows of a sequence, a layer that never runs."""
    torch.manual_seed(0)
    convs = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, stride=2, groups=8, bias=False),  # depthwise
                          nn.Conv2d(8, 6, (3, 1), groups=2), nn.Flatten(), nn.Linear(6 * 2 * 4, 4))
    with torch.no_grad():
        convs[0].weight[:4] = 0  # zeros: a MAC is counted from the shapes, zero weight or not
    return [("a conv net with a depthwise and a grouped conv (some weights zero)", convs, torch.randn(2, 3, 10, 10)),
            ("a linear layer on every row of a [N, T=4, F=6] sample", _Tokens(), torch.randn(3, 4, 6))]


@_own_rng
def check_macs_by_layer(macs_by_layer):
    """macs_by_layer(model, X): {module name: MACs per sample} of every Conv2d and Linear that runs on X,
    counted from shapes."""
    _callable(macs_by_layer, "macs_by_layer")
    cases = _macs_models()
    for label, model, X in cases:
        want, calls = _shape_macs(model, X)
        got = _call("macs_by_layer", macs_by_layer, model, X)
        _expect(isinstance(got, dict), f"macs_by_layer should return a dict {{module name: MACs per sample}}, got "
                                       f"{type(got).__name__}")
        missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
        _expect(not missing, f"on {label}, macs_by_layer is missing the layers {missing} (keys are the names "
                             f"model.named_modules() gives, e.g. {sorted(want)})")
        _expect(not extra, f"on {label}, macs_by_layer returned {extra}, which are not Conv2d/Linear layers that "
                           f"run on X (a layer that is never called does no MACs: leave it out)")
        modules = dict(model.named_modules())
        for name, expected in want.items():
            value, _ = _as_real(got[name])
            if value is not None and value == expected and float(value).is_integer():
                continue
            m = modules[name]
            n = X.shape[0]
            if isinstance(m, nn.Conv2d):
                positions = expected // (m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1])
                causes = [(expected * n, "that is the whole batch; count one sample"),
                          (expected * m.groups, "a grouped conv's output channel sees in_channels / groups input "
                                                "channels: divide by groups"),
                          (m.weight.numel(), "that is the weight count; each weight is used at every output position "
                                             f"({positions // m.out_channels} per output channel here)"),
                          (int(m.weight.count_nonzero()) * positions // m.out_channels,
                           "zeros were skipped: MACs are counted from the shapes, a zero weight costs one all the same")]
            else:
                rows = expected // (m.in_features * m.out_features * calls[name])
                causes = [(expected * n, "that is the whole batch; count one sample"),
                          (expected // calls[name], f"this layer runs {calls[name]} times on each sample: add the MACs "
                                                    f"of every call"),
                          (m.in_features * m.out_features, f"a sample here has {rows} rows, and the layer runs on "
                                                           f"each of them")]
            why = next((msg for value_, msg in causes if value is not None and value == value_ != expected), "")
            if value is None:
                why = f"each value should be a number (an int), got {got[name]!r}"
            _expect(False, f"on {label}, layer {name!r} ({m}) does {expected:,} MACs per sample, got {got[name]!r}"
                           + (f": {why}" if why else ""))
    _passed("macs_by_layer", len(cases))


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
