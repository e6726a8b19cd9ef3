import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom", reason="the dicom extra is not installed")
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit  # noqa: E402

from medge.edge.errors import ImageError, MedgeError, MissingExtraError  # noqa: E402
from medge.edge.inputs.image import load_image, read_image  # noqa: E402
from medge.edge.preprocess import PreprocessConfig, preprocess, to_uint8  # noqa: E402
from medge.train.synth import write_dicom  # noqa: E402

# pydicom's own test files ship inside the package (never downloaded): read them by path.
SHIPPED = Path(pydicom.__file__).parent / "data" / "test_files"


def shipped(name: str) -> Path:
    path = SHIPPED / name
    assert path.is_file(), f"{name} is not shipped with this pydicom"
    return path


def _ramp():
    y, x = np.mgrid[0:64, 0:48]
    return (x * 40 + y * 20 + 100).astype(np.uint16)  # 12-bit values


def test_monochrome2_with_rescale_keeps_full_depth(tmp_path):
    raw = _ramp()
    img, info = load_image(write_dicom(tmp_path / "a.dcm", raw, slope=2.0, intercept=-1000.0))
    assert img.dtype == np.float32 and img.shape == (64, 48)
    np.testing.assert_array_equal(img, raw * 2.0 - 1000.0)
    assert (info.format, info.modality, info.bits, info.photometric, info.voi) == ("dicom", "DX", 12, "MONOCHROME2", None)
    assert info.decoder.startswith("pydicom ") and info.transfer_syntax == "Explicit VR Little Endian"
    assert preprocess(img).shape == (1, 224, 224)


def test_window_is_applied_and_kept_by_the_8bit_rule(tmp_path):
    raw = _ramp()
    img, info = load_image(write_dicom(tmp_path / "w.dcm", raw, window=(1000, 400)))
    assert info.voi == "window 1000/400" and info.display_range == (0.0, 1.0)
    # values outside [center - width/2, center + width/2] clip to the ends of the output range
    assert img[raw < 790].max() == 0 and img[raw > 1210].min() == 1
    inside = (raw > 850) & (raw < 1150)
    assert 0 < img[inside].min() and img[inside].max() < 1
    # the window maps onto 0..255 as it is (the percentiles would stretch it further)
    as8 = to_uint8(img, PreprocessConfig(), info.display_range)
    np.testing.assert_array_equal(as8, np.rint(img * 255).astype(np.uint8))


def test_old_minmax_bundles_see_windowed_dicom_as_before(tmp_path):
    from pydicom.pixels import apply_voi_lut

    raw = _ramp()
    path = write_dicom(tmp_path / "w.dcm", raw, window=(1500, 1800))
    old = cv2.normalize(apply_voi_lut(raw, pydicom.dcmread(path)).astype(np.float32), None, 0, 255, cv2.NORM_MINMAX,
                        cv2.CV_8U)  # what medge 0.2 computed
    img, info = load_image(path)
    new = to_uint8(img, PreprocessConfig(high_bit_rule="minmax"), info.display_range)
    assert np.abs(new.astype(int) - old.astype(int)).max() <= 1


def test_monochrome1_is_inverted(tmp_path):
    raw = _ramp()
    m2 = read_image(write_dicom(tmp_path / "m2.dcm", raw))
    m1 = read_image(write_dicom(tmp_path / "m1.dcm", raw, photometric="MONOCHROME1"))
    np.testing.assert_array_equal(to_uint8(m1), 255 - to_uint8(m2))
    assert m1[0, 0] > m1[-1, -1]  # low stored value is white in MONOCHROME1


# MR_small in six transfer syntaxes: every decoder must give the same pixels.
SAME_PIXELS = [("MR_small.dcm", "pydicom"), ("MR_small_implicit.dcm", "pydicom"), ("MR_small_bigendian.dcm", "pydicom"),
               ("MR_small_RLE.dcm", "pydicom"), ("MR_small_jp2klossless.dcm", "python-gdcm"),
               ("MR_small_jpeg_ls_lossless.dcm", "python-gdcm")]


