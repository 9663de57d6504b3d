"""Chapter 09's structural pruning of the language model: removing whole blocks (depth) and narrowing them (width)."""

import copy

import pytest
import torch
from test_lm import TOY, _one_thread, _tiny_gpt  # noqa: F401 (_one_thread: the module's one-thread fixture)

from deeplsp_helpers import lm, models, text_data
from deeplsp_helpers import transformer_pruning as tpr

# --- depth pruning -------------------------------------------------------------------------------------------------

def test_removing_blocks_keeps_the_output_shape_and_leaves_the_original_alone():
    model = _tiny_gpt(depth=4)
    before = copy.deepcopy(model.state_dict())
    x = torch.randint(0, 256, (2, 10))
    slim = lm.remove_blocks(model, [1, 3])
    assert len(slim.blocks) == 2 and len(model.blocks) == 4
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the original is untouched
    assert slim.blocks[0] is not model.blocks[0] and torch.equal(slim.blocks[1].attn.q_proj.weight,
                                                                 model.blocks[2].attn.q_proj.weight)
    with torch.no_grad():
        out = slim(x)
        assert out.shape == model(x).shape == (2, 10, 256)
        caches = slim.new_cache()
        torch.testing.assert_close(torch.cat([slim(x[:, :6], caches), slim(x[:, 6:], caches)], 1), out,
                                   rtol=1e-5, atol=1e-5)  # the cache path runs with the remaining blocks
    assert len(lm.remove_blocks(model, torch.tensor([0])).blocks) == 3
    assert len(lm.remove_blocks(model, []).blocks) == 4


@pytest.mark.parametrize("indices, err, message", [
    ([4], ValueError, r"block index must be an int in 0\.\.3, got 4"),
    ([-1], ValueError, "block index must be an int in 0..3"),
    ([1, 1], ValueError, "repeat"),
    ([0, 1, 2, 3], ValueError, "cannot remove all 4 blocks"),
    ([1.0], TypeError, "block index"),
    (2, TypeError, "sequence of block indices"),
])
def test_remove_blocks_refuses_bad_indices(indices, err, message):
    with pytest.raises(err, match=message):
        lm.remove_blocks(_tiny_gpt(depth=4), indices)


def _make_identity(block: models.DecoderBlock) -> None:
    """Zero the block's writes to the residual stream: out_proj and fc2, weights and biases."""
    with torch.no_grad():
        for layer in (block.attn.out_proj, block.mlp.fc2):
            layer.weight.zero_()
            layer.bias.zero_()


