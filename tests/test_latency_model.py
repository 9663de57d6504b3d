import json

import pytest
import torch
from torch import nn

from deeplsp_helpers import channels, models, serialization, speedup
from deeplsp_helpers.latency_model import LatencyTable, layer_widths

X = torch.randn(2, 1, 28, 28)


def _small_vgg(cfg=(16, "M", 32, "M", 32)):
    return models.VGG(cfg=cfg).eval()


def _synthetic(table: LatencyTable) -> LatencyTable:
    """Replace the measured times by a known function of the widths (MACs), so tests are deterministic."""
    for e in table.layers.values():
        for i, cin in enumerate(e["cin_grid"]):
            for j, cout in enumerate(e["cout_grid"]):
                e["ms"][i][j] = 0.01 + 1e-6 * cin * (cout or 1) * e["out_positions"]
    table.residual = [[0.1, 0.06], [1.0, 0.15]]
    return table


@pytest.fixture(scope="module")
def table():
    return _synthetic(LatencyTable.measure(_small_vgg(), X, round_to=8, grid_points=3, repeats=3))


def test_the_grid_covers_what_pruning_can_change_and_nothing_else(table):
    first, last = table.layers["features.0.0"], table.layers["classifier"]
    assert first["cin_grid"] == [1] and first["cout_grid"] == [8, 16]  # the input image has 1 channel
    assert last["cout_grid"] == [10]  # the output layer keeps its 10 classes
    mid = table.layers["features.2.0"]
    assert mid["cin_grid"][-1] == 16 and mid["cout_grid"] == [8, 16, 32]
    assert all(w % 8 == 0 for e in table.layers.values() for w in e["cout_grid"] if w != 10)
    assert table.meta["batch_size"] == 2 and table.meta["threads"] == 1 and table.meta["torch"] == torch.__version__


def test_predictions_are_exact_on_the_grid_and_linear_between(table):
    e = table.layers["features.2.0"]
    assert table.layer_ms("features.2.0", 16, 32) == pytest.approx(e["ms"][-1][-1])
    between = table.layer_ms("features.2.0", 16, 24)  # halfway between the 16 and 32 grid points
    assert between == pytest.approx((table.layer_ms("features.2.0", 16, 16) + e["ms"][-1][-1]) / 2)
    dense = _small_vgg()
    narrow = _small_vgg((8, "M", 16, "M", 16))
    assert table.predict(narrow) < table.predict(dense) == pytest.approx(table.dense_ms)


def test_a_measured_table_predicts_the_dense_model_roughly():
    model = _small_vgg()
    t = LatencyTable.measure(model, X, round_to=8, grid_points=3, repeats=5)
    assert t.dense_ms > 0 and all(v > 0 for e in t.layers.values() for row in e["ms"] for v in row)
    # dense and three narrowed copies (copies that round to the same widths give one point)
    assert 2 <= len(t.residual) <= 4 and all(ms >= 0 for _, ms in t.residual)
    assert t.residual[-1][0] == pytest.approx(1.0)
    assert t.dense_ms == pytest.approx(t.meta["dense_measured_ms"], rel=0.6)  # the fit uses the dense model


def test_save_and_load_round_trip_and_bad_files(table, tmp_path):
    path = table.save(tmp_path / "table.json")
    again = LatencyTable.load(path)
    assert again.predict(_small_vgg()) == table.predict(_small_vgg())
    assert json.loads(path.read_text())["meta"]["machine"] == table.meta["machine"]
    (tmp_path / "bad.json").write_text('{"not": "a table"}')
    with pytest.raises(ValueError, match="not a latency table"):
        LatencyTable.load(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="not a latency table"):
        LatencyTable.load(tmp_path / "missing.json")
    assert not list(tmp_path.glob("*.tmp"))


