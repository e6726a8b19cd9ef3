"""Inputs the model was not made for: intrinsic checks, checks against the training profile, --strict."""
import json
import shutil

import numpy as np
import pytest

from medge.edge.errors import ImageError
from medge.edge.inputs.formats import ImageInfo, array_info
from medge.edge.inputs.profile import build_profile, check_input, image_stats
from medge.edge.model import Model
from medge.edge.preprocess import PreprocessConfig, preprocess_stages
from medge.train.synth import SynthConfig, _quantize, make_image
from tests.conftest import xray_like

CFG = PreprocessConfig(size=64)


def _item(img, info: ImageInfo | None = None):
    st = preprocess_stages(img, CFG)
    return (info or array_info(img)).to_dict(), image_stats(st["gray"], st["resized"])


def _check(img, profile=None, info=None):
    info_dict, stats = _item(img, info)
    return check_input(info or array_info(img), stats, profile)


def _synthetic(i: int) -> np.ndarray:
    return _quantize(make_image(i, i % 2 == 1, SynthConfig(size=256, seed=0)), 8 if i % 2 else 16)


@pytest.fixture(scope="module")
def profile():
    """What 40 synthetic chest radiographs (8- and 16-bit PNG-like arrays) look like."""
    return build_profile([_item(_synthetic(i)) for i in range(40)])


def _dicom_info(modality: str, bits: int = 12, w: int = 256, h: int = 256) -> ImageInfo:
    return ImageInfo("dicom", w, h, bits, "MONOCHROME2", "pydicom 3", modality)


def test_profile_records_what_training_saw(profile):
    assert profile["images"] == 40 and profile["bits"] == {"16": 20, "8": 20}
    assert profile["photometric"] == {"gray": 40} and profile["modalities"] == {}
    assert profile["width"]["min"] == profile["width"]["max"] == 256
    assert set(profile["stats"]) == {"gray_mean", "gray_std", "input_mean", "input_std"}
    s = profile["stats"]["gray_mean"]
    assert s["min"] <= s["p01"] <= s["p50"] <= s["p99"] <= s["max"]
    assert json.loads(json.dumps(profile)) == profile  # saved as JSON in checkpoints and manifests
    assert build_profile([]) is None


def test_held_out_images_like_the_training_ones_get_no_warning(profile):
    assert [w for i in range(100, 130) for w in _check(_synthetic(i), profile)] == []


@pytest.mark.parametrize("image", [np.full((300, 300), 77, np.uint8), np.full((1, 1), 3, np.uint8),
                                   np.full((50, 40), 1234, np.uint16)], ids=["constant", "1x1", "constant-16bit"])
def test_uniform_and_1x1_images_are_refused(image):
    with pytest.raises(ImageError, match=r"the image is uniform \(every pixel has the same value\): nothing to classify"):
        _check(image)


def test_intrinsic_warnings_without_a_profile():
    assert any("tiny image (20x20 pixels)" in w for w in _check(xray_like(20, 20)))
    assert any("extreme aspect ratio (1000x100" in w for w in _check(xray_like(100, 1000)))
    mask = np.zeros((256, 256), np.uint8)
    mask[60:120, 80:200] = 1  # a 1-bit segmentation mask, as pydicom decodes it
    assert _check(mask) == ["only two grey levels: a mask or a drawing, not a radiograph"]
    faint = np.full((256, 256), 100, np.uint8)
    faint[::7, ::5], faint[::11, ::3] = 101, 102
    assert any("almost uniform image" in w for w in _check(faint))
    assert _check(xray_like(300, 256)) == []


def test_segmentation_and_dose_dicom_are_refused_unless_trained_on(profile):
    img = xray_like(256, 256, bits=12)
    with pytest.raises(ImageError, match=r"a segmentation mask \(modality SEG\), not an image of a patient"):
        check_input(_dicom_info("SEG"), _item(img)[1], profile)
    trained_on_seg = {**profile, "modalities": {"SEG": 10}}
    assert check_input(_dicom_info("SEG"), _item(img)[1], trained_on_seg) == []


def test_a_modality_never_seen_is_warned(profile):
    chest = {**profile, "modalities": {"CR": 30, "DX": 10}}
    img = _synthetic(101)
    stats = _item(img)[1]
    assert check_input(_dicom_info("DX"), stats, chest) == []
    assert check_input(_dicom_info("CT"), stats, chest) == ["modality CT never seen in training (trained on CR, DX)"]
    assert check_input(_dicom_info("CT"), stats, profile) == []  # the profile does not say: no modality warning


