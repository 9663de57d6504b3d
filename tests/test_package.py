import random

import pytest
import torch

from deeplsp_helpers import get_device, seed_everything


def test_seed_everything_makes_draws_repeatable():
    seed_everything(3)
    a = (torch.rand(3), random.random())
    seed_everything(3)
    b = (torch.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and a[1] == b[1]


@pytest.mark.parametrize("bad, err", [(-1, ValueError), (1.5, TypeError), ("0", TypeError), (True, TypeError)])
def test_seed_everything_rejects_bad_seeds(bad, err):
    with pytest.raises(err):
        seed_everything(bad)


def test_get_device_falls_back_to_cpu():
    dev = get_device()
    assert dev.type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        assert get_device("cuda").type == "cpu"
    assert get_device("cpu").type == "cpu"
    with pytest.raises(TypeError):
        get_device(0)
