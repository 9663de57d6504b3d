import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from deeplsp_helpers import masks, metrics, serialization
from deeplsp_helpers.models import build_model

torch.manual_seed(0)
W2 = torch.randn(6, 10)        # a non-square matrix
W4 = torch.randn(5, 3, 3, 2)   # a conv weight with a non-square kernel


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.77, 1.0])
def test_fine_grained_hits_the_sparsity_exactly_by_magnitude(sparsity):
    mask = masks.fine_grained_mask(W2, sparsity)
    assert mask.shape == W2.shape and set(mask.unique().tolist()) <= {0.0, 1.0}
    assert int((mask == 0).sum()) == round(sparsity * W2.numel())
    if 0 < sparsity < 1:
        assert W2.abs()[mask == 0].max() <= W2.abs()[mask == 1].min()


def test_fine_grained_uses_magnitude_not_the_signed_value():
    w = torch.tensor([[-5.0, 0.1, 3.0, -0.2]])
    assert masks.fine_grained_mask(w, 0.5).tolist() == [[1.0, 0.0, 1.0, 0.0]]


def test_ties_at_the_threshold_still_give_the_exact_count():
    w = torch.ones(4, 5)
    for s in (0.25, 0.5, 0.9):
        assert int((masks.fine_grained_mask(w, s) == 0).sum()) == round(s * 20)
        assert int((masks.filter_mask(w, s) == 0).sum()) == round(s * 4) * 5


def test_nm_keeps_n_per_group_and_the_largest():
    w = torch.tensor([[1.0, -4.0, 2.0, 3.0, 0.5, -0.1, 0.2, 9.0]])
    mask = masks.nm_mask(w, 2, 4)
    assert mask.tolist() == [[0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0]]
    big = torch.randn(8, 16)
    assert (masks.nm_mask(big, 2, 4).reshape(-1, 4).sum(1) == 2).all()
    assert (masks.nm_mask(big, 1, 8).reshape(-1, 8).sum(1) == 1).all()


def test_nm_handles_rows_that_are_not_a_multiple_of_m():
    w = torch.arange(1.0, 11.0).reshape(1, 10)       # groups [1..4], [5..8], [9, 10]
    mask = masks.nm_mask(w, 2, 4)
    assert mask.tolist() == [[0, 0, 1, 1, 0, 0, 1, 1, 1, 1]]
    w3 = torch.arange(1.0, 8.0).reshape(1, 7)        # last group has 3 < m entries, keeps 2 of them
    assert masks.nm_mask(w3, 2, 4).tolist() == [[0, 0, 1, 1, 0, 1, 1]]
    assert masks.nm_mask(W4, 2, 3, dim=1).shape == W4.shape  # a conv weight: complete groups along its 3 inputs


@pytest.mark.parametrize("n, m", [(2, 4), (1, 4), (3, 4), (2, 8)])
def test_nm_on_a_convolution_groups_input_channels_at_every_kernel_position(n, m):
    w = torch.randn(6, 16, 3, 2)                      # [out, in, kh, kw], a non-square kernel
    mask = masks.nm_mask(w, n, m)
    assert mask.shape == w.shape
    per_group = mask.reshape(6, 16 // m, m, 3, 2).sum(2)  # groups of m consecutive input channels
    assert (per_group == n).all()                          # exactly n at every (out, group, kh, kw)
    # inside each group, no dropped |w| is larger than a kept one
    g, kept = w.abs().reshape(6, 16 // m, m, 3, 2), mask.bool().reshape(6, 16 // m, m, 3, 2)
    inf = torch.tensor(float("inf"))
    assert (torch.where(kept, g, inf).amin(2) >= torch.where(kept, -inf, g).amax(2)).all()
    # the same as NVIDIA ASP's layout: the weight as a matrix [kh * kw * out, in], groups along its rows
    as_matrix = w.permute(2, 3, 0, 1).reshape(-1, 16)
    asp = masks.nm_mask(as_matrix, n, m).reshape(3, 2, 6, 16).permute(2, 3, 0, 1)
    assert torch.equal(mask, asp)
    # not the old grouping of the flattened in x kh x kw row, which straddles kernels
    assert not torch.equal(mask, masks.nm_mask(w.flatten(1), n, m).reshape(w.shape)) or n == m


def test_nm_refuses_a_convolution_whose_input_channels_are_not_a_multiple_of_m():
    with pytest.raises(ValueError, match=r"1, not a multiple of 4.*leave this layer dense"):
        masks.nm_mask(torch.randn(32, 1, 3, 3), 2, 4)   # a first convolution on grey images
    with pytest.raises(ValueError, match="6, not a multiple of 4"):
        masks.nm_mask(torch.randn(16, 6, 5, 5), 2, 4)
    with pytest.raises(ValueError, match="not a multiple"):
        masks.nm_mask(torch.randn(8, 4, 3), 2, 4, dim=-1)  # any grouped dimension of a conv weight
    assert masks.nm_mask(torch.randn(16, 8, 5), 2, 4).reshape(16, 2, 4, 5).sum(2).eq(2).all()  # Conv1d: fine


def test_nm_on_a_matrix_groups_the_input_dimension_as_before():
    w = torch.randn(7, 10)                                  # Linear [out, in]; 10 = 4 + 4 + 2
    assert torch.equal(masks.nm_mask(w, 2, 4), masks.nm_mask(w, 2, 4, dim=1))
    assert torch.equal(masks.nm_mask(w, 2, 4), masks.nm_mask(w, 2, 4, dim=-1))
    assert torch.equal(masks.nm_mask(w[0], 2, 4), masks.nm_mask(w, 2, 4)[0])  # a 1-D tensor: its only dim


def test_nm_with_ties_keeps_exactly_n():
    assert (masks.nm_mask(torch.zeros(3, 8), 2, 4).reshape(-1, 4).sum(1) == 2).all()


def test_group_masks_remove_whole_groups_with_the_smallest_norm():
    f = masks.filter_mask(W4, 0.4)
    norms = W4.flatten(1).norm(dim=1)
    removed = f.flatten(1).sum(1) == 0
    assert int(removed.sum()) == 2 and ((f.flatten(1).sum(1) == 0) | (f.flatten(1).sum(1) == 18)).all()
    assert norms[removed].max() <= norms[~removed].min()

    c = masks.channel_mask(W4, 1 / 3)
    assert int((c.transpose(0, 1).flatten(1).sum(1) == 0).sum()) == 1

    k = masks.kernel_mask(W4, 0.5)
    kernel_sums = k.sum(dim=(2, 3))
    assert set(kernel_sums.unique().tolist()) <= {0.0, 6.0} and int((kernel_sums == 0).sum()) == round(0.5 * 15)

    v = masks.vector_mask(W2, 0.5)                    # rows of the matrix
    assert int((v.sum(1) == 0).sum()) == 3
    vc = masks.vector_mask(W2, 0.3, dim=0)            # columns
    assert int((vc.sum(0) == 0).sum()) == 3


def test_l1_and_l2_can_disagree_on_groups():
    w = torch.tensor([[3.0, 0.0, 0.0], [1.5, 1.5, 1.0]])  # L1: 3 < 4, L2: 3 > 2.35
    assert masks.filter_mask(w, 0.5, p=1).tolist()[0] == [0.0, 0.0, 0.0]
    assert masks.filter_mask(w, 0.5, p=2).tolist()[1] == [0.0, 0.0, 0.0]


def test_linear_weights_work_for_filters_and_channels():
    assert int((masks.filter_mask(W2, 0.5).sum(1) == 0).sum()) == 3
    assert int((masks.channel_mask(W2, 0.5).sum(0) == 0).sum()) == 5


@pytest.mark.parametrize("fn", [masks.fine_grained_mask, masks.filter_mask, masks.channel_mask, masks.vector_mask])
@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "0.5", None, True])
def test_bad_sparsity_is_rejected(fn, bad):
    with pytest.raises(ValueError):
        fn(W2, bad)


