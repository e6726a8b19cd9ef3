"""pytest-benchmark suite: preprocessing, forward passes (cv2.dnn, onnxruntime, PyTorch) and cold starts.

Usage: pytest tests/benchmarks/speed --benchmark-only [--benchmark-autosave] [--benchmark-compare] [--benchmark-group-by=group]
Not part of the default test run (tests/benchmarks/conftest.py leaves it out unless named);
tests/benchmarks/test_benchmarks.py runs it once, small, as a smoke test.

Forward passes are warmed up (WARMUP untimed calls: PyTorch's first ~9 calls take ~50x longer
than the rest) and then timed ROUNDS times; what a fresh runtime costs (load + first call) is
its own group, "cold start", never mixed into the forward figures.
"""
import os

import numpy as np
import pytest

from medge.edge.inputs.image import read_image
from medge.edge.preprocess import PreprocessConfig, preprocess

WARMUP = int(os.environ.get("MEDGE_BENCH_WARMUP", "15"))  # untimed calls before a forward pass is timed
ROUNDS = int(os.environ.get("MEDGE_BENCH_ROUNDS", "30"))
COLD_ROUNDS = int(os.environ.get("MEDGE_BENCH_COLD_ROUNDS", "3"))


def _runner(kind: str, model_files):
    from medge.benchmarks.runners import DnnRunner, OrtRunner, TorchRunner

    if kind == "cv2.dnn":
        return DnnRunner(str(model_files[0]))
    if kind == "onnxruntime":
        pytest.importorskip("onnxruntime")
        return OrtRunner((model_files[0] / "model.onnx").read_bytes())
    return TorchRunner(str(model_files[1]))


def _chw(model_files):
    from medge.edge.runtime.bundle import read_manifest

    return tuple(read_manifest(model_files[0])["model"]["input_shape"][1:])


@pytest.mark.parametrize("kind", ["png8", "png16"])
def test_read(benchmark, xray_2048, kind):
    benchmark.group = "read"
    img = benchmark.pedantic(read_image, (xray_2048[kind],), warmup_rounds=1, rounds=ROUNDS)
    assert img.ndim == 2


@pytest.mark.parametrize("kind", ["png8", "png16"])
def test_preprocess(benchmark, xray_2048, kind):
    benchmark.group = "preprocess"
    img = read_image(xray_2048[kind])
    out = benchmark.pedantic(preprocess, (img, PreprocessConfig()), warmup_rounds=1, rounds=ROUNDS)
    assert out.shape == (1, 224, 224)


@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("runtime", ["cv2.dnn", "onnxruntime", "pytorch"])
def test_forward(benchmark, model_files, runtime, batch):
    """One forward pass on a ready blob, after WARMUP untimed calls."""
    benchmark.group = f"forward batch {batch}"
    runner = _runner(runtime, model_files)
    blob = np.zeros((batch, *_chw(model_files)), np.float32)
    out = benchmark.pedantic(runner.infer, (blob,), warmup_rounds=WARMUP, rounds=ROUNDS, iterations=1)
    assert out.shape == (batch, 2)


@pytest.mark.parametrize("runtime", ["cv2.dnn", "onnxruntime", "pytorch"])
def test_cold_start(benchmark, model_files, runtime):
    """A fresh runtime: load the model (cv2.dnn: SHA-256, golden self-test, engine choice) + its first forward pass."""
    benchmark.group = "cold start"
    blob = np.zeros((1, *_chw(model_files)), np.float32)
    out = benchmark.pedantic(lambda: _runner(runtime, model_files).infer(blob), rounds=COLD_ROUNDS, iterations=1)
    assert out.shape == (1, 2)
