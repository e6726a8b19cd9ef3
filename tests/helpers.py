"""Helpers shared by the test packages: medge as a user without torch runs it, the installed distribution,
and tiny models, checkpoints and bundles made by the tests.

Importable without torch (the edge tests run where it is not installed): torch and medge.train are
imported inside the helpers that make models.

Usage (CI exports the bundles that the torch-less edge environments test with):
    python -m tests.helpers OUT_DIR      # OUT_DIR/{bundle,heat,occlusion,variants,multilabel}/bundle, each with its ck.pt
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

CLASSES = ["disease", "normal"]
FINDINGS = ["Effusion", "Nodule", "Hernia"]  # the multi-label test bundle's: see write_multilabel_index

# ``python -c BLOCK_TORCH ARGS...`` runs ``medge ARGS...`` as if torch, torchvision, onnx and onnxsim were not installed.
BLOCK_TORCH = (
    "import sys\n"
    "for m in ('torch', 'torchvision', 'onnx', 'onnxsim'): sys.modules[m] = None  # as if not installed\n"
    "from medge.edge.apps.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def medge_without_torch(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """``medge ARGS...`` in a fresh interpreter that cannot import torch (BLOCK_TORCH)."""
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH, *args], capture_output=True, text=True, timeout=timeout)


def xrv_data(name: str) -> str | None:
    """A CSV shipped in torchxrayvision's data/ folder (real NIH, CheXpert... indexes), found without importing
    torchxrayvision (which imports torch); None where it is not installed (the base-install environments)."""
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(spec.submodule_search_locations[0], "data", name)
    return path if os.path.isfile(path) else None


def installed_distribution() -> importlib.metadata.Distribution:
    """medge's installed distribution (not the medge.egg-info an editable build leaves in the checkout)."""
    site = sysconfig.get_paths()["purelib"]
    (dist,) = [d for d in importlib.metadata.distributions(path=[site]) if d.metadata["Name"] == "medge"]
    return dist


def randomize(model: torch.nn.Module, seed: int = 0, chw=(1, 32, 32)) -> torch.nn.Module:
    """Give an untrained model input-dependent outputs: calibrate its batch-norm statistics
    on random images (fresh running stats make deep nets collapse to a constant),
    so that parity checks compare something."""
    import torch

    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.rand(8, *chw, generator=g) * 2 - 1)
    return model.eval()


def centre_head(model: torch.nn.Module, arch: str, seed: int = 0, chw=(1, 32, 32)) -> torch.nn.Module:
    """Make each class's CAM take both signs: remove from the head's weights their component along the
    mean pooled feature (of random images). An untrained head otherwise often gives a class a map that is
    negative everywhere, i.e. an empty heatmap, which would make a heatmap comparison prove little."""
    import torch

    from medge.train.models import CAM_LAYERS

    head = model.get_submodule(CAM_LAYERS[arch].head)
    pooled = []
    hook = head.register_forward_hook(lambda module, args, out: pooled.append(args[0]))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model(torch.rand(16, *chw, generator=g) * 2 - 1)
        hook.remove()
        mu = pooled[0].mean(0)
        head.weight -= (head.weight @ mu)[:, None] * mu[None] / (mu @ mu)
    return model


def make_checkpoint(path, arch="resnet18", size=32, channels=1, seed=0, centred_head=False, findings=None):
    """A checkpoint of an untrained, randomized ``arch`` (``randomize``) at ``path``; with ``findings``, a
    multi-label one (one logit per finding, meta ``task: "multilabel"``, as ``medge train --labels`` writes)."""
    import torch

    from medge.edge.preprocess import PreprocessConfig
    from medge.train.checkpoint import save_checkpoint, save_model_checkpoint
    from medge.train.models import build_model

    torch.manual_seed(seed)
    pcfg = PreprocessConfig(size=size, channels=channels)
    classes = CLASSES if findings is None else list(findings)
    model = randomize(build_model(arch, channels, len(classes)), seed, (channels, size, size))
    if centred_head:
        centre_head(model, arch, seed, (channels, size, size))
    path = save_model_checkpoint(path, model, arch, classes, pcfg, {"val": {"accuracy": 0.5}}, epoch=1)
    if findings is not None:
        payload = {k: v for k, v in torch.load(path, weights_only=True).items() if k not in ("format", "version")}
        save_checkpoint(path, {**payload, "task": "multilabel"})
    return path


