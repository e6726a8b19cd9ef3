"""PNG pixels as OpenCV decodes them, bit for bit, with the inflate done by libdeflate.

Decoding a 2048 x 2048 16-bit PNG in OpenCV (libpng) takes about 60 ms on a 2-core Xeon, 46 of them in
zlib's inflate of the pixel stream; libdeflate (the ``png`` extra: ``deflate``, MIT) inflates the same
stream 2.3 to 2.9 times faster (benchmarks/decode_cost.py). Two routes, both giving exactly
``cv2.imdecode``'s array:

- ``numpy``: a grayscale 8- or 16-bit PNG, not interlaced, whose chunks cannot change the pixels
  (text, time, physical size) and whose rows are filtered None or Sub (what OpenCV's own encoder
  writes). The inflated rows are un-filtered with a cumulative sum modulo 256 (Sub adds the byte one
  pixel to the left) and 16-bit samples turned from big-endian to native.
- ``libpng``: any other PNG that is not interlaced (other filters, palettes, colour, gamma or
  transparency chunks): the inflated stream is given back to OpenCV wrapped in uncompressed
  (stored) deflate blocks, every other chunk unchanged, so libpng un-filters and converts as it would
  have, without inflating again.

``MEDGE_PNG_DECODER=opencv`` in the environment turns both routes off (OpenCV decodes every PNG, as
without the extra): for a site that wants OpenCV alone, and for benchmarks comparing the two.

Anything else returns None and the caller decodes the file's own bytes with ``cv2.imdecode``, so
damaged and unusual files keep their errors and pixels: a chunk whose CRC is wrong, a stream that
does not inflate to exactly the rows the header states, a zlib header other than the usual 32 KiB
window, interlacing, a header method libpng does not know, a side over 65535 pixels, a size over
OpenCV's limits (``OPENCV_IO_MAX_IMAGE_WIDTH``, ``_HEIGHT``, ``_PIXELS``), or an OpenCV that cannot
read the rewrapped file. Bit identity is tested on
every route, every filter type and the PNG files installed on the test machine.
"""
from __future__ import annotations

import functools
import os
import struct

