"""Recognising image files by their bytes: format, pixel size, truncation.

Shared by ``edge.image`` (PNG, JPEG, TIFF, BMP) and ``edge.dicom``, so that
neither imports the other for these helpers. Nothing here decodes pixels: the
header alone says what a file is and how large it would be once decoded, so an
image over the pixel limit or a file cut short is refused before any
allocation.
"""
from __future__ import annotations

import os
import struct

from medge.edge.errors import ImageError

DEFAULT_MAX_PIXELS = 100_000_000  # 100 megapixels; a 4k x 4k detector is 16 MP
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
DICOM_SUFFIXES = (".dcm", ".dicom")

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*")
_BIGTIFF_MAGICS = (b"II+\x00", b"MM\x00+")
# Start-of-frame markers carry the image size; C4 (DHT), C8 (JPG) and CC (DAC) do not.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def sniff_image(data: bytes, path: str | os.PathLike | None = None) -> tuple[str, int, int]:
    """Identify an encoded image from its header, without decoding pixels.

    Args:
        data: the file's bytes.
        path: used in error messages only.

    Returns:
        ``(format, width, height)`` with format one of png, jpeg, tiff, bmp, dicom.

    Raises:
        ImageError: unknown or unsupported format, a header too short to read,
            or a file that is cut short.
    """
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom", 0, 0  # size comes from the DICOM reader
    if data.startswith(_PNG_MAGIC):
        return ("png", *_png_size(data, path))
    if data.startswith(_JPEG_MAGIC):
        return ("jpeg", *_jpeg_size(data, path))
    if data[:4] in _TIFF_MAGICS:
        return ("tiff", *_tiff_size(data, path))
    if data[:4] in _BIGTIFF_MAGICS:
        raise ImageError(path, "unsupported format: BigTIFF")
    if data.startswith(b"BM") and len(data) >= 26:
        width, height = struct.unpack_from("<ii", data, 18)
        return "bmp", width, abs(height)  # negative height = top-down rows
    head = data[:8].hex(" ")
    raise ImageError(path, f"unsupported or unrecognised image format (first bytes: {head or 'none'})")


def _png_size(data: bytes, path) -> tuple[int, int]:
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise ImageError(path, "truncated PNG: no IHDR header")
    # IEND closes every complete PNG; without it the pixel data is cut short.
    if data.rfind(b"IEND") < 0:
        raise ImageError(path, "truncated PNG: the file ends before the IEND chunk")
    return struct.unpack_from(">II", data, 16)


def _jpeg_size(data: bytes, path) -> tuple[int, int]:
    pos, n = 2, len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            raise ImageError(path, f"corrupt JPEG: no marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if marker in _JPEG_SOF:
            if pos + 9 > n:
                break
            height, width = struct.unpack_from(">HH", data, pos + 5)
            # Entropy-coded data never contains FF D9 (FF is stuffed), so its
            # absence after the frame header means the scan was cut short.
            if data.rfind(b"\xff\xd9") < pos:
                raise ImageError(path, "truncated JPEG: the file ends before the end-of-image marker")
            return width, height
        pos += 2 + length
    raise ImageError(path, "truncated or corrupt JPEG: no frame header found")


def _tiff_size(data: bytes, path) -> tuple[int, int]:
    endian = "<" if data[:2] == b"II" else ">"
    try:
        (ifd,) = struct.unpack_from(endian + "I", data, 4)
        (count,) = struct.unpack_from(endian + "H", data, ifd)
        size = {}
        for i in range(count):
            tag, typ, _, value = struct.unpack_from(endian + "HHI4s", data, ifd + 2 + 12 * i)
            if tag in (256, 257):  # ImageWidth, ImageLength: SHORT (3) or LONG (4)
                fmt = "H" if typ == 3 else "I"
                size[tag] = struct.unpack_from(endian + fmt, value)[0]
        return size[256], size[257]
    except (struct.error, KeyError):
        raise ImageError(path, "truncated or corrupt TIFF: cannot read the image size") from None


def check_size(width: int, height: int, max_pixels: int, path) -> None:
    """Raise ImageError for a zero-sized image or one over the pixel limit."""
    if width <= 0 or height <= 0:
        raise ImageError(path, f"invalid image size {width}x{height}")
    if width * height > max_pixels:
        raise ImageError(
            path, f"image is {width}x{height} = {width * height / 1e6:.1f} MP, over the limit of {max_pixels / 1e6:g} MP"
        )
