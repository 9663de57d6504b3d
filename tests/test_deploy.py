import os

import onnxruntime as ort
import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from deeplsp_helpers import deploy, latency, masks
from deeplsp_helpers.deeplsp import remove_pruning_masks


def tiny_convnet() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(16, 10))
    with torch.no_grad():  # BatchNorm statistics that are not the identity, so that folding them is tested
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
    return model


@pytest.fixture
def exported(tmp_path):
    model = tiny_convnet()
    return model, deploy.export_onnx(model.train(), torch.randn(2, 1, 28, 28), tmp_path / "m.onnx")


def test_exported_model_matches_pytorch_at_two_batch_sizes(exported):
    model, path = exported
    assert model.training  # the export ran in eval mode and restored the mode
    session = deploy.ort_session(path, threads=1)
    ort_model = deploy.OrtModel(session)
    assert ort_model.threads == 1
    for bs in (1, 64):
        x = torch.randn(bs, 1, 28, 28)
        assert ort_model(x).shape == (bs, 10)
        assert deploy.max_abs_difference(model, session, x) <= 1e-4
    assert model.training


def test_export_names_the_graph_input_and_output(tmp_path):
    path = deploy.export_onnx(tiny_convnet(), torch.randn(1, 1, 28, 28), tmp_path / "m.onnx", input_name="pixels",
                              output_name="scores")
    session = deploy.ort_session(path)
    assert [i.name for i in session.get_inputs()] == ["pixels"] and [o.name for o in session.get_outputs()] == ["scores"]
    assert session.get_inputs()[0].shape[0] == "batch"
    with pytest.raises(TypeError, match="input_name"):
        deploy.export_onnx(tiny_convnet(), torch.randn(1, 1, 28, 28), tmp_path / "n.onnx", input_name="")
    with pytest.raises(ValueError, match="differ"):
        deploy.export_onnx(tiny_convnet(), torch.randn(1, 1, 28, 28), tmp_path / "n.onnx", output_name="input")


def test_fixed_batch_export_refuses_another_batch_size(tmp_path):
    path = deploy.export_onnx(tiny_convnet(), torch.randn(2, 1, 28, 28), tmp_path / "m.onnx", dynamic_batch=False)
    ort_model = deploy.OrtModel(deploy.ort_session(path))
    assert ort_model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        ort_model(torch.randn(3, 1, 28, 28))


def test_model_with_prune_masks_is_refused_until_they_are_removed(tmp_path):
    model = tiny_convnet()
    prune.l1_unstructured(model[4], "weight", amount=0.5)
    with pytest.raises(ValueError, match="remove_pruning_masks"):
        deploy.export_onnx(model, torch.randn(1, 1, 28, 28), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
    remove_pruning_masks(model)
    path = deploy.export_onnx(model, torch.randn(1, 1, 28, 28), tmp_path / "m.onnx")
    assert deploy.max_abs_difference(model, deploy.ort_session(path), torch.randn(4, 1, 28, 28)) <= 1e-4


def test_a_buffer_named_like_a_mask_is_not_a_prune_mask(tmp_path):
    model = tiny_convnet()
    model.register_buffer("attention_mask", torch.ones(3))  # not left by torch.nn.utils.prune
    assert masks.masked_layers(model) == []
    prune.l1_unstructured(model[4], "bias", amount=0.5)
    assert masks.masked_layers(model) == ["4"]
    for hook in list(model[4]._forward_pre_hooks):         # the hook gone, the weight_orig/weight_mask pair left
        del model[4]._forward_pre_hooks[hook]
    assert masks.masked_layers(model) == ["4"]


def test_bad_inputs_are_rejected(tmp_path, exported):
    model, path = exported
    x = torch.randn(1, 1, 28, 28)
    with pytest.raises(TypeError):
        deploy.export_onnx(lambda t: t, x, tmp_path / "a.onnx")
    with pytest.raises(TypeError):
        deploy.export_onnx(model, torch.randn(28), tmp_path / "a.onnx")
    with pytest.raises(TypeError):
        deploy.export_onnx(model, x, 3)
    with pytest.raises(ValueError, match="opset"):
        deploy.export_onnx(model, x, tmp_path / "a.onnx", opset=11)
    with pytest.raises(ValueError, match="threads"):
        deploy.ort_session(path, threads=0)
    with pytest.raises(FileNotFoundError):
        deploy.ort_session(tmp_path / "missing.onnx")
    with pytest.raises(TypeError):
        deploy.OrtModel(path)
    with pytest.raises(TypeError):
        deploy.OrtModel(deploy.ort_session(path))([1, 2])
    with pytest.raises(ValueError, match="no samples"):
        deploy.ort_accuracy(deploy.ort_session(path), [])
    with pytest.raises(TypeError):
        deploy.quantize_int8(path, tmp_path / "q.onnx", [])
    with pytest.raises(ValueError, match="shape"):
        deploy.quantize_int8(path, tmp_path / "q.onnx", [torch.randn(2, 1, 28, 28), torch.randn(2, 1, 14, 14)])
    with pytest.raises(ValueError, match="level"):
        deploy.zipped_size(path, level=10)
    assert not (tmp_path / "a.onnx").exists() and not (tmp_path / "q.onnx").exists()


def test_ort_accuracy_equals_pytorch_accuracy(exported):
    from deeplsp_helpers.train import evaluate

    model, path = exported
    torch.manual_seed(1)
    loader = [(torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,)), "ignored") for _ in range(3)]
    assert deploy.ort_accuracy(deploy.ort_session(path), loader) == pytest.approx(evaluate(model, loader))