def test_a_block_that_changes_nothing_has_no_influence_and_removing_it_changes_no_logit():
    model = _tiny_gpt(depth=3)
    _make_identity(model.blocks[1])
    batches = lm.calibration_text(TOY, n_windows=6, context=32, batch_size=4)
    influence = lm.block_influence(model, batches)
    assert len(influence) == 3
    assert influence[1] == pytest.approx(0.0, abs=1e-5) and min(influence[0], influence[2]) > 1e-3
    assert influence == lm.block_influence(model, [(b, None) for b in batches])  # (x, y) pairs are fine too
    assert not any(b._forward_hooks for b in model.blocks)  # the hooks are removed
    x = batches[0]
    with torch.no_grad():
        torch.testing.assert_close(lm.remove_blocks(model, [1])(x), model(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="batches is empty"):
        lm.block_influence(model, [])
    with pytest.raises(TypeError, match="batches"):  # one tensor is not a list of batches
        lm.block_influence(model, x)


def test_calibration_text_is_batched_random_windows_of_the_text_repeatable_by_seed():
    batches = lm.calibration_text(TOY, n_windows=5, context=16, batch_size=2, seed=3)
    assert [tuple(b.shape) for b in batches] == [(2, 16), (2, 16), (1, 16)] and batches[0].dtype == torch.int64
    again = lm.calibration_text(TOY, n_windows=5, context=16, batch_size=2, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(batches, again))
    assert text_data.decode(batches[0][0]) in text_data.decode(TOY)  # a window of the text as it is
    with pytest.raises(ValueError, match="n_windows"):
        lm.calibration_text(TOY, n_windows=0, context=16)


# --- width pruning ---------------------------------------------------------------------------------------------------

def test_width_importance_scores_every_head_and_neuron_and_a_silent_one_scores_zero():
    model = _tiny_gpt()
    with torch.no_grad():  # head 1 of block 0 outputs nothing (its v_proj rows and bias are zero); so does neuron 5
        model.blocks[0].attn.v_proj.weight[8:].zero_()
        model.blocks[0].attn.v_proj.bias[8:].zero_()
        model.blocks[1].mlp.fc1.weight[5].zero_()
        model.blocks[1].mlp.fc1.bias[5].zero_()
    batches = lm.calibration_text(TOY, n_windows=4, context=32, batch_size=2)
    heads, neurons = lm.width_importance(model, batches)
    assert set(heads) == {"blocks.0.attn", "blocks.1.attn"} and set(neurons) == {"blocks.0.mlp", "blocks.1.mlp"}
    assert set(heads) | set(neurons) <= set(dict(model.named_modules()))  # the names of the sublayers
    assert all(v.shape == (2,) for v in heads.values()) and all(v.shape == (32,) for v in neurons.values())
    assert heads["blocks.0.attn"][1] == 0 and heads["blocks.0.attn"][0] > 0 and (heads["blocks.1.attn"] > 0).all()
    assert neurons["blocks.1.mlp"][5] == 0 and (neurons["blocks.0.mlp"] > 0).all()
    # a sum over sequences divided by their number: the same text in other batches gives the same scores
    heads2, _ = lm.width_importance(model, [torch.cat(batches)])
    torch.testing.assert_close(heads2["blocks.1.attn"], heads["blocks.1.attn"])
    x = torch.cat(batches)
    with torch.no_grad():
        before = model(x)
    tpr.remove_heads(model.blocks[0], [1])  # silent ones: removing them changes no logit
    tpr.remove_mlp_neurons(model.blocks[1], [5])
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="batches is empty"):
        lm.width_importance(model, [])


def test_removing_heads_and_neurons_from_decoder_blocks_keeps_shapes_and_the_cache_path():
    model = _tiny_gpt(depth=2)
    heads, neurons = lm.width_importance(model, lm.calibration_text(TOY, n_windows=4, context=32, batch_size=4))
    stale = model.new_cache()
    model(torch.zeros(1, 4, dtype=torch.long), stale)  # a cache filled before the surgery
    for b, block in enumerate(model.blocks):
        tpr.remove_heads(block, [int(heads[f"blocks.{b}.attn"].argmin())])
        tpr.remove_mlp_neurons(block, neurons[f"blocks.{b}.mlp"].argsort()[:10].tolist())
    assert all(blk.attn.num_heads == 1 and blk.mlp.fc1.out_features == 22 for blk in model.blocks)
    x = torch.randint(0, 256, (2, 12))
    with torch.no_grad():
        full = model(x)
        caches = model.new_cache()
        chunked = torch.cat([model(x[:, :5], caches), model(x[:, 5:6], caches), model(x[:, 6:], caches)], 1)
    assert full.shape == (2, 12, 256)
    torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="heads removed.*start a new cache"):  # not a size error from torch.cat
        model(torch.zeros(1, 1, dtype=torch.long), stale)
    prompt = text_data.encode("And God")
    assert torch.equal(lm.generate(model, prompt, 10, use_cache=True), lm.generate(model, prompt, 10, use_cache=False))
    heads, neurons = lm.width_importance(model, [x])
    assert heads["blocks.0.attn"].shape == (1,) and neurons["blocks.1.mlp"].shape == (22,)
    assert lm.perplexity(model, TOY, max_windows=4) > 1  # the pruned model still scores text
