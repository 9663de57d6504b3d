"""Chapter 07, deployment: predictions from an ONNX Runtime session, pruning's gain inside each runtime from one
interleaved run, finding the prune masks a model still carries."""

from __future__ import annotations

import tempfile
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import prune

from ._harness import CheckFailed, _Busy, _call, _callable, _expect, _Gain, _own_rng, _passed


def _session(model, x, input_name):
    """An ONNX Runtime session (1 thread) for ``model`` exported with its input called ``input_name``."""
    from ..deploy import export_onnx, ort_session

    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, x, Path(tmp) / "model.onnx", input_name=input_name, output_name="scores")
        return ort_session(path, threads=1)  # the session holds the graph in memory: the file may go


def _labels(got):
    """The answer as a list of ints, or None if it is not a 1-D integer tensor / array."""
    if isinstance(got, torch.Tensor):
        ok = got.ndim == 1 and not got.is_floating_point() and got.dtype != torch.bool
        return got.tolist() if ok else None
    if type(got).__module__ == "numpy":
        import numpy as np

        ok = got.ndim == 1 and np.issubdtype(got.dtype, np.integer)
        return got.tolist() if ok else None
    return None


@_own_rng
def check_ort_predict(ort_predict):
    """ort_predict(session, X): the predicted class of each sample of the batch tensor ``X`` (float32 or float64),
    computed by the ONNX Runtime ``session``, as a 1-D integer tensor (or NumPy array)."""
    _callable(ort_predict, "ort_predict")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 5))
    cases = [("input", torch.randn(6, 1, 3, 4)), ("pixels", torch.randn(1, 1, 3, 4)),
             ("pixels", torch.randn(7, 1, 3, 4, dtype=torch.float64)),
             ("input", torch.randn(4, 1, 3, 4, requires_grad=True))]  # e.g. a batch still in an autograd graph
    for name, X in cases:
        session = _session(model, X[:1].detach().float(), name)
        want = model(X.detach().float()).argmax(1).tolist()
        try:
            got = _call("ort_predict", ort_predict, session, X)
        except CheckFailed as failed:
            hint, text = "", str(failed).lower()
            if "input name" in text or "pixels" in text:
                hint = f"; this model's input is called {name!r}: read the name from session.get_inputs()[0].name"
            elif "data type" in text or "double" in text:
                hint = "; ONNX Runtime takes a float32 NumPy array: X.float().numpy() (X was float64 here)"
            elif "requires grad" in text:
                hint = "; X requires grad here: X.detach() before .numpy()"
            raise CheckFailed(f"{failed}{hint}") from None
        labels = _labels(got)
        shape = tuple(getattr(got, "shape", ()))
        if labels is None or len(labels) != len(X):
            why = "return the class of each sample (a 1-D integer tensor), got "
            if shape == (len(X), 5):
                why += "the scores of every class: take the argmax over the classes (axis 1)"
            elif shape == (5,):
                why += "an argmax over the batch (axis 0): take it over the classes (axis 1)"
            elif shape == (len(X),):
                why += f"values of type {getattr(got, 'dtype', '?')}: the classes are integers (argmax gives int64)"
            else:
                why += f"{type(got).__name__} of shape {shape}" if shape else type(got).__name__
            raise CheckFailed(f"ort_predict on a batch of {len(X)}: {why}")
        _expect(labels == want, f"ort_predict on a batch of {len(X)} ({X.dtype}) should give {want}, got {labels}")
    _passed("ort_predict", len(cases))


class _LoggedBusy(_Busy):
    """A stand-in model that takes ``seconds`` per call and writes its key into ``log`` at each call."""

    def __init__(self, seconds, key, log):
        super().__init__(seconds)
        self.key, self.log = key, log

    def forward(self, x):
        self.log.append(self.key)
        return super().forward(x)


