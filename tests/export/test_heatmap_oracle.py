"""The edge's heatmaps against an oracle nobody here wrote: pytorch-grad-cam on the same checkpoint and input.

For a head that is global average pooling + one linear layer, GradCAM's channel weights are the
head's weights divided by h*w (the gradient of the mean), so GradCAM on the last convolutional
block equals CAM up to a factor that the [0, 1] scaling removes. pytorch-grad-cam (``grad-cam`` in
the dev extra) must be installed: this test runs in CI, it is never skipped.
"""
import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from medge.edge.model import Model
from medge.edge.preprocess import preprocess
from medge.export.onnx_export import ExportConfig, export_bundle
from medge.train.checkpoint import load_checkpoint, model_from_checkpoint
from tests.conftest import xray_like
from tests.helpers import make_checkpoint

TARGET_LAYERS = {"resnet18": lambda net: net.layer4[-1], "efficientnet_b0": lambda net: net.features[-1]}


@pytest.fixture(scope="module")
def efficientnet_bundle(tmp_path_factory):
    d = tmp_path_factory.mktemp("effnet")
    ckpt = make_checkpoint(d / "ck.pt", arch="efficientnet_b0", size=96, centred_head=True)
    export_bundle(str(ckpt), str(d / "bundle"), cfg=ExportConfig(max_images=8), log=lambda *a: None)
    return d / "bundle", ckpt


def _pearson(a, b):
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.mark.parametrize("arch", ["resnet18", "efficientnet_b0"])
def test_cam_equals_pytorch_grad_cam(arch, heat_bundle, request):
    bundle, ckpt = heat_bundle if arch == "resnet18" else request.getfixturevalue("efficientnet_bundle")
    model = Model.load(bundle)
    assert model.explain_method == "cam" and model.manifest["model"]["arch"] == arch
    net = model_from_checkpoint(load_checkpoint(ckpt)).eval()
    compared = 0
    with GradCAM(model=net, target_layers=[TARGET_LAYERS[arch](net)]) as oracle:
        for seed in range(3):
            image = xray_like(300, 280, seed=seed)
            x = torch.from_numpy(preprocess(image, model.preprocess_config)[None])
            for k in range(len(model.classes)):
                ours = model.explain(image, class_index=k).heatmap
                theirs = oracle(input_tensor=x, targets=[ClassifierOutputTarget(k)])[0]
                assert ours.shape == theirs.shape == (96, 96)
                if theirs.std() == 0:  # no positive evidence for class k anywhere: both must say so
                    assert not ours.any()
                    continue
                assert _pearson(ours, theirs) >= 0.99, (arch, seed, k)
                compared += 1
    assert compared == 3 * len(model.classes), "an empty map: the comparison would prove little"


def test_occlusion_equals_a_pytorch_computation_on_mobilenet_v3(occlusion_bundle):
    """The occlusion path through cv2.dnn equals the same sliding patch run through PyTorch on the checkpoint."""
    bundle, ckpt = occlusion_bundle
    model = Model.load(bundle)
    net = model_from_checkpoint(load_checkpoint(ckpt)).eval()
    assert model.explain_method == "occlusion" and model.manifest["model"]["arch"] == "mobilenet_v3_small"
    section = model.manifest["explain"]
    patch, stride = section["patch"], section["stride"]
    image = xray_like(200, 180, seed=7)
    x = preprocess(image, model.preprocess_config)
    e = model.explain(image)
    size = x.shape[-1]
    starts = sorted({*range(0, size - patch + 1, stride), size - patch})
    batch = []
    for y0 in starts:
        for x0 in starts:
            occluded = x.copy()
            occluded[:, y0 : y0 + patch, x0 : x0 + patch] = 0.0
            batch.append(occluded)
    with torch.inference_mode():
        base = net(torch.from_numpy(x[None]))[0, e.class_index].item()
        scores = net(torch.from_numpy(np.stack(batch)))[:, e.class_index].numpy().astype(np.float64)
    total, count, i = np.zeros((size, size)), np.zeros((size, size)), 0
    for y0 in starts:
        for x0 in starts:
            total[y0 : y0 + patch, x0 : x0 + patch] += base - scores[i]
            count[y0 : y0 + patch, x0 : x0 + patch] += 1
            i += 1
    expected = np.maximum(total / count, 0)
    expected = (expected - expected.min()) / expected.max()
    assert expected.std() > 0.05, "a flat map would prove little"
    assert _pearson(e.heatmap, expected) >= 0.999
    np.testing.assert_allclose(e.heatmap, expected, atol=1e-3)
