"""Inputs the model was not made for: intrinsic checks, checks against the training profile, --strict."""
import json
import shutil

import numpy as np
import pytest

from medge.edge.errors import ImageError
from medge.edge.inputs.formats import ImageInfo, array_info
from medge.edge.inputs.profile import (
    SYNTHETIC_WARNING,
    build_profile,
    check_input,
    image_stats,
    input_warnings,
    profile_notes,
)
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


def _dicom_info(modality: str, bits: int = 12, w: int = 256, h: int = 256, photometric="MONOCHROME2") -> ImageInfo:
    return ImageInfo("dicom", w, h, bits, photometric, "pydicom 3", modality)


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
    # training had no DICOM at all: any modality is one it never saw
    assert check_input(_dicom_info("CR"), stats, profile) == [
        "modality CR never seen in training (no DICOM among the training images)"]
    assert check_input(array_info(img), stats, profile) == []  # no modality, nothing to compare
    unnamed = {**profile, "formats": {"dicom": 40}}  # DICOM without a Modality element: the profile does not say
    declared_only = {"version": 1, "images": 0}  # export without a profile and without --modality
    assert check_input(_dicom_info("CT"), stats, unnamed) == check_input(_dicom_info("CT"), stats, declared_only) == []


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


def test_sizes_outside_half_the_smallest_to_twice_the_largest_training_image_are_warned(profile):
    """Every training image is 256x256: 128 to 512 pixels a side pass, 127 and 513 are warned, whatever the format."""
    stats = _item(_synthetic(101))[1]
    chest = {**profile, "modalities": {"DX": 40}}
    for side in (128, 256, 512):
        assert check_input(ImageInfo("png", side, side, 8, "gray", "opencv"), stats, profile) == []
        assert check_input(_dicom_info("DX", w=side, h=side), stats, chest) == []
    assert check_input(ImageInfo("jpeg", 513, 513, 8, "gray", "opencv"), stats, profile) == [
        "image 513x513 is much larger than every training image (longer side at most 256 pixels)"]
    assert check_input(_dicom_info("DX", w=2048, h=2048), stats, chest) == [
        "image 2048x2048 is much larger than every training image (longer side at most 256 pixels)"]
    assert check_input(_dicom_info("DX", w=127, h=127), stats, chest) == [
        "image 127x127 is much smaller than every training image (shorter side at least 256 pixels)"]
    # the longest training side is the larger of the largest width and the largest height
    portrait = {**chest, "width": {**profile["width"], "max": 300.0}, "height": {**profile["height"], "max": 400.0}}
    assert check_input(_dicom_info("DX", w=800, h=800), stats, portrait) == []
    assert check_input(_dicom_info("DX", w=801, h=801), stats, portrait)[0].startswith("image 801x801 is much larger")


def test_a_bit_depth_never_seen_is_warned_by_what_preprocessing_does_with_it(profile):
    """8 bits or fewer are used as they are, 9 to 16 stretched by the 8-bit rule: a 12-bit DICOM is like a 16-bit PNG."""
    stats = _item(_synthetic(101))[1]
    chest = {**profile, "modalities": {"DX": 40}}
    only8, only16 = {**chest, "bits": {"8": 40}}, {**chest, "bits": {"16": 40}}
    assert check_input(_dicom_info("DX", bits=12), stats, only8) == [
        "12-bit image; the training images were all 8-bit"]
    assert check_input(_dicom_info("DX", bits=12), stats, only16) == []
    assert check_input(_dicom_info("DX", bits=8), stats, only16) == [
        "8-bit image; the training images were all high bit depth (9 to 16 bits)"]
    assert check_input(_dicom_info("DX", bits=12), stats, {**chest, "bits": {}}) == []  # not recorded: no warning


def test_a_photometric_interpretation_never_seen_is_warned(profile):
    """MONOCHROME1 is inverted on reading, a step training took only if it had such images; MONOCHROME2 is gray."""
    stats = _item(_synthetic(101))[1]
    chest = {**profile, "modalities": {"CR": 40}}  # photometric {"gray": 40}
    assert check_input(_dicom_info("CR"), stats, chest) == []
    assert check_input(_dicom_info("CR", photometric="MONOCHROME1"), stats, chest) == [
        "inverted gray image (MONOCHROME1); the training images were all gray"]
    mixed = {**chest, "photometric": {"MONOCHROME1": 10, "MONOCHROME2": 30}}
    assert check_input(_dicom_info("CR", photometric="MONOCHROME1"), stats, mixed) == []
    assert check_input(ImageInfo("png", 256, 256, 8, "gray", "opencv"), stats, mixed) == []
    assert check_input(ImageInfo("png", 256, 256, 8, "gray", "opencv"), stats, {**chest, "photometric": {"MONOCHROME1": 9}}) == [
        "gray image (gray); the training images were all inverted gray"]


