"""Reading images from disk into grayscale numpy arrays, with clear errors.

``read_image`` reads the file's bytes itself and decodes them with
``cv2.imdecode``: ``cv2.imread`` cannot open paths with non-ASCII characters on
some platforms (Korean file names are normal in Korean hospitals).

Before any pixel is decoded the header is parsed to learn the format and the
image size, so that an image over the pixel limit is refused cheaply and a
truncated file is recognised instead of being decoded into a half-grey picture
(libjpeg fills the missing rows and only warns).

The format is taken from the bytes, never from the name: a PNG named ``.dcm``
is read as a PNG, a DICOM named ``IM000001`` as a DICOM. Only a file whose
bytes announce no format and whose name ends in ``.dcm``/``.dicom`` is tried as
DICOM without its 128-byte preamble (old ACR-NEMA style files).

Bit depth is kept: 8-bit files give ``uint8``, 16-bit files give ``uint16``.
The conversion to 8 bits happens in ``edge.preprocess.to_uint8``, by one
documented rule, never silently here (``cv2.IMREAD_GRAYSCALE`` would shift a
16-bit image right by 8 bits, which turns a 12-bit X-ray nearly black).

``load_image`` also returns an ``ImageInfo``: what the file is (format, size,
bit depth, photometric interpretation, DICOM modality, which decoder read it)
and, for DICOM, the display range its window defines; records carry it and
the out-of-distribution checks (``edge.inputs.profile``) use it.
"""
from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from medge.edge.errors import ImageError
from medge.edge.inputs import png
from medge.edge.inputs.dicom import decode_dicom  # pydicom itself is imported inside, only for DICOM files
from medge.edge.inputs.formats import (
    DEFAULT_MAX_PIXELS,
    DICOM_SUFFIXES,
    ImageInfo,
    check_size,
    photometric,
    sniff_format,
    sniff_image,
)
from medge.edge.outputs import atomic_write_bytes


def to_gray(image: np.ndarray, path: str | os.PathLike | None = None) -> np.ndarray:
    """Return a 2-D grayscale view or copy of a decoded image (gray, BGR or BGRA).

    Alpha is ignored. Accepts uint8, uint16 and float32 (DICOM after rescale).
    """
    if not isinstance(image, np.ndarray):
        raise ImageError(path, f"expected a numpy array, got {type(image).__name__}")
    if image.dtype not in (np.uint8, np.uint16, np.float32):
        raise ImageError(path, f"unsupported pixel type {image.dtype} (expected uint8, uint16 or float32)")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 3 and image.shape[2] in (3, 4):
        code = cv2.COLOR_BGR2GRAY if image.shape[2] == 3 else cv2.COLOR_BGRA2GRAY
        image = cv2.cvtColor(np.ascontiguousarray(image), code)
    if image.ndim != 2:
        raise ImageError(path, f"expected a gray, BGR or BGRA image, got shape {image.shape}")
    if image.size == 0:
        raise ImageError(path, f"empty image (shape {image.shape})")
    if image.dtype == np.float32 and not np.isfinite(image).all():
        raise ImageError(path, "image contains NaN or infinite values")
    return image


def read_bytes(path: str | os.PathLike, max_bytes: int | None = None) -> bytes:
    """Read a whole regular file, turning OS errors into ImageError that name the file.

    FIFOs and devices are refused (reading /dev/zero would never end), and so is a
    file larger than ``max_bytes``.
    """
    p = Path(path)
    try:
        st = p.stat()
        if stat.S_ISDIR(st.st_mode):
            raise ImageError(path, "is a folder, not an image file")
        if not stat.S_ISREG(st.st_mode):
            raise ImageError(path, f"not a regular file but {special_file_kind(st.st_mode)}: nothing to read as an image")
        if max_bytes is not None and st.st_size > max_bytes:
            raise ImageError(path, f"file is {st.st_size / 1e6:.0f} MB, larger than any image within the pixel limit")
        with open(p, "rb") as f:  # read at most max_bytes + 1 even if the file grows meanwhile
            data = f.read(-1 if max_bytes is None else max_bytes + 1)
    except OSError as e:
        raise ImageError(path, os_error_reason(path, e)) from None
    if max_bytes is not None and len(data) > max_bytes:
        raise ImageError(path, "file grew while being read beyond any image within the pixel limit")
    if not data:
        raise ImageError(path, "empty file (0 bytes)")
    return data


def special_file_kind(mode: int) -> str:
    """Words for a file that is neither a regular file nor a folder."""
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


def os_error_reason(path: str | os.PathLike, e: OSError) -> str:
    """A radiographer-readable reason for an OS error on ``path`` (broken links and loops named as such)."""
    if e.errno == errno.ENOENT:
        if os.path.islink(path):
            return f"broken link: it points to {os.readlink(path)!r}, which does not exist"
        return "file not found"
    if e.errno == errno.ELOOP:
        return "symbolic link loop: the link leads back to itself"
    if e.errno in (errno.EACCES, errno.EPERM):
        return "permission denied: medge may not read it"
    if e.errno == errno.ENOTDIR:
        return "file not found (a part of the path is not a folder)"
    if e.errno == errno.ENAMETOOLONG:
        return "the file name is too long for this system"
    return f"cannot read: {e.strerror or e}"


