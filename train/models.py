"""torchvision classifiers by name, adapted to 1 or 3 input channels and N classes."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from medge.edge.errors import MedgeError
from medge.train.config import ARCHS


@dataclass(frozen=True)
class CamLayers:
    """Where a class activation map comes from in a torchvision classifier."""

    features: str  # module whose output is the last convolutional feature map
    activation: str | None  # what the model's forward applies to it before pooling ("relu" or None)
    head: str  # the one nn.Linear after global average pooling (dropout before it is identity in eval)


# Heads that are global average pooling + one linear layer, for which CAM (Zhou et al. 2016,
# arXiv:1512.04150) is exact: logits = head(mean over positions of the feature map), so the map
# head.weight @ features(x, y) averages to the logits. mobilenet_v3's head (linear, hardswish,
# linear) is not of this form: it gets occlusion sensitivity instead.
CAM_LAYERS = {
    "resnet18": CamLayers("layer4", None, "fc"),
    "resnet50": CamLayers("layer4", None, "fc"),
    "densenet121": CamLayers("features", "relu", "classifier"),  # forward: F.relu(features(x)) before pooling
    "efficientnet_b0": CamLayers("features", None, "classifier.1"),  # classifier.0 is Dropout
}


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def load_pretrained(arch: str):
    """The torchvision model `arch` with its default ImageNet weights (downloaded by torchvision on first use)."""
    import torchvision

    weights = torchvision.models.get_model_weights(arch).DEFAULT
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
    try:
        return torchvision.models.get_model(arch, weights=weights)
    except (OSError, RuntimeError) as e:  # URLError is an OSError; offline boxes land here
        raise MedgeError(
            f"--pretrained: cannot load torchvision's ImageNet weights for {arch} ({type(e).__name__}: {e}). "
            f"They are downloaded once from {weights.url} into {cached}; on an offline machine copy that file "
            "there, or train without --pretrained."
        ) from None


def build_model(arch: str, in_channels: int = 1, num_classes: int = 2, pretrained: bool = False,
                zero_init_residual: bool = False) -> nn.Module:
    """Build a torchvision classifier with its first conv and last linear layer adapted.

    Args:
        arch: one of ARCHS.
        in_channels: 1 (gray) or 3.
        num_classes: size of the output layer.
        pretrained: start from torchvision's ImageNet weights; for one channel the
            first conv's RGB filters are summed, which gives the same response to a
            gray image repeated on three channels.
        zero_init_residual: resnets trained from scratch: the last batch norm of each
            residual branch starts with weight 0, so every block starts as the identity
            (torchvision's option; Goyal et al. 2017, arXiv:1706.02677). Ignored otherwise.

    Returns:
        an ``nn.Module`` mapping (N, in_channels, H, W) to (N, num_classes) logits.
    """
    import torchvision

    if arch not in ARCHS:
        raise MedgeError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    extra = {"zero_init_residual": True} if zero_init_residual and arch.startswith("resnet") else {}
    model = load_pretrained(arch) if pretrained else torchvision.models.get_model(arch, weights=None, **extra)
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    name, conv = convs[0]
    if in_channels not in (1, 3):
        raise MedgeError(f"in_channels must be 1 or 3, got {in_channels}")
    if in_channels == 1:
        new = nn.Conv2d(1, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                        conv.dilation, conv.groups, conv.bias is not None)
        with torch.no_grad():
            new.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
            if conv.bias is not None:
                new.bias.copy_(conv.bias)
        _replace(model, name, new)
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    name, head = linears[-1]
    if head.out_features != num_classes:
        _replace(model, name, nn.Linear(head.in_features, num_classes))
    return model
