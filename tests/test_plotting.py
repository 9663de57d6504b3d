import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from deeplsp_helpers import models, plotting


def test_plot_matrix_non_square_marks_exactly_the_zeros():
    t = torch.arange(1.0, 16.0).reshape(3, 5)
    t[0, 4] = t[2, 0] = 0
    fig = plotting.plot_matrix(t)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    grey = np.asarray(ax.images[1].get_array())
    assert grey.shape == (3, 5)
    assert sorted(zip(*np.where(~np.isnan(grey)))) == [(0, 4), (2, 0)]
    labels = [txt.get_text() for txt in ax.texts]
    assert len(labels) == 15 and labels[4] == "0" and labels[5] == "6.00"


def test_plot_tensor_3d_and_rank_errors():
    w = torch.randn(4, 3, 3, 3)
    w[1] = 0
    assert isinstance(plotting.plot_tensor_3d(w), Figure)
    with pytest.raises(ValueError, match="4 dimensions"):
        plotting.plot_tensor_3d(torch.randn(3, 3))
    with pytest.raises(ValueError, match="2 dimensions"):
        plotting.plot_matrix(torch.randn(2, 2, 2))
    with pytest.raises(TypeError):
        plotting.plot_matrix([[1, 2], [3, 4]])


def test_model_plots():
    model = models.LeNet()
    with torch.no_grad():
        model.fc1.weight[:60] = 0
    assert len(plotting.plot_weight_histograms(model, nonzero_only=True).axes) >= 5
    fig = plotting.plot_layer_density(model)
    heights = [b.get_height() for b in fig.axes[0].patches]
    assert heights[2] == pytest.approx(0.5)  # fc1 half zero
    with pytest.raises(TypeError):
        plotting.plot_layer_density("lenet")


def test_curves_and_importance():
    scan = {"conv1": ([0, 0.5, 0.9], [90, 89, 60]), "fc1": ([0, 0.5, 0.9], [90, 90, 88])}
    assert isinstance(plotting.plot_sensitivity(scan, dense_acc=90), Figure)
    fig = plotting.plot_tradeoff({"a": ([1, 2], [90, 91]), "b": ([3], [92])}, xlabel="latency (ms)",
                                 sizes={"a": [10, 20], "b": [5]})
    assert isinstance(fig, Figure)
    areas = [a for coll in fig.axes[0].collections for a in coll.get_sizes()]
    assert areas[1] > areas[0] > areas[2]  # one scale across series: 20 > 10 > 5
    with pytest.raises(ValueError, match="sizes"):
        plotting.plot_tradeoff({"a": ([1, 2], [90, 91])}, sizes={"a": [1]})
    with pytest.raises(ValueError):
        plotting.plot_tradeoff({"a": ([1, 2], [90])})
    with pytest.raises(TypeError):
        plotting.plot_sensitivity({})
    fig = plotting.plot_channel_importance({"conv": torch.tensor([3.0, 1.0, 2.0])}, keep=2)
    colors = [tuple(p.get_facecolor()) for p in fig.axes[0].patches]
    assert len(set(colors)) == 2