def test_lossless_transfer_syntaxes_decode_identically_with_their_documented_decoder():
    reference, _ = load_image(shipped("MR_small.dcm"))
    for name, decoder in SAME_PIXELS:
        img, info = load_image(shipped(name))
        assert info.decoder.split()[0] == decoder, name
        np.testing.assert_array_equal(img, reference, err_msg=name)


@pytest.mark.parametrize("name, syntax", [
    ("JPEG2000.dcm", "JPEG 2000"), ("693_J2KI.dcm", "JPEG 2000"), ("J2K_pixelrep_mismatch.dcm", "JPEG 2000"),
    ("JPEGLSNearLossless_08.dcm", "JPEG-LS"), ("JPEGLSNearLossless_16.dcm", "JPEG-LS")])
def test_lossy_jpeg2000_and_jpeg_ls_decode_with_gdcm(name, syntax):
    img, info = load_image(shipped(name))
    assert info.decoder.startswith("python-gdcm") and info.transfer_syntax.startswith(syntax)
    assert img.shape == (info.height, info.width) and np.isfinite(img).all() and img.max() > img.min()


def _transcode_with_gdcm(src, dst, syntax: str) -> Path:
    gdcm = pytest.importorskip("gdcm")
    reader = gdcm.ImageReader()
    reader.SetFileName(str(src))
    assert reader.Read()
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(getattr(gdcm.TransferSyntax, syntax)))
    change.SetInput(reader.GetImage())
    assert change.Change()
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(dst))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write()
    return Path(dst)


@pytest.mark.parametrize("syntax", ["JPEGLosslessProcess14", "JPEGLosslessProcess14_1"])
def test_jpeg_lossless_is_exact(tmp_path, syntax):
    path = _transcode_with_gdcm(shipped("MR_small.dcm"), tmp_path / "IM000001", syntax)  # no extension, as PACS write
    img, info = load_image(path)
    assert info.transfer_syntax.startswith("JPEG Lossless") and info.decoder.startswith("python-gdcm")
    np.testing.assert_array_equal(img, load_image(shipped("MR_small.dcm"))[0])


