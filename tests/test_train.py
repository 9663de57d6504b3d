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


def test_training_runs_channels_last_inside_and_restores_the_format(small):
    model = models.VGG(cfg=(8, "M", 16, "M"))
    formats = []
    model.features[2][0].register_forward_hook(  # a conv with 8 input channels: NCHW and NHWC strides differ
        lambda m, i, o: formats.append(m.weight.is_contiguous(memory_format=torch.channels_last)
                                       and not m.weight.is_contiguous()))
    params = list(model.parameters())
    strides = [p.stride() for p in params]
    train.fine_tune(model, small.train, num_epochs=1, lr=0.01, progress=False)
    assert formats and all(formats)  # ran channels-last
    # back in its own format, strides included (the 1-input-channel conv's weight would otherwise keep
    # channels-last strides, which are also "contiguous", and make later latency measurements run NHWC)
    assert [p.stride() for p in model.parameters()] == strides
    assert all(a is b for a, b in zip(params, model.parameters()))  # the same Parameter objects


def test_prune_masks_come_back_in_their_own_format_too(small):
    from torch.nn.utils import prune

    model = models.VGG(cfg=(8, "M", 16, "M"))
    prune.l1_unstructured(model.features[2][0], "weight", amount=0.5)
    mask = model.features[2][0].weight_mask
    train.fine_tune(model, small.train, num_epochs=1, lr=0.01, progress=False)
    conv = model.features[2][0]
    assert conv.weight_mask is mask and conv.weight_mask.is_contiguous()  # the same buffer, NCHW strides
    prune.remove(conv, "weight")
    assert conv.weight.is_contiguous() and conv.weight.stride() == (72, 9, 3, 1)


def test_teacher_outputs_are_computed_once_and_give_the_same_training(splits):
    sub = data.subset(splits.train, 512)
    teacher = models.LeNet().eval()
    calls = []
    teacher.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    cached = train.with_teacher_outputs(teacher, sub)
    assert cached.soft.shape == (512, 10) and sum(calls) == 512
    with torch.no_grad():
        assert torch.allclose(cached.soft[:7], teacher(sub.X[:7]), atol=1e-5)
    calls.clear()

    def run(loader, teacher=None, num_epochs=2):
        torch.manual_seed(0)
        student = models.LeNet()
        train.fine_tune(student, loader, num_epochs=num_epochs, lr=0.01, teacher=teacher, progress=False)
        return student.fc3.weight.detach().clone()

    via_cache_in_train = run(data.BatchLoader(sub, 128, shuffle=True), teacher)
    assert sum(calls) == 512  # once for the subset, not once per batch of each epoch
    calls.clear()
    via_cache = run(data.BatchLoader(cached, 128, shuffle=True))
    assert calls == []
    assert torch.allclose(via_cache_in_train, via_cache, atol=1e-5)
    loader = data.BatchLoader(sub, 128, shuffle=True)
    both_epochs = [b for _ in range(2) for b in loader]  # a plain list: the teacher runs on every batch
    per_batch = run(both_epochs, teacher, num_epochs=1)  # one pass over both epochs' batches, same schedule
    assert sum(calls) == 2 * 512
    assert torch.allclose(per_batch, via_cache, atol=1e-4)  # same batches, same soft targets, same training
    with pytest.raises(ValueError, match="already carries"):
        train.fine_tune(models.LeNet(), data.BatchLoader(cached, 128), teacher=teacher, progress=False)


def test_subset_keeps_teacher_outputs_and_evaluate_ignores_them(splits):
    cached = train.with_teacher_outputs(models.LeNet(), data.subset(splits.val, 300))
    part = data.subset(cached, 100, seed=1)
    assert part.soft is not None and part.soft.shape == (100, 10)
    assert 0 <= train.evaluate(models.LeNet(), data.BatchLoader(part, 50)) <= 100
    with pytest.raises(TypeError):
        train.with_teacher_outputs(models.LeNet(), splits.val.X)


def test_a_model_evaluated_inside_inference_mode_can_still_be_trained(small):
    model = models.VGG(cfg=(8, "M", 16, "M"))
    with torch.inference_mode():
        train.evaluate(model, small.val)
    train.evaluate(model, small.val)
    train.with_teacher_outputs(model, data.subset(small.train.dataset, 64))
    assert not any(p.is_inference() for p in model.parameters())
    train.fine_tune(model, small.train, num_epochs=1, lr=0.01, progress=False)  # would fail on inference tensors


