"""Shared fixtures: small images made by the tests themselves (no downloads)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest


def pytest_configure(config):
    """The engine choices medge records (``edge.runtime.choice``, under ``$XDG_CACHE_HOME/medge``) go to a folder of this
    test run: a choice recorded on the user's box by an earlier ``medge check`` of the same test model (the test models
    are made the same each time) must not decide which engine a test loads."""
    import tempfile

    config._medge_cache = os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="medge-tests-cache-")


def pytest_unconfigure(config):
    import shutil

    shutil.rmtree(getattr(config, "_medge_cache", ""), ignore_errors=True)


def xray_like(h: int, w: int, seed: int = 0, bits: int = 8) -> np.ndarray:
    """A smooth, structured gray image (not noise: CLAHE and blur act on it as on an X-ray)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = 0.5 + 0.3 * np.sin(xx / (w / 7.0) + seed) * np.cos(yy / (h / 5.0))
    img += 0.25 * np.exp(-(((xx - w * 0.3) / (w * 0.15)) ** 2 + ((yy - h * 0.5) / (h * 0.3)) ** 2))
    img += 0.05 * rng.standard_normal((h, w)).astype(np.float32)
    img = np.clip(img, 0, 1)
    top = (1 << bits) - 1
    return np.round(img * top).astype(np.uint8 if bits <= 8 else np.uint16)


@pytest.fixture
def gray8():
    return xray_like(300, 257, seed=1)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """40 small synthetic images: train/val/test of two classes, 8- and 16-bit."""
    from medge.train.synth import SynthConfig, generate

    root = tmp_path_factory.mktemp("data") / "tiny"
    generate(root, SynthConfig(n=40, size=64, bits="mix", seed=1))
    return root


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """(data, run folder, summary) of a resnet18 that learned the synthetic task: 400 images of 128 px (8- and
    16-bit), 10 CPU epochs at 64 px (about 30 s on 2 cores). Shared by the learning test and the go-live tests."""
    pytest.importorskip("torch", reason="training needs the train extra")
    from medge.edge.preprocess import PreprocessConfig
    from medge.train import engine
    from medge.train.config import TrainConfig
    from medge.train.synth import SynthConfig, generate

    root = tmp_path_factory.mktemp("trained")
    generate(root / "data", SynthConfig(n=400, size=128, bits="mix", seed=0))
    cfg = TrainConfig(data=str(root / "data"), out=str(root / "run"), epochs=10, device="cpu", best_metric="accuracy",
                      cache_dir=str(root / "cache"))
    return root / "data", root / "run", engine.train(cfg, PreprocessConfig(size=64))


BUNDLES_ENV = "MEDGE_TEST_BUNDLES"  # bundles exported by the main environment, for edge tests where torch is absent


def _test_bundle(name, tmp_path_factory):
    """(bundle, checkpoint) of tests.helpers.TEST_BUNDLES[name]: from the folder $MEDGE_TEST_BUNDLES names (CI's
    OpenCV 4.5.5 and Debian environments have no torch; ``python -m tests.helpers DIR`` writes it), else exported
    once per session. Tests copy a bundle before changing it."""
    given = os.environ.get(BUNDLES_ENV)
    if given:
        folder = Path(given) / name
        assert (folder / "bundle" / "model.json").is_file(), f"${BUNDLES_ENV}={given} has no {name}/bundle"
        return folder / "bundle", folder / "ck.pt"
    pytest.importorskip("torch", reason=f"exporting a test bundle needs the train extra; or set ${BUNDLES_ENV}")
    from tests.helpers import export_test_bundle

    return export_test_bundle(name, tmp_path_factory.mktemp(name))


@pytest.fixture(scope="session")
def bundle(tmp_path_factory):
    """A verified bundle of a small resnet18 (input 1x32x32)."""
    return _test_bundle("bundle", tmp_path_factory)[0]


@pytest.fixture(scope="session")
def heat_bundle(tmp_path_factory):
    """(bundle, checkpoint) of a small resnet18 at 96 px: CAM heatmaps from a 3x3 feature map."""
    return _test_bundle("heat", tmp_path_factory)


@pytest.fixture(scope="session")
def occlusion_bundle(tmp_path_factory):
    """(bundle, checkpoint) of a mobilenet_v3_small at 64 px: heatmaps by occlusion."""
    return _test_bundle("occlusion", tmp_path_factory)


@pytest.fixture(scope="session")
def variant_bundle(tmp_path_factory):
    """(bundle, checkpoint) of a small resnet18 with an operating point and bf16 and int8 variants (every pair
    offered: --max-flips at the validation split's size), exported where onnxruntime and OpenVINO are."""
    given = os.environ.get(BUNDLES_ENV)
    if not given:
        pytest.importorskip("onnxruntime", reason="making the int8 variant needs onnxruntime")
        pytest.importorskip("openvino", reason="gating the bf16 variant needs OpenVINO")
    return _test_bundle("variants", tmp_path_factory)


@pytest.fixture(scope="session")
def multilabel_export_bundle(tmp_path_factory):
    """(bundle, checkpoint) of a small resnet18 with three findings (tests.helpers.FINDINGS), exported by medge export
    with its sealed per-finding section from a synthetic validation index: Effusion with a threshold and its
    guarantee, Nodule with the point-estimate threshold marked unsupported, Hernia without a threshold."""
    return _test_bundle("multilabel", tmp_path_factory)


SHADOWS = {  # what a user's project folder commonly holds; importing any of them fails loudly
    "train.py": "raise SystemExit('the user train.py ran')\n",
    "export.py": "raise SystemExit('the user export.py ran')\n",
    "edge.py": "raise SystemExit('the user edge.py ran')\n",
    "benchmarks/__init__.py": "raise SystemExit('the user benchmarks package ran')\n",
}


@pytest.fixture
def user_folder(tmp_path):
    folder = tmp_path / "project"
    for name, text in SHADOWS.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


@pytest.fixture(scope="session")
def multilabel_bundle(bundle, tmp_path_factory):
    """The small resnet18 as a multi-label bundle of two findings (tests/edge/multilabel.py): Effusion calibrated
    (T 1.5, threshold 0.4), Nodule unsupported (no threshold)."""
    from tests.edge.multilabel import finding_entry, multilabel_copy

    entries = [finding_entry("Effusion", 1.5, 0.4), finding_entry("Nodule", threshold=None)]
    return multilabel_copy(bundle, tmp_path_factory.mktemp("multilabel") / "bundle", entries)
