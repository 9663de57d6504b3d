import pytest
import torch
from torch import nn

from deeplsp_helpers import data, models, train


@pytest.fixture
def small(splits):
    return data.make_loaders(splits, batch_size=128, train_subset=2048)


def test_training_beats_chance_and_keeps_the_best_validation_epoch(small):
    model = models.LeNet()
    history = train.train(model, small.train, small.val, num_epochs=2, lr=3e-3, optimizer="adam",
                          weight_decay=0.0, progress=False)
    acc = train.evaluate(model, small.val)
    assert acc > 50
    assert acc == pytest.approx(max(history["val_acc"]))
    assert history["best_epoch"] == 1 + history["val_acc"].index(max(history["val_acc"]))


def test_callbacks_run_after_every_optimizer_step_and_keep_masks(small):
    model = models.LeNet()
    mask = (torch.rand_like(model.fc1.weight) > 0.5).float()
    calls = []

    def reapply(m):
        calls.append(1)
        with torch.no_grad():
            m.fc1.weight.mul_(mask)

    reapply(model)
    calls.clear()
    train.fine_tune(model, small.train, num_epochs=1, lr=0.01, callbacks=[reapply], progress=False)
    assert len(calls) == len(small.train)
    assert torch.all(model.fc1.weight[mask == 0] == 0)


def test_without_the_callback_masked_weights_grow_back(small):
    model = models.LeNet()
    with torch.no_grad():
        model.fc1.weight[:, :100] = 0
    train.fine_tune(model, small.train, num_epochs=1, lr=0.01, progress=False)
    assert model.fc1.weight[:, :100].count_nonzero() > 0


def test_evaluate_uses_eval_mode_and_restores_the_mode(splits):
    seen = []

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(784, 10)

        def forward(self, x):
            seen.append(self.training)
            return self.lin(x.flatten(1))

    model = Probe().train()
    acc = train.evaluate(model, data.BatchLoader(data.subset(splits.val, 100), 50))
    assert 0 <= acc <= 100 and seen == [False, False] and model.training


def test_penalty_is_added_to_the_loss(small):
    model = models.VGG()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    before = sum(m.weight.abs().sum().item() for m in bns)
    train.fine_tune(model, small.train, num_epochs=1, lr=0.01, weight_decay=0.0, progress=False,
                    penalty=lambda m: 1e-2 * sum(b.weight.abs().sum() for b in bns))
    after = sum(m.weight.abs().sum().item() for m in bns)
    assert after < before


@pytest.mark.parametrize("kwargs", [dict(lr=0), dict(lr=float("nan")), dict(num_epochs=-1), dict(weight_decay=-1),
                                    dict(optimizer="rmsprop"), dict(schedule="step")])
def test_bad_hyperparameters_are_rejected(kwargs, small):
    with pytest.raises(ValueError):
        train.train(models.LeNet(), small.train, **kwargs)


def test_bad_model_or_loader_types(small):
    with pytest.raises(TypeError):
        train.evaluate("model", small.val)
    with pytest.raises(TypeError):
        train.evaluate(models.LeNet(), 5)


def test_progress_is_quiet_under_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    assert not train.progress_enabled()
    assert train.progress_enabled(True)
    monkeypatch.delenv("CI")
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert train.progress_enabled()


def test_distillation_loss_blends_hard_and_soft_terms():
    torch.manual_seed(0)
    y_hat, teacher, y = torch.randn(8, 10), torch.randn(8, 10), torch.randint(0, 10, (8,))
    ce = nn.functional.cross_entropy(y_hat, y)
    assert train.distillation_loss(y_hat, y, teacher, alpha=0.0) == pytest.approx(ce.item())
    assert train.distillation_loss(y_hat, y, y_hat, alpha=1.0).item() == pytest.approx(0.0, abs=1e-6)  # same outputs
    assert train.distillation_loss(y_hat, y, teacher, alpha=1.0).item() > 0
    for bad in (dict(temperature=0), dict(alpha=1.5), dict(alpha=-0.1)):
        with pytest.raises(ValueError):
            train.distillation_loss(y_hat, y, teacher, **bad)


def test_fine_tuning_with_a_teacher_moves_the_student_towards_it(small):
    torch.manual_seed(0)
    teacher = models.LeNet()
    train.train(teacher, small.train, num_epochs=2, lr=3e-3, optimizer="adam", progress=False)
    X = next(iter(small.val))[0]
    torch.manual_seed(1)
    init = models.LeNet().state_dict()
    gaps = {}
    for label, t in (("plain", None), ("distilled", teacher)):
        student = models.LeNet()
        student.load_state_dict(init)
        train.fine_tune(student, small.train, num_epochs=1, lr=0.05, teacher=t, progress=False)
        with torch.no_grad():
            gaps[label] = nn.functional.kl_div(nn.functional.log_softmax(student(X), 1),
                                               nn.functional.log_softmax(teacher(X), 1),
                                               reduction="batchmean", log_target=True).item()
    assert gaps["distilled"] < gaps["plain"]
    with pytest.raises(TypeError):
        train.fine_tune(student, small.train, teacher="dense")
