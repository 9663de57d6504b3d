"""Chapter 00 (getting started): its exercise checks accept right answers and reject known-wrong ones, with a message."""

import torch
from check_cases import chapter_tests

from deeplsp_helpers import train
from deeplsp_helpers.checks import ch00_getting_started


def sparse_storage_bits(model, data_width=32, index_width=32):
    return sum(int(p.count_nonzero()) for p in model.parameters()) * (data_width + index_width)


def per_image_ms(model, batch_sizes):
    from deeplsp_helpers import latency

    return {bs: latency.measure_latency(model, torch.zeros(bs, 1, 4, 4), warmup=2, repeats=8, threads=1).median_ms / bs
            for bs in batch_sizes}


def macs_per_second(model, X):
    from deeplsp_helpers import latency, metrics

    seconds = latency.measure_latency(model, X, warmup=2, repeats=8, threads=1).median_ms / 1000
    return metrics.count_macs(model, X) * len(X) / seconds


def macs_per_second_other_way(model, X):  # also right: one sample's MACs times the batch, median over more calls
    from deeplsp_helpers import latency, metrics

    median_s = latency.measure_latency(model, X, warmup=5, repeats=21, threads=1).median_ms * 1e-3
    return float(metrics.count_macs(model, X[:1]) * X.shape[0]) / median_s


def pick_on_validation(models, loaders):
    from deeplsp_helpers import train

    return max(models, key=lambda name: train.evaluate(models[name], loaders.val))


RIGHT = {  # the notebook's answers
    "sparse_storage_bits": sparse_storage_bits,
    "per_image_ms": per_image_ms,
    "macs_per_second": macs_per_second,
    "pick_on_validation": pick_on_validation,
}

def sparse_storage_bits_by_mask(model, data_width=32, index_width=32):  # also right: count the non-zeros another way
    return int(sum((p != 0).sum() for p in model.parameters())) * (data_width + index_width)


def per_image_ms_other_way(model, batch_sizes):  # also right: a loop, more repeats
    from deeplsp_helpers import latency

    out = {}
    for bs in batch_sizes:
        result = latency.measure_latency(model, torch.zeros(bs, 1, 4, 4), warmup=3, repeats=15, threads=1)
        out[bs] = float(result.median_ms) / bs
    return out


def pick_on_validation_sorted(models, loaders):  # also right: rank all, take the first
    return sorted(models, key=lambda name: -train.evaluate(models[name], loaders.val))[0]


RIGHT_ALSO = {  # every right answer the task allows, the notebook's first
    "sparse_storage_bits": [sparse_storage_bits, sparse_storage_bits_by_mask],
    "per_image_ms": [per_image_ms, per_image_ms_other_way],
    "macs_per_second": [macs_per_second, macs_per_second_other_way],
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
    "per_image_ms": [
        (lambda m, sizes: {bs: v * bs for bs, v in per_image_ms(m, sizes).items()}, "whole batch"),
        (lambda m, sizes: {bs: v / 1000 for bs, v in per_image_ms(m, sizes).items()}, "seconds"),
        (lambda m, sizes: [per_image_ms(m, sizes)[bs] for bs in sizes], "dict"),
    ],
    "macs_per_second": [
        (lambda m, X: macs_per_second(m, X) / len(X), "whole batch"),
        (lambda m, X: macs_per_second(m, X) / 1000, "per millisecond"),
        (lambda m, X: macs_per_second(m, X) / len(X) / 1000, "count the whole batch and divide by seconds"),
        (lambda m, X: 1 / macs_per_second(m, X), "MACs per second"),
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
