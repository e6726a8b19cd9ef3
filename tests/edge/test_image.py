import struct
import zlib

import cv2
import numpy as np
import pytest

from medge.edge.errors import ImageError
from medge.edge.formats import sniff_image
from medge.edge.image import collect_inputs, read_image, write_image
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
        (lambda p: p.mkdir(), "is a directory"),
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_bytes(_png_bytes(xray_like(64, 64))[:300]), "truncated PNG"),
        (lambda p: p.write_bytes(cv2.imencode(".jpg", xray_like(64, 64))[1].tobytes()[:400]), "truncated JPEG"),
        (lambda p: p.write_bytes(b"GIF89a" + bytes(100)), "unsupported or unrecognised image format"),
        (lambda p: p.write_bytes(b"just some text, not an image\n" * 10), "unsupported or unrecognised"),
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
    with pytest.raises(ImageError, match="cannot decode PNG"):
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
    with pytest.raises(ImageError, match=r"20000x20000 = 400.0 MP, over the limit of 100 MP"):
        read_image(path)


def test_sniff_reads_sizes_without_decoding():
    img = xray_like(37, 53)
    for ext, fmt in [(".png", "png"), (".jpg", "jpeg"), (".tif", "tiff"), (".bmp", "bmp")]:
        data = cv2.imencode(ext, img)[1].tobytes()
        assert sniff_image(data) == (fmt, 53, 37)


def test_collect_inputs_expands_folders_and_keeps_missing_files(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for name in ["d/b.png", "d/sub/a.JPG", "d/notes.txt"]:
        (tmp_path / name).write_bytes(b"x")
    got = collect_inputs([tmp_path / "d", tmp_path / "missing.png"])
    assert got == [str(tmp_path / "d/b.png"), str(tmp_path / "d/sub/a.JPG"), str(tmp_path / "missing.png")]
