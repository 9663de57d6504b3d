"""The train/eval mode context managers restore every module's own flag, also when the block raises."""

import pytest
import torch
from torch import nn

from deeplsp_helpers._modes import eval_mode, train_mode


def _mixed():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Sequential(nn.Dropout(), nn.ReLU()))
    model.train()
    model[1].eval()          # a frozen BatchNorm inside a model in training
    model[2][0].eval()
    return model


def _flags(model):
    return [m.training for m in model.modules()]


def test_eval_mode_restores_mixed_flags():
    model = _mixed()
    before = _flags(model)
    assert before == [True, True, False, True, False, True]
    with eval_mode(model):
        assert not any(_flags(model))
    assert _flags(model) == before


def test_eval_mode_restores_on_exception():
    model = _mixed()
    before = _flags(model)
    with pytest.raises(RuntimeError, match="boom"):
        with eval_mode(model):
            raise RuntimeError("boom")
    assert _flags(model) == before


def test_train_mode_and_several_models():
    a, b = _mixed().eval(), nn.Linear(2, 2).train()
    with train_mode(a, b):
        assert all(_flags(a)) and all(_flags(b))
    assert not any(_flags(a)) and b.training
    with pytest.raises(TypeError, match="torch.nn.Module"):
        with eval_mode(lambda x: x):
            pass


def test_package_functions_restore_the_mode_when_the_forward_raises():
    from deeplsp_helpers import metrics, structured

    class Boom(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)
            self.bn = nn.BatchNorm1d(2).eval()

        def forward(self, x):
            raise RuntimeError("boom")

    for call in (lambda m: metrics.count_macs(m, (4,)), lambda m: structured.output_layers(m, torch.zeros(2, 4))):
        model = Boom().train()
        model.bn.eval()
        with pytest.raises(RuntimeError, match="boom"):
            call(model)
        assert model.training and not model.bn.training and model.fc.training

