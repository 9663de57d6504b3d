import pytest
import torch

from deeplsp_helpers import models


@pytest.mark.parametrize("name", models.IMAGE_MODEL_NAMES)
def test_every_image_model_maps_a_batch_to_ten_logits(name):
    model = models.build_model(name).eval()
    with torch.no_grad():
        out = model(torch.randn(3, 1, 28, 28))
    assert out.shape == (3, 10)
    assert sum(p.numel() for p in model.parameters()) < 500_000  # checkpoint stays < 2 MB


def test_build_model_is_case_insensitive_and_rejects_unknown_names():
    assert isinstance(models.build_model("VGG"), models.VGG)
    with pytest.raises(ValueError, match="lenet, vgg, resnet, mobilenet"):
        models.build_model("alexnet")
    with pytest.raises(TypeError):
        models.build_model(None)


def test_lenet_has_the_classic_layout():
    m = models.LeNet()
    convs = [x for x in m.modules() if isinstance(x, torch.nn.Conv2d)]
    linears = [x for x in m.modules() if isinstance(x, torch.nn.Linear)]
    assert len(convs) == 2 and len(linears) == 3
    assert sum(p.numel() for p in m.parameters()) == 44426


def test_model_names_are_the_cnns_the_transformers_and_the_language_model():
    assert models.MODEL_NAMES == models.CNN_NAMES + models.TRANSFORMER_NAMES + models.LANGUAGE_MODEL_NAMES == (
        "lenet", "vgg", "resnet", "mobilenet", "vit", "gpt")
    assert models.IMAGE_MODEL_NAMES == models.CNN_NAMES + models.TRANSFORMER_NAMES
    assert isinstance(models.build_model("ViT"), models.ViT) and isinstance(models.build_model("gpt"), models.TinyGPT)


def test_the_language_model_maps_bytes_to_next_byte_logits_and_has_the_documented_layout():
    import io

    model = models.build_model("gpt").eval()
    assert model.context == 256 and model.vocab_size == 256 and len(model.blocks) == 4
    attn, mlp = model.blocks[0].attn, model.blocks[0].mlp
    assert isinstance(attn, models.CausalSelfAttention) and isinstance(model.blocks[0], models.DecoderBlock)
    assert (attn.num_heads, attn.head_dim, mlp.fc1.out_features) == (4, 32, 512)
    params = sum(p.numel() for p in model.parameters())
    assert params == 891_648
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    assert buf.tell() < 6 * 1024 * 1024  # the zoo's limit for the gpt checkpoint
    x = torch.randint(0, 256, (2, 40))
    with torch.no_grad():
        assert model(x).shape == (2, 40, 256)
    model(x).sum().backward()  # every parameter takes part
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters())


def test_vit_has_the_documented_layout_and_a_small_checkpoint():
    import io

    model = models.build_model("vit")
    assert len(model.blocks) == 4 and model.pos_embed.shape == (1, 50, 64)  # 7x7 patches of 4x4 and a class token
    attn, mlp = model.blocks[0].attn, model.blocks[0].mlp
    assert (attn.num_heads, attn.head_dim, mlp.fc1.out_features) == (4, 16, 128)
    assert sum(p.numel() for p in model.parameters()) == 139018
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    assert buf.tell() < 2 * 1024 * 1024
    X = torch.randn(2, 1, 28, 28)
    model(X).sum().backward()  # every parameter takes part
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_hand_written_attention_matches_torch_multihead_attention():
    torch.manual_seed(0)
    attn = models.SelfAttention(dim=12, num_heads=3)
    ref = torch.nn.MultiheadAttention(12, 3, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]))
        ref.in_proj_bias.copy_(torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]))
        ref.out_proj.weight.copy_(attn.out_proj.weight)
        ref.out_proj.bias.copy_(attn.out_proj.bias)
        x = torch.randn(2, 5, 12)  # [N, T, D]
        torch.testing.assert_close(attn(x), ref(x, x, x, need_weights=False)[0], rtol=1e-5, atol=1e-6)


def test_num_heads_follows_the_weights():
    attn = models.SelfAttention(dim=8, num_heads=4)
    attn.num_heads = 4  # agreeing with the weights is fine (Torch-Pruning users set it after pruning)
    with pytest.raises(ValueError, match="follows from the weights"):
        attn.num_heads = 2
    attn.k_proj = torch.nn.Linear(8, 6)  # a half-done surgery is an error, not a silent wrong answer
    with pytest.raises(RuntimeError, match="disagree"):
        attn(torch.randn(1, 3, 8))


def test_transformer_settings_are_validated():
    with pytest.raises(ValueError, match="not divisible"):
        models.SelfAttention(dim=10, num_heads=4)
    assert models.SelfAttention(dim=10, num_heads=4, head_dim=3).q_proj.out_features == 12
    with pytest.raises(ValueError, match="does not divide"):
        models.ViT(patch_size=5)
    with pytest.raises(ValueError, match="depth"):
        models.ViT(depth=0)