def test_bad_inputs_are_rejected():
    with pytest.raises(TypeError):
        masks.fine_grained_mask([1.0, 2.0], 0.5)
    with pytest.raises(TypeError):
        masks.fine_grained_mask(torch.arange(4), 0.5)
    with pytest.raises(ValueError, match="n <= m"):
        masks.nm_mask(W2, 4, 2)
    with pytest.raises(ValueError):
        masks.nm_mask(W2, 0, 4)
    with pytest.raises(ValueError, match=r"dim must be an int in -2\.\.1, got 3"):
        masks.nm_mask(W2, 2, 4, dim=3)
    with pytest.raises(TypeError, match="dim must be an int"):  # a wrong type: TypeError, as check_int's rule
        masks.nm_mask(W2, 2, 4, dim=1.0)
    with pytest.raises(ValueError, match="4 dimensions"):
        masks.kernel_mask(W2, 0.5)
    with pytest.raises(ValueError):
        masks.filter_mask(torch.randn(5), 0.5)
    with pytest.raises(ValueError):
        masks.filter_mask(W2, 0.5, p=0)
    with pytest.raises(ValueError):
        masks.fine_grained_mask(torch.empty(0), 0.5)


def test_masked_layers_is_the_one_answer_to_does_this_model_carry_prune_masks(tmp_path):
    model = build_model("lenet")
    model.register_buffer("attention_mask", torch.ones(3))   # a plain buffer named like a mask: not a prune mask
    assert masks.masked_layers(model) == []
    with pytest.raises(ValueError, match="does not fit arch"):  # refused for the extra buffer, not as a prune mask
        serialization.save_pruned(model, "lenet", tmp_path / "a.pt")
    del model.attention_mask
    layer_name, layer = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear))
    prune.l1_unstructured(layer, "weight", amount=0.5)
    prune.random_unstructured(layer, "bias", amount=0.5)
    assert masks.masked_layers(model) == [layer_name]
    assert masks.pruned_tensors(layer) == ["weight", "bias"]
    assert metrics.count_parameters(model, nonzero_only=True) < metrics.count_parameters(model)
    with pytest.raises(ValueError, match=f"pruning masks \\(in {layer_name}\\)"):
        serialization.save_pruned(model, "lenet", tmp_path / "b.pt")
    root = nn.Linear(3, 2)
    prune.l1_unstructured(root, "weight", amount=0.5)
    for hook in list(root._forward_pre_hooks):                   # the hook gone, the weight_orig/weight_mask pair left
        del root._forward_pre_hooks[hook]
    assert masks.masked_layers(root) == [""] and masks.pruned_tensors(root) == ["weight"]
    with pytest.raises(TypeError, match="torch.nn.Module"):
        masks.masked_layers(torch.ones(2))
