import pytest
import torch
from torch import nn

from deeplsp_helpers import masks, models
from deeplsp_helpers import transformer_pruning as tpr


def _correlated_layer(seed: int, out: int = 16, inp: int = 32, tokens: int = 256):
    """A weight and inputs whose features are correlated and of uneven scale (as activations are)."""
    g = torch.Generator().manual_seed(seed)
    X = (torch.randn(tokens, inp, generator=g) @ torch.randn(inp, inp, generator=g)) * 3 * torch.rand(inp, generator=g)
    return torch.randn(out, inp, generator=g), X  # W [out, in], X [tokens, in]


def _tiny_vit(**kw):
    torch.manual_seed(0)
    cfg = dict(dim=16, depth=2, num_heads=4, mlp_hidden=8) | kw
    model = models.ViT(**cfg).eval()
    with torch.no_grad():  # larger weights than the DeiT init, so that every head and neuron matters
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


# --- calibration statistics --------------------------------------------------------------------------------------

class TwoLinears(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(3, 4)
        self.fc2 = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def test_activation_norms_and_hessian_cover_every_token_of_every_batch():
    model = TwoLinears()
    b1, b2 = torch.randn(2, 5, 3), torch.randn(3, 5, 3)  # [N, T, in]: two batches of 5-token sequences
    layers = {"fc1": model.fc1, "fc2": model.fc2}
    norms = tpr.activation_norms(model, layers, [b1, (b2, torch.zeros(3))])  # a tensor or an (X, y) pair
    hess = tpr.input_hessian(model, layers, [b1, b2])
    X1 = torch.cat([b1, b2]).reshape(-1, 3)  # all 25 tokens: [25, 3]
    with torch.no_grad():
        X2 = torch.relu(model.fc1(X1))
    torch.testing.assert_close(norms["fc1"], X1.norm(dim=0))
    torch.testing.assert_close(norms["fc2"], X2.norm(dim=0))
    torch.testing.assert_close(hess["fc1"], X1.T @ X1)
    torch.testing.assert_close(norms["fc2"], hess["fc2"].diagonal().sqrt())
    assert not model.fc1._forward_hooks and model.training  # hooks removed, mode restored
    assert set(tpr.block_linears(model)) == {"fc1", "fc2"}  # a model that is itself an MLP (named "")
    torch.testing.assert_close(tpr.activation_norms(model, None, [b1, b2])["fc1"], norms["fc1"])


def test_calibration_defaults_to_the_attention_and_mlp_layers_of_a_vit():
    model = _tiny_vit()
    names = set(tpr.block_linears(model))
    assert names == {f"blocks.{b}.{s}" for b in range(2)
                     for s in ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.out_proj", "mlp.fc1", "mlp.fc2")}
    norms = tpr.activation_norms(model, None, [torch.randn(2, 1, 28, 28)])
    assert set(norms) == names and norms["blocks.0.mlp.fc2"].shape == (8,) and (norms["blocks.1.attn.q_proj"] > 0).all()


def test_calibration_rejects_bad_input():
    model = TwoLinears()
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match="empty"):
        tpr.activation_norms(model, None, [])
    with pytest.raises(TypeError, match="iterable"):
        tpr.activation_norms(model, None, x)  # a bare tensor would be iterated over its rows
    with pytest.raises(ValueError, match="not a module of this model"):
        tpr.input_hessian(model, {"other": nn.Linear(3, 4)}, [x])
    with pytest.raises(TypeError, match="nn.Linear"):
        tpr.input_hessian(model, {"relu": nn.ReLU()}, [x])
    unused = TwoLinears()
    unused.spare = nn.Linear(3, 3)
    with pytest.raises(ValueError, match="saw no input"):
        tpr.activation_norms(unused, {"spare": unused.spare}, [x])
    with pytest.raises(ValueError, match="no attention"):
        tpr.block_linears(nn.Sequential(nn.Conv2d(1, 2, 3)))


# --- Wanda and masks ---------------------------------------------------------------------------------------------

def test_wanda_scores_scale_columns_by_their_input_norm():
    W = torch.tensor([[1.0, -0.5, 1.2], [-2.0, 0.4, 0.1]])
    norms = torch.tensor([1.0, 10.0, 1.0])  # input feature 1 is large
    scores = tpr.wanda_scores(W, norms)
    torch.testing.assert_close(scores, torch.tensor([[1.0, 5.0, 1.2], [2.0, 4.0, 0.1]]))
    wanda, magnitude = tpr.row_mask(scores, 1 / 3), tpr.row_mask(W.abs(), 1 / 3)
    assert wanda[:, 1].tolist() == [1.0, 1.0]  # the column with the large input keeps its weights
    assert magnitude.tolist() == [[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]]  # magnitude drops the small w in front of it


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.77, 1.0])
def test_row_mask_removes_the_same_number_in_every_row_and_the_lowest(sparsity):
    scores = torch.rand(5, 10)
    mask = tpr.row_mask(scores, sparsity)
    assert ((mask == 0).sum(1) == round(sparsity * 10)).all()
    for s, m in zip(scores, mask):
        if 0 < sparsity < 1:
            assert s[m == 0].max() <= s[m == 1].min()


