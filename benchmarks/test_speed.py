"""pytest-benchmark suite: preprocessing, cv2.dnn forward, PyTorch forward.

Usage: pytest benchmarks --benchmark-only [--benchmark-autosave] [--benchmark-compare]
Not part of the default test run (tests/ is); tests/benchmarks runs it once as a smoke test.
"""
import numpy as np
import pytest

from medge.edge.image import read_image
from medge.edge.preprocess import PreprocessConfig, preprocess


@pytest.mark.parametrize("kind", ["png8", "png16"])
def test_read(benchmark, xray_2048, kind):
    img = benchmark(read_image, xray_2048[kind])
    assert img.ndim == 2


@pytest.mark.parametrize("kind", ["png8", "png16"])
def test_preprocess(benchmark, xray_2048, kind):
    img = read_image(xray_2048[kind])
    out = benchmark(preprocess, img, PreprocessConfig())
    assert out.shape == (1, 224, 224)


@pytest.mark.parametrize("batch", [1, 8])
def test_cv2_dnn_forward(benchmark, model_files, batch):
    from medge.benchmarks.runners import DnnRunner

    runner = DnnRunner(str(model_files[0]))
    blob = np.zeros((batch, *runner.model.chw), np.float32)
    assert benchmark(runner.infer, blob).shape == (batch, 2)


@pytest.mark.parametrize("batch", [1, 8])
def test_pytorch_forward(benchmark, model_files, batch):
    from medge.benchmarks.runners import TorchRunner
    from medge.edge.bundle import read_manifest

    chw = tuple(read_manifest(model_files[0])["model"]["input_shape"][1:])
    runner = TorchRunner(str(model_files[1]))
    blob = np.zeros((batch, *chw), np.float32)
    assert benchmark(runner.infer, blob).shape == (batch, 2)