def check_pruning_gain_per_runtime(pruning_gain_per_runtime):
    """pruning_gain_per_runtime(calls, X): ``{runtime: latency.Speedup}`` of ``"structured"`` over ``"dense"`` inside
    each runtime named in ``calls`` (``{(model, runtime): callable}``), every call timed in one interleaved run."""
    from ..latency import Speedup

    _callable(pruning_gain_per_runtime, "pruning_gain_per_runtime")
    x = torch.zeros(2, 3)
    cases = [{"eager": (0.002, 0.001), "fast": (0.001, 0.001)},                          # seconds: (dense, structured)
             {"a": (0.001, 0.0015), "b": (0.0015, 0.0005), "c": (0.001, 0.001)}]
    for durations in cases:
        log, calls = [], {}
        for runtime, (dense, structured) in durations.items():
            calls["dense", runtime] = _LoggedBusy(dense, runtime, log)
            calls["structured", runtime] = _LoggedBusy(structured, runtime, log)
        got = _call("pruning_gain_per_runtime", pruning_gain_per_runtime, calls, x)
        _expect(isinstance(got, dict), f"pruning_gain_per_runtime should return a dict {{runtime: latency.Speedup}}, "
                                       f"got {type(got).__name__}")
        _expect(set(got) == set(durations), f"the keys should be the runtimes {sorted(durations)} (the second element of "
                                            f"each (model, runtime) pair), got {sorted(map(repr, got))}")
        spans = {r: (log.index(r), len(log) - 1 - log[::-1].index(r)) for r in durations if r in log}
        separate = [(a, b) for a in spans for b in spans if a != b and spans[a][1] < spans[b][0]]
        _expect(not separate, f"every call of {separate[0][0]!r} ran before any call of {separate[0][1]!r}: time all the "
                              f"calls in one interleaved run (one latency.time_calls over every pair)" if separate else "")
        for runtime, (dense, structured) in durations.items():
            s, want = got[runtime], dense / structured
            _expect(isinstance(s, Speedup), f"each value should be the latency.Speedup that latency.paired_speedup "
                                            f"returns (median and interval), got {type(s).__name__} for {runtime!r}")
            hint = (": that is dense over structured the wrong way round (paired_speedup(baseline_times, times), the "
                    "dense model's times first)" if want != 1 and abs(s.median - 1 / want) < 0.35 / want else "")
            _expect(abs(s.median - want) < 0.35 * want,  # wide: a busy machine stretches the stand-ins' times
                    f"in {runtime!r} the dense call takes {dense * 1e3:g} ms and the structured one {structured * 1e3:g} ms: "
                    f"the speed-up should be about {want:.2f}x, got {s.median:.2f}x{hint}")
    _passed("pruning_gain_per_runtime", len(cases))


def _masked_model():
    model = nn.Sequential(OrderedDict(
        stem=nn.Conv2d(1, 4, 3), bn=nn.BatchNorm2d(4),
        body=nn.Sequential(OrderedDict(conv=nn.Conv2d(4, 4, 3), conv2=nn.Conv2d(4, 4, 1), scale=_Gain(4))),
        head=nn.Sequential(OrderedDict(pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten(), fc=nn.Linear(4, 3)))))
    prune.l1_unstructured(model.stem, "weight", amount=0.5)
    prune.l1_unstructured(model.body.conv, "weight", amount=0.3)
    prune.remove(model.body.conv, "weight")              # made permanent: no mask left
    prune.l1_unstructured(model.body.conv2, "weight", amount=0.5)  # nested
    prune.l1_unstructured(model.body.scale, "gain", amount=0.5)
    prune.l1_unstructured(model.head.fc, "bias", amount=0.4)  # only the bias carries a mask
    model.bn.register_buffer("channel_mask", torch.ones(4))  # a buffer named …_mask that no pruning made
    return model


@_own_rng
def check_masked_layers(masked_layers):
    """masked_layers(model): the set of names (as ``model.named_modules()`` gives them) of the modules that still
    carry a ``torch.nn.utils.prune`` mask on any of their tensors, nested modules included."""
    _callable(masked_layers, "masked_layers")
    torch.manual_seed(0)
    root = nn.Linear(3, 2)
    prune.l1_unstructured(root, "weight", amount=0.5)  # the model itself is pruned: its name is ""
    cases = [(_masked_model(), {"stem", "body.conv2", "body.scale", "head.fc"}), (nn.Sequential(nn.Linear(3, 2)), set()),
             (root, {""})]
    for model, want in cases:
        got = _call("masked_layers", masked_layers, model)
        _expect(isinstance(got, (set, frozenset)) and all(isinstance(n, str) for n in got),
                "masked_layers should return a set of module names (str), got "
                + (f"a {type(got).__name__} of {type(next(iter(got))).__name__}" if isinstance(got, (set, list, tuple))
                   and got else type(got).__name__)
                + (" (wrap it: set(...))" if isinstance(got, (list, tuple)) and all(isinstance(n, str) for n in got)
                   else ""))
        hint = ""
        if "bn" in got:
            hint = ": bn only has a buffer called channel_mask; a torch.nn.utils.prune mask comes with a pruning " \
                   "hook on the module (a prune.BasePruningMethod in _forward_pre_hooks) and the tensor's name_orig"
        elif got == {"stem"}:
            hint = ": nested modules count too (model.named_modules(), not named_children())"
        elif got == {"stem", "body.conv2"}:
            hint = ": a mask on any tensor counts (head.fc's bias_mask, body.scale's gain_mask), not only weight_mask"
        elif "body.conv" in got:
            hint = ": body.conv was made permanent with prune.remove, it has no mask left"
        elif want == {""}:
            hint = ": the model itself is pruned here, and model.named_modules() names it \"\" (keep empty names)"
        _expect(got == want, f"masked_layers on a model with masks in {sorted(want) or 'no module'} returned "
                             f"{sorted(got)}{hint}")
    _passed("masked_layers", len(cases))