def test_row_mask_breaks_ties_by_position_and_hits_the_count():
    assert tpr.row_mask(torch.zeros(3, 8), 0.5).tolist() == [[0.0] * 4 + [1.0] * 4] * 3


@pytest.mark.parametrize("n, m", [(2, 4), (4, 8)])
def test_nm_masks_along_the_input_dimension(n, m):
    scores = torch.rand(6, 24)
    mask = tpr.mask_from_scores(scores, (n, m))
    assert (mask.reshape(6, -1, m).sum(2) == n).all()  # n kept in every group of m consecutive inputs of a row
    assert torch.equal(mask, masks.nm_mask(scores, n, m, dim=1))  # the package's one N:M implementation
    assert torch.equal(tpr.mask_from_scores(scores, 0.5), tpr.row_mask(scores, 0.5))


@pytest.mark.parametrize("pattern, err", [(p, ValueError) for p in (-0.1, 1.5, float("nan"), "0.5", None, True, (4, 2),
                                                                     (2,), (0, 4))]
                         + [((2.0, 4), TypeError)])  # check_ints: an n or m that is no int is a TypeError
def test_bad_patterns_are_rejected(pattern, err):
    with pytest.raises(err):
        tpr.mask_from_scores(torch.rand(2, 8), pattern)


def test_scores_and_weights_are_validated():
    with pytest.raises(ValueError, match="non-negative"):
        tpr.mask_from_scores(torch.randn(4, 8), 0.5)  # a signed weight is not a score
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        tpr.wanda_scores(torch.randn(2, 3), torch.ones(2))  # one norm per input column, not per output row
    with pytest.raises(ValueError, match="non-negative"):
        tpr.wanda_scores(torch.randn(2, 3), -torch.ones(3))
    with pytest.raises(ValueError, match="2 dimensions"):
        tpr.wanda_scores(torch.randn(2, 3, 1), torch.ones(3))
    with pytest.raises(TypeError):
        tpr.row_mask(torch.arange(6).reshape(2, 3), 0.5)
    with pytest.raises(ValueError, match="NaN"):
        tpr.row_mask(torch.tensor([[float("nan"), 1.0]]), 0.5)


# --- SparseGPT ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("pattern", [0.5, (2, 4), (4, 8)])
def test_sparsegpt_reconstructs_better_than_magnitude_on_correlated_inputs(seed, pattern):
    W, X = _correlated_layer(seed)
    H = X.T @ X
    new, mask = tpr.sparsegpt_prune(W, H, pattern, blocksize=16)
    if isinstance(pattern, tuple):
        magnitude = [masks.nm_mask(W, *pattern)]
        assert (mask.reshape(16, -1, pattern[1]).sum(2) == pattern[0]).all()
    else:
        magnitude = [masks.fine_grained_mask(W, pattern), tpr.row_mask(W.abs(), pattern)]
        assert int((mask == 0).sum()) == round(pattern * W.numel())
    assert torch.all(new[mask == 0] == 0)
    error = tpr.reconstruction_error(W, new, H)
    for m in magnitude:
        assert error <= tpr.reconstruction_error(W, W * m, H)
        # at the same mask, SparseGPT's weight update alone already helps
        same_mask, _ = tpr.sparsegpt_prune(W, H, mask=m)
        assert tpr.reconstruction_error(W, same_mask, H) <= tpr.reconstruction_error(W, W * m, H)