def test_jpeg_baseline_is_decoded_by_gdcm_whatever_else_is_installed(tmp_path):
    from tests.conftest import xray_like

    gray = xray_like(96, 80, seed=4)
    frame = cv2.imencode(".jpg", gray, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    path = write_dicom(tmp_path / "rsna.dcm", gray, transfer=JPEGBaseline8Bit, bits=8, frame=frame)
    img, info = load_image(path)
    assert info.decoder.startswith("python-gdcm") and info.transfer_syntax == "JPEG Baseline (Process 1)"
    assert info.display_range == (0.0, 255.0)  # 8 bits stored: kept as an 8-bit PNG would be
    as_file = cv2.imdecode(np.frombuffer(frame, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert np.abs(img - as_file).max() <= 1  # both IJG-style decoders of the same stream
    np.testing.assert_array_equal(load_image(path)[0], img)  # deterministic


def test_12bit_jpeg_extended_uses_the_gpl_decoder_only_when_installed(monkeypatch):
    path = shipped("JPGExtended.dcm")
    pytest.importorskip("libjpeg", reason="pylibjpeg-libjpeg (GPL-3.0, dev extra only) is not installed")
    img, info = load_image(path)
    assert info.decoder.startswith("pylibjpeg-libjpeg") and info.bits == 12 and img.shape == (1024, 256)
    monkeypatch.setitem(sys.modules, "libjpeg", None)
    with pytest.raises(ImageError, match=r"12-bit JPEG .* GPL-3.0 licensed and so not part of medge's 'dicom' extra"):
        load_image(path)


def test_missing_gdcm_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "gdcm", None)
    with pytest.raises(MissingExtraError, match=r"python-gdcm is not installed.*medge\[dicom\]"):
        load_image(shipped("JPEG2000.dcm"))


def test_damaged_compressed_data_and_multiframe_give_clear_errors(tmp_path):
    with pytest.raises(ImageError, match=r"JPEG 2000 .* cannot be decoded by python-gdcm .*: the file is damaged"):
        read_image(write_dicom(tmp_path / "j2k.dcm", _ramp(), transfer=JPEG2000Lossless))
    raw = np.concatenate([_ramp(), _ramp()])
    path = write_dicom(tmp_path / "mf.dcm", raw, frames=2)
    with pytest.raises(ImageError, match="multi-frame DICOM"):
        read_image(path)


@pytest.mark.parametrize("name, reason", [
    ("badVR.dcm", r"Number of Frames \(0028,0008\) is '1A', not a number"),
    ("rtplan.dcm", "is an RT plan, not an image"),
    ("test-SR.dcm", "is a structured report or key-object selection, not an image"),
    ("waveform_ecg.dcm", "a waveform"),
    ("MR_truncated.dcm", r"pixel data is cut short: 8130 of 8192 bytes"),
    ("SC_rgb_jpeg_dcmtk.dcm", r"colour DICOM \(YBR_FULL"),
    ("examples_palette.dcm", r"colour DICOM \(PALETTE COLOR"),
    ("rtdose_1frame.dcm", "32 bits per pixel is not supported"),
    ("examples_ybr_color.dcm", r"multi-frame DICOM \(30 frames"),
    ("empty_charset_LEI.dcm", "has no pixel data"),
    ("JPEG2000-embedded-sequence-delimiter.dcm", "cannot be decoded by python-gdcm"),
])
def test_odd_shipped_files_are_refused_in_words(name, reason):
    with pytest.raises(ImageError, match=reason) as info:
        load_image(shipped(name))
    assert str(shipped(name)) in str(info.value)


def test_no_shipped_file_gives_a_raw_exception_or_a_question_mark():
    """Every DICOM pydicom ships either reads or is refused with a MedgeError in words."""
    raw = ("ValueError", "KeyError", "AttributeError", "TypeError", "Traceback", "?")
    read = 0
    for path in sorted(SHIPPED.glob("*.dcm")):
        try:
            load_image(path)
            read += 1
        except MedgeError as e:
            message = str(e)[len(str(path)):]
            assert not any(r in message for r in raw), f"{path.name}: {message}"
    assert read >= 15


def test_dicom_pixel_limit_checked_before_decoding(tmp_path):
    with pytest.raises(ImageError, match="over the limit"):
        read_image(write_dicom(tmp_path / "a.dcm", _ramp()), max_pixels=100)


def test_dcm_without_pydicom_names_the_extra(tmp_path, monkeypatch):
    path = write_dicom(tmp_path / "a.dcm", _ramp())
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(MissingExtraError, match=r"needs the 'dicom' extra.*pip install"):
        read_image(path)


def test_dcm_without_pydicom_in_a_batch_is_reported(bundle, tmp_path, monkeypatch):
    from medge.edge.model import Model

    path = write_dicom(tmp_path / "a.dcm", _ramp())
    m = Model.load(bundle)
    assert m.predict([path])[0].ok
    monkeypatch.setitem(sys.modules, "pydicom", None)
    assert "'dicom' extra" in m.predict([path])[0].error


# The view on uncompressed pixel data (dicom._native_pixels) against pydicom's native decoder, which it replaces.

def _load_both(path):
    """decode_dicom's (pixels, info) or error, with the view and then with pydicom's pixel_array instead."""
    from medge.edge.inputs.dicom import decode_dicom

    def attempt(view):
        try:
            return decode_dicom(Path(path).read_bytes(), path, 40_000_000, pixel_view=view)
        except MedgeError as e:
            return str(e)

    return attempt(True), attempt(False)


def _assert_same(fast, slow, name):
    assert type(fast) is type(slow), f"{name}: {fast!r} against {slow!r}"
    if isinstance(fast, str):
        assert fast == slow, name
        return
    assert fast[0].dtype == slow[0].dtype and fast[0].shape == slow[0].shape, name
    np.testing.assert_array_equal(fast[0], slow[0], err_msg=name)
    assert fast[1] == slow[1], name


def test_every_shipped_file_reads_as_pydicom_decodes_it(monkeypatch):
    from medge.edge.inputs import dicom

    taken = []
    real = dicom._native_pixels
    monkeypatch.setattr(dicom, "_native_pixels", lambda ds, header: taken.append(real(ds, header)) or taken[-1])
    for path in sorted(SHIPPED.glob("*.dcm")):
        _assert_same(*_load_both(path), path.name)
    assert sum(t is not None for t in taken) >= 4  # the view was used, not only pydicom


def _edited(path, **changes):
    """Rewrite a DICOM file with header values (and raw PixelData bytes) changed; the transfer syntax by ``ts``."""
    ds = pydicom.dcmread(path)
    ts = changes.pop("ts", None)
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    if ts is not None:
        ds.file_meta.TransferSyntaxUID = ts
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("case", ["12 bits, high bits set", "signed 12 bits", "signed 16 bits", "8 bits odd size",
                                  "6 of 8 bits", "implicit VR", "monochrome1", "monochrome1 window", "window",
                                  "rescale", "one frame and a half", "two frames of bytes", "hot pixels 16 bits",
                                  "no transfer syntax", "pixel representation 2", "bits stored 0", "rows 0"])
def test_the_view_reads_varied_files_as_pydicom_does(case, tmp_path):
    rng = np.random.default_rng(sum(map(ord, case)))
    shape = (37, 53) if "odd" in case else (64, 48)
    raw = rng.integers(0, 1 << 16, shape).astype(np.uint16)  # every high bit set somewhere
    hot = np.where(rng.random(shape) < 0.01, 65535, raw & 0x0FFF).astype(np.uint16)  # 12-bit values, 1% at 65535
    path = write_dicom(tmp_path / "a.dcm", raw & 0x0FFF,
                       photometric="MONOCHROME1" if "monochrome1" in case else "MONOCHROME2",
                       window=(2000, 1500) if "window" in case else None,
                       slope=0.5 if case == "rescale" else None, intercept=-100.0 if case == "rescale" else None,
                       bits=8 if "8 bits" in case else 6 if case == "6 of 8 bits" else 12)
    edits = {
        "12 bits, high bits set": {"PixelData": raw.tobytes()},
        "signed 12 bits": {"PixelRepresentation": 1, "PixelData": raw.tobytes()},
        "signed 16 bits": {"PixelRepresentation": 1, "BitsStored": 16, "HighBit": 15, "PixelData": raw.tobytes()},
        "8 bits odd size": {"PixelData": raw.astype(np.uint8).tobytes()},
        "6 of 8 bits": {"PixelData": raw.astype(np.uint8).tobytes()},
        "implicit VR": {"ts": pydicom.uid.ImplicitVRLittleEndian, "PixelData": raw.tobytes()},
        "hot pixels 16 bits": {"BitsStored": 16, "HighBit": 15, "PixelData": hot.tobytes()},
        "one frame and a half": {"PixelData": raw.tobytes() + raw.tobytes()[: raw.nbytes // 2]},
        "two frames of bytes": {"PixelData": raw.tobytes() * 2},
        "pixel representation 2": {"PixelRepresentation": 2},
        "bits stored 0": {"BitsStored": 0},
        "rows 0": {"Rows": 0},
    }.get(case, {})
    path = _edited(path, **edits)
    if case == "no transfer syntax":
        ds = pydicom.dcmread(path)
        del ds.file_meta.TransferSyntaxUID
        ds.save_as(path, enforce_file_format=False)
    fast, slow = _load_both(path)
    _assert_same(fast, slow, case)
    if not isinstance(fast, str):
        cfg = PreprocessConfig()
        np.testing.assert_array_equal(preprocess(fast[0], cfg, fast[1].display_range),
                                      preprocess(slow[0], cfg, slow[1].display_range))


def test_values_made_infinite_by_the_rescale_are_refused(tmp_path):
    """The finiteness check is left out only for integer pixels without rescale or VOI, which cannot overflow."""
    with pytest.raises(ImageError, match="not finite after rescaling"):
        read_image(write_dicom(tmp_path / "a.dcm", _ramp(), slope=1e38, intercept=0.0))
