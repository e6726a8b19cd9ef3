"""Single-frame grayscale DICOM, with the optional ``dicom`` extra (pydicom + python-gdcm).

Decoding is deterministic: each transfer syntax has one decoder (``DECODERS``),
passed to pydicom by name, so the pixels never depend on which plugins happen to
be installed (the same JPEG decoded by Pillow and by libjpeg differs by +-1 on
thousands of pixels, enough to move a probability). The record names the decoder.

  uncompressed, deflated, RLE lossless        pydicom (numpy)
  JPEG baseline/extended, lossless, JPEG-LS,  gdcm (python-gdcm: BSD-licensed GDCM with
  JPEG 2000                                   IJG libjpeg, CharLS and OpenJPEG inside)
  JPEG extended with 12-bit samples           pylibjpeg-libjpeg if you install it (GPL-3.0, so
                                              not part of the extra): gdcm's libjpeg is 8-bit only

The pixel values then go through the DICOM display pipeline, in order:
  1. Modality LUT: rescale slope and intercept (or a Modality LUT Sequence);
  2. VOI: a VOI LUT Sequence, else the first Window Center/Width (LINEAR,
     LINEAR_EXACT or SIGMOID), when present: the result is in [0, 1] and
     ``ImageInfo.display_range`` is (0, 1), so that ``edge.preprocess.to_uint8``
     keeps the window the modality chose;
  3. MONOCHROME1 (white = low values) is inverted so that bright is always dense;
and the result is kept as float32, full depth. Without a window the 8-bit rule
of ``edge.preprocess.to_uint8`` decides, except that an image of 8 bits or
fewer with no rescale keeps its stored range (display range 0 to 2^bits - 1),
as an 8-bit PNG does.

Everything is computed in float32 on one copy of the pixels, so a 40-megapixel
image needs about 4 x 160 MB at most. Uncompressed little-endian pixels are a view
on the pixel data's bytes (``_native_pixels``), not a copy made by pydicom's native
decoder, with that decoder's values (unused high bits cleared or sign-extended as its
``correct_unused_bits`` does); wherever that decoder would refuse the file or read it
as several frames, it runs instead, so the pixels and the errors stay its own.
"""
from __future__ import annotations

import importlib.util
import io
import os
import warnings

import numpy as np

from medge.edge.errors import ImageError, MissingExtraError
from medge.edge.inputs.formats import ImageInfo, check_size, non_image_reason

# Transfer syntax UID -> (pydicom decoding plugin, the module it needs). Anything else is refused by name.
_NATIVE = ("pydicom", "pydicom")
_GDCM = ("gdcm", "gdcm")
DECODERS = {
    "1.2.840.10008.1.2": _NATIVE,  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1": _NATIVE,  # Explicit VR Little Endian
    "1.2.840.10008.1.2.2": _NATIVE,  # Explicit VR Big Endian (retired)
    "1.2.840.10008.1.2.1.99": _NATIVE,  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.5": _NATIVE,  # RLE Lossless
    "1.2.840.10008.1.2.4.50": _GDCM,  # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51": _GDCM,  # JPEG Extended (Process 2 and 4); 12-bit: see _JPEG_12BIT
    "1.2.840.10008.1.2.4.57": _GDCM,  # JPEG Lossless, Non-Hierarchical (Process 14)
    "1.2.840.10008.1.2.4.70": _GDCM,  # JPEG Lossless, First-Order Prediction (Process 14 SV1)
    "1.2.840.10008.1.2.4.80": _GDCM,  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81": _GDCM,  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90": _GDCM,  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91": _GDCM,  # JPEG 2000
}
_JPEG_12BIT = ("pylibjpeg", "libjpeg")  # JPEG Extended with Bits Stored > 8 (GPL-3.0: installed by the user only)
_JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
_LITTLE_ENDIAN_NATIVE = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")  # Implicit and Explicit VR Little Endian
_PACKAGES = {"pydicom": "pydicom", "gdcm": "python-gdcm", "libjpeg": "pylibjpeg-libjpeg"}


def transfer_syntaxes() -> list[str]:
    """Every transfer syntax of ``DECODERS`` whose decoder is installed here (found, not imported)."""
    return [uid for uid, (_, module) in DECODERS.items() if importlib.util.find_spec(module) is not None]