def test_before_step_hooks_see_the_gradients_and_can_change_the_step(small):
    model = models.LeNet()
    seen = []

    def freeze_fc3(m):  # zero a gradient between backward and step: with weight_decay=0, fc3 cannot move
        seen.append(m.fc3.weight.grad is not None)
        m.fc3.weight.grad.zero_()
        m.fc3.bias.grad.zero_()

    before, fc1_before = model.fc3.weight.detach().clone(), model.fc1.weight.detach().clone()
    train.fine_tune(model, small.train, num_epochs=1, lr=0.01, weight_decay=0.0, momentum=0.0,
                    before_step=[freeze_fc3], progress=False)
    assert len(seen) == len(small.train) and all(seen)
    assert torch.equal(model.fc3.weight.detach(), before) and not torch.equal(model.fc1.weight.detach(), fc1_before)
    with pytest.raises(TypeError, match="before_step"):
        train.fine_tune(model, small.train, before_step=freeze_fc3, progress=False)  # one callable, not a list


def test_adamw_decays_the_weights_apart_from_the_gradient():
    model = nn.Linear(1, 1, bias=False)
    nn.init.ones_(model.weight)
    opt = train._make_optimizer(model, "adamw", lr=0.1, weight_decay=0.5, momentum=0.9)
    assert isinstance(opt, torch.optim.AdamW)
    (0 * model.weight).sum().backward()  # a zero gradient: Adam's step is 0, the decoupled decay is lr * wd * w
    opt.step()
    assert model.weight.item() == pytest.approx(1 - 0.1 * 0.5)
    with pytest.raises(ValueError, match="'sgd', 'adam' or 'adamw'"):
        train._make_optimizer(model, "rmsprop", lr=0.1, weight_decay=0.0, momentum=0.9)


def _bad_label_loaders():
    """Labels a loader may carry by mistake, each of which used to give a wrong accuracy without an error."""
    torch.manual_seed(0)
    X, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    return {"[N, 1]": [(X, y[:, None])], "one-hot": [(X, nn.functional.one_hot(y, 10))],
            "shorter than the batch": [(X, y[:5])], "fractional": [(X, y.float() / 3)], "out of range": [(X, y + 10)]}


@pytest.mark.parametrize("kind", sorted(_bad_label_loaders()))
def test_evaluate_refuses_labels_of_the_wrong_shape_or_kind(kind):
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    with pytest.raises(ValueError, match="the loader's labels y must be"):
        train.evaluate(model, _bad_label_loaders()[kind])


def test_flags_given_as_strings_are_refused_not_taken_as_true(small):
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    with pytest.raises(TypeError, match="select_best must be True or False, got 'no'"):
        train.train(model, small.train, small.val, num_epochs=1, select_best="no")
    with pytest.raises(TypeError, match="progress must be True or False"):
        train.train(model, small.train, num_epochs=1, progress="off")


