"""Chapter 07 (deployment): its exercise checks accept right answers and reject known-wrong ones, with a message."""

import torch
from check_cases import chapter_tests
from torch.nn.utils import prune

from deeplsp_helpers import latency
from deeplsp_helpers.checks import ch07_deployment


def ort_predict(session, X):
    name = session.get_inputs()[0].name
    return torch.from_numpy(session.run(None, {name: X.detach().cpu().float().numpy()})[0]).argmax(1)


def _ort_predict_numpy(session, X):
    return session.run(None, {session.get_inputs()[0].name: X.detach().numpy().astype("float32")})[0].argmax(1)


def pruning_gain_per_runtime(calls, X):
    keys = list(calls)
    rounds = latency.time_calls([lambda f=calls[k]: f(X) for k in keys], warmup=5, repeats=30, threads=1)
    t = dict(zip(keys, rounds))
    return {runtime: latency.paired_speedup(t["dense", runtime], t["structured", runtime])
            for model, runtime in keys if model == "dense"}


def _gains_by_runtime_set(calls, X):
    runtimes = sorted({runtime for _, runtime in calls})
    order = [(m, r) for r in runtimes for m in ("dense", "structured")]
    rounds = dict(zip(order, latency.time_calls([lambda k=k: calls[k](X) for k in order], 3, 20, threads=1)))
    return {r: latency.paired_speedup(rounds["dense", r], rounds["structured", r]) for r in runtimes}


def _gains_inverted(calls, X):
    return {r: latency.paired_speedup(t2, t1) for r, (t1, t2) in _times_by_runtime(calls, X).items()}


def _times_by_runtime(calls, X):
    keys = list(calls)
    t = dict(zip(keys, latency.time_calls([lambda f=calls[k]: f(X) for k in keys], 3, 20, threads=1)))
    return {r: (t["dense", r], t["structured", r]) for _, r in keys}


def _gains_separate_runs(calls, X):
    out = {}
    for r in {runtime for _, runtime in calls}:
        dense, structured = latency.time_calls([lambda k=k: calls[k](X) for k in (("dense", r), ("structured", r))], 3, 20, 1)
        out[r] = latency.paired_speedup(dense, structured)
    return out


def _masked_no_root(model):
    return {name for name in masked_layers(model) if name}


def masked_layers(model):
    return {name for name, m in model.named_modules()
            if any(isinstance(h, prune.BasePruningMethod) for h in m._forward_pre_hooks.values())}


def _masked_by_buffers(model):
    return [name for name, m in model.named_modules() if any(b.endswith("_mask") for b, _ in m.named_buffers(recurse=False))]


def _masked_by_orig(model):  # another right answer: a prune mask comes with the tensor's name_orig
    return {name for name, m in model.named_modules()
            if any(b.endswith("_mask") and hasattr(m, b[:-len("_mask")] + "_orig") for b, _ in m.named_buffers(recurse=False))}


def _masked_weight_only(model):
    return {name for name, m in model.named_modules() if hasattr(m, "weight_mask")}


def _masked_children_only(model):
    return {name for name, m in model.named_children() if prune.is_pruned(m) and hasattr(m, "weight_mask")}


RIGHT_ALSO = {  # the first answer is the notebook's; each one must pass
    "ort_predict": [ort_predict, _ort_predict_numpy],
    "pruning_gain_per_runtime": [pruning_gain_per_runtime, _gains_by_runtime_set],
    "masked_layers": [masked_layers, _masked_by_orig],
}
RIGHT = {name: answers[0] for name, answers in RIGHT_ALSO.items()}

WRONG_TOLD = {  # (wrong answer, what the message must say)
    "ort_predict": [
        (lambda session, X: torch.from_numpy(session.run(None, {session.get_inputs()[0].name: X.detach().float().numpy()})[0]),
         "argmax over the classes"),
        (lambda session, X: ort_predict(session, X).float(), "1-D integer tensor"),
        (lambda session, X: torch.from_numpy(session.run(None, {"input": X.detach().float().numpy()})[0]).argmax(1),
         "session.get_inputs"),
        (lambda session, X: torch.from_numpy(session.run(None, {session.get_inputs()[0].name: X.detach().numpy()})[0])
         .argmax(1), "float32"),
        (lambda session, X: torch.from_numpy(session.run(None, {session.get_inputs()[0].name: X.detach().float().numpy()})
                                             [0]).argmax(0), "argmax over the batch"),
        (lambda session, X: torch.from_numpy(session.run(None, {session.get_inputs()[0].name: X.float().numpy()})[0])
         .argmax(1), "detach"),
    ],
    "pruning_gain_per_runtime": [
        (_gains_inverted, "wrong way round"),
        (lambda calls, X: {r: s.median for r, s in pruning_gain_per_runtime(calls, X).items()}, "latency.Speedup"),
        (lambda calls, X: {("structured", r): s for r, s in pruning_gain_per_runtime(calls, X).items()}, "the keys"),
        (_gains_separate_runs, "one interleaved run"),
    ],
    "masked_layers": [
        (_masked_weight_only, "not only weight_mask"), (_masked_children_only, "named_children"),
        (lambda model: {m for _, m in model.named_modules() if prune.is_pruned(m)}, "module names"),
        (lambda model: prune.is_pruned(model), "set of module names"),
        (lambda model: masked_layers(model) | {"body.conv"}, "prune.remove"),
        (_masked_no_root, "the model itself"),
        (_masked_by_buffers, "wrap it: set"),                                 # a list, and any buffer named …_mask
        (lambda model: set(_masked_by_buffers(model)), "only has a buffer called channel_mask"),
    ],
}

WRONG = {name: [answer for answer, _ in told] for name, told in WRONG_TOLD.items()}

globals().update(chapter_tests(ch07_deployment, RIGHT, WRONG, WRONG_TOLD, RIGHT_ALSO))  # test_… functions for pytest
