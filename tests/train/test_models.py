import pytest
import torch

from medge.edge.errors import MedgeError
from medge.train import models
from medge.train.config import ARCHS


@pytest.mark.parametrize("arch", ARCHS)
def test_every_arch_builds_for_gray_input(arch):
    model = models.build_model(arch, in_channels=1, num_classes=3).eval()
    with torch.inference_mode():
        assert model(torch.zeros(2, 1, 64, 64)).shape == (2, 3)


def test_three_channels():
    assert models.build_model("resnet18", 3, 2).conv1.in_channels == 3


def test_pretrained_rgb_filters_are_summed_for_gray(monkeypatch):
    import torchvision

    torch.manual_seed(0)
    rgb = torchvision.models.get_model("resnet18", weights=None)
    reference = rgb.conv1.weight.detach().clone()
    monkeypatch.setattr(models, "load_pretrained", lambda arch: rgb)
    model = models.build_model("resnet18", 1, 2, pretrained=True)
    torch.testing.assert_close(model.conv1.weight, reference.sum(1, keepdim=True))
    # A gray image through the adapted conv = the same image on 3 channels through the original.
    x = torch.rand(1, 1, 32, 32)
    torch.testing.assert_close(model.conv1(x), torch.nn.functional.conv2d(x.repeat(1, 3, 1, 1), reference, stride=2, padding=3))


def test_pretrained_offline_gives_a_clear_error(monkeypatch, tmp_path):
    import urllib.error

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty cache

    def offline(*a, **k):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(MedgeError, match="cannot load torchvision's ImageNet weights for resnet18.*offline"):
        models.build_model("resnet18", 1, 2, pretrained=True)


def test_unknown_arch():
    with pytest.raises(MedgeError, match="unknown architecture"):
        models.build_model("vgg11", 1, 2)