@pytest.mark.parametrize("pattern", [0.5, 0.3, (2, 4)])
def test_sparsegpt_with_uncorrelated_inputs_is_magnitude_pruning(pattern):
    """H = I: no input predicts another, so no weight can make up for a removed one."""
    W = torch.randn(6, 16)
    new, mask = tpr.sparsegpt_prune(W, torch.eye(16), pattern, blocksize=16)
    expected = masks.nm_mask(W, *pattern) if isinstance(pattern, tuple) else masks.fine_grained_mask(W, pattern)
    assert torch.equal(mask, expected)
    torch.testing.assert_close(new, W * expected, rtol=0, atol=0)


def test_sparsegpt_leaves_its_input_alone_and_keeps_the_dtype():
    W, X = _correlated_layer(0)
    before = W.clone()
    new, mask = tpr.sparsegpt_prune(W, X.T @ X, 0.5)
    assert torch.equal(W, before) and new.dtype == W.dtype == mask.dtype and new.shape == W.shape
    nothing, keep_all = tpr.sparsegpt_prune(W, X.T @ X, 0.0)
    torch.testing.assert_close(nothing, W, rtol=0, atol=0)
    assert keep_all.all()


def test_reconstruction_error_is_the_squared_output_difference():
    W, X = _correlated_layer(1, tokens=64)
    new, _ = tpr.sparsegpt_prune(W, X.T @ X, 0.5)
    explicit = (W @ X.T - new @ X.T).double().pow(2).sum().item()
    assert tpr.reconstruction_error(W, new, X.T @ X) == pytest.approx(explicit, rel=1e-4)


def test_sparsegpt_prunes_inputs_the_calibration_never_saw_first():
    W, X = _correlated_layer(2)
    X[:, [3, 7]] = 0  # two input features that are always zero: their weights cost nothing to remove
    W[:, [3, 7]] = 100.0  # however large they are
    _, mask = tpr.sparsegpt_prune(W, X.T @ X, 0.25)
    assert (mask[:, [3, 7]] == 0).all()


def test_sparsegpt_rejects_bad_input():
    W, X = _correlated_layer(0, out=4, inp=8)
    H = X.T @ X
    with pytest.raises(ValueError, match=r"\(8, 8\)"):
        tpr.sparsegpt_prune(W, H[:6, :6], 0.5)
    with pytest.raises(ValueError, match="symmetric"):
        tpr.sparsegpt_prune(W, H + torch.triu(torch.ones(8, 8), 1), 0.5)
    with pytest.raises(ValueError, match="exactly one"):
        tpr.sparsegpt_prune(W, H)
    with pytest.raises(ValueError, match="exactly one"):
        tpr.sparsegpt_prune(W, H, 0.5, mask=torch.ones(4, 8))
    with pytest.raises(ValueError, match="0 .* and 1"):
        tpr.sparsegpt_prune(W, H, mask=torch.full((4, 8), 0.5))
    with pytest.raises(ValueError, match="sparsity"):
        tpr.sparsegpt_prune(W, H, 1.5)
    with pytest.raises(ValueError, match="n <= m"):
        tpr.sparsegpt_prune(W, H, (4, 2))
    with pytest.raises(ValueError, match="multiple of m"):
        tpr.sparsegpt_prune(W, H, (2, 4), blocksize=6)
    with pytest.raises(ValueError, match="percdamp"):
        tpr.sparsegpt_prune(W, H, 0.5, percdamp=-0.1)
    with pytest.raises(ValueError, match="negative diagonal"):
        tpr.sparsegpt_prune(W, -H, 0.5)
    indefinite = torch.eye(8) + 2 * torch.ones(8, 8).triu(1) + 2 * torch.ones(8, 8).tril(-1)  # not an X X^T
    with pytest.raises(ValueError, match="increase percdamp"):
        tpr.sparsegpt_prune(W, indefinite, 0.5)
    low_rank = X[:3].T @ X[:3]  # 3 tokens cannot span 8 input features: singular
    new, _ = tpr.sparsegpt_prune(W, low_rank, 0.5)  # the default dampening makes it invertible
    assert torch.isfinite(new).all()