def write_multilabel_index(folder, ckpt, train: int = 16, val: int = 48) -> Path:
    """A generic-format index (``folder/index.csv``, images beside it) of ``train + val`` synthetic images, one
    patient each, with a split column, whose targets follow the checkpoint's own logits (an untrained model has
    no other skill) so that the validation figures mean something: on the val split Effusion has 24 positives
    (2 of its cells uncertain, -1), Nodule 10 (too few for sensitivity=0.8 at 95%: 14), Hernia 3 (too few for
    any threshold). Returns the index."""
    import cv2
    import numpy as np

    from medge.edge.preprocess import preprocess_file
    from medge.export.onnx_export import torch_logits
    from medge.train.checkpoint import load_checkpoint, model_from_checkpoint
    from medge.train.synth import SynthConfig, make_image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ck = load_checkpoint(ckpt)
    scfg = SynthConfig(size=48, seed=35)
    names = [f"img{i:03d}.png" for i in range(train + val)]
    for i, name in enumerate(names):
        cv2.imwrite(str(folder / name), np.round(make_image(i, i % 2 == 1, scfg) * 255).astype(np.uint8))
    z = torch_logits(model_from_checkpoint(ck), np.stack([preprocess_file(str(folder / n), ck.preprocess) for n in names]))
    rng = np.random.default_rng(35)
    targets = (rng.random((train + val, len(FINDINGS))) < 0.3).astype(int)
    for k, positives in enumerate((24, 10, 3)):  # the val split's: its highest logits (noised a little) positive
        rank = np.argsort(-(z[train:, k] + rng.normal(0, 0.3 * z[train:, k].std(), val)))
        targets[train:, k] = 0
        targets[train + rank[:positives], k] = 1
    targets[train + rng.choice(val, 2, replace=False), 0] = -1
    rows = [f"{n},P{i:03d},{'train' if i < train else 'val'}," + ",".join(map(str, targets[i])) for i, n in enumerate(names)]
    (folder / "index.csv").write_text("\n".join(["path,patient,split," + ",".join(FINDINGS), *rows]) + "\n")
    return folder / "index.csv"


TEST_BUNDLES = {  # fixture name: (architecture, input side, centred head)
    "bundle": ("resnet18", 32, False),  # the edge tests' bundle
    "heat": ("resnet18", 96, True),  # CAM heatmaps from a 3x3 feature map
    "occlusion": ("mobilenet_v3_small", 64, False),  # heatmaps by occlusion
    "variants": ("resnet18", 32, False),  # with data: an operating point and the fast variants (bf16, int8), gated
    "multilabel": ("resnet18", 32, False),  # FINDINGS, exported with its sealed per-finding section (an index)
}


def export_test_bundle(name: str, folder) -> tuple[Path, Path]:
    """(bundle, checkpoint) of the test bundle ``name`` of TEST_BUNDLES, randomized, exported and verified into
    ``folder/bundle`` with its checkpoint as ``folder/ck.pt``."""
    from medge.export.onnx_export import ExportConfig, export_bundle

    arch, size, centred = TEST_BUNDLES[name]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ckpt = make_checkpoint(folder / "ck.pt", arch=arch, size=size, centred_head=centred,
                           findings=FINDINGS if name == "multilabel" else None)
    if name == "multilabel":
        from medge.export.findings import IndexArgs

        index = write_multilabel_index(folder / "data", ckpt)
        export_bundle(str(ckpt), str(folder / "bundle"), cfg=ExportConfig(max_images=8, operating_point="sensitivity=0.8"),
                      log=lambda *a: None, index=IndexArgs(str(index), labels_format="generic"))
        return folder / "bundle", ckpt
    if name != "variants":
        export_bundle(str(ckpt), str(folder / "bundle"), cfg=ExportConfig(max_images=8), log=lambda *a: None)
        return folder / "bundle", ckpt
    from medge.export.variants import VariantConfig
    from medge.train.synth import SynthConfig, generate

    generate(folder / "data", SynthConfig(n=120, size=48, seed=7))  # 24 val images, 12 per class
    export_bundle(str(ckpt), str(folder / "bundle"), str(folder / "data"),
                  ExportConfig(max_images=8, operating_point="youden"), log=lambda *a: None,
                  variants=VariantConfig(max_flips=24, max_probability_change=1.0, calibration_images=16,
                                         timing_rounds=3))  # every pair offered
    return folder / "bundle", ckpt


if __name__ == "__main__":
    for name in TEST_BUNDLES:
        print(export_test_bundle(name, Path(sys.argv[1]) / name)[0])