def test_a_run_resumed_at_step_k_continues_the_schedule_and_takes_the_remaining_steps(splits):
    def loader():  # the same shuffled order for every run
        return data.make_loaders(splits, batch_size=128, train_subset=1024).train

    torch.manual_seed(0)
    start = models.LeNet()
    full, at_k, k = _copy(start), {}, 5
    lrs, calls = [], []

    def keep_k(m):
        calls.append(1)
        if len(calls) == k:
            at_k.update({n: v.clone() for n, v in m.state_dict().items()})

    # plain SGD (no momentum, no decay; the cosine schedule leaves momentum alone, one-cycle would cycle it)
    # carries no optimizer state, so a resumed run must retrace the full one
    sgd = dict(num_epochs=2, lr=0.05, momentum=0.0, weight_decay=0.0, schedule="cosine", progress=False)
    train.train(full, loader(), callbacks=[keep_k], **sgd)
    assert len(calls) == 2 * len(loader())
    resumed = models.LeNet()
    resumed.load_state_dict(at_k)
    calls.clear()
    train.train(resumed, loader(), callbacks=[lambda m: calls.append(1)], start_step=k,
                before_step=[lambda m: lrs.append(None)], **sgd)
    assert len(calls) == len(lrs) == 2 * len(loader()) - k
    for p, q in zip(full.parameters(), resumed.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    fresh = models.LeNet()
    fresh.load_state_dict(at_k)
    train.train(fresh, loader(), **dict(sgd, num_epochs=1))  # not resumed: a different run
    assert not torch.allclose(fresh.fc1.weight, full.fc1.weight, atol=1e-4)


def test_a_run_cut_into_segments_retraces_the_whole_run(splits):
    """start_step/stop_step segments (as halp.progressive_fine_tune uses them) walk the same schedule and batches."""
    def loader():
        return data.make_loaders(splits, batch_size=128, train_subset=1024).train  # 8 steps an epoch

    sgd = dict(num_epochs=2, lr=0.05, momentum=0.0, weight_decay=0.0, progress=False)
    torch.manual_seed(0)
    full = models.LeNet()
    pieces = _copy(full)
    train.fine_tune(full, loader(), **sgd)
    calls = []
    for start, stop in ((0, 3), (3, 11), (11, 16)):  # across the epoch boundary at 8
        train.fine_tune(pieces, loader(), callbacks=[lambda m: calls.append(1)], start_step=start, stop_step=stop,
                        **sgd)
    assert len(calls) == 16
    for p, q in zip(full.parameters(), pieces.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("start_step, stop_step", [(0, 0), (5, 5), (5, 3), (0, 17), (0, 2.5), (0, True)])
def test_a_stop_step_outside_the_run_or_before_its_start_is_refused(start_step, stop_step, small):
    one_epoch = data.make_loaders(data.load_fashion_mnist(), batch_size=128, train_subset=1024).train  # 8 steps
    with pytest.raises((ValueError, TypeError), match="stop_step"):
        train.train(models.LeNet(), one_epoch, num_epochs=2, start_step=start_step, stop_step=stop_step,
                    progress=False)


@pytest.mark.parametrize("start_step, err", [(-1, ValueError), (16, ValueError), (1.5, TypeError), (True, TypeError)])
def test_a_start_step_outside_the_run_is_refused(start_step, err, small):
    one_epoch = data.make_loaders(data.load_fashion_mnist(), batch_size=128, train_subset=1024).train  # 8 steps
    with pytest.raises(err, match="start_step"):
        train.train(models.LeNet(), one_epoch, num_epochs=2, start_step=start_step, progress=False)


def _copy(model):
    import copy

    return copy.deepcopy(model)


def test_reestimate_batchnorm_matches_the_pooled_statistics_and_changes_no_weight():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(3))
    model(torch.randn(2, 1, 6, 6))  # materialise the lazy layer
    model.eval()
    X = torch.randn(12, 1, 6, 6) * 3 + 1
    ds = data.ImageTensorDataset(X, torch.zeros(12, dtype=torch.long))
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    train.reestimate_batchnorm(model, data.BatchLoader(ds, 4))
    bn = model[1]
    with torch.no_grad():
        z = model[0](X)  # [12, 4, 4, 4]
    # an equal-weight average of the three batches' means and unbiased variances
    batches = z.split(4)
    assert torch.allclose(bn.running_mean, torch.stack([b.mean((0, 2, 3)) for b in batches]).mean(0), atol=1e-5)
    assert torch.allclose(bn.running_var, torch.stack([b.var((0, 2, 3), unbiased=True) for b in batches]).mean(0),
                          atol=1e-4)
    assert bn.momentum == 0.1 and not model.training and not bn.training  # momentum and mode restored
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())  # no weight moved


def test_reestimate_batchnorm_refuses_what_it_cannot_do():
    ds = data.ImageTensorDataset(torch.randn(4, 1, 6, 6), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="no BatchNorm"):
        train.reestimate_batchnorm(nn.Sequential(nn.Flatten(), nn.Linear(36, 2)), data.BatchLoader(ds, 2))
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, momentum=0.3))
    model[1].running_mean.fill_(2.0)
    with pytest.raises(ValueError, match="no samples"):
        train.reestimate_batchnorm(model, [])
    assert model[1].momentum == 0.3 and model.training  # untouched flags after the refusal
    assert torch.equal(model[1].running_mean, torch.full((2,), 2.0))  # and the old statistics kept
