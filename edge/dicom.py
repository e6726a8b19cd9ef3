"""Single-frame grayscale DICOM, with the optional ``dicom`` extra (pydicom).

The pixel values go through the DICOM display pipeline, in order:
  1. Modality LUT: rescale slope and intercept (or a Modality LUT Sequence);
  2. VOI LUT: a VOI LUT Sequence, else the first Window Center/Width, when present;
  3. MONOCHROME1 (white = low values) is inverted so that bright is always dense;
and the result is kept as float32, full depth. The conversion to 8 bits is the
documented rule of ``edge.preprocess.to_uint8`` (min-max), applied later.
"""
from __future__ import annotations

import io
import os

import numpy as np

from medge.edge.errors import ImageError, MissingExtraError
from medge.edge.formats import check_size


def _luts():
    try:  # pydicom >= 3
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:  # pydicom 2.x
        from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut
    return apply_modality_lut, apply_voi_lut


def decode_dicom(data: bytes, path: str | os.PathLike | None, max_pixels: int) -> np.ndarray:
    """Decode DICOM bytes to a 2-D float32 image (see the module docstring).

    Raises:
        MissingExtraError: pydicom is not installed.
        ImageError: unreadable file, multi-frame or colour data, over the pixel
            limit, or a compressed transfer syntax whose decoder is not installed.
    """
    try:
        import pydicom
    except ImportError:
        raise MissingExtraError("dicom", "pydicom", f"reading DICOM file {path}") from None
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except Exception as e:  # pydicom raises InvalidDicomError, EOFError, ValueError, ...
        raise ImageError(path, f"unreadable DICOM: {type(e).__name__}: {e}") from None
    if "PixelData" not in ds:
        raise ImageError(path, "DICOM file has no pixel data")
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames != 1:
        raise ImageError(path, f"multi-frame DICOM ({frames} frames) is not supported; give single-frame images")
    photometric = str(getattr(ds, "PhotometricInterpretation", ""))
    if int(getattr(ds, "SamplesPerPixel", 1)) != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ImageError(path, f"DICOM photometric interpretation {photometric or '?'} is not grayscale (MONOCHROME1/2)")
    check_size(int(getattr(ds, "Columns", 0)), int(getattr(ds, "Rows", 0)), max_pixels, path)
    try:
        pixels = ds.pixel_array
    except Exception as e:
        ts = ds.file_meta.get("TransferSyntaxUID", None) if hasattr(ds, "file_meta") else None
        name = getattr(ts, "name", str(ts))
        if ts is not None and getattr(ts, "is_compressed", False):
            raise ImageError(path, f"compressed DICOM ({name}) needs a decoder that is not installed "
                                   f"(e.g. pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg): {e}") from None
        raise ImageError(path, f"cannot decode DICOM pixel data ({name}): {e}") from None
    apply_modality_lut, apply_voi_lut = _luts()
    try:
        image = apply_modality_lut(pixels, ds).astype(np.float64)
        if "VOILUTSequence" in ds or "WindowCenter" in ds:
            image = apply_voi_lut(image, ds, index=0).astype(np.float64)
    except Exception as e:
        raise ImageError(path, f"invalid DICOM rescale or VOI LUT values: {e}") from None
    if photometric == "MONOCHROME1":
        image = image.max() + image.min() - image
    image = image.astype(np.float32)
    if image.ndim != 2 or not np.isfinite(image).all():
        raise ImageError(path, f"DICOM pixel data is not a finite 2-D image (shape {image.shape})")
    return image