def test_a_table_refuses_another_model_a_wider_model_and_another_batch_size(table):
    with pytest.raises(ValueError, match="another model"):
        table.predict(models.ResNet())
    with pytest.raises(ValueError, match="another model"):
        table.predict(models.VGG())  # same family, other layers
    with pytest.raises(ValueError, match="outside the table"):
        table.predict(_small_vgg((16, "M", 48, "M", 32)))
    with pytest.raises(ValueError, match="batch size 2, not 1"):
        speedup.plan_to_speedup(_small_vgg(), X[:1], 1.5, table)


def test_pruning_to_a_speedup_meets_the_prediction_and_prunes_for_real(table):
    model = _small_vgg()
    plan = speedup.prune_to_speedup(model, X, 1.8, table)
    assert 1.8 <= plan["predicted_speedup"] < 2.3
    assert table.predict(model) == pytest.approx(plan["predicted_ms"])
    assert {n: tuple(w) for n, w in layer_widths(model).items()} == plan["widths"]
    assert all(w % 8 == 0 for n, (_, w) in plan["widths"].items() if n != "classifier")
    assert model(X).shape == (2, 10)


def test_costs_change_where_channels_go(table):
    picks = {}
    for cost in speedup.COSTS:
        plan = speedup.plan_to_speedup(_small_vgg(), X, 1.8, table, cost=cost)
        assert plan["predicted_speedup"] >= 1.8
        picks[cost] = plan["widths"]
    assert picks["latency"] != picks["none"]


def test_bad_requests(table):
    for bad in (1.0, 0.5, float("nan"), True, "2"):
        with pytest.raises(ValueError, match="target_speedup"):
            speedup.plan_to_speedup(_small_vgg(), X, bad, table)
    with pytest.raises(ValueError, match="cannot reach"):
        speedup.plan_to_speedup(_small_vgg(), X, 1000.0, table)
    with pytest.raises(ValueError, match="cost"):
        speedup.plan_to_speedup(_small_vgg(), X, 1.5, table, cost="flops")
    with pytest.raises(ValueError, match="round_to"):  # 0 is refused, not silently taken as "the table's"
        speedup.plan_to_speedup(_small_vgg(), X, 1.5, table, round_to=0)
    with pytest.raises(TypeError):
        speedup.plan_to_speedup(_small_vgg(), X, 1.5, {"not": "a table"})


def test_the_reachable_speedup_is_what_a_request_can_get_and_no_more(table):
    for cost in speedup.COSTS:
        top = speedup.reachable_speedup(_small_vgg(), X, table, cost=cost)
        assert top > 1.8
        plan = speedup.plan_to_speedup(_small_vgg(), X, 0.99 * top, table, cost=cost)
        assert 0.99 * top <= plan["predicted_speedup"] <= top + 1e-9
        with pytest.raises(ValueError, match=f"at most {top:.2f}x"):
            speedup.plan_to_speedup(_small_vgg(), X, 1.01 * top, table, cost=cost)
    # a lower floor on the widths leaves more to cut
    assert speedup.reachable_speedup(_small_vgg(), X, table, max_pruning_ratio=0.5) < \
        speedup.reachable_speedup(_small_vgg(), X, table, max_pruning_ratio=0.75)
    with pytest.raises(ValueError, match="cost"):
        speedup.reachable_speedup(_small_vgg(), X, table, cost="flops")


def test_resnet_groups_couple_residual_channels():
    model = models.ResNet(widths=(16, 32, 32)).eval()
    t = _synthetic(LatencyTable.measure(model, X, round_to=8, grid_points=3, repeats=3))
    plan = speedup.prune_to_speedup(model, X, 1.6, t)
    w = layer_widths(model)
    assert w["stem.0"][1] == w["layers.0.conv2"][1]  # stem and block 1 meet at an addition: pruned together
    assert plan["predicted_speedup"] >= 1.6 and model(X).shape == (2, 10)


