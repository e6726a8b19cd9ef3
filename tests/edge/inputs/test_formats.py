"""medge.edge.inputs.formats: what a file is from its first bytes, without decoding; sizes refused before any allocation.

Sizes read from real PNG/JPEG/TIFF/BMP files are tested in test_image.py, DICOM meta headers in test_dicom.py.
"""
import struct

import numpy as np
import pytest

from medge.edge.errors import ImageError
from medge.edge.inputs.formats import (
    array_info,
    check_size,
    describe_bytes,
    dicom_sop_class,
    non_image_reason,
    photometric,
    sniff_format,
)


def dicom_head(*elements: tuple[int, bytes, bytes]) -> bytes:
    """A preamble, DICM and file meta elements (element, VR, value) of group 2, explicit VR little endian."""
    out = b"\0" * 128 + b"DICM"
    for elem, vr, value in elements:
        if vr in (b"OB", b"UN"):
            out += struct.pack("<HH", 2, elem) + vr + b"\0\0" + struct.pack("<I", len(value)) + value
        else:
            out += struct.pack("<HH", 2, elem) + vr + struct.pack("<H", len(value)) + value
    return out


BMP = b"BM" + b"\0" * 12 + struct.pack("<I", 40)


@pytest.mark.parametrize("head, fmt", [
    (dicom_head(), "dicom"),
    (b"\x89PNG\r\n\x1a\n....", "png"),
    (b"\xff\xd8\xff\xe0", "jpeg"),
    (b"II*\x00", "tiff"), (b"MM\x00*", "tiff"),
    (b"II+\x00", "bigtiff"),
    (BMP, "bmp"),
    (b"BM is how this text file starts", None),  # "BM" without a known DIB header size
    (b"\0" * 128 + b"DICX", None),
    (b"", None),
])
def test_sniff_format_by_magic_numbers(head, fmt):
    assert sniff_format(head) == fmt


@pytest.mark.parametrize("head, words", [
    (b"", "it is empty"),
    (b"%PDF-1.7", "it is a PDF document"),
    (b"RIFF\x00\x00\x00\x00WEBPVP8", "it is a WebP image"),
    (b"\x00\x00\x00\x18ftypheic", "it is a HEIC photo"),
    (b"patient,label\nA,1\n", "it starts with the text 'patient,label'"),
    (b"\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09", "it starts with the bytes 00 01 02 03 04 05 06 07"),
])
def test_describe_bytes_names_what_medge_does_not_read(head, words):
    assert describe_bytes(head) == words


def test_dicom_sop_class_is_read_from_the_meta_header_past_other_elements():
    uid = b"1.2.840.10008.5.1.4.1.1.1.1\0"
    head = dicom_head((0, b"UL", struct.pack("<I", 60)), (1, b"OB", b"\0\1"), (2, b"UI", uid))
    assert dicom_sop_class(head) == "1.2.840.10008.5.1.4.1.1.1.1"
    assert dicom_sop_class(head[:-4]) is None  # cut inside the value
    assert dicom_sop_class(dicom_head((3, b"UI", b"1.2\0"))) is None  # past the element's place
    assert dicom_sop_class(dicom_head() + struct.pack("<HH", 8, 16) + b"CS\2\0DX") is None  # the data set, no meta


@pytest.mark.parametrize("sop_class, what", [
    ("1.2.840.10008.1.3.10", "a DICOMDIR (the index of a PACS export or CD)"),
    ("1.2.840.10008.5.1.4.1.1.88.22", "a structured report or key-object selection"),  # by prefix
    ("1.2.840.10008.5.1.4.1.1.66", "raw data"),
    ("1.2.840.10008.5.1.4.1.1.661", None),  # not the prefix of an exact key
    ("1.2.840.10008.5.1.4.1.1.1.1", None),  # digital X-ray: an image
    (None, None),
])
def test_non_image_reason(sop_class, what):
    assert non_image_reason(sop_class) == what


def test_check_size_refuses_empty_and_oversized_images():
    check_size(4000, 5000, 20_000_000, "a.png")
    with pytest.raises(ImageError, match=r"^a.png: image is 4000x5001 = 20.0 MP, over the limit of 20 MP$"):
        check_size(4000, 5001, 20_000_000, "a.png")
    with pytest.raises(ImageError, match="invalid image size 0x10"):
        check_size(0, 10, 100, "b.png")


def test_photometric_and_array_info():
    gray = np.arange(12, dtype=np.uint16).reshape(3, 4)
    assert photometric(gray) == photometric(gray[:, :, None]) == photometric(np.dstack([gray] * 3)) == "gray"
    rgb = np.dstack([gray, gray, gray + 1])
    assert photometric(rgb) == "rgb" and photometric(np.dstack([rgb, gray])) == "rgba"
    info = array_info(gray)
    assert (info.format, info.width, info.height, info.bits, info.photometric) == ("array", 4, 3, 16, "gray")
    assert array_info(np.zeros((2, 2, 3), np.float32)).bits == 32