def test_depth_colour_size_shape_and_statistics_far_from_training(profile):
    only8 = {**profile, "bits": {"8": 40}}
    img16 = _synthetic(100)
    assert _check(img16, only8) == ["16-bit image; the training images were all 8-bit"]
    assert _check(img16, profile) == []  # training had 16-bit images too
    colour = np.dstack([_synthetic(101), _synthetic(101), np.roll(_synthetic(101), 3)])
    assert any(w.startswith("colour image (rgb); the training images were all gray") for w in _check(colour, profile))
    small = _synthetic(101)[::3, ::3]  # 86 x 86: smaller than half the smallest training image
    assert any("much smaller than every training image" in w for w in _check(small, profile))
    wide = np.hstack([_synthetic(101), _synthetic(103)])
    assert any("unlike the training images (1.00:1 to 1.00:1)" in w for w in _check(wide, profile))
    inverted = 255 - _synthetic(101)  # a negative: bright lungs
    assert any("mean brightness" in w and "far from the training images'" in w for w in _check(inverted, profile))


@pytest.fixture(scope="module")
def profiled_bundle(bundle, tmp_path_factory):
    """The session bundle with a profile of chest radiographs (CR/DX, 8- and 16-bit), as medge export writes it."""
    d = tmp_path_factory.mktemp("profiled") / "bundle"
    shutil.copytree(bundle, d)
    manifest = json.loads((d / "model.json").read_text())
    prof = build_profile([_item(_synthetic(i)) for i in range(40)])
    manifest["data_profile"] = {**prof, "modalities": {"CR": 20, "DX": 20}}
    (d / "model.json").write_text(json.dumps(manifest))
    return d


def test_records_carry_warnings_and_strict_refuses(profiled_bundle, bundle, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from pathlib import Path

    ct = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"
    good, odd, blank = _synthetic(101), xray_like(30, 30), np.zeros((64, 64), np.uint8)
    model = Model.load(profiled_bundle)
    preds = model.predict([good, odd, blank, str(ct)], workers=0)
    assert preds[0].ok and preds[0].warnings == []
    assert preds[1].ok and any("30x30 is much smaller than every training image" in w for w in preds[1].warnings)
    assert not preds[2].ok and "uniform" in preds[2].error and preds[2].label is None
    assert preds[3].ok and "modality CT never seen in training (trained on CR, DX)" in preds[3].warnings
    assert preds[3].input["modality"] == "CT" and preds[3].input["decoder"].startswith("pydicom")
    rec = preds[3].to_record(model.sha256)
    assert rec["warnings"] == preds[3].warnings and rec["input"]["format"] == "dicom"
    strict = model.predict([good, odd, str(ct)], workers=0, strict=True)
    assert strict[0].ok
    assert not strict[1].ok and "refused (strict mode): image 30x30 is much smaller" in strict[1].error
    assert not strict[2].ok and "modality CT never seen" in strict[2].error
    # A bundle without a profile still runs the intrinsic checks.
    plain = Model.load(bundle)
    assert plain.data_profile is None
    out = plain.predict([odd, blank, str(ct)], workers=0)
    assert any("tiny image" in w for w in out[0].warnings) and "uniform" in out[1].error and out[2].warnings == []


def test_garbage_dicom_is_never_labelled(bundle):
    """pydicom's own files: a 1-bit segmentation mask and a 10x10 RT dose grid are refused, a 64x64 MR is warned."""
    pydicom = pytest.importorskip("pydicom")
    from pathlib import Path

    shipped = Path(pydicom.__file__).parent / "data" / "test_files"
    seg, dose, mr = (str(shipped / n) for n in ("liver_1frame.dcm", "rtdose_1frame.dcm", "MR_small.dcm"))
    p_seg, p_dose, p_mr = Model.load(bundle).predict([seg, dose, mr], workers=0)
    assert p_seg.label is None and "a segmentation mask (modality SEG), not an image of a patient" in p_seg.error
    assert p_dose.label is None and "32 bits per pixel is not supported" in p_dose.error
    assert p_mr.ok and any("tiny image (64x64" in w for w in p_mr.warnings)
