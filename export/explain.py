"""The export side of heatmaps: what a bundle needs so that the edge can draw them.

For a CAM architecture (``medge.train.models.CAM_LAYERS``) the exported ONNX model gets a
second output, ``features``: the last convolutional feature map exactly as the model pools
it (after densenet's ReLU), and the head's weight and bias go into ``cam_head.npy``. Both are
proven here to reproduce the model's logits (mean over positions of ``W @ F`` plus ``b``),
in PyTorch before the export and in cv2.dnn after it, so the CAM the edge draws is what the
model computes. Other architectures get occlusion sensitivity, which needs nothing extra.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medge.edge.errors import ExportError, InferenceError
from medge.edge.explain import CAM_HEAD_FILE, FEATURES_OUTPUT, CamExplainer, default_occlusion, save_head
from medge.edge.runtime.bundle import LOGITS_OUTPUT, sha256_bytes


def cam_layers(arch: str):
    """The CamLayers of ``arch``, or None when its head is not pooling + one linear layer."""
    from medge.train.models import CAM_LAYERS

    return CAM_LAYERS.get(arch)


def with_features(model, layers):
    """Wrap ``model`` so that it returns ``(logits, feature map)``; the logits are the model's own forward."""
    import torch
    from torch import nn

    class WithFeatures(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            self.captured = None
            model.get_submodule(layers.features).register_forward_hook(self._keep)

        def _keep(self, module, args, output):
            self.captured = output

        def forward(self, x):
            logits = self.model(x)
            features = self.captured
            self.captured = None
            if layers.activation == "relu":
                features = torch.relu(features)  # what the model's forward pools (idempotent on densenet's in-place ReLU)
            return logits, features

    return WithFeatures().eval()


def cam_head(model, layers) -> tuple[np.ndarray, np.ndarray]:
    """The linear head's weight (K, C) and bias (K,) as float32 arrays."""
    from torch import nn

    head = model.get_submodule(layers.head)
    if not isinstance(head, nn.Linear):
        raise ExportError(f"CAM head {layers.head!r} is a {type(head).__name__}, not a Linear layer")
    bias = head.bias.detach() if head.bias is not None else head.weight.new_zeros(head.out_features)
    return head.weight.detach().float().numpy().copy(), bias.float().numpy().copy()


def torch_outputs(wrapped, inputs: np.ndarray, batch: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Logits and feature maps from PyTorch (CPU, float32, inference mode)."""
    import torch

    logits, features = [], []
    with torch.inference_mode():
        for i in range(0, len(inputs), batch):
            z, f = wrapped(torch.from_numpy(inputs[i : i + batch]))
            logits.append(z.float().numpy())
            features.append(f.float().numpy())
    return np.concatenate(logits), np.concatenate(features)


def check_cam(features: np.ndarray, logits: np.ndarray, weight: np.ndarray, bias: np.ndarray, where: str) -> None:
    """ExportError unless the head applied to the pooled feature map gives the logits (the edge's own check)."""
    try:
        CamExplainer(np.concatenate([weight, bias[:, None]], axis=1)).check_logits(features, logits)
    except InferenceError as e:
        raise ExportError(f"{where}: CAM would not equal what the model computes: {e}") from None


def raw_cams(features: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """(N, K, h, w): every class's raw map ``W[k] @ F`` (what the golden self-test stores)."""
    n, c, h, w = features.shape
    return np.einsum("kc,ncp->nkp", weight.astype(np.float64), features.reshape(n, c, h * w).astype(np.float64)) \
        .reshape(n, len(weight), h, w).astype(np.float32)


def compare_features(reference: np.ndarray, candidate: np.ndarray, rtol: float) -> dict:
    """PyTorch vs cv2.dnn feature maps: max |delta| relative to the largest |feature|; ``passed`` within ``rtol``."""
    scale = float(np.abs(reference).max(initial=0.0))
    worst = float(np.abs(reference - candidate).max(initial=0.0)) if reference.shape == candidate.shape else float("inf")
    rel = worst / max(scale, 1e-12)
    return {"output": FEATURES_OUTPUT, "shape": list(reference.shape[1:]), "max_abs": worst, "reference_max_abs": scale,
            "max_rel": rel, "rtol": rtol, "passed": rel <= rtol}


@dataclass(frozen=True)
class CamExport:
    """A CAM architecture made ready for export, proven in PyTorch on the parity inputs."""

    layers: object  # medge.train.models.CamLayers
    module: object  # the model wrapped to return (logits, features): what is exported
    weight: np.ndarray  # (K, C) float32
    bias: np.ndarray  # (K,) float32
    logits: np.ndarray  # PyTorch's logits on the parity inputs (N, K): the model's own forward
    features: np.ndarray  # PyTorch's feature maps on them (N, C, h, w)

    @property
    def head_bytes(self) -> bytes:
        return save_head(self.weight, self.bias)

    def raw_cams(self, features: np.ndarray) -> np.ndarray:
        return raw_cams(features, self.weight)


def prepare_cam(model, arch: str, inputs: np.ndarray) -> CamExport | None:
    """Wrap a CAM architecture and prove in PyTorch, on ``inputs``, that its CAM reproduces its logits.

    Returns:
        None for an architecture whose head is not pooling + one linear layer (occlusion then).

    Raises:
        ExportError: the head applied to the pooled feature map does not give the logits (the
            architecture is not what CAM_LAYERS says it is).
    """
    layers = cam_layers(arch)
    if layers is None:
        return None
    module = with_features(model, layers)
    logits, features = torch_outputs(module, inputs)
    weight, bias = cam_head(model, layers)
    check_cam(features, logits, weight, bias, "PyTorch")
    return CamExport(layers, module, weight, bias, logits, features)


def explain_section(cam: CamExport | None, size: int) -> dict:
    """The manifest's ``explain`` section: which heatmap method the bundle supports and its settings."""
    if cam is None:
        return {"method": "occlusion", **default_occlusion(size)}
    return {"method": "cam", "output_name": FEATURES_OUTPUT, "logits_output": LOGITS_OUTPUT,
            "feature_shape": [int(v) for v in cam.features.shape[1:]], "feature_layer": cam.layers.features,
            "activation": cam.layers.activation, "head_layer": cam.layers.head, "head_file": CAM_HEAD_FILE,
            "head_sha256": sha256_bytes(cam.head_bytes)}

