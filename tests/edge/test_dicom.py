import sys

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom", reason="the dicom extra is not installed")
from pydicom.dataset import FileDataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, SecondaryCaptureImageStorage, generate_uid  # noqa: E402

from edge.errors import ImageError, MissingExtraError  # noqa: E402
from edge.image import read_image  # noqa: E402
from edge.preprocess import preprocess, to_uint8  # noqa: E402


def write_dicom(path, pixels, photometric="MONOCHROME2", slope=None, intercept=None, window=None, transfer=ExplicitVRLittleEndian,
                frames=None):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if frames:
        ds.NumberOfFrames = frames
    if transfer == ExplicitVRLittleEndian:
        ds.PixelData = pixels.astype(np.uint16).tobytes()
    else:
        from pydicom.encaps import encapsulate

        ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(100)])  # not decodable without a JPEG 2000 plugin
        ds["PixelData"].VR = "OB"
    ds.save_as(str(path), enforce_file_format=True)
    return path


def _ramp():
    y, x = np.mgrid[0:64, 0:48]
    return (x * 40 + y * 20 + 100).astype(np.uint16)  # 12-bit values


def test_monochrome2_with_rescale_keeps_full_depth(tmp_path):
    raw = _ramp()
    img = read_image(write_dicom(tmp_path / "a.dcm", raw, slope=2.0, intercept=-1000.0))
    assert img.dtype == np.float32 and img.shape == (64, 48)
    np.testing.assert_array_equal(img, raw * 2.0 - 1000.0)
    assert preprocess(img).shape == (1, 224, 224)


def test_window_is_applied(tmp_path):
    raw = _ramp()
    img = read_image(write_dicom(tmp_path / "w.dcm", raw, window=(1000, 400)))
    # values outside [center - width/2, center + width/2] clip to the ends of the output range
    assert img[raw < 790].max() == img.min() and img[raw > 1210].min() == img.max()
    inside = (raw > 850) & (raw < 1150)
    assert img.min() < img[inside].min() and img[inside].max() < img.max()


def test_monochrome1_is_inverted(tmp_path):
    raw = _ramp()
    m2 = read_image(write_dicom(tmp_path / "m2.dcm", raw))
    m1 = read_image(write_dicom(tmp_path / "m1.dcm", raw, photometric="MONOCHROME1"))
    np.testing.assert_array_equal(to_uint8(m1), 255 - to_uint8(m2))
    assert m1[0, 0] > m1[-1, -1]  # low stored value is white in MONOCHROME1


def test_multiframe_and_compressed_give_clear_errors(tmp_path):
    with pytest.raises(ImageError, match="needs a decoder that is not installed"):
        read_image(write_dicom(tmp_path / "j2k.dcm", _ramp(), transfer=JPEG2000Lossless))
    raw = np.concatenate([_ramp(), _ramp()])
    path = write_dicom(tmp_path / "mf.dcm", raw, frames=2)
    with pytest.raises(ImageError, match="multi-frame DICOM"):
        read_image(path)


def test_dicom_pixel_limit_checked_before_decoding(tmp_path):
    with pytest.raises(ImageError, match="over the limit"):
        read_image(write_dicom(tmp_path / "a.dcm", _ramp()), max_pixels=100)


def test_dcm_without_pydicom_names_the_extra(tmp_path, monkeypatch):
    path = write_dicom(tmp_path / "a.dcm", _ramp())
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(MissingExtraError, match=r"needs the 'dicom' extra.*pip install"):
        read_image(path)


def test_dcm_without_pydicom_in_a_batch_is_reported(bundle, tmp_path, monkeypatch):
    from edge.model import Model

    path = write_dicom(tmp_path / "a.dcm", _ramp())
    m = Model.load(bundle)
    assert m.predict([path])[0].ok
    monkeypatch.setitem(sys.modules, "pydicom", None)
    assert "'dicom' extra" in m.predict([path])[0].error
