"""Any file name: how medge writes paths that are not valid UTF-8.

On Linux a file name is bytes. A name written by a Windows share mounted with
another code page, or by an old PACS export, may not be valid UTF-8; Python
then decodes each undecodable byte into a lone surrogate (PEP 383,
``surrogateescape``: byte 0xFF becomes U+DCFF), which opens the file fine but
cannot be encoded as UTF-8, so ``print`` or a UTF-8 file write raises
``UnicodeEncodeError``.

medge writes such a name with one representation everywhere:

- JSON (records, the hot folder's results and ledger): the JSON escape
  ``\\udcff``. ``json.loads`` gives back the very string Python's ``os``
  functions accept, and ``os.fsencode`` of it gives back the original bytes.
- Text (CSV, lines on stdout and stderr, reason files): the same six characters
  ``\\udcff``, so a name reads the same in every output.

Valid UTF-8 names (Korean, accented, ...) are written as they are.
"""
from __future__ import annotations

import json
import math
import os
import re

_SURROGATE = re.compile("[\ud800-\udfff]")
TEXT_ERRORS = "backslashreplace"  # the errors= of every text stream medge writes names to


def shown(path: str | os.PathLike | None) -> str:
    """``path`` as printable text: each undecodable byte as ``\\udcXX`` (see the module docstring)."""
    text = "" if path is None else os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    return text.encode("utf-8", TEXT_ERRORS).decode("utf-8")


def finite_json(obj):
    """``obj`` with every NaN or infinite float replaced by None, in nested dicts, lists and tuples.

    Strict JSON has no NaN or Infinity (``json.dumps`` writes them by default; most readers outside Python refuse
    them), so a figure that is undefined on the cases at hand (a sensitivity without positives) is written ``null``.

    Args:
        obj: a JSON-able value.

    Returns:
        the same structure (tuples as lists), equal to ``obj`` where it held only finite numbers.
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def to_json(obj, indent: int | None = None) -> str:
    """``json.dumps`` that never fails on a file name and writes strict JSON.

    Lone surrogates become ``\\udcXX`` JSON escapes; other non-ASCII characters stay as they are (readable UTF-8),
    unlike ``ensure_ascii=True``. NaN and infinite floats are written ``null`` (``finite_json``); text without them
    is exactly ``json.dumps``'s.

    Args:
        obj: a JSON-able value.
        indent: as ``json.dumps``'s.

    Returns:
        the JSON text.
    """
    try:
        text = json.dumps(obj, ensure_ascii=False, indent=indent, allow_nan=False)
    except ValueError:  # a NaN or infinity somewhere (a circular structure fails again below, as before)
        text = json.dumps(finite_json(obj), ensure_ascii=False, indent=indent, allow_nan=False)
    # A surrogate can only come from a string value or key, so escaping it keeps the JSON valid and exact.
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
