"""edge.inputs.png: the libdeflate routes give cv2.imdecode's pixels bit for bit, or step aside.

The PNG files are written by an encoder in this test (every filter type, chosen per row), by OpenCV, and
taken from the packages installed beside medge (files no one made for this test).
"""
import itertools
import site
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from medge.edge.errors import ImageError
from medge.edge.inputs import png
from medge.edge.inputs.image import decode_image

FLAGS = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR
needs_extra = pytest.mark.skipif(not png.available(), reason="the png extra (deflate) is not installed")


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _paeth(a, b, c):
    p = a.astype(np.int32) + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def _filter_row(kind: int, row: np.ndarray, prior: np.ndarray, bpp: int) -> np.ndarray:
    """The PNG specification's filters (section 9), on bytes."""
    left = np.concatenate([np.zeros(bpp, np.uint8), row[:-bpp]])
    up_left = np.concatenate([np.zeros(bpp, np.uint8), prior[:-bpp]])
    predictor = [np.zeros_like(row), left, prior, ((left.astype(np.int32) + prior) // 2).astype(np.uint8),
                 _paeth(left, prior, up_left).astype(np.uint8)][kind]
    return (row.astype(np.int32) - predictor).astype(np.uint8)


def encode(image: np.ndarray, filters, *, colour: int | None = None, extra: list[bytes] = (), level: int = 6,
           wbits: int = 15, idat_parts: int = 3) -> bytes:
    """A PNG of ``image`` (uint8/uint16 gray or RGB) with ``filters[y % len(filters)]`` on row y."""
    depth = 16 if image.dtype == np.uint16 else 8
    colour = colour if colour is not None else (0 if image.ndim == 2 else 2)
    samples = image.astype(">u2") if depth == 16 else image
    raw_rows = samples.reshape(image.shape[0], -1).view(np.uint8).reshape(image.shape[0], -1)
    bpp = (depth // 8) * (1 if image.ndim == 2 else image.shape[2])
    prior, out = np.zeros(raw_rows.shape[1], np.uint8), []
    for y, row in enumerate(raw_rows):
        kind = filters[y % len(filters)]
        out.append(bytes([kind]) + _filter_row(kind, row, prior, bpp).tobytes())
        prior = row
    packer = zlib.compressobj(level, zlib.DEFLATED, wbits)
    stream = packer.compress(b"".join(out)) + packer.flush()
    cut = [len(stream) * i // idat_parts for i in range(idat_parts + 1)]
    ihdr = struct.pack(">IIBBBBB", image.shape[1], image.shape[0], depth, colour, 0, 0, 0)
    return (png.SIGNATURE + _chunk(b"IHDR", ihdr) + b"".join(extra)
            + b"".join(_chunk(b"IDAT", stream[a:b]) for a, b in itertools.pairwise(cut))
            + _chunk(b"IEND", b""))


def _pixels(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    top = 65535 if dtype == np.uint16 else 255
    smooth = cv2.GaussianBlur(rng.integers(0, top, shape).astype(np.float32), (7, 7), 0)
    return np.clip(smooth + rng.normal(0, top / 50, shape), 0, top).astype(dtype)


def _same_as_opencv(data: bytes, route: str):
    ref = cv2.imdecode(np.frombuffer(data, np.uint8), FLAGS)
    got = png.decode(data)
    assert got is not None and got[1] == route
    assert got[0].dtype == ref.dtype and got[0].shape == ref.shape and np.array_equal(got[0], ref)
    assert got[0].flags.c_contiguous


@needs_extra
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("shape", [(37, 53), (256, 300), (1, 1)])
def test_gray_none_and_sub_rows_take_the_numpy_route(dtype, shape):
    image = _pixels(shape, dtype)
    for filters in ([1], [0], [0, 1, 1]):
        _same_as_opencv(encode(image, filters), "numpy")
    # OpenCV's own encoder (libpng: Sub rows; a window under 32 KiB for small images, which OpenCV keeps)
    ok, buf = cv2.imencode(".png", cv2.resize(image, (200, 210), interpolation=cv2.INTER_NEAREST))
    _same_as_opencv(buf.tobytes(), "numpy")


@needs_extra
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("filters", [[2], [3], [4], [0, 1, 2, 3, 4], [4, 2, 1]])
def test_other_filters_take_the_libpng_route(dtype, filters):
    _same_as_opencv(encode(_pixels((61, 47), dtype), filters), "libpng")


@needs_extra
def test_colour_palette_and_pixel_chunks_take_the_libpng_route():
    rgb = _pixels((40, 30, 3), np.uint8)
    _same_as_opencv(encode(rgb, [1]), "libpng")
    gray = _pixels((40, 30), np.uint8)
    # tRNS on a gray image gives OpenCV an alpha channel; sBIT and gAMA chunks: libpng decides, as before
    _same_as_opencv(encode(gray, [1], extra=[_chunk(b"tRNS", struct.pack(">H", int(gray[0, 0])))]), "libpng")
    _same_as_opencv(encode(gray, [1], extra=[_chunk(b"gAMA", struct.pack(">I", 45455))]), "libpng")
    index = (gray // 64).astype(np.uint8)
    palette = _chunk(b"PLTE", bytes(np.repeat(np.arange(0, 256, 64, dtype=np.uint8), 3)))
    _same_as_opencv(encode(index, [1, 4], colour=3, extra=[palette]), "libpng")


@needs_extra
def test_text_chunks_do_not_leave_the_numpy_route():
    image = _pixels((50, 50), np.uint16)
    text = _chunk(b"tEXt", b"Comment\x00" + b"x" * 2_000_000)  # over some OpenCVs' chunk limit (4.x's 8 MB...)
    got = png.decode(encode(image, [1], extra=[text, _chunk(b"tIME", bytes(7))]))
    assert got[1] == "numpy" and np.array_equal(got[0], image)


def _damaged(data: bytes, kind: bytes, change) -> bytes:
    """``data`` with the first ``kind`` chunk's body changed by ``change`` (its CRC recomputed unless told)."""
    pos = 8
    while True:
        (length,) = struct.unpack_from(">I", data, pos)
        if data[pos + 4 : pos + 8] == kind:
            return data[:pos] + change(data[pos : pos + 12 + length]) + data[pos + 12 + length :]
        pos += 12 + length


@needs_extra
@pytest.mark.parametrize("fault", ["crc", "short", "long", "window", "interlaced", "no_iend", "split_idat",
                                   "bad_filter", "truncated", "not_png", "method", "wide"])
def test_anything_unusual_is_left_to_opencv(fault):
    image = _pixels((64, 64), np.uint8)
    good = encode(image, [1])
    rows = b"".join(b"\x01" + _filter_row(1, r, r, 1).tobytes() for r in image)
    data = {
        "crc": _damaged(good, b"IDAT", lambda c: c[:-1] + bytes([c[-1] ^ 1])),
        "short": png.SIGNATURE + _chunk(b"IHDR", struct.pack(">IIBBBBB", 64, 64, 8, 0, 0, 0, 0))
        + _chunk(b"IDAT", zlib.compress(rows[:-65])) + _chunk(b"IEND", b""),
        "long": png.SIGNATURE + _chunk(b"IHDR", struct.pack(">IIBBBBB", 64, 64, 8, 0, 0, 0, 0))
        + _chunk(b"IDAT", zlib.compress(rows + b"\x01" * 65)) + _chunk(b"IEND", b""),
        "window": encode(image, [1], wbits=9),
        "interlaced": _damaged(good, b"IHDR", lambda c: _chunk(b"IHDR", c[8:20] + b"\x01")),
        "no_iend": good[:-12],
        "split_idat": encode(image, [1], idat_parts=2),
        "bad_filter": png.SIGNATURE + _chunk(b"IHDR", struct.pack(">IIBBBBB", 64, 64, 8, 0, 0, 0, 0))
        + _chunk(b"IDAT", zlib.compress(rows.replace(b"\x01", b"\x07", 1))) + _chunk(b"IEND", b""),
        "truncated": good[: len(good) // 2],
        "not_png": b"GIF89a" + good[6:],
        "method": _damaged(good, b"IHDR", lambda c: _chunk(b"IHDR", c[8:18] + b"\x01\x00\x00")),
        "wide": png.SIGNATURE + _chunk(b"IHDR", struct.pack(">IIBBBBB", 70000, 1, 8, 0, 0, 0, 0))
        + _chunk(b"IDAT", zlib.compress(b"\x00" * 70001)) + _chunk(b"IEND", b""),
    }[fault]
    if fault == "split_idat":  # a text chunk between two IDAT chunks
        first_end = data.index(b"IDAT") - 4
        (length,) = struct.unpack_from(">I", data, first_end)
        cut = first_end + 12 + length
        data = data[:cut] + _chunk(b"tEXt", b"a\x00b") + data[cut:]
    assert png.decode(data) is None


@needs_extra
def test_empty_and_tiny_idat_chunks_are_one_stream():
    image = _pixels((90, 70), np.uint16)
    data = encode(image, [1], idat_parts=40)
    first = data.index(b"IDAT") - 4
    data = data[:first] + _chunk(b"IDAT", b"") + data[first:]  # a zero-length IDAT first
    _same_as_opencv(data, "numpy")


@needs_extra
def test_opencvs_size_limits_are_kept():
    """OpenCV refuses images over OPENCV_IO_MAX_IMAGE_PIXELS (read once per process): both routes leave such a file
    to it, so the error is OpenCV's, as without the extra (a fresh process, the limit set before OpenCV reads it)."""
    import subprocess
    import sys

    code = """
import sys, numpy as np, cv2
sys.path.insert(0, sys.argv[1])
from tests.edge.inputs.test_png import encode, _pixels
from medge.edge.inputs import png
from medge.edge.errors import ImageError
from medge.edge.inputs.image import decode_image
for image, filters in ((_pixels((40, 40), np.uint8), [1]), (_pixels((40, 40, 3), np.uint8), [4])):
    data = encode(image, filters)
    assert png.decode(data) is None, image.shape
    try:
        decode_image(data, "x.png")
        raise SystemExit("decoded over the limit")
    except ImageError as e:
        print(e)
"""
    import os
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[3])
    env = {**os.environ, "OPENCV_IO_MAX_IMAGE_PIXELS": "1000"}
    done = subprocess.run([sys.executable, "-c", code, root], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("x.png: cannot decode the PNG pixel data") == 2, done.stdout


def test_opencv_errors_on_the_rewrapped_file_leave_it_to_opencv(monkeypatch):
    if not png.available():
        pytest.skip("the png extra (deflate) is not installed")

    def refuse(*a, **k):
        raise cv2.error("refused")

    monkeypatch.setattr(png.cv2, "imdecode", refuse)
    assert png.decode(encode(_pixels((40, 40), np.uint8), [4])) is None


@needs_extra
def test_decode_image_names_the_decoder_and_keeps_opencvs_errors():
    image = _pixels((80, 90), np.uint16)
    pixels, info = decode_image(encode(image, [1]), "a.png")
    assert np.array_equal(pixels, image) and info.decoder.startswith("libdeflate (deflate ") and "numpy" in info.decoder
    damaged = _damaged(encode(image, [1]), b"IDAT", lambda c: c[:-1] + bytes([c[-1] ^ 1]))
    with pytest.raises(ImageError, match="a.png"):
        decode_image(damaged, "a.png")


@needs_extra
def test_the_environment_can_leave_every_png_to_opencv(monkeypatch):
    data = encode(_pixels((60, 60), np.uint8), [1])
    assert png.decode(data)[1] == "numpy"
    monkeypatch.setenv("MEDGE_PNG_DECODER", "OpenCV")
    assert png.decode(data) is None and png.installed() and not png.available()
    assert decode_image(data, "c.png")[1].decoder == f"opencv {cv2.__version__}"


def test_without_the_extra_opencv_decodes(monkeypatch):
    monkeypatch.setattr(png, "_deflate", lambda: None)
    image = _pixels((30, 20), np.uint8)
    assert png.decode(encode(image, [1])) is None and not png.available()
    pixels, info = decode_image(encode(image, [1]), "b.png")
    assert np.array_equal(pixels, image) and info.decoder == f"opencv {cv2.__version__}"


@needs_extra
def test_the_png_files_of_installed_packages_decode_as_opencv_decodes_them():
    """Files no one wrote for this test: icons and sample images shipped by the installed packages."""
    files = [p for root in site.getsitepackages() for p in Path(root).rglob("*.png")][:400]
    taken = 0
    for path in files:
        data = path.read_bytes()
        got = png.decode(data)
        if got is None:
            continue
        taken += 1
        assert np.array_equal(got[0], cv2.imdecode(np.frombuffer(data, np.uint8), FLAGS)), path
    if taken == 0:
        pytest.skip("no installed package ships a PNG the fast routes take")
