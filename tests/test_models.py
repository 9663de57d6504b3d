import pytest
import torch

from deeplsp_helpers import models


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_every_model_maps_a_batch_to_ten_logits(name):
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
