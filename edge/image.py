"""Reading images from disk into grayscale numpy arrays, with clear errors.

``read_image`` reads the file's bytes itself and decodes them with
``cv2.imdecode``: ``cv2.imread`` cannot open paths with non-ASCII characters on
some platforms (Korean file names are normal in Korean hospitals).

Before any pixel is decoded the header is parsed to learn the format and the
image size, so that an image over the pixel limit is refused cheaply and a
truncated file is recognised instead of being decoded into a half-grey picture
(libjpeg fills the missing rows and only warns).

Bit depth is kept: 8-bit files give ``uint8``, 16-bit files give ``uint16``.
The conversion to 8 bits happens in ``edge.preprocess.to_uint8``, by one
documented rule, never silently here (``cv2.IMREAD_GRAYSCALE`` would shift a
16-bit image right by 8 bits, which turns a 12-bit X-ray nearly black).
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

import cv2
import numpy as np

from medge.edge.errors import ImageError
from medge.edge.formats import DEFAULT_MAX_PIXELS, DICOM_SUFFIXES, IMAGE_SUFFIXES, check_size, sniff_image
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
        if p.is_dir():
            raise ImageError(path, "is a directory, not an image file")
        st = p.stat()
        if not stat.S_ISREG(st.st_mode):
            raise ImageError(path, "not a regular file (a device, FIFO or socket)")
        if max_bytes is not None and st.st_size > max_bytes:
            raise ImageError(path, f"file is {st.st_size / 1e6:.0f} MB, larger than any image within the pixel limit")
        data = p.read_bytes()
    except FileNotFoundError:
        raise ImageError(path, "file not found") from None
    except PermissionError:
        raise ImageError(path, "permission denied") from None
    except OSError as e:
        raise ImageError(path, f"cannot read: {e.strerror or e}") from None
    if not data:
        raise ImageError(path, "empty file (0 bytes)")
    return data


def read_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file as a 2-D grayscale array, keeping its bit depth.

    Args:
        path: PNG, JPEG, TIFF or BMP file (8- or 16-bit; gray, RGB or RGBA);
            DICOM when the ``dicom`` extra is installed. The format is taken from
            the content, not the suffix. Non-ASCII paths work.
        max_pixels: refuse images with more pixels than this, checked on the
            header before decoding.

    Returns:
        ``uint8`` or ``uint16`` array of shape (H, W) (``float32`` for DICOM).

    Raises:
        ImageError: the file is missing, a directory, empty, truncated,
            undecodable, of an unsupported format, or over the pixel limit.
    """
    # 8 bytes a pixel covers 16-bit RGBA stored raw; a larger file cannot be a valid image within the limit.
    data = read_bytes(path, max_bytes=max(64 << 20, 8 * max_pixels))
    is_dicom = len(data) >= 132 and data[128:132] == b"DICM"
    if is_dicom or Path(path).suffix.lower() in DICOM_SUFFIXES:
        from medge.edge.dicom import decode_dicom  # pydicom is optional

        return decode_dicom(data, path, max_pixels)
    fmt, width, height = sniff_image(data, path)
    check_size(width, height, max_pixels, path)
    try:
        # ANYDEPTH keeps 16 bits; ANYCOLOR keeps gray as gray. EXIF orientation is applied.
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    except cv2.error as e:
        raise ImageError(path, f"cannot decode {fmt.upper()}: {str(e).strip().splitlines()[-1]}") from None
    if image is None:
        raise ImageError(path, f"cannot decode {fmt.upper()} (corrupt or truncated data)")
    if sorted(image.shape[:2]) != sorted((height, width)):
        raise ImageError(path, f"decoded size {image.shape[1]}x{image.shape[0]} differs from the header's {width}x{height}")
    return to_gray(image, path)


def write_image(path: str | os.PathLike, image: np.ndarray) -> None:
    """Encode by suffix and write the bytes atomically, creating parent folders (works with non-ASCII
    paths, unlike cv2.imwrite). Whether ``path`` may be replaced is the caller's check."""
    ok, buf = cv2.imencode(Path(path).suffix or ".png", image)
    if not ok:
        raise ImageError(path, "cannot encode image")
    atomic_write_bytes(path, buf.tobytes())


def collect_inputs(paths, suffixes=IMAGE_SUFFIXES + DICOM_SUFFIXES) -> list[str]:
    """Expand folders (recursively, by suffix, sorted) and keep files as given.

    A path that does not exist is kept, so that it is reported as a failed
    input rather than silently dropped.
    """
    out: list[str] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(str(f) for f in sorted(p.rglob("*")) if f.is_file() and f.suffix.lower() in suffixes)
        else:
            out.append(str(p))
    return out
