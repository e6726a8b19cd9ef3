import sys

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom", reason="the dicom extra is not installed")
from pydicom.uid import JPEG2000Lossless  # noqa: E402

from medge.edge.errors import ImageError, MissingExtraError  # noqa: E402
from medge.edge.image import read_image  # noqa: E402
from medge.edge.preprocess import preprocess, to_uint8  # noqa: E402
from medge.train.synth import write_dicom  # noqa: E402


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
    from medge.edge.model import Model

    path = write_dicom(tmp_path / "a.dcm", _ramp())
    m = Model.load(bundle)
    assert m.predict([path])[0].ok
    monkeypatch.setitem(sys.modules, "pydicom", None)
    assert "'dicom' extra" in m.predict([path])[0].error