def test_a_bundle_trained_on_synthetic_images_says_so_on_every_input(profile):
    stats = _item(_synthetic(101))[1]
    fine = array_info(_synthetic(101))
    assert check_input(fine, stats, {**profile, "synthetic": True}) == [SYNTHETIC_WARNING]
    assert check_input(fine, stats, {**profile, "synthetic": False}) == check_input(fine, stats, profile) == []
    odd = check_input(_dicom_info("CT"), stats, {**profile, "synthetic": True})
    assert odd == [SYNTHETIC_WARNING, "modality CT never seen in training (no DICOM among the training images)"]
    assert input_warnings(odd) == odd[1:] and input_warnings([SYNTHETIC_WARNING]) == []
    assert build_profile([_item(_synthetic(1))], synthetic=True)["synthetic"] is True
    assert "synthetic" not in build_profile([_item(_synthetic(1))])  # not known: not recorded


def test_what_a_bundle_cannot_check_is_said_once(profile):
    assert profile_notes({**profile, "synthetic": False}) == profile_notes({**profile, "synthetic": True}) == []
    (old,) = profile_notes(profile)
    assert "does not say whether the training images were synthetic" in old
    (none,) = profile_notes(None)
    assert "no data profile" in none and "intrinsic problems only" in none


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


def _png_item(i: int):
    """(info, stats) of a synthetic training image as medge train sees it: a 256 px gray PNG, 8- or 16-bit."""
    img = _synthetic(i)
    return _item(img, ImageInfo("png", 256, 256, 8 if img.dtype == np.uint8 else 16, "gray", "opencv"))


@pytest.fixture(scope="module")
def synth_bundles(bundle, tmp_path_factory):
    """(the session bundle with the profile medge train records for a medge synth set, the same as exported by an
    older medge: its profile without ``synthetic``)."""
    prof = build_profile([_png_item(i) for i in range(40)], synthetic=True)
    out = []
    for name, profile in (("synthetic", prof), ("older", {k: v for k, v in prof.items() if k != "synthetic"})):
        d = tmp_path_factory.mktemp(name) / "bundle"
        shutil.copytree(bundle, d)
        manifest = json.loads((d / "model.json").read_text())
        (d / "model.json").write_text(json.dumps({**manifest, "data_profile": {**profile, "version": 1}}))
        out.append(d)
    return out


def test_dicom_unlike_png_training_is_flagged_and_an_older_bundle_gets_no_synthetic_warning(synth_bundles, tmp_path,
                                                                                             capsys):
    """A 1024 px MONOCHROME1 DX and a 256 px MONOCHROME2 DX against 256 px PNG training: every difference is named;
    the older bundle's records lack only the synthetic warning, and predict says once that it cannot say it."""
    pytest.importorskip("pydicom")
    from medge.edge.apps.cli import main
    from medge.edge.inputs.image import write_image
    from medge.train.synth import write_dicom

    big = _quantize(make_image(200, False, SynthConfig(size=1024, seed=0)), 16)  # 12-bit values
    write_dicom(tmp_path / "big.dcm", 4095 - big, photometric="MONOCHROME1")  # stored inverted, as MONOCHROME1 is
    write_dicom(tmp_path / "fit.dcm", _quantize(make_image(201, False, SynthConfig(size=256, seed=0)), 16))
    write_image(tmp_path / "fit.png", _synthetic(101))
    files = [str(tmp_path / n) for n in ("fit.png", "fit.dcm", "big.dcm")]
    synthetic, older = (Model.load(b).predict(files, workers=0) for b in synth_bundles)
    dx = "modality DX never seen in training (no DICOM among the training images)"
    big_warnings = [dx, "inverted gray image (MONOCHROME1); the training images were all gray",
                    "image 1024x1024 is much larger than every training image (longer side at most 256 pixels)"]
    assert [p.warnings for p in older] == [[], [dx], big_warnings]
    assert [p.warnings for p in synthetic] == [[SYNTHETIC_WARNING], [SYNTHETIC_WARNING, dx], [SYNTHETIC_WARNING, *big_warnings]]
    assert all(p.ok for p in synthetic + older)
    refused = Model.load(synth_bundles[0]).predict(files[:1], workers=0, strict=True)[0]
    assert not refused.ok and f"refused (strict mode): {SYNTHETIC_WARNING}" in refused.error
    capsys.readouterr()
    assert main(["predict", "--model", str(synth_bundles[1]), *files, "--workers", "0"]) == 0
    err = capsys.readouterr().err
    assert err.count("note: the bundle's data profile does not say whether the training images were synthetic") == 1
    assert main(["predict", "--model", str(synth_bundles[0]), files[0], "--workers", "0"]) == 0
    assert "note:" not in capsys.readouterr().err