# Short names of the transfer syntaxes in DECODERS, for people (medge check).
SYNTAX_NAMES = {
    "1.2.840.10008.1.2": "implicit VR", "1.2.840.10008.1.2.1": "explicit VR", "1.2.840.10008.1.2.2": "big endian",
    "1.2.840.10008.1.2.1.99": "deflate", "1.2.840.10008.1.2.5": "RLE", "1.2.840.10008.1.2.4.50": "JPEG baseline",
    "1.2.840.10008.1.2.4.51": "JPEG extended", "1.2.840.10008.1.2.4.57": "JPEG lossless",
    "1.2.840.10008.1.2.4.70": "JPEG lossless SV1", "1.2.840.10008.1.2.4.80": "JPEG-LS lossless",
    "1.2.840.10008.1.2.4.81": "JPEG-LS near-lossless", "1.2.840.10008.1.2.4.90": "JPEG 2000 lossless",
    "1.2.840.10008.1.2.4.91": "JPEG 2000",
}


def decoder_support() -> dict:
    """What DICOM this install reads: pydicom's version (None: no DICOM at all), and per transfer syntax whether its
    decoder is installed, the package it needs and its short name. Found, not imported (cheap, no side effects)."""
    def version(module: str) -> str | None:
        if importlib.util.find_spec(module) is None:
            return None
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as dist_version

        try:
            return dist_version(_PACKAGES[module])
        except PackageNotFoundError:
            return "installed"

    packages = {module: version(module) for module in _PACKAGES}
    syntaxes = [{"uid": uid, "name": SYNTAX_NAMES.get(uid, uid), "package": _PACKAGES[module],
                 "installed": packages["pydicom"] is not None and packages[module] is not None}
                for uid, (_, module) in DECODERS.items()]
    return {"pydicom": packages["pydicom"], "packages": {_PACKAGES[m]: v for m, v in packages.items()},
            "transfer_syntaxes": syntaxes, "jpeg_12bit": packages[_JPEG_12BIT[1]] is not None}


def _pydicom():
    try:
        import pydicom
    except ImportError:
        return None
    return pydicom


def decode_dicom(data: bytes, path: str | os.PathLike | None, max_pixels: int,
                 pixel_view: bool = True) -> tuple[np.ndarray, ImageInfo]:
    """Decode DICOM bytes to a 2-D float32 image and its ImageInfo (see the module docstring).

    Args:
        pixel_view: False decodes uncompressed pixels with pydicom's ``pixel_array`` too, as medge did
            before the view (the same pixels: for tests and ``medge.benchmarks.decode_cost``).

    Raises:
        MissingExtraError: pydicom, or the decoder this transfer syntax needs, is not installed.
        ImageError: not a readable DICOM file, no image in it, multi-frame or colour
            data, over the pixel limit, damaged pixel data; in words, naming the file.
    """
    pydicom = _pydicom()
    if pydicom is None:
        raise MissingExtraError("dicom", "pydicom", f"reading DICOM file {path}")
    ds = _read_dataset(pydicom, data, path)
    header = _header(ds, path)
    check_size(header["columns"], header["rows"], max_pixels, path)
    plugin, module, decoder = _decoder(ds, header, path)
    pixels = _decode_pixels(ds, plugin, decoder, header, path, pixel_view)
    image, voi, display_range = _display_pipeline(pixels, ds, header, path)
    info = ImageInfo("dicom", header["columns"], header["rows"], header["bits_stored"], header["photometric"],
                     decoder, header["modality"], header["transfer_syntax"], voi, display_range,
                     header["manufacturer"], header["view_position"])
    return image, info