def load_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, ImageInfo]:
    """Read an image file as a 2-D grayscale array, keeping its bit depth, and say what it is.

    Args:
        path: PNG, JPEG, TIFF or BMP file (8- or 16-bit; gray, RGB or RGBA);
            DICOM when the ``dicom`` extra is installed. The format is taken from
            the content, not the name. Any path, including non-ASCII and non-UTF-8 ones.
        max_pixels: refuse images with more pixels than this, checked on the
            header before decoding.

    Returns:
        (pixels, info): ``uint8`` or ``uint16`` (H, W) (``float32`` for DICOM), and its ImageInfo.

    Raises:
        ImageError: the file is missing, a folder, a special file, empty, truncated,
            undecodable, of an unsupported format, or over the pixel limit.
        MissingExtraError: a DICOM file without the ``dicom`` extra installed.
    """
    return decode_image(read_bytes(path, max_bytes=max_file_bytes(max_pixels)), path, max_pixels)


def max_file_bytes(max_pixels: int) -> int:
    """The largest file that can hold a valid image within ``max_pixels``: 8 bytes a pixel covers 16-bit RGBA stored raw."""
    return max(64 << 20, 8 * max_pixels)


@dataclass(frozen=True)
class EncodedFile:
    """The bytes of an image file read elsewhere (a Ray dataset's ``bytes`` column, a copy in memory), named by its path."""

    path: str
    data: bytes


def decode_image(data: bytes, path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, ImageInfo]:
    """``load_image`` on a file's bytes already read: the same pixels, info and errors (which name ``path``).

    Raises:
        ImageError: as ``load_image``, plus empty ``data`` and ``data`` larger than ``max_file_bytes``.
    """
    if not data:
        raise ImageError(path, "empty file (0 bytes)")
    if len(data) > max_file_bytes(max_pixels):
        raise ImageError(path, f"file is {len(data) / 1e6:.0f} MB, larger than any image within the pixel limit")
    fmt = sniff_format(data)
    if fmt == "dicom" or (fmt is None and Path(path).suffix.lower() in DICOM_SUFFIXES):
        return decode_dicom(data, path, max_pixels)
    fmt, width, height = sniff_image(data, path)
    check_size(width, height, max_pixels, path)
    image, decoder = _decode(data, fmt, path)
    if image.ndim not in (2, 3) or sorted(image.shape[:2]) != sorted((height, width)):
        raise ImageError(path, f"decoded size {image.shape[1]}x{image.shape[0]} differs from the header's {width}x{height}")
    info = ImageInfo(fmt, int(image.shape[1]), int(image.shape[0]), 16 if image.dtype == np.uint16 else 8,
                     photometric(image), decoder)
    return to_gray(image, path), info


def read_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """The pixels of ``load_image`` (see there).

    For a DICOM file with a window, these are the values after the window, in
    [0, 1]; ``load_image``'s ``info.display_range`` tells ``edge.preprocess`` so.
    """
    return load_image(path, max_pixels)[0]


def _decode(data: bytes, fmt: str, path) -> tuple[np.ndarray, str]:
    """cv2.imdecode keeping depth and colour, and what decoded it; a PNG whose only fault is a huge text chunk
    is read without it. A PNG is inflated by libdeflate where the ``png`` extra is installed (``edge.inputs.png``:
    the same pixels, bit for bit)."""
    if fmt == "png":
        fast = png.decode(data)
        if fast is not None:
            return fast[0], png.decoder_name(fast[1])
    image = _imdecode(data, fmt, path)
    if image is None and fmt == "png":
        stripped = _png_pixel_chunks(data)
        if stripped is not None and len(stripped) < len(data):
            image = _imdecode(stripped, fmt, path)
    if image is None:
        raise ImageError(path, f"cannot decode the {fmt.upper()} pixel data: the file is damaged")
    return image, f"opencv {cv2.__version__}"


def _imdecode(data: bytes, fmt: str, path) -> np.ndarray | None:
    try:
        # ANYDEPTH keeps 16 bits; ANYCOLOR keeps gray as gray. EXIF orientation is applied.
        return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    except cv2.error as e:
        raise ImageError(path, f"cannot decode the {fmt.upper()} pixel data: {str(e).strip().splitlines()[-1]}") from None


# PNG chunks that decide the pixels; the others (text, time, colour profiles, ...) are metadata.
_PNG_PIXEL_CHUNKS = {b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND", b"eXIf"}


def _png_pixel_chunks(data: bytes) -> bytes | None:
    """The PNG with its metadata chunks left out, or None when its chunk structure is broken.

    OpenCV refuses a PNG whose text chunk (tEXt, zTXt, iTXt: DICOM headers, XMP)
    exceeds its chunk size limit, though the pixels are intact.
    """
    chunks = png.walk(data)
    if chunks is None:
        return None
    return b"".join([data[:8], *(data[pos : pos + 12 + length] for kind, pos, length in chunks
                                  if kind in _PNG_PIXEL_CHUNKS)])


def write_image(path: str | os.PathLike, image: np.ndarray) -> None:
    """Encode by suffix and write the bytes atomically, creating parent folders (works with non-ASCII
    paths, unlike cv2.imwrite). Whether ``path`` may be replaced is the caller's check."""
    ok, buf = cv2.imencode(Path(path).suffix or ".png", image)
    if not ok:
        raise ImageError(path, "cannot encode image")
    try:
        atomic_write_bytes(path, buf.tobytes())
    except OSError as e:
        raise ImageError(path, f"cannot write: {e.strerror or e}") from None
