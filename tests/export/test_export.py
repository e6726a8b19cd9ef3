import hashlib
import json

import numpy as np
import onnx
import pytest
import torch

import medge
from medge.edge.apps.cli import main
from medge.edge.errors import BundleError, CheckpointError, ParityError, UsageError
from medge.edge.runtime.bundle import golden_inputs, read_manifest
from medge.edge.runtime.dnn import forward, load_net
from medge.edge.runtime.engines import ENGINES
from medge.export import onnx_export
from medge.export.onnx_export import ExportConfig, export_bundle
from medge.train.checkpoint import load_checkpoint, model_from_checkpoint
from medge.train.config import ARCHS
from medge.train.models import CAM_LAYERS
from tests.helpers import make_checkpoint

quiet = lambda *a: None


def _check_round_trip(ckpt, bundle, n=5):
    m = read_manifest(bundle)
    data = (bundle / "model.onnx").read_bytes()
    assert m["model"]["sha256"] == hashlib.sha256(data).hexdigest()
    model_proto = onnx.load(str(bundle / "model.onnx"))
    assert {o.domain or "ai.onnx": o.version for o in model_proto.opset_import}["ai.onnx"] == 12
    props = {p.key: p.value for p in model_proto.metadata_props}
    assert json.loads(props["medge.classes"]) == m["classes"]
    chw = tuple(m["model"]["input_shape"][1:])
    x = np.random.default_rng(1).uniform(-1, 1, (n, *chw)).astype(np.float32)
    with torch.inference_mode():
        ref = model_from_checkpoint(load_checkpoint(ckpt))(torch.from_numpy(x)).numpy()
    assert m["runtime"]["engine"] == "auto" and m["runtime"]["verified_engines"] == list(ENGINES)
    batch = n if m["model"]["dynamic_batch"] else 1
    for engine in ENGINES:
        net = load_net(data, engine)
        got = np.concatenate([forward(net, x[i : i + batch], chw, 2) for i in range(0, n, batch)])
        # float32 sums in another order (each engine its own kernels): absolute 1e-3, or relative 5e-4 for the
        # large logits (|z| ~ 30-65) a trained model with recalibrated batch norm gives on these noise inputs
        np.testing.assert_allclose(got, ref, atol=1e-3, rtol=5e-4)
    return m


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small"])
def test_round_trip_trained_checkpoint(tiny_data, tmp_path, arch):
    from medge.edge.preprocess import PreprocessConfig
    from medge.train.config import TrainConfig
    from medge.train.engine import train

    run = tmp_path / "run"
    train(TrainConfig(data=str(tiny_data), out=str(run), arch=arch, epochs=1, batch_size=8, device="cpu",
                      cache_dir=str(tmp_path / "c")), PreprocessConfig(size=32))
    bundle = tmp_path / "bundle"
    lines = []
    m = export_bundle(str(run / "best.pt"), str(bundle), data=str(tiny_data), log=lines.append)
    heatmap_files = ["cam_head.npy"] if arch == "resnet18" else []  # mobilenet_v3 gets occlusion: nothing to store
    assert sorted(p.name for p in bundle.iterdir()) == [*heatmap_files, "model.json", "model.onnx"]
    assert m["explain"]["method"] == ("cam" if arch == "resnet18" else "occlusion")
    # the bundle names the weights it came from: the same in best.pt and in last.pt of a one-epoch run
    assert m["training"]["weights_sha256"] == load_checkpoint(run / "last.pt").weights_sha256
    _check_round_trip(run / "best.pt", bundle)
    assert m["model"]["dynamic_batch"] is True and m["model"]["opset"] == 12
    assert m["parity"]["passed"] and m["parity"]["n"] == 8 and m["parity"]["top1_agreement"] == 1.0
    assert m["parity"]["logits"]["max_abs"] <= 1e-3
    assert m["training"]["metrics"]["val"]["n"] == 8
    assert m["data_profile"] == load_checkpoint(run / "best.pt")["data_profile"]  # the edge checks inputs against it
    assert m["data_profile"]["synthetic"] is True  # tiny_data is a medge synth set: export says what that means
    assert any(line.startswith("note: trained on a data set medge synth made: every record") for line in lines)
    stats = m["export"]["simplify_stats"]
    assert m["export"]["simplified"] and stats["nodes_after"] <= stats["nodes_before"]
    assert {"torch", "onnx", "onnxsim", "opencv"} <= set(m["versions"])
    assert m["versions"]["export_medge"] == medge.__version__  # the medge that exported it
    g = m["golden"]
    assert len(g["expected_logits"]) == g["count"] == 4 and g["export_max_abs_logit"] <= 1e-3
    # the golden inputs regenerate identically
    np.testing.assert_array_equal(golden_inputs(g["seed"], g["count"], load_checkpoint(run / "best.pt").preprocess),
                                  golden_inputs(g["seed"], g["count"], load_checkpoint(run / "best.pt").preprocess))


@pytest.mark.parametrize("arch", ARCHS)
def test_every_architecture_exports_and_loads_in_cv2(tmp_path, arch):
    ckpt = make_checkpoint(tmp_path / "ck.pt", arch=arch)
    m = export_bundle(str(ckpt), str(tmp_path / "b"), log=quiet)
    _check_round_trip(ckpt, tmp_path / "b")
    assert m["parity"]["inputs"] == "synthetic images" and m["parity"]["n"] == 64
    if arch in CAM_LAYERS:  # the feature map is in the parity gate, and the head's file is hashed
        assert m["explain"]["method"] == "cam" and m["model"]["output_names"] == ["logits", "features"]
        assert m["parity"]["features"]["passed"] and m["parity"]["features"]["max_rel"] <= 1e-3
        head = (tmp_path / "b" / "cam_head.npy").read_bytes()
        assert m["explain"]["head_sha256"] == hashlib.sha256(head).hexdigest()
        assert np.array(m["golden"]["expected_cam"]).shape[:2] == (4, 2) and m["golden"]["export_max_rel_cam"] <= 1e-3
    else:
        assert m["explain"]["method"] == "occlusion" and m["model"]["output_names"] == ["logits"]
    spread = np.ptp(np.array(m["golden"]["expected_logits"]), axis=0)
    assert spread.max() > 1e-2, "outputs barely depend on the input: the parity check would prove little"


