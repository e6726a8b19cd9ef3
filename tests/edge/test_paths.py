"""medge.edge.paths: a file name that is not valid UTF-8 written the same way in text and JSON, and read back exactly."""
import json
import os
from pathlib import Path

import numpy as np

from medge.edge.paths import TEXT_ERRORS, shown, to_json

RAW = b"scan\xff\xfe.png"  # not UTF-8: Python gives it as lone surrogates (PEP 383)
NAME = os.fsdecode(RAW)


def test_shown_writes_each_undecodable_byte_as_six_characters():
    assert NAME == "scan\udcff\udcfe.png"
    assert shown(NAME) == "scan\\udcff\\udcfe.png"
    assert shown(RAW) == shown(Path(NAME)) == shown(NAME)  # bytes and paths alike
    assert shown(NAME).encode("utf-8")  # printable: encodes without UnicodeEncodeError
    assert NAME.encode("utf-8", TEXT_ERRORS).decode("utf-8") == shown(NAME)  # what a text stream of medge writes


def test_shown_keeps_valid_names_and_none():
    assert shown("흉부 X선 é.png") == "흉부 X선 é.png"
    assert shown(None) == ""


def test_to_json_escapes_surrogates_and_reads_back_the_original_bytes():
    text = to_json({"path": NAME, NAME: [1, 2]})
    assert "\\udcff\\udcfe" in text and text.encode("utf-8")
    back = json.loads(text)
    assert back == {"path": NAME, NAME: [1, 2]}
    assert os.fsencode(back["path"]) == RAW


def test_to_json_keeps_other_characters_readable_and_indents():
    assert to_json({"name": "흉부"}) == '{"name": "흉부"}'  # not \\ud749 escapes, unlike ensure_ascii
    assert to_json([1], indent=2) == "[\n  1\n]"


def test_to_json_writes_nan_and_infinity_as_null_and_leaves_finite_values_byte_identical():
    def refuse(name):
        raise ValueError(name)

    value = {"a": float("nan"), "b": [1.5, float("inf"), (float("-inf"), 2)], "c": {"d": np.float64("nan")}, "e": None}
    text = to_json(value, indent=2)
    assert json.loads(text, parse_constant=refuse) == {"a": None, "b": [1.5, None, [None, 2]], "c": {"d": None},
                                                        "e": None}
    finite = {"p": 0.1 + 0.2, "q": [1e-300, -0.0, 3], "r": {"s": "흉부", "t": True}}
    assert to_json(finite) == json.dumps(finite, ensure_ascii=False)
    assert to_json(finite, indent=2) == json.dumps(finite, ensure_ascii=False, indent=2)