def test_sparse_files_are_smaller_and_load_back_identical(tmp_path):
    from torch.nn.utils import prune

    model = models.VGG().eval()  # the architecture save_pruned names must be one build_model knows
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            prune.l1_unstructured(m, "weight", amount=0.9)
            prune.remove(m, "weight")
    dense_file = serialization.save_pruned(model, "vgg", tmp_path / "d.pt")
    sparse_file = serialization.save_pruned(model, "vgg", tmp_path / "s.pt", sparse=True)
    assert sparse_file.stat().st_size < 0.5 * dense_file.stat().st_size
    again = serialization.load_pruned(sparse_file)
    assert torch.equal(again(X), model(X))
    for t in (torch.randn(13), torch.zeros(3, 5), torch.tensor([0.0, -1.5, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 3.0])):
        assert torch.equal(serialization.unpack_sparse(serialization.pack_sparse(t)), t)
    packed = serialization.pack_sparse(torch.tensor([1.0, 0.0, 2.0]))
    packed["values"] = packed["values"][:1]
    with pytest.raises(ValueError, match="corrupt"):
        serialization.unpack_sparse(packed)


def test_widths_through_a_flatten_are_counted_per_channel():
    # LeNet: conv2 (16 channels of 4x4) feeds fc1 through a flatten: one channel is 16 of fc1's inputs
    model = models.LeNet().eval()
    x = torch.randn(1, 1, 28, 28)
    _, groups = channels.coupled_groups(model, x, None)
    conv2 = next(effects for _, effects in groups if ("conv2", 1, 1) in effects)
    assert ("fc1", 0, 16) in conv2
    t = _synthetic(LatencyTable.measure(model, x, round_to=4, grid_points=3, repeats=3))
    plan = speedup.plan_to_speedup(model, x, 1.5, t, cost="none")
    speedup.prune_to_speedup(model, x, 1.5, t, cost="none")
    assert layer_widths(model) == plan["widths"]  # the plan's bookkeeping is what pruning does
    assert layer_widths(model)["fc1"][0] == 16 * layer_widths(model)["conv2"][1]


def test_bad_requests_are_refused_before_measuring_and_other_input_shapes_too(table, monkeypatch):
    measured = []
    monkeypatch.setattr(LatencyTable, "measure", classmethod(lambda cls, *a, **k: measured.append(1)))
    with pytest.raises(ValueError, match="target_speedup"):
        speedup.prune_to_speedup(_small_vgg(), X, 0.5)
    assert measured == []
    with pytest.raises(ValueError, match="inputs of shape"):
        speedup.plan_to_speedup(_small_vgg(), torch.randn(2, 1, 32, 32), 1.5, table)


def test_grouped_convolutions_are_refused_with_a_clear_error():
    model = nn.Sequential(nn.Conv2d(4, 8, 3, groups=2), nn.Flatten(), nn.LazyLinear(3))
    x = torch.randn(1, 4, 6, 6)
    model(x)
    with pytest.raises(ValueError, match="grouped convolutions"):
        LatencyTable.measure(model, x, repeats=3)


# --- hardening (issue 26) ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("poison", ["nan", "negative", "residual nan", "ragged", "no ms"])
def test_a_poisoned_table_is_refused_at_load_and_at_use(table, tmp_path, poison):
    blob = json.loads(json.dumps(table.to_dict()))
    first = next(iter(blob["layers"]))
    if poison == "nan":
        blob["layers"][first]["ms"][0][0] = float("nan")
    elif poison == "negative":
        blob["layers"][first]["ms"][-1][-1] = -0.5
    elif poison == "residual nan":
        blob["residual"][0][1] = float("nan")
    elif poison == "ragged":
        blob["layers"][first]["ms"][0].append(0.1)
    else:
        del blob["layers"][first]["ms"]
    path = tmp_path / "t.json"
    path.write_text(json.dumps(blob))  # json writes NaN as NaN, which json.loads reads back
    with pytest.raises(ValueError, match=r"t\.json is not a latency table written by LatencyTable\.save: .*"):
        LatencyTable.load(path)
    loaded = LatencyTable.load(table.save(tmp_path / "ok.json"))
    loaded.layers[first]["ms"] = [[float("nan")] * len(row) for row in loaded.layers[first]["ms"]]
    with pytest.raises(ValueError, match="must be finite and positive"):  # changed after loading: refused at use
        loaded.predict(_small_vgg())


