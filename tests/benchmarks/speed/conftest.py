"""Fixtures of the pytest-benchmark suite (``pytest tests/benchmarks/speed --benchmark-only``).

Set MEDGE_BENCH_BUNDLE and MEDGE_BENCH_CHECKPOINT to measure your own model;
otherwise an untrained resnet18 at 224x224 is exported once per session.
"""
import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def model_files(tmp_path_factory):
    bundle, ckpt = os.environ.get("MEDGE_BENCH_BUNDLE"), os.environ.get("MEDGE_BENCH_CHECKPOINT")
    if bundle and ckpt:
        return Path(bundle), Path(ckpt)
    from medge.edge.preprocess import PreprocessConfig
    from medge.export.onnx_export import ExportConfig, export_bundle
    from medge.train.checkpoint import save_model_checkpoint
    from medge.train.models import build_model

    size = int(os.environ.get("MEDGE_BENCH_SIZE", "224"))
    d = tmp_path_factory.mktemp("bench")
    ckpt = save_model_checkpoint(d / "ck.pt", build_model("resnet18", 1, 2).eval(), "resnet18", ["a", "b"],
                                 PreprocessConfig(size=size))
    export_bundle(str(ckpt), str(d / "bundle"), cfg=ExportConfig(max_images=2), log=lambda *a: None)
    return d / "bundle", ckpt


@pytest.fixture(scope="session")
def xray_2048(tmp_path_factory):
    from medge.benchmarks.edge_throughput import make_images

    size = int(os.environ.get("MEDGE_BENCH_IMAGE", "2048"))
    d = tmp_path_factory.mktemp("img")
    return {"png8": make_images(str(d), 1, size)[0], "png16": make_images(str(d), 2, size)[1]}
