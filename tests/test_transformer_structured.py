"""Structured pruning of transformers: attention heads and MLP neurons, their importance and removal."""

import pytest
import torch
from test_transformer_pruning import TwoLinears, _tiny_vit
from torch import nn

from deeplsp_helpers import criteria, models, serialization
from deeplsp_helpers import transformer_pruning as tpr

# --- structured: heads and MLP neurons ---------------------------------------------------------------------------

def test_head_and_neuron_importance_sum_the_criterion_over_what_removal_deletes():
    attn = models.SelfAttention(dim=4, num_heads=2)  # head_dim 2
    mlp = models.MLP(dim=4, hidden=3)
    model = nn.ModuleDict({"attn": attn, "mlp": mlp})
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0)
        for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
            proj.weight[2:] = -2.0  # head 1's rows
        attn.out_proj.weight[:, 2:] = 2.0  # head 1's columns
        mlp.fc1.weight[1] = 3.0
    heads = tpr.head_importance(model)
    assert heads["attn"].tolist() == [32.0, 64.0]  # each head owns 3 x (2 x 4) + 4 x 2 = 32 weights
    assert tpr.neuron_importance(model)["mlp"].tolist() == [8.0, 16.0, 8.0]  # 4 in fc1's row, 4 in fc2's column
    l2 = tpr.head_importance(model, criteria.magnitude(model, p=2))  # any chapter-02 criterion
    assert l2["attn"].tolist() == [32.0, 128.0]


def test_importance_checks_its_scores():
    model = _tiny_vit()
    with pytest.raises(ValueError, match="no entry"):
        tpr.head_importance(model, {})
    bad = criteria.magnitude(model)
    bad["blocks.0.mlp.fc1"] = torch.ones(3)
    with pytest.raises(ValueError, match="shape"):
        tpr.neuron_importance(model, bad)
    with pytest.raises(ValueError, match="no attention"):
        tpr.head_importance(TwoLinears())


def test_removing_zeroed_heads_and_neurons_leaves_the_outputs_unchanged():
    model = _tiny_vit()
    X = torch.randn(5, 1, 28, 28)
    b0, b1 = model.blocks[0], model.blocks[1]
    with torch.no_grad():
        b0.attn.out_proj.weight[:, 4:8] = 0      # head 1 of block 0: its output columns
        b0.attn.out_proj.weight[:, 12:16] = 0    # head 3 of block 0
        b1.attn.v_proj.weight[0:4] = 0           # head 0 of block 1: its values (weights and bias)
        b1.attn.v_proj.bias[0:4] = 0
        b0.mlp.fc2.weight[:, [0, 5]] = 0         # neurons 0 and 5 of block 0: their fc2 columns
        b1.mlp.fc1.weight[2] = 0                 # neuron 2 of block 1: its fc1 row and bias (GELU(0) = 0)
        b1.mlp.fc1.bias[2] = 0
        before = model(X)
    tpr.remove_heads(b0.attn, [1, 3])
    tpr.remove_heads(b1, [0])                    # a block works too
    tpr.remove_mlp_neurons(b0, [0, 5])
    tpr.remove_mlp_neurons(b1.mlp, [2])
    with torch.no_grad():
        after = model(X)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)
    assert (b0.attn.num_heads, b1.attn.num_heads, b0.attn.head_dim) == (2, 3, 4)
    assert b0.attn.q_proj.weight.shape == b0.attn.v_proj.weight.shape == (8, 16) and b0.attn.k_proj.bias.shape == (8,)
    assert b0.attn.out_proj.weight.shape == (16, 8) and b0.attn.out_proj.bias.shape == (16,)  # residual width kept
    assert b1.attn.out_proj.in_features == 12 and b1.attn.q_proj.out_features == 12
    assert b0.mlp.fc1.weight.shape == (6, 16) and b0.mlp.fc1.bias.shape == (6,) and b0.mlp.fc2.weight.shape == (16, 6)
    assert b1.mlp.fc2.in_features == 7 and b1.mlp.fc1.out_features == 7
    model(X).sum().backward()  # still trainable
    assert b0.attn.q_proj.weight.grad.shape == (8, 16)