def test_onnx_runtime_and_pytorch_are_timed_in_one_run(exported):
    model, path = exported
    x = torch.randn(1, 1, 28, 28)
    ort_model = deploy.OrtModel(deploy.ort_session(path, threads=1))
    stats, speedups = latency.compare_speedups({"torch": model, "ort": ort_model}, x, "torch", warmup=2, repeats=5)
    assert set(stats) == {"torch", "ort"} and speedups["ort"].rounds == 5
    assert model.training  # the module's mode is restored; the ORT callable has none
    with pytest.raises(ValueError, match="threads"):  # an ORT session with 2 threads against torch with 1
        latency.compare_latency({"ort": deploy.OrtModel(deploy.ort_session(path, threads=2))}, x, threads=1)
    default = deploy.OrtModel(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]))
    assert default.threads == 0  # ONNX Runtime's default: one thread per core
    with pytest.raises(ValueError, match="threads"):
        latency.measure_latency(default, x, threads=1)
    with pytest.raises(TypeError):
        latency.compare_latency({"not callable": 3}, x)


def test_int8_quantization_runs_stays_close_and_shrinks_the_file(tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).eval()
    fp32 = deploy.export_onnx(model, torch.randn(1, 1, 28, 28), tmp_path / "fp32.onnx")
    torch.manual_seed(1)
    calibration = [(torch.randn(8, 1, 28, 28), torch.zeros(8)) for _ in range(2)]
    int8 = deploy.quantize_int8(fp32, tmp_path / "int8.onnx", calibration)
    x = torch.randn(8, 1, 28, 28)
    ref = model(x).detach()
    diff = deploy.max_abs_difference(model, deploy.ort_session(int8), x)
    assert 0 < diff <= 0.05 * float(ref.abs().max())  # not the float model, but close to it
    assert deploy.file_size(int8) < 0.5 * deploy.file_size(fp32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fp32.onnx", "int8.onnx"]  # no temporary file left


def test_zeros_compress_when_zipped(tmp_path):
    dense, sparse = tmp_path / "dense.bin", tmp_path / "sparse.bin"
    w = torch.randn(100_000)
    dense.write_bytes(w.numpy().tobytes())
    w[torch.rand(100_000) < 0.9] = 0
    sparse.write_bytes(w.numpy().tobytes())
    assert deploy.file_size(dense) == deploy.file_size(sparse) == 400_000  # zeros stay dense on disk
    assert deploy.zipped_size(dense) > 0.8 * 400_000  # random floats barely compress
    assert deploy.zipped_size(sparse) < 0.4 * deploy.zipped_size(dense)


def test_failed_write_leaves_the_old_file_and_no_partial_one(tmp_path, exported, monkeypatch):
    _, path = exported
    before = path.read_bytes()

    def fail(*args, **kwargs):
        raise RuntimeError("exporter failed")

    monkeypatch.setattr(torch.onnx, "export", fail)
    with pytest.raises(RuntimeError, match="exporter failed"):
        deploy.export_onnx(tiny_convnet(), torch.randn(1, 1, 28, 28), path)
    assert path.read_bytes() == before
    assert os.listdir(path.parent) == [path.name]


def test_calibration_batches_must_fit_the_exported_input(tmp_path):
    path = deploy.export_onnx(tiny_convnet(), torch.randn(2, 1, 28, 28), tmp_path / "m.onnx", dynamic_batch=False)
    with pytest.raises(ValueError, match="dynamic_batch"):
        deploy.quantize_int8(path, tmp_path / "q.onnx", [torch.randn(8, 1, 28, 28)])
    with pytest.raises(ValueError, match="do not fit"):
        deploy.quantize_int8(path, tmp_path / "q.onnx", [torch.randn(2, 1, 32, 32)])
    assert deploy.file_size(deploy.quantize_int8(path, tmp_path / "q.onnx", [torch.randn(2, 1, 28, 28)])) > 0


def _int8_weights(path):
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    dq_inputs = {n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    return [numpy_helper.to_array(t) for t in graph.initializer if t.name in dq_inputs and t.data_type == 3]  # int8


def test_int8_weights_fit_the_int16_pair_sums_of_cpus_without_vnni_unless_asked_for_8_bits(tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 16, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 26 * 26, 10)).eval()
    fp32 = deploy.export_onnx(model, torch.randn(1, 1, 28, 28), tmp_path / "fp32.onnx")
    calibration = [torch.randn(4, 1, 28, 28)]
    seven = _int8_weights(deploy.quantize_int8(fp32, tmp_path / "7.onnx", calibration))
    eight = _int8_weights(deploy.quantize_int8(fp32, tmp_path / "8.onnx", calibration, reduce_range=False))
    assert len(seven) == len(eight) == 2
    # a pair of uint8 x int8 products must fit in an int16: 2 * 255 * max|w| <= 32767
    assert all(2 * 255 * int(abs(w.astype(int)).max()) <= 32767 for w in seven)
    assert all(int(abs(w.astype(int)).max()) == 127 for w in eight)  # symmetric per channel: the largest is 127
    with pytest.raises(TypeError, match="reduce_range"):
        deploy.quantize_int8(fp32, tmp_path / "x.onnx", calibration, reduce_range="yes")


def test_torchs_default_onnx_exporter_works_in_this_environment(tmp_path):
    """torch.onnx.export with its defaults (the torch.export-based exporter, which needs onnxscript): a learner's
    own call must work here, and its file must run in ONNX Runtime with the model's answers."""
    model, x = tiny_convnet().eval(), torch.randn(2, 1, 28, 28)
    torch.onnx.export(model, (x,), str(tmp_path / "default.onnx"))
    session = ort.InferenceSession(str(tmp_path / "default.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert torch.allclose(torch.from_numpy(got), model(x).detach(), atol=1e-4)


@pytest.mark.parametrize("kind", ["[N, 1]", "one-hot", "shorter than the batch", "fractional", "out of range"])
def test_ort_accuracy_refuses_labels_of_the_wrong_shape_or_kind(exported, kind):
    _, path = exported
    torch.manual_seed(0)
    X, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    bad = {"[N, 1]": y[:, None], "one-hot": nn.functional.one_hot(y, 10), "shorter than the batch": y[:5],
           "fractional": y.float() / 3, "out of range": y + 10}[kind]
    with pytest.raises(ValueError, match="the loader's labels y must be"):
        deploy.ort_accuracy(deploy.ort_session(path), [(X, bad)])


def test_a_corrupt_onnx_file_and_nan_calibration_are_named(tmp_path, exported):
    _, path = exported
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 3] + b"\xff\xff\xff")
    calib = [torch.randn(4, 1, 28, 28)]
    with pytest.raises(ValueError, match=r"onnx_path .*corrupt\.onnx is not a readable ONNX model"):
        deploy.quantize_int8(corrupt, tmp_path / "q.onnx", calib)
    nan = [torch.randn(4, 1, 28, 28), torch.full((4, 1, 28, 28), float("nan"))]
    with pytest.raises(ValueError, match="calibration batch 1 holds NaN"):
        deploy.quantize_int8(path, tmp_path / "q.onnx", nan)
    assert not (tmp_path / "q.onnx").exists()