import cv2
import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Chunks that cannot change what OpenCV decodes: the numpy route may ignore them.
METADATA_CHUNKS = {b"tEXt", b"zTXt", b"iTXt", b"tIME", b"pHYs"}
CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # PNG colour type -> samples per pixel
STORED_BLOCK = 65535  # the largest uncompressed deflate block
MAX_SIDE = 65535  # larger sides meet libpng's and OpenCV's own size limits: left to them
MAX_STORED = (1 << 31) - 1 - 16 - 5 * (((1 << 31) // STORED_BLOCK) + 1)  # the largest stream one IDAT chunk holds stored
DECODER_ENV = "MEDGE_PNG_DECODER"  # "opencv": OpenCV decodes every PNG even with the png extra


@functools.cache
def _deflate():
    """The ``deflate`` module (libdeflate), or None without the ``png`` extra."""
    try:
        import deflate
    except ImportError:
        return None
    return deflate


def installed() -> bool:
    """Whether the ``png`` extra is installed."""
    return _deflate() is not None


def available() -> bool:
    """Whether ``decode`` does the work: the ``png`` extra is installed and ``MEDGE_PNG_DECODER`` is not ``opencv``."""
    return installed() and os.environ.get(DECODER_ENV, "").strip().lower() != "opencv"


def decoder_name(route: str) -> str:
    """What decoded the pixels on ``route``, with versions, as ``ImageInfo.decoder`` states it."""
    lib = f"libdeflate (deflate {_deflate().__version__})"
    return f"{lib} + numpy" if route == "numpy" else f"{lib} + opencv {cv2.__version__}"


def decode(data: bytes) -> tuple[np.ndarray, str] | None:
    """``cv2.imdecode(data, IMREAD_ANYDEPTH | IMREAD_ANYCOLOR)`` of a PNG file, faster, with its route's name.

    Returns None when the ``png`` extra is missing or the file is not one this module takes (module
    docstring): the caller then decodes ``data`` with OpenCV itself.
    """
    if not available() or not data.startswith(SIGNATURE):
        return None
    lib = _deflate()
    chunks = _chunks(data, lib)
    if chunks is None:
        return None
    width, height, depth, colour, method, filtering, interlace = struct.unpack_from(">IIBBBBB", data, chunks[0][1] + 8)
    row_bytes = _row_bytes(width, depth, colour)
    if (method, filtering, interlace) != (0, 0, 0) or row_bytes is None or not _within_limits(width, height):
        return None
    raw = _inflate(data, chunks, height * (1 + row_bytes), lib)
    if raw is None:
        return None
    rows = np.frombuffer(raw, np.uint8).reshape(height, 1 + row_bytes)
    if colour == 0 and depth in (8, 16) and np.all(rows[:, 0] <= 1) \
            and all(kind in METADATA_CHUNKS for kind, _, _ in chunks[1:-1] if kind != b"IDAT"):
        return _unfilter_sub(rows, width, depth // 8), "numpy"
    if len(raw) > MAX_STORED:  # more than one IDAT chunk can hold stored
        return None
    try:
        image = cv2.imdecode(np.frombuffer(_rewrapped(data, chunks, raw, lib), np.uint8),
                             cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    except cv2.error:  # the caller decodes the file's own bytes and says what OpenCV finds there
        return None
    return (image, "libpng") if image is not None else None


@functools.cache
def _opencv_limits() -> tuple[int, int, int]:
    """OpenCV's image size limits (width, height, pixels), read from the environment once as OpenCV reads them."""
    def setting(name: str, default: int) -> int:
        try:
            return int(os.environ.get(name, default))
        except ValueError:
            return default

    return (setting("OPENCV_IO_MAX_IMAGE_WIDTH", 1 << 20), setting("OPENCV_IO_MAX_IMAGE_HEIGHT", 1 << 20),
            setting("OPENCV_IO_MAX_IMAGE_PIXELS", 1 << 30))


def _within_limits(width: int, height: int) -> bool:
    """Whether OpenCV would decode an image of this size (its limits) and it is within MAX_SIDE."""
    max_width, max_height, max_pixels = _opencv_limits()
    return 0 < width <= min(MAX_SIDE, max_width) and 0 < height <= min(MAX_SIDE, max_height) \
        and width * height <= max_pixels


def walk(data: bytes) -> list[tuple[bytes, int, int]] | None:
    """(type, offset, length) of a PNG's chunks up to IEND, CRCs unchecked; None when a chunk runs past the end of
    ``data`` or no IEND comes."""
    chunks, pos = [], len(SIGNATURE)
    while pos + 12 <= len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        if pos + 12 + length > len(data):
            return None
        chunks.append((data[pos + 4 : pos + 8], pos, length))
        pos += 12 + length
        if chunks[-1][0] == b"IEND":
            return chunks
    return None


def idat_stream(data: bytes, chunks) -> bytes:
    """The pixel stream: the IDAT chunks' data of ``walk``'s chunks, joined."""
    return b"".join(memoryview(data)[pos + 8 : pos + 8 + length] for kind, pos, length in chunks if kind == b"IDAT")


def _chunks(data: bytes, lib) -> list[tuple[bytes, int, int]] | None:
    """``walk``'s chunks, or None unless the file is well formed: IHDR first, its IDAT chunks consecutive, IEND
    last, every CRC right."""
    chunks = walk(data)
    if chunks is None or any(lib.crc32(memoryview(data)[pos + 4 : pos + 8 + length])
                             != struct.unpack_from(">I", data, pos + 8 + length)[0] for _, pos, length in chunks):
        return None
    kinds = [kind for kind, _, _ in chunks]
    if kinds[0] != b"IHDR" or chunks[0][2] != 13 or b"IDAT" not in kinds:
        return None
    first = kinds.index(b"IDAT")
    last = len(kinds) - 1 - kinds[::-1].index(b"IDAT")
    if any(kind != b"IDAT" for kind in kinds[first:last + 1]):
        return None
    return chunks


def _row_bytes(width: int, depth: int, colour: int) -> int | None:
    """Bytes of one row's pixels, or None for a combination this module does not take."""
    if colour not in CHANNELS or depth not in (1, 2, 4, 8, 16) or (colour in (2, 4, 6) and depth < 8) \
            or (colour == 3 and depth == 16) or width == 0:
        return None
    return (width * CHANNELS[colour] * depth + 7) // 8


def _inflate(data: bytes, chunks, size: int, lib) -> bytearray | None:
    """The IDAT stream inflated, when it is a zlib stream with a 32 KiB window (what libpng and zlib
    read without question) that inflates to exactly ``size`` bytes with a right Adler-32."""
    stream = idat_stream(data, chunks)
    if len(stream) < 6 or stream[0] != 0x78:
        return None
    try:
        raw = lib.zlib_decompress(stream, size)
    except Exception:  # deflate.DeflateError: damaged, short or too long; OpenCV will say what it finds
        return None
    return raw if len(raw) == size else None


def _unfilter_sub(rows: np.ndarray, width: int, sample_bytes: int) -> np.ndarray:
    """Gray pixels from rows filtered None (0) or Sub (1): Sub stores each byte minus the byte one pixel
    to its left, so the pixels are the cumulative sums modulo 256 along the row, byte by byte."""
    filtered = rows[:, 1:].reshape(rows.shape[0], width, sample_bytes)
    sub = rows[:, 0] == 1
    if sub.all():
        out = np.cumsum(filtered, axis=1, dtype=np.uint8)
    else:
        out = np.array(filtered)
        out[sub] = np.cumsum(filtered[sub], axis=1, dtype=np.uint8)
    if sample_bytes == 1:
        return out.reshape(rows.shape[0], width)
    return out.view(">u2").reshape(rows.shape[0], width).astype(np.uint16)


def _rewrapped(data: bytes, chunks, raw: bytearray, lib) -> bytes:
    """The PNG with its IDAT chunks replaced by one holding ``raw`` in stored deflate blocks."""
    view = memoryview(raw)
    stream = [b"\x78\x01"]
    for start in range(0, len(raw), STORED_BLOCK):
        block = view[start : start + STORED_BLOCK]
        stream += [struct.pack("<BHH", start + STORED_BLOCK >= len(raw), len(block), 0xFFFF ^ len(block)), block]
    stream.append(struct.pack(">I", lib.adler32(raw)))
    crc = lib.crc32(b"IDAT")
    for piece in stream:
        crc = lib.crc32(piece, crc)
    idat = [struct.pack(">I", sum(len(piece) for piece in stream)), b"IDAT", *stream, struct.pack(">I", crc)]
    first = next(pos for kind, pos, _ in chunks if kind == b"IDAT")
    _, last, length = [chunk for chunk in chunks if chunk[0] == b"IDAT"][-1]
    return b"".join([memoryview(data)[:first], *idat, memoryview(data)[last + 12 + length :]])