def test_three_channel_model(tmp_path):
    ckpt = make_checkpoint(tmp_path / "ck.pt", channels=3)
    m = export_bundle(str(ckpt), str(tmp_path / "b"), cfg=ExportConfig(max_images=8), log=quiet)
    assert m["model"]["input_shape"] == ["batch", 3, 32, 32]
    _check_round_trip(ckpt, tmp_path / "b")


def test_no_simplify_and_static_batch_are_recorded(resnet_ckpt, tmp_path):
    m = export_bundle(str(resnet_ckpt), str(tmp_path / "b"), cfg=ExportConfig(simplify=False, dynamic_batch=False, max_images=4),
                      log=quiet)
    assert m["export"]["simplified"] is False and m["export"]["simplify_stats"] is None
    assert m["model"]["input_shape"][0] == 1 and m["model"]["dynamic_batch"] is False
    _check_round_trip(resnet_ckpt, tmp_path / "b")


def test_parity_gate_fails_and_writes_nothing(resnet_ckpt, tmp_path, monkeypatch):
    real = onnx_export.pytorch_reference

    def shifted(model, arch, x):
        logits, cam = real(model, arch, x)
        return logits + 0.01, cam

    monkeypatch.setattr(onnx_export, "pytorch_reference", shifted)
    with pytest.raises(ParityError, match=r"parity gate failed, no bundle written: max \|delta logit\|"):
        export_bundle(str(resnet_ckpt), str(tmp_path / "b"), cfg=ExportConfig(max_images=8), log=quiet)
    assert not (tmp_path / "b").exists()
    assert not list(tmp_path.iterdir())  # no temporary folder left behind either


def test_failed_export_keeps_the_previous_bundle(resnet_ckpt, tmp_path, monkeypatch):
    bundle = tmp_path / "b"
    export_bundle(str(resnet_ckpt), str(bundle), cfg=ExportConfig(max_images=4), log=quiet)
    before = {p.name: p.read_bytes() for p in bundle.iterdir()}
    # The exported weights are perturbed (as a broken exporter would): the gate must catch it.
    real = onnx_export.finalize_onnx

    def perturbed(path, props):
        model = onnx.load(str(path))
        init = max(model.graph.initializer, key=lambda t: len(t.raw_data))
        arr = onnx.numpy_helper.to_array(init).copy()
        arr.flat[: arr.size // 4] += 0.5
        init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
        onnx.save(model, str(path))
        return real(path, props)

    monkeypatch.setattr(onnx_export, "finalize_onnx", perturbed)
    assert main(["export", str(resnet_ckpt), "--out", str(bundle), "--overwrite", "--max-images", "8"]) == 1
    assert {p.name: p.read_bytes() for p in bundle.iterdir()} == before


def test_existing_bundle_needs_overwrite(resnet_ckpt, tmp_path):
    export_bundle(str(resnet_ckpt), str(tmp_path / "b"), cfg=ExportConfig(max_images=4), log=quiet)
    with pytest.raises(BundleError, match="exists already"):
        export_bundle(str(resnet_ckpt), str(tmp_path / "b"), log=quiet)
    (tmp_path / "other").mkdir()
    with pytest.raises(BundleError, match="not a medge bundle; refusing"):
        export_bundle(str(resnet_ckpt), str(tmp_path / "other"), overwrite=True, log=quiet)


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        export_bundle(str(bad), str(tmp_path / "b"), log=quiet)
    assert main(["export", str(bad), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "medge export: error:" in err and "bad.pt" in err and "Traceback" not in err


def test_output_of_the_wrong_kind_is_a_clear_error(resnet_ckpt, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(UsageError, match="file is a file, not a folder"):
        export_bundle(str(resnet_ckpt), str(blocker / "bundle"), log=quiet)
    with pytest.raises(UsageError, match="file: is a file: give a folder for the bundle"):
        export_bundle(str(resnet_ckpt), str(blocker), log=quiet)


def test_export_of_a_file_that_is_not_a_checkpoint_says_so(tmp_path, capsys):
    import cv2

    cv2.imwrite(str(tmp_path / "some.png"), np.zeros((8, 8), np.uint8))
    torch.save(torch.nn.Linear(2, 2), tmp_path / "whole.pt")  # a pickled module, not tensors
    for name, what in (("some.png", "a PNG image"), ("whole.pt", "it holds pickled Python objects")):
        assert main(["export", str(tmp_path / name), "--out", str(tmp_path / "b")]) == 2
        err = capsys.readouterr().err
        assert f"{name}: not a medge checkpoint: {what}" in err
        assert "weights_only" not in err and "Traceback" not in err


def test_cli_export(resnet_ckpt, tmp_path, capsys):
    assert main(["export", str(resnet_ckpt), "--out", str(tmp_path / "b"), "--max-images", "4",
                 "--modality", "cr,DX", "--modality", "CR"]) == 0
    assert read_manifest(tmp_path / "b")["data_profile"]["modalities"] == {"CR": 0, "DX": 0}  # declared, no profile
    out = capsys.readouterr().out
    last = json.loads(out.strip().splitlines()[-1])
    assert last["sha256"] == read_manifest(tmp_path / "b")["model"]["sha256"]
