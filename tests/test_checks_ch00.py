"""Chapter 00 (getting started): its exercise checks accept right answers and reject known-wrong ones, with a message."""

import torch
from check_cases import chapter_tests

from deeplsp_helpers import train
from deeplsp_helpers.checks import ch00_getting_started


def sparse_storage_bits(model, data_width=32, index_width=32):
    return sum(int(p.count_nonzero()) for p in model.parameters()) * (data_width + index_width)


def macs_by_layer(model, X):
    macs, hooks = {}, []
    for name, m in model.named_modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            def hook(module, inputs, output, name=name):
                if isinstance(module, torch.nn.Conv2d):
                    per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
                else:
                    per_output = module.in_features
                macs[name] = macs.get(name, 0) + output[0].numel() * per_output  # one sample's outputs, a dot product each
            hooks.append(m.register_forward_hook(hook))
    with torch.no_grad():
        model(X)
    for h in hooks:
        h.remove()
    return macs


def macs_by_layer_from_weights(model, X):  # also right: each weight is used once per output position
    macs, hooks = {}, []
    for name, m in model.named_modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            def hook(module, inputs, output, name=name):
                per_channel = output[0].numel() // module.weight.shape[0]  # positions (conv) or rows (linear)
                macs[name] = macs.get(name, 0) + torch.tensor(module.weight.numel() * per_channel)  # an int tensor
            hooks.append(m.register_forward_hook(hook))
    model(X)
    for h in hooks:
        h.remove()
    return macs


def _wrong_macs(change):
    """macs_by_layer with one mistake: ``change(module, output, right count)`` gives the wrong count."""
    def wrong(model, X):
        right = macs_by_layer(model, X)
        modules = dict(model.named_modules())
        outs = {}
        hooks = [modules[n].register_forward_hook(lambda m, i, o, n=n: outs.__setitem__(n, o)) for n in right]
        with torch.no_grad():
            model(X)
        for h in hooks:
            h.remove()
        return {n: change(modules[n], outs[n], right[n]) for n in right}
    return wrong


def pick_on_validation(models, loaders):
    from deeplsp_helpers import train

    return max(models, key=lambda name: train.evaluate(models[name], loaders.val))


RIGHT = {  # the notebook's answers
    "sparse_storage_bits": sparse_storage_bits,
    "macs_by_layer": macs_by_layer,
    "pick_on_validation": pick_on_validation,
}

def sparse_storage_bits_by_mask(model, data_width=32, index_width=32):  # also right: count the non-zeros another way
    return int(sum((p != 0).sum() for p in model.parameters())) * (data_width + index_width)


def pick_on_validation_sorted(models, loaders):  # also right: rank all, take the first
    return sorted(models, key=lambda name: -train.evaluate(models[name], loaders.val))[0]


RIGHT_ALSO = {  # every right answer the task allows, the notebook's first
    "sparse_storage_bits": [sparse_storage_bits, sparse_storage_bits_by_mask],
    "macs_by_layer": [macs_by_layer, macs_by_layer_from_weights],
    "pick_on_validation": [pick_on_validation, pick_on_validation_sorted],
}

WRONG_TOLD = {  # (wrong answer, what the message must say)
    "sparse_storage_bits": [
        (lambda m, data_width=32, index_width=32: sum(p.numel() for p in m.parameters()) * data_width, "dense size"),
        (lambda m, data_width=32, index_width=32: sum(int(p.count_nonzero()) for p in m.parameters()) * data_width,
         "index"),
        (lambda m, data_width=32, index_width=32: sum(int(t.count_nonzero()) for t in m.state_dict().values())
         * (data_width + index_width), "not buffers"),
        (lambda m, data_width=32, index_width=32: sum(p.numel() for p in m.parameters()) * (data_width + index_width),
         "zeros are not stored"),
    ],
    "macs_by_layer": [
        (_wrong_macs(lambda m, out, right: right * out.shape[0]), "whole batch"),
        (_wrong_macs(lambda m, out, right: right * getattr(m, "groups", 1)), "divide by groups"),
        (_wrong_macs(lambda m, out, right: m.weight.numel() if isinstance(m, torch.nn.Conv2d) else right),
         "weight count"),
        (_wrong_macs(lambda m, out, right: right * int(m.weight.count_nonzero()) // m.weight.numel()),
         "zeros were skipped"),
        (_wrong_macs(lambda m, out, right: m.in_features * m.out_features if isinstance(m, torch.nn.Linear) else right),
         "rows"),
        (lambda model, X: [v for v in macs_by_layer(model, X).values()], "dict"),
        (lambda model, X: {**macs_by_layer(model, X), **{n: 0 for n, m in model.named_modules()
                                                         if isinstance(m, torch.nn.Linear)}}, "MACs per sample"),
        (lambda model, X: {n: 0 for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}
         | macs_by_layer(model, X), "never called"),
        (lambda model, X: {n: float(v) + 0.5 for n, v in macs_by_layer(model, X).items()}, "MACs per sample"),
        (_wrong_macs(lambda m, out, right: right // 2 if isinstance(m, torch.nn.Linear) and m.bias is None else right),
         "runs 2 times"),
    ],
    "pick_on_validation": [
        (lambda models, loaders: max(models, key=lambda n: train.evaluate(models[n], loaders.test)), "test split"),
        (lambda models, loaders: max(models, key=lambda n: train.evaluate(models[n], loaders.train)), "training split"),
        (lambda models, loaders: models[pick_on_validation(models, loaders)], "name"),
        (lambda models, loaders: next(iter(models)), "best model on validation"),
        (lambda models, loaders: min(models, key=lambda n: train.evaluate(models[n], loaders.val)), "lowest validation"),
    ],
}

WRONG = {name: [answer for answer, _ in told] for name, told in WRONG_TOLD.items()}

globals().update(chapter_tests(ch00_getting_started, RIGHT, WRONG, WRONG_TOLD, RIGHT_ALSO))  # test_… functions for pytest