# --- prune_one_shot: every block in order, calibrated on the already-pruned blocks ------------------------------

def _tiny_gpt():
    torch.manual_seed(0)
    return models.TinyGPT(context=16, dim=16, depth=2, num_heads=2, mlp_hidden=32).eval()


@pytest.mark.parametrize("method", tpr.ONE_SHOT_METHODS)
@pytest.mark.parametrize("pattern", [0.5, (2, 4)])
def test_prune_one_shot_prunes_a_copy_of_every_block_linear_and_nothing_else(method, pattern):
    model = _tiny_gpt()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calib = [torch.randint(0, 256, (4, 16)) for _ in range(2)]
    pruned = tpr.prune_one_shot(model, calib, method, pattern)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the original is untouched
    for name, layer in tpr.block_linears(pruned).items():
        w = layer.weight
        assert (w == 0).float().mean().item() == 0.5, name
        if pattern == (2, 4):
            assert ((w.view(w.shape[0], -1, 4) != 0).sum(-1) <= 2).all(), name
    untouched = [n for n in before if not any(n == f"{b}.weight" for b in tpr.block_linears(pruned))]
    assert all(torch.equal(before[n], pruned.state_dict()[n]) for n in untouched)  # embeddings, norms, head, biases


def test_prune_one_shot_magnitude_matches_the_row_mask_and_sparsegpt_updates_kept_weights():
    model = _tiny_gpt()
    calib = [torch.randint(0, 256, (4, 16))]
    mag = tpr.prune_one_shot(model, calib, "magnitude", 0.5)
    sgpt = tpr.prune_one_shot(model, calib, "sparsegpt", 0.5)
    for name, layer in tpr.block_linears(model).items():
        w = layer.weight.detach()
        assert torch.equal(tpr.block_linears(mag)[name].weight, w * tpr.row_mask(w.abs(), 0.5))
        kept = tpr.block_linears(sgpt)[name].weight != 0
        assert not torch.equal(tpr.block_linears(sgpt)[name].weight[kept], w[kept])  # corrected, not just masked


def test_prune_one_shot_separates_the_mask_from_the_update():
    model = _tiny_gpt()
    calib = [torch.randint(0, 256, (4, 16))]
    mag_updated = tpr.prune_one_shot(model, calib, "magnitude", (2, 4), update=True)
    sgpt_mask_only = tpr.prune_one_shot(model, calib, "sparsegpt", (2, 4), update=False)
    first = [n for n in tpr.block_linears(model) if n.startswith("blocks.0.")]  # inputs not yet changed by pruning
    for name, layer in tpr.block_linears(model).items():
        w = layer.weight.detach()
        updated, masked = tpr.block_linears(mag_updated)[name].weight, tpr.block_linears(sgpt_mask_only)[name].weight
        if name in first:  # magnitude's own 2:4 zeros, the kept weights corrected
            assert torch.equal(updated != 0, tpr.mask_from_scores(w.abs(), (2, 4)).bool())
        assert not torch.equal(updated[updated != 0], w[updated != 0])
        assert torch.equal(masked[masked != 0], w[masked != 0])  # SparseGPT's mask, weights not moved
        assert int((masked == 0).sum()) == w.numel() // 2
    with pytest.raises(TypeError, match="update must be"):
        tpr.prune_one_shot(model, calib, "wanda", 0.5, update="yes")


def test_prune_one_shot_rejects_bad_input():
    model = _tiny_gpt()
    calib = [torch.randint(0, 256, (2, 16))]
    with pytest.raises(ValueError, match="magnitude, wanda, sparsegpt"):
        tpr.prune_one_shot(model, calib, "obd", 0.5)
    with pytest.raises(ValueError, match="empty"):
        tpr.prune_one_shot(model, [], "wanda", 0.5)
    with pytest.raises(TypeError, match="model.blocks"):
        tpr.prune_one_shot(models.LeNet(), calib, "magnitude", 0.5)
