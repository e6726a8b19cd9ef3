"""Recognising image files by their bytes (format, pixel size, truncation), and what a file is once read
(``ImageInfo``).

Shared by ``edge.inputs.image`` (PNG, JPEG, TIFF, BMP) and ``edge.inputs.dicom``: ``edge.inputs.image`` reads DICOM files through
``edge.inputs.dicom``, and ``edge.inputs.dicom`` needs nothing from ``edge.inputs.image``. Nothing here decodes pixels: the
header alone says what a file is and how large it would be once decoded, so an
image over the pixel limit or a file cut short is refused before any
allocation.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass

import numpy as np

from medge.edge.errors import ImageError

# 40 megapixels: a 43 x 43 cm flat panel at 100 um is 18.5 MP, a 24 x 30 cm mammogram at 50 um 29 MP. The limit
# bounds memory: the worst case (16-bit RGBA, 8 bytes a pixel) decodes to 320 MB before it becomes gray.
DEFAULT_MAX_PIXELS = 40_000_000
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
DICOM_SUFFIXES = (".dcm", ".dicom")
SNIFF_BYTES = 4096  # enough for the magic numbers and a DICOM file meta header

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*")
_BIGTIFF_MAGICS = (b"II+\x00", b"MM\x00+")
_BMP_DIB_SIZES = (12, 40, 52, 56, 64, 108, 124)  # BITMAPCOREHEADER ... BITMAPV5HEADER
# Start-of-frame markers carry the image size; C4 (DHT), C8 (JPG) and CC (DAC) do not.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def sniff_format(head: bytes) -> str | None:
    """The format a file's first bytes announce: dicom, png, jpeg, tiff, bigtiff, bmp; None if none.

    Magic numbers only (``DICM`` at offset 128, the PNG signature, the JPEG SOI
    marker, the TIFF byte-order marks, ``BM`` followed by a known DIB header size),
    so that a PACS file named ``IM000001`` or a PNG named ``.dcm`` is recognised by
    what it is.
    """
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(_PNG_MAGIC):
        return "png"
    if head.startswith(_JPEG_MAGIC):
        return "jpeg"
    if head[:4] in _TIFF_MAGICS:
        return "tiff"
    if head[:4] in _BIGTIFF_MAGICS:
        return "bigtiff"
    # "BM" alone starts many text files; a real BMP has a DIB header of a known size at byte 14.
    if head.startswith(b"BM") and len(head) >= 18 and struct.unpack_from("<I", head, 14)[0] in _BMP_DIB_SIZES:
        return "bmp"
    return None


# Formats medge does not read, named in its messages: (magic, offset, what it is).
_KNOWN_OTHERS = [(b"GIF8", 0, "a GIF image"), (b"%PDF", 0, "a PDF document"),
                 (b"PK\x03\x04", 0, "a ZIP archive or an Office document"), (b"\x1f\x8b", 0, "a gzip-compressed file"),
                 (b"WEBP", 8, "a WebP image"), (b"ftyphei", 4, "a HEIC photo"),
                 (b"jP  ", 4, "a JPEG 2000 image (medge reads JPEG 2000 inside DICOM only)"),
                 (b"\xffO\xffQ", 0, "a JPEG 2000 codestream (medge reads JPEG 2000 inside DICOM only)")]


def describe_bytes(head: bytes) -> str:
    """A short, readable account of what unknown bytes are, for error messages."""
    if not head:
        return "it is empty"
    for magic, offset, what in _KNOWN_OTHERS:
        if head[offset : offset + len(magic)] == magic:
            return f"it is {what}"
    sample = head[:16]
    hexed = sample[:8].hex(" ")
    if all(32 <= b < 127 or b in (9, 10, 13) for b in sample):
        text = sample.decode("ascii").split("\n")[0].strip()
        return f"it starts with the text {text!r}"
    return f"it starts with the bytes {hexed}"


def dicom_sop_class(head: bytes) -> str | None:
    """The Media Storage SOP Class UID (0002,0002) of a DICOM file's meta header, read without pydicom.

    The file meta group is always explicit VR little endian and follows ``DICM``;
    returns None when the head is not long enough or the element is not there.
    """
    pos, n = 132, len(head)
    while pos + 8 <= n:
        group, elem = struct.unpack_from("<HH", head, pos)
        if group != 2:
            return None
        vr = head[pos + 4 : pos + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"):
            if pos + 12 > n:
                return None
            (length,) = struct.unpack_from("<I", head, pos + 8)
            start = pos + 12
        else:
            (length,) = struct.unpack_from("<H", head, pos + 6)
            start = pos + 8
        if elem == 2:
            value = head[start : start + length]
            return value.rstrip(b"\0 ").decode("ascii", "replace") if len(value) == length else None
        pos = start + length
    return None


# SOP classes that never hold an image to classify (DICOM PS3.4 Annex B): found in a folder, such a file is
# skipped with this reason instead of being reported as a failed image. A key ending in "." is a prefix.
NON_IMAGE_SOP_CLASSES = {
    "1.2.840.10008.1.3.10": "a DICOMDIR (the index of a PACS export or CD)",
    "1.2.840.10008.5.1.4.1.1.88.": "a structured report or key-object selection",
    "1.2.840.10008.5.1.4.1.1.11.": "a presentation state (display settings for another image)",
    "1.2.840.10008.5.1.4.1.1.104.": "an encapsulated document (PDF, CDA, ...)",
    "1.2.840.10008.5.1.4.1.1.9.": "a waveform (ECG, audio, ...)",
    "1.2.840.10008.5.1.4.1.1.66": "raw data",
    "1.2.840.10008.5.1.4.1.1.66.1": "a spatial registration",
    "1.2.840.10008.5.1.4.1.1.66.3": "a deformable spatial registration",
    "1.2.840.10008.5.1.4.1.1.481.3": "an RT structure set",
    "1.2.840.10008.5.1.4.1.1.481.5": "an RT plan",
    "1.2.840.10008.5.1.4.1.1.481.8": "an RT ion plan",
}


def non_image_reason(sop_class: str | None) -> str | None:
    """What a DICOM object of this SOP class is when it never holds an image; None when it may hold one."""
    for key, what in NON_IMAGE_SOP_CLASSES.items():
        if sop_class and (sop_class == key or (key.endswith(".") and sop_class.startswith(key))):
            return what
    return None


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
    fmt = sniff_format(data)
    if fmt == "dicom":
        return "dicom", 0, 0  # size comes from the DICOM reader
    if fmt == "png":
        return ("png", *_png_size(data, path))
    if fmt == "jpeg":
        return ("jpeg", *_jpeg_size(data, path))
    if fmt == "tiff":
        return ("tiff", *_tiff_size(data, path))
    if fmt == "bigtiff":
        raise ImageError(path, "BigTIFF files are not supported: save the image as a plain TIFF, PNG or DICOM")
    if fmt == "bmp" and len(data) >= 26:
        width, height = struct.unpack_from("<ii", data, 18)
        return "bmp", width, abs(height)  # negative height = top-down rows
    raise ImageError(path, f"not an image medge can read (PNG, JPEG, TIFF, BMP or DICOM): {describe_bytes(data)}")


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


@dataclass(frozen=True)
class ImageInfo:
    """What an input file is, as read; every record carries it (``to_dict``)."""

    format: str  # png, jpeg, tiff, bmp, dicom, array
    width: int
    height: int
    bits: int  # bits per sample as stored: 8 or 16 (DICOM: Bits Stored, 1 to 16)
    photometric: str  # gray, rgb, rgba (converted to gray); DICOM: MONOCHROME1 or MONOCHROME2
    decoder: str  # what decoded the pixels, with its version: "opencv 5.0.0", "gdcm 3.2.6", ...
    modality: str | None = None  # DICOM Modality (CR, DX, CT, ...)
    transfer_syntax: str | None = None  # DICOM transfer syntax name
    voi: str | None = None  # the DICOM VOI transform applied: "window C/W", "VOI LUT", or None
    # Values that map to black and white (the DICOM window's output); None: the 8-bit rule decides.
    display_range: tuple[float, float] | None = None
    manufacturer: str | None = None  # DICOM Manufacturer (the subgroups of medge validate, drift of medge monitor)
    view_position: str | None = None  # DICOM ViewPosition: PA, AP, LL, ...

    def to_dict(self) -> dict:
        """The record's ``input`` section (the display range is an internal detail of preprocessing)."""
        return {"format": self.format, "width": self.width, "height": self.height, "bits": self.bits,
                "photometric": self.photometric, "modality": self.modality, "transfer_syntax": self.transfer_syntax,
                "decoder": self.decoder, "voi": self.voi, "manufacturer": self.manufacturer,
                "view_position": self.view_position}


def array_info(image: np.ndarray) -> ImageInfo:
    """ImageInfo of an image given as an array (no file): the caller decoded it."""
    image = np.asarray(image)
    bits = {np.dtype(np.uint8): 8, np.dtype(np.uint16): 16}.get(image.dtype, 32)
    return ImageInfo("array", int(image.shape[1]), int(image.shape[0]), bits, photometric(image), "caller")


def photometric(image: np.ndarray) -> str:
    """gray, rgb or rgba; a colour image whose three planes are equal (a gray X-ray saved as RGB) is gray."""
    if image.ndim == 2 or image.shape[2] == 1:
        return "gray"
    b, g, r = image[:, :, 0], image[:, :, 1], image[:, :, 2]
    if np.array_equal(b, g) and np.array_equal(g, r):
        return "gray"
    return "rgba" if image.shape[2] == 4 else "rgb"
