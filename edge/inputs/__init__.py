"""medge.edge.inputs: what comes in, from a path or bytes to a grayscale array and the facts about it.

The modules divide the work:

- ``formats``: recognising image files by their bytes (format, size, truncation) and ``ImageInfo``;
- ``image``: reading and decoding files into grayscale arrays (the 8-bit and 16-bit rules), writing PNGs;
- ``png``: PNG pixels as OpenCV decodes them, inflated by libdeflate (the ``png`` extra), bit for bit;
- ``dicom``: single-frame grayscale DICOM with the ``dicom`` extra, one decoder per transfer syntax;
- ``scanning``: finding inputs in files and folders by content, sharding, and what was skipped and why;
- ``index``: label indexes (NIH, CheXpert, generic CSVs): files, findings, patients and splits;
- ``profile``: whether an input is what the model was trained on (warnings), and the training profile.

Usage:
    from medge.edge.inputs import load_image, scan_inputs
    for entry in scan_inputs(["scans/"]).entries:
        image, info = load_image(entry.path)   # grayscale array, and ImageInfo (format, bits, modality, ...)

The names below are re-exported for users; modules of ``medge`` import from the defining module.
"""
from medge.edge.inputs.dicom import DECODERS, decode_dicom, transfer_syntaxes
from medge.edge.inputs.formats import DEFAULT_MAX_PIXELS, DICOM_SUFFIXES, IMAGE_SUFFIXES, ImageInfo, array_info
from medge.edge.inputs.image import EncodedFile, decode_image, load_image, read_image, to_gray, write_image
from medge.edge.inputs.index import FORMATS, UNCERTAIN, IndexEntry, LabelIndex, dicom_patient, read_index
from medge.edge.inputs.profile import STATS, build_profile, check_input, image_stats
from medge.edge.inputs.scanning import Scan, Shard, classify_file, scan_inputs, walk

__all__ = [
    "DECODERS", "DEFAULT_MAX_PIXELS", "DICOM_SUFFIXES", "FORMATS", "IMAGE_SUFFIXES", "STATS", "UNCERTAIN", "EncodedFile",
    "ImageInfo", "IndexEntry", "LabelIndex", "Scan", "Shard", "array_info", "build_profile", "check_input", "classify_file",
    "decode_dicom", "decode_image", "dicom_patient", "image_stats", "load_image", "read_image", "read_index",
    "scan_inputs", "to_gray", "transfer_syntaxes", "walk", "write_image",
]
