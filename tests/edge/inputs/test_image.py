import struct
import zlib

import cv2
import numpy as np
import pytest

from medge.edge.errors import ImageError
from medge.edge.inputs.formats import sniff_image
from medge.edge.inputs.image import load_image, read_image, write_image
from tests.conftest import xray_like

FORMATS = [(e, ln) for e in [".png", ".jpg", ".tif", ".bmp"] for ln in ["gray", "bgr", "bgra"] if (e, ln) != (".jpg", "bgra")]


@pytest.mark.parametrize("ext, layout", FORMATS)
def test_reads_formats_and_layouts(tmp_path, ext, layout):
    gray = xray_like(64, 48, seed=2)
    image = {"gray": gray, "bgr": cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR), "bgra": cv2.cvtColor(gray, cv2.COLOR_GRAY2BGRA)}[layout]
    path = tmp_path / f"img{ext}"
    write_image(path, image)
    out = read_image(path)
    assert out.shape == (64, 48) and out.dtype == np.uint8
    if ext != ".jpg":  # lossless formats give the gray plane back exactly
        np.testing.assert_array_equal(out, gray)


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_16bit_keeps_full_depth(tmp_path, ext):
    img = xray_like(40, 30, bits=12)  # a 12-bit X-ray stored in 16 bits
    path = tmp_path / f"x{ext}"
    write_image(path, img)
    out = read_image(path)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, img)
    assert out.max() > 255  # IMREAD_GRAYSCALE would have shifted this to <= 15


def test_non_ascii_path(tmp_path):
    folder = tmp_path / "흉부 엑스레이"
    folder.mkdir()
    path = folder / "환자_001.png"
    img = xray_like(32, 32)
    write_image(path, img)
    np.testing.assert_array_equal(read_image(path), img)


def _png_bytes(img):
    return cv2.imencode(".png", img)[1].tobytes()


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: None, "file not found"),
        (lambda p: p.mkdir(), "is a folder"),
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_bytes(_png_bytes(xray_like(64, 64))[:300]), "truncated PNG"),
        (lambda p: p.write_bytes(cv2.imencode(".jpg", xray_like(64, 64))[1].tobytes()[:400]), "truncated JPEG"),
        (lambda p: p.write_bytes(b"GIF89a" + bytes(100)),
         r"not an image medge can read \(PNG, JPEG, TIFF, BMP or DICOM\): it is a GIF image"),
        (lambda p: p.write_bytes(b"just some text, not an image\n" * 10), "it starts with the text 'just some text"),
        (lambda p: p.write_bytes(b"II+\x00" + bytes(100)), "BigTIFF"),
    ],
    ids=["missing", "directory", "empty", "truncated-png", "truncated-jpeg", "gif", "text", "bigtiff"],
)
def test_bad_inputs_raise_image_error_naming_the_file(tmp_path, make, reason):
    path = tmp_path / "bad.png"
    make(path)
    with pytest.raises(ImageError, match=reason) as info:
        read_image(path)
    assert info.value.path == str(path)
    assert str(path) in str(info.value)


def test_special_files_and_oversized_files_are_refused(tmp_path):
    import os

    with pytest.raises(ImageError, match="not a regular file"):
        read_image("/dev/zero")  # would never finish reading
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(ImageError, match="not a regular file"):
        read_image(fifo)  # would block forever waiting for a writer
    big = tmp_path / "big.png"
    with open(big, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.truncate(65 << 20)  # sparse: 65 MB on paper
    with pytest.raises(ImageError, match="larger than any image within the pixel limit"):
        read_image(big, max_pixels=1000)


def test_corrupt_png_data_fails_cleanly(tmp_path):
    data = bytearray(_png_bytes(xray_like(64, 64, seed=3)))
    idat = data.find(b"IDAT")
    data[idat + 8 : idat + 60] = bytes(52)  # zero the start of the compressed stream
    path = tmp_path / "corrupt.png"
    path.write_bytes(bytes(data))
    with pytest.raises(ImageError, match="cannot decode the PNG pixel data: the file is damaged"):
        read_image(path)


def test_pixel_limit_is_configurable(tmp_path):
    path = tmp_path / "a.png"
    write_image(path, xray_like(20, 30))
    assert read_image(path, max_pixels=600).shape == (20, 30)
    with pytest.raises(ImageError, match="over the limit"):
        read_image(path, max_pixels=599)


def _forged_png(width, height):
    """A PNG whose header claims a huge size but whose data is tiny: decoding it would fail."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b"")


def test_pixel_limit_is_checked_before_decoding(tmp_path):
    path = tmp_path / "huge.png"
    path.write_bytes(_forged_png(20000, 20000))  # 400 MP claimed, 0.0001 MP present
    with pytest.raises(ImageError, match=r"20000x20000 = 400.0 MP, over the limit of 40 MP"):
        read_image(path)


def test_sniff_reads_sizes_without_decoding():
    img = xray_like(37, 53)
    for ext, fmt in [(".png", "png"), (".jpg", "jpeg"), (".tif", "tiff"), (".bmp", "bmp")]:
        data = cv2.imencode(ext, img)[1].tobytes()
        assert sniff_image(data) == (fmt, 53, 37)


def test_format_comes_from_the_bytes_not_the_name(tmp_path):
    img = xray_like(40, 30)
    for name in ["scan.dcm", "IM000001", "report.txt"]:
        write_image(tmp_path / "x.png", img)
        (tmp_path / "x.png").rename(tmp_path / name)
        pixels, info = load_image(tmp_path / name)
        assert info.format == "png" and info.decoder.startswith("opencv")
        np.testing.assert_array_equal(pixels, img)


def test_image_info_says_what_the_file_is(tmp_path):
    gray = xray_like(40, 30, bits=12)
    write_image(tmp_path / "a.png", gray)
    write_image(tmp_path / "b.jpg", cv2.cvtColor(xray_like(40, 30), cv2.COLOR_GRAY2BGR))
    write_image(tmp_path / "c.png", np.dstack([xray_like(40, 30), xray_like(40, 30, seed=5), xray_like(40, 30)]))
    infos = [load_image(tmp_path / n)[1] for n in ("a.png", "b.jpg", "c.png")]
    assert [(i.format, i.width, i.height, i.bits, i.photometric) for i in infos] == [
        ("png", 30, 40, 16, "gray"), ("jpeg", 30, 40, 8, "gray"), ("png", 30, 40, 8, "rgb")]
    assert set(infos[0].to_dict()) == {"format", "width", "height", "bits", "photometric", "modality",
                                       "transfer_syntax", "decoder", "voi", "manufacturer", "view_position"}


def _with_chunk(png: bytes, kind: bytes, payload: bytes) -> bytes:
    chunk = struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    return png[:33] + chunk + png[33:]  # right after IHDR, before the pixel data


@pytest.mark.parametrize("kind", [b"zTXt", b"iTXt"])
def test_png_with_a_huge_text_chunk_is_read_not_called_corrupt(tmp_path, kind):
    img = xray_like(64, 64)
    text = b"DICOM header\0" + (b"\0\0" + zlib.compress(np.random.default_rng(0).bytes(9 << 20), 1)
                                  if kind == b"zTXt" else b"\0\0\0\0" + b"<x/>" * (9 << 18))
    path = tmp_path / "annotated.png"
    path.write_bytes(_with_chunk(_png_bytes(img), kind, text))
    # The pip wheels' libpng refuses such a chunk (imdecode gives None); Debian's python3-opencv reads it: either way
    np.testing.assert_array_equal(read_image(path), img)