def test_a_fifo_is_refused_not_waited_on(tmp_path):
    import os
    import threading

    fifo = tmp_path / "table.json"
    os.mkfifo(fifo)
    result = []
    t = threading.Thread(target=lambda: result.append(pytest.raises(ValueError, LatencyTable.load, fifo)), daemon=True)
    t.start()
    t.join(5)
    if t.is_alive():  # the old behaviour: blocked on open(); release it before failing
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        t.join(5)
    assert result and "not a regular file" in str(result[0].value)


def _pruned_lenet():
    model = models.LeNet().eval()
    with torch.no_grad():
        model.fc1.weight[:, ::2] = 0
    return model


def test_save_pruned_refuses_an_arch_the_model_is_not_and_a_sparse_that_is_not_a_bool(tmp_path):
    with pytest.raises(ValueError, match=r"the model does not fit arch 'vgg'"):
        serialization.save_pruned(_pruned_lenet(), "vgg", tmp_path / "m.pt")
    with pytest.raises(TypeError, match="sparse must be True or False, got 'no'"):
        serialization.save_pruned(_pruned_lenet(), "lenet", tmp_path / "m.pt", sparse="no")
    assert list(tmp_path.iterdir()) == []
    path = serialization.save_pruned(_pruned_lenet(), "LeNet", tmp_path / "m.pt")  # any case, like build_model
    assert isinstance(serialization.load_pruned(path), models.LeNet)


@pytest.mark.parametrize("sparse", [False, True])
def test_a_truncated_or_flipped_pruned_file_is_named_with_its_fault(tmp_path, sparse):
    model = _pruned_lenet()
    path = serialization.save_pruned(model, "lenet", tmp_path / "m.pt", sparse=sparse)
    raw = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=r"cut\.pt is not a readable save_pruned file: truncated or corrupt"):
        serialization.load_pruned(tmp_path / "cut.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.pt is not a readable save_pruned file"):
        serialization.load_pruned(tmp_path / "empty.pt")
    if not sparse:  # one flipped byte inside a tensor's data
        weights = model.fc1.weight.detach().numpy().tobytes()
        at = raw.find(weights[4000:4064]) + 8
        assert at > 8
        (tmp_path / "byte.pt").write_bytes(raw[:at] + bytes([raw[at] ^ 0x40]) + raw[at + 1:])
        with pytest.raises(ValueError, match=r"byte\.pt fails its checksum"):
            serialization.load_pruned(tmp_path / "byte.pt")
    blob = torch.load(path, weights_only=True)  # a changed weight that still unpickles: the checksum finds it
    if sparse:
        blob["sparse"]["fc1.weight"]["values"][3] += 1.0
    else:
        blob["state_dict"]["fc1.weight"][0, 1] += 1.0
    torch.save(blob, tmp_path / "flipped.pt")
    with pytest.raises(ValueError, match=r"flipped\.pt fails its checksum"):
        serialization.load_pruned(tmp_path / "flipped.pt")


def test_pruned_files_from_before_the_checksum_still_load(tmp_path):
    model = _pruned_lenet()
    torch.save({"arch": "lenet", "state_dict": model.state_dict()}, tmp_path / "old.pt")
    assert torch.equal(serialization.load_pruned(tmp_path / "old.pt")(X), model(X))


def test_killed_saves_leave_no_temporary_files_behind_for_long(tmp_path):
    import os
    import time

    stale = [tmp_path / f".m.pt.{999999990 + i}.abcd.tmp" for i in range(3)]  # pids of processes that are gone
    old_style = tmp_path / ".m.pt.x8k2j1.tmp"  # the naming before the pid was in it: removed after an hour
    recent = tmp_path / ".m.pt.999999999.efgh.tmp"  # too young to tell from a slow write on another machine
    for f in (*stale, old_style, recent):
        f.write_bytes(b"x" * 100)
    for f in (*stale, old_style):
        os.utime(f, (time.time() - 7200, time.time() - 7200))
    serialization.save_pruned(_pruned_lenet(), "lenet", tmp_path / "m.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m.pt", recent.name])