def _read_dataset(pydicom, data: bytes, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about every odd value; the checks below decide
        try:
            return pydicom.dcmread(io.BytesIO(data), force=data[128:132] != b"DICM")
        except pydicom.errors.InvalidDicomError:
            raise ImageError(path, "not a DICOM file (no DICOM header)") from None
        except EOFError:
            raise ImageError(path, "the DICOM file is cut short (truncated)") from None
        except Exception as e:  # pydicom raises ValueError, KeyError, struct.error, ... on damaged headers
            raise ImageError(path, f"the DICOM header is damaged and cannot be read ({_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    """The informative line of an exception: pydicom's "exceptions were raised by all plugins" is followed by them."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):
        lines = lines[1:]
    return lines[0][:200] if lines else type(e).__name__


def _element(ds, keyword: str, default=None, path=None):
    """One header value, converted; a value that does not fit its type is named in the error."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return ds.get(keyword, default)
        except Exception:  # a bad VR: pydicom converts lazily and raises on access
            raise ImageError(path, f"the DICOM header has an invalid {_describe(keyword)} value "
                                   f"({_raw_value(ds, keyword)}): the file is damaged or was written by faulty "
                                   "software") from None


def _optional_text(ds, keyword: str, limit: int, upper: bool = False) -> str | None:
    """A descriptive header value (Manufacturer, ViewPosition) for records, or None: never a reason to refuse a file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            value = ds.get(keyword, None)
        except Exception:  # an invalid value: reported as unknown
            return None
    text = "".join(ch for ch in str(value or "") if ch.isprintable()).strip()[:limit]
    return (text.upper() if upper else text) or None


def _describe(keyword: str) -> str:
    from pydicom.datadict import dictionary_description, tag_for_keyword

    tag = tag_for_keyword(keyword)
    return f"{dictionary_description(tag)} ({tag >> 16:04X},{tag & 0xFFFF:04X})" if tag is not None else keyword


def _raw_value(ds, keyword: str) -> str:
    from pydicom.datadict import tag_for_keyword

    try:
        raw = ds.get_item(tag_for_keyword(keyword)).value
        return repr(raw.decode("latin-1") if isinstance(raw, bytes) else raw)[:40]
    except Exception:
        return "unreadable"


def _header(ds, path) -> dict:
    """The header values medge needs, checked: refusals here happen before any pixel is decoded."""
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if "PixelData" not in ds:
        sop = _element(ds, "SOPClassUID", path=path) or (meta.get("MediaStorageSOPClassUID") if meta is not None else None)
        what = non_image_reason(str(sop) if sop else None)
        if what:
            raise ImageError(path, f"this DICOM file is {what}, not an image: nothing to classify")
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise ImageError(path, "DICOM with floating-point pixel data (a parametric map) is not supported")
        kind = f" (a {sop.name} object)" if sop is not None and getattr(sop, "is_valid", False) else ""
        raise ImageError(path, f"this DICOM file{kind} has no pixel data: nothing to classify")
    header = {
        "transfer_syntax": getattr(ts, "name", None) or (str(ts) if ts else "Implicit VR Little Endian (assumed)"),
        "ts_uid": str(ts) if ts else "1.2.840.10008.1.2",
        "modality": (str(_element(ds, "Modality", "", path)).strip().upper() or None),
        "photometric": str(_element(ds, "PhotometricInterpretation", "", path)).strip().upper(),
        "manufacturer": _optional_text(ds, "Manufacturer", 64),
        "view_position": _optional_text(ds, "ViewPosition", 16, upper=True),
    }
    for key, keyword, default in [("rows", "Rows", None), ("columns", "Columns", None), ("frames", "NumberOfFrames", 1),
                                  ("samples", "SamplesPerPixel", 1), ("bits_allocated", "BitsAllocated", None),
                                  ("bits_stored", "BitsStored", "BitsAllocated")]:
        value = _element(ds, keyword, None, path)
        if value in (None, ""):
            if default is None:
                raise ImageError(path, f"the DICOM header lacks {_describe(keyword)}: the image cannot be read")
            value = header["bits_allocated"] if default == "BitsAllocated" else default
        try:
            header[key] = int(value)
        except (TypeError, ValueError):
            raise ImageError(path, f"the DICOM header's {_describe(keyword)} is {str(value)[:20]!r}, not a number: "
                                   "the file is damaged or was written by faulty software") from None
    if header["frames"] > 1:
        raise ImageError(path, f"multi-frame DICOM ({header['frames']} frames: a cine loop, a tomosynthesis or a "
                               "series in one file) is not supported; give single-frame images")
    photometric = header["photometric"]
    if not photometric:
        raise ImageError(path, "the DICOM header lacks Photometric Interpretation (0028,0004): "
                               "medge cannot tell whether the image is grayscale")
    if header["samples"] != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ImageError(path, f"colour DICOM ({photometric}, {header['samples']} sample(s) per pixel) is not supported: "
                               "the model reads grayscale (MONOCHROME1/2) images")
    if header["bits_allocated"] > 16 or header["bits_stored"] > 16:
        raise ImageError(path, f"DICOM with {header['bits_stored']} bits per pixel is not supported "
                               "(radiographs have 8 to 16; such files hold dose grids or parametric maps)")
    return header


def _decoder(ds, header: dict, path) -> tuple[str, str, str]:
    """(pydicom plugin, module, 'name version') for this file's transfer syntax, checked to be installed."""
    uid = header["ts_uid"]
    if uid not in DECODERS:
        raise ImageError(path, f"DICOM compressed as {header['transfer_syntax']} is not supported by medge "
                               f"(supported: uncompressed, deflated, RLE, JPEG, JPEG lossless, JPEG-LS, JPEG 2000)")
    plugin, module = DECODERS[uid]
    if uid == _JPEG_EXTENDED and header["bits_stored"] > 8:
        plugin, module = _JPEG_12BIT
    try:
        mod = __import__(module)
    except ImportError:
        what = f"decoding {header['transfer_syntax']} DICOM file {path}"
        if module == "libjpeg":
            raise ImageError(path, "12-bit JPEG (JPEG Extended) DICOM needs the pylibjpeg-libjpeg decoder, which is "
                                   "GPL-3.0 licensed and so not part of medge's 'dicom' extra; if its licence suits you: "
                                   "pip install pylibjpeg pylibjpeg-libjpeg") from None
        raise MissingExtraError("dicom", _PACKAGES[module], what) from None
    version = getattr(mod, "__version__", None)
    if module == "gdcm":
        version = mod.Version.GetVersion()
    return plugin, module, f"{_PACKAGES[module]} {version or ''}".strip()


def _decode_pixels(ds, plugin: str, decoder: str, header: dict, path, pixel_view: bool = True) -> np.ndarray:
    from pydicom.pixels import pixel_array

    if header["ts_uid"] in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"):
        expected = header["rows"] * header["columns"] * header["bits_allocated"] // 8
        if header["bits_allocated"] == 1:
            expected = (header["rows"] * header["columns"] + 7) // 8
        got = len(ds.PixelData)
        if got < expected:
            raise ImageError(path, f"the DICOM pixel data is cut short: {got} of {expected} bytes (truncated file)")
        pixels = _native_pixels(ds, header) if pixel_view else None
        if pixels is not None:
            return pixels
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            pixels = pixel_array(ds, decoding_plugin=plugin, index=None)
        except Exception:  # each decoder raises its own types; the reason is in words below
            raise ImageError(path, f"the {header['transfer_syntax']} pixel data cannot be decoded by {decoder}: "
                                   "the file is damaged or uses an encoding variant the decoder does not support") from None
    if pixels.ndim != 2 or pixels.shape != (header["rows"], header["columns"]):
        raise ImageError(path, f"the decoded DICOM image is {pixels.shape}, not the {header['rows']}x{header['columns']} "
                               "its header announces")
    return pixels


def _native_pixels(ds, header: dict) -> np.ndarray | None:
    """Uncompressed little-endian pixels as a view on the pixel data's bytes (a copy only to clear unused bits),
    or None where pydicom's native decoder must run: a file it refuses or reads as several frames.

    The values are that decoder's: the bytes as (un)signed integers of Bits Allocated, then, when Bits Stored is
    smaller, shifted left and back right as its ``correct_unused_bits`` does (clears the unused high bits, or
    extends the sign).
    """
    meta = getattr(ds, "file_meta", None)
    if meta is None or str(meta.get("TransferSyntaxUID", "")) not in _LITTLE_ENDIAN_NATIVE:
        return None  # no transfer syntax: pixel_array refuses the file, and says so
    rows, columns, allocated, stored = header["rows"], header["columns"], header["bits_allocated"], header["bits_stored"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            representation, data = ds.get("PixelRepresentation"), ds.PixelData
        except Exception:  # a bad value: pixel_array's error
            return None
    expected = rows * columns * allocated // 8
    if (allocated not in (8, 16) or not 1 <= stored <= allocated or representation not in (0, 1)
            or not (0 < rows < 1 << 16 and 0 < columns < 1 << 16) or header["frames"] != 1
            or not isinstance(data, bytes) or not expected <= len(data) < 2 * expected):
        return None  # two frames' worth of bytes: pydicom reads two frames, and the size check refuses them
    dtype = np.dtype(f"<{'ui'[representation]}{allocated // 8}")
    pixels = np.frombuffer(data, dtype, rows * columns).reshape(rows, columns)
    shift = allocated - stored
    if shift:
        pixels = np.left_shift(pixels, shift)
        np.right_shift(pixels, shift, out=pixels)
    return pixels


def _display_pipeline(pixels: np.ndarray, ds, header: dict, path) -> tuple[np.ndarray, str | None, tuple | None]:
    """Modality LUT, VOI (window or LUT), MONOCHROME1 inversion; returns (float32 image, voi, display range)."""
    from pydicom.pixels import apply_modality_lut, apply_voi

    rescaled = any(k in ds for k in ("RescaleSlope", "RescaleIntercept", "ModalityLUTSequence"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if "ModalityLUTSequence" in ds:
                image = apply_modality_lut(pixels, ds)
            elif rescaled:  # in float32 on one copy (pydicom's goes through float64)
                slope = float(_element(ds, "RescaleSlope", 1.0, path) or 1.0)
                intercept = float(_element(ds, "RescaleIntercept", 0.0, path) or 0.0)
                image = pixels.astype(np.float32)
                image *= np.float32(slope)
                image += np.float32(intercept)
            else:
                image = pixels
            voi, display_range = None, None
            if ds.get("VOILUTSequence"):
                lut_bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
                lut_in = image if np.issubdtype(image.dtype, np.integer) else np.rint(image).astype(np.int32)
                image = apply_voi(lut_in, ds, 0).astype(np.float32)
                image *= np.float32(1.0 / (2**lut_bits - 1))
                voi, display_range = "VOI LUT", (0.0, 1.0)
            elif "WindowCenter" in ds and "WindowWidth" in ds:
                center, width, function = _window(ds, path)
                image = _apply_window(image.astype(np.float32), center, width, function)
                voi, display_range = f"window {center:g}/{width:g}" + (f" {function}" if function != "LINEAR" else ""), \
                    (0.0, 1.0)
            else:
                image = image.astype(np.float32)
                if not rescaled and header["bits_stored"] <= 8:
                    display_range = (0.0, float(2 ** header["bits_stored"] - 1))
    except ImageError:
        raise
    except Exception as e:
        raise ImageError(path, f"the DICOM rescale or VOI LUT values are invalid ({_first_line(e)})") from None
    if header["photometric"] == "MONOCHROME1":
        lo, hi = display_range if display_range else (float(image.min()), float(image.max()))
        image = np.subtract(np.float32(lo + hi), image, out=image)
    integers = voi is None and not rescaled and np.issubdtype(pixels.dtype, np.integer)  # finite: no check needed
    if not integers and not np.isfinite(image).all():
        raise ImageError(path, "the DICOM pixel values are not finite after rescaling (invalid Rescale Slope?)")
    return image, voi, display_range


def _window(ds, path) -> tuple[float, float, str]:
    """The first Window Center/Width and the VOI LUT Function, checked."""
    def first(value):
        return value[0] if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else value

    try:
        center, width = float(first(ds.WindowCenter)), float(first(ds.WindowWidth))
    except Exception:
        raise ImageError(path, "the DICOM Window Center/Width values are not numbers; the file is damaged") from None
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        raise ImageError(path, f"unknown DICOM VOI LUT Function {function!r}")
    if not (np.isfinite(center) and np.isfinite(width)) or width < (1 if function == "LINEAR" else 1e-12):
        raise ImageError(path, f"invalid DICOM window: centre {center:g}, width {width:g}")
    return center, width, function


def _apply_window(x: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 windowing onto [0, 1], in place on float32 ``x``."""
    if function == "SIGMOID":
        np.multiply(x, np.float32(-4.0 / width), out=x)
        x += np.float32(4.0 * center / width)
        np.exp(x, out=x)
        x += np.float32(1.0)
        return np.reciprocal(x, out=x)
    if function == "LINEAR":  # LINEAR_EXACT uses centre and width as they are
        center, width = center - 0.5, width - 1.0
    if width <= 0:  # LINEAR with width 1: a threshold at the centre
        return (x > center).astype(np.float32)
    x -= np.float32(center - width / 2)
    x *= np.float32(1.0 / width)
    return np.clip(x, 0.0, 1.0, out=x)