def test_removing_live_heads_or_neurons_changes_the_outputs():
    model = _tiny_vit()
    X = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        before = model(X)
        tpr.remove_heads(model.blocks[0].attn, [2])
        assert (model(X) - before).abs().max() > 1e-3
        before = model(X)
        tpr.remove_mlp_neurons(model.blocks[1], [1])
        assert (model(X) - before).abs().max() > 1e-3


def test_a_vit_with_removed_heads_and_neurons_saves_and_loads(tmp_path):
    model = models.build_model("vit").eval()
    tpr.remove_heads(model.blocks[0], [0, 2])
    tpr.remove_mlp_neurons(model.blocks[3], list(range(0, 128, 2)))
    path = serialization.save_pruned(model, "vit", tmp_path / "vit_pruned.pt")
    again = serialization.load_pruned(path)
    assert again.blocks[0].attn.num_heads == 2 and again.blocks[3].mlp.fc1.out_features == 64
    X = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(again(X), model(X), rtol=0, atol=0)


def test_head_and_neuron_removal_reject_bad_indices():
    attn = models.SelfAttention(dim=8, num_heads=4)
    with pytest.raises(ValueError, match=r"head index 4 is out of range: there are 4 heads \(0..3\)"):
        tpr.remove_heads(attn, [4])
    with pytest.raises(ValueError, match="out of range"):
        tpr.remove_heads(attn, [-1])
    with pytest.raises(ValueError, match="cannot remove all 4 heads"):
        tpr.remove_heads(attn, [0, 1, 2, 3])
    with pytest.raises(ValueError, match="twice"):
        tpr.remove_heads(attn, [1, 1])
    with pytest.raises(TypeError):
        tpr.remove_heads(attn, [True])
    with pytest.raises(TypeError):
        tpr.remove_heads(attn, torch.tensor([0.0]))
    with pytest.raises(TypeError):
        tpr.remove_heads(attn, 1)
    with pytest.raises(TypeError, match="q_proj"):
        tpr.remove_heads(models.MLP(8, 4), [0])
    assert attn.num_heads == 4  # nothing was changed by the refused calls
    tpr.remove_heads(attn, torch.tensor([3]))
    assert attn.num_heads == 3
    mlp = models.MLP(dim=8, hidden=4)
    with pytest.raises(ValueError, match="cannot remove all 4 neurons"):
        tpr.remove_mlp_neurons(mlp, range(4))
    with pytest.raises(ValueError, match="out of range"):
        tpr.remove_mlp_neurons(mlp, [7])
    with pytest.raises(TypeError, match="fc1"):
        tpr.remove_mlp_neurons(attn, [0])
    assert tpr.remove_mlp_neurons(mlp, []) is mlp and mlp.fc1.out_features == 4


def test_head_and_neuron_importance_refuse_nan_scores_from_nan_activations():
    model = _tiny_vit()
    nan_images = [(torch.full((2, 1, 28, 28), float("nan")), torch.tensor([0, 1]))]  # NaN activations everywhere
    scores = criteria.taylor(model, nan_images)
    assert any(bool(s.isnan().any()) for s in scores.values())  # the criterion passes the NaN on
    with pytest.raises(ValueError, match="the scores of '.*' holds NaN or infinite values"):
        tpr.head_importance(model, scores)
    with pytest.raises(ValueError, match="the scores of '.*fc[12]' holds NaN or infinite values"):
        tpr.neuron_importance(model, scores)
    with torch.no_grad():  # the default criterion, |w|, of a model whose weights went NaN
        next(iter(tpr.mlp_modules(model).values())).fc1.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="fc1' holds NaN"):
        tpr.neuron_importance(model)
