import pytest
import torch
from torch import nn

from deeplsp_helpers import latency, models


def test_latency_stats_are_consistent_and_state_is_restored():
    model = models.LeNet().train()
    before = torch.get_num_threads()
    stats = latency.measure_latency(model, torch.randn(4, 1, 28, 28), warmup=2, repeats=9, threads=1)
    assert stats.runs == 9 and stats.threads == 1 and stats.batch_size == 4
    assert 0 < stats.min_ms <= stats.q1_ms <= stats.median_ms <= stats.q3_ms
    assert stats.iqr_ms == pytest.approx(stats.q3_ms - stats.q1_ms)
    assert torch.get_num_threads() == before and model.training


def test_first_call_is_never_timed_and_runs_are_under_inference_mode():
    calls = []

    class Probe(nn.Module):
        def forward(self, x):
            calls.append((self.training, torch.is_inference_mode_enabled()))
            return x

    latency.measure_latency(Probe(), torch.zeros(1, 1), warmup=3, repeats=5)
    assert len(calls) == 8 and all(c == (False, True) for c in calls)


def test_compare_latency_interleaves_and_ranks_models():
    small, big = nn.Linear(64, 64), nn.Sequential(*[nn.Linear(64, 64) for _ in range(30)])
    order = []
    small.register_forward_hook(lambda *a: order.append("small"))
    big[0].register_forward_hook(lambda *a: order.append("big"))
    res = latency.compare_latency({"small": small, "big": big}, torch.randn(32, 64), warmup=2, repeats=15)
    assert set(res) == {"small", "big"}
    assert res["big"].median_ms > res["small"].median_ms
    assert order[:4] == ["small", "small", "big", "big"]  # warm-up, model by model
    rounds = [order[4 + 2 * r: 6 + 2 * r] for r in range(15)]
    assert all(sorted(r) == ["big", "small"] for r in rounds)  # then one run of each per round
    assert {tuple(r) for r in rounds} == {("small", "big"), ("big", "small")}  # in an order that changes


class _Sleeper(nn.Module):
    def __init__(self, seconds):
        super().__init__()
        self.seconds = seconds

    def forward(self, x):
        import time

        time.sleep(self.seconds)
        return x


def test_speedups_carry_an_interval_and_a_verdict():
    base, slow = _Sleeper(0.001), _Sleeper(0.004)
    stats, speedups = latency.compare_speedups({"base": base, "same": base, "slow": slow}, torch.zeros(1, 1),
                                               "base", warmup=1, repeats=15)
    assert set(stats) == set(speedups) == {"base", "same", "slow"}
    assert speedups["base"].median == speedups["base"].low == speedups["base"].high == 1.0
    assert speedups["base"].verdict() == "no measurable speed-up"
    s = speedups["slow"]
    assert s.low <= s.median <= s.high < 1 and s.verdict() == "slower" and s.rounds == 15
    assert str(s).startswith(f"{s.median:.2f}x [")
    assert latency.Speedup(2.0, 1.5, 2.5, 10).verdict() == "faster"
    assert latency.Speedup(1.1, 0.9, 1.3, 10).verdict() == "no measurable speed-up"
    with pytest.raises(ValueError, match="baseline"):
        latency.compare_speedups({"a": base}, torch.zeros(1, 1), "b")


@pytest.mark.parametrize("kwargs, err", [(dict(warmup=0), ValueError), (dict(repeats=2), ValueError),
                                         (dict(threads=0), ValueError), (dict(threads=1.5), TypeError)])
def test_bad_settings(kwargs, err):  # check_ints: a value out of range is a ValueError, a non-int a TypeError
    with pytest.raises(err):
        latency.measure_latency(models.LeNet(), torch.randn(1, 1, 28, 28), **kwargs)


def test_bad_inputs():
    with pytest.raises(TypeError):
        latency.measure_latency(models.LeNet(), [1, 2, 3])
    with pytest.raises(TypeError):
        latency.compare_latency({}, torch.randn(1, 1, 28, 28))


def test_paired_speedup_pairs_rounds_and_validates():
    base = [0.010, 0.020, 0.010, 0.030, 0.010]
    faster = [t / 2 for t in base]  # twice as fast in every round, however noisy the rounds are
    s = latency.paired_speedup(base, faster)
    assert s.median == s.low == s.high == 2.0 and s.verdict() == "faster" and s.rounds == 5
    with pytest.raises(ValueError, match="same number"):
        latency.paired_speedup(base, faster[:4])
    with pytest.raises(ValueError, match="positive"):
        latency.paired_speedup(base, [0.0] * 5)
    with pytest.raises(TypeError):
        latency.paired_speedup(0.1, faster)
    calls = latency.time_calls([lambda: None, lambda: sum(range(2000))], warmup=1, repeats=5, threads=1)
    assert latency.paired_speedup(calls[1], calls[0]).median > 1  # doing nothing beats a loop


def test_any_callable_taking_the_inputs_is_timed_beside_a_module():
    class Runtime:  # stands in for another runtime's session wrapper with its own thread pool
        threads = 1

        def __call__(self, x):
            return x * 2

    module = nn.Linear(4, 4).train()
    stats = latency.compare_latency({"module": module, "fn": lambda x: x + 1, "runtime": Runtime()},
                                    torch.zeros(2, 4), warmup=1, repeats=5, threads=1)
    assert set(stats) == {"module", "fn", "runtime"} and module.training
    with pytest.raises(ValueError, match="threads"):
        latency.measure_latency(Runtime(), torch.zeros(2, 4), threads=2)
    with pytest.raises(TypeError, match="callable"):
        latency.measure_latency("model", torch.zeros(2, 4))
