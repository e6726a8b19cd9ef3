"""Folder scans by content: nothing skipped in silence, every unreadable entry named."""
import json
import os

import pytest

from medge.edge.inputs.image import write_image
from medge.edge.inputs.scanning import classify_file, scan_inputs
from medge.edge.paths import shown, to_json
from tests.conftest import xray_like

NON_UTF8 = os.fsdecode(b"Patient_M\xfcller_\xff.png")  # Latin-1 bytes from a Windows share: not UTF-8


def _dicom_bytes(sop_class: str = "1.2.840.10008.5.1.4.1.1.1.1") -> bytes:
    """The first bytes of a DICOM file: preamble, DICM, and a file meta header with its SOP class."""
    value = sop_class.encode() + (b"\0" if len(sop_class) % 2 else b"")
    element = b"\x02\x00\x02\x00UI" + len(value).to_bytes(2, "little") + value
    return bytes(128) + b"DICM" + b"\x02\x00\x01\x00OB\0\0\x02\0\0\0\0\x01" + element + bytes(64)


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "export"
    (d / "sub").mkdir(parents=True)
    write_image(d / "a.png", xray_like(80, 70))
    write_image(d / "IM000002", xray_like(80, 70))  # no extension: found by its bytes
    (d / "sub" / "IM000001").write_bytes(_dicom_bytes())  # a DICOM without an extension
    (d / "DICOMDIR").write_bytes(_dicom_bytes("1.2.840.10008.1.3.10"))
    (d / "notes.txt").write_text("BMI report, not an image\n")
    (d / "Thumbs.db").write_bytes(bytes(range(256)))
    (d / "broken.jpg").write_bytes(b"not really a jpeg")  # an image by name: its reader says what is wrong
    return d


def test_images_are_found_by_content_and_the_rest_is_counted(folder):
    scan = scan_inputs([folder])
    assert [os.path.relpath(e.path, folder) for e in scan.entries] == ["IM000002", "a.png", "broken.jpg", "sub/IM000001"]
    assert all(e.error is None for e in scan.entries)
    skipped = {os.path.basename(p): why for p, why in scan.skipped}
    assert skipped["DICOMDIR"] == "a DICOMDIR (the index of a PACS export or CD)"
    assert skipped["notes.txt"] == "not an image (it starts with the text 'BMI report, not')"
    assert skipped["Thumbs.db"].startswith("not an image (it starts with the bytes 00 01 02")
    assert scan.skipped_summary() == "3 skipped: 1 a DICOMDIR (the index of a PACS export or CD), 2 not images"


def test_entries_that_cannot_be_read_get_an_error(folder):
    os.mkfifo(folder / "pipe")
    os.symlink(folder / "gone.png", folder / "dangling.png")
    os.symlink(folder / "self", folder / "self")
    os.symlink(folder, folder / "sub" / "up")  # a loop back to the top
    errors = {os.path.relpath(e.path, folder): e.error for e in scan_inputs([folder]).entries if e.error}
    assert errors == {
        "dangling.png": f"broken link: it points to {str(folder / 'gone.png')!r}, which does not exist",
        "pipe": "not a regular file but a named pipe (FIFO): nothing to read as an image",
        "self": "symbolic link loop: the link leads back to itself",
        "sub/up": "symbolic link loop: this folder leads back into a folder that contains it",
    }


def test_a_folder_that_cannot_be_opened_is_an_error_entry(folder, monkeypatch):
    real = os.scandir
    locked = str(folder / "sub")

    def scandir(path):
        if os.fspath(path) == locked:
            raise PermissionError(13, "Permission denied", locked)
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    entries = scan_inputs([folder]).entries
    assert [e.error for e in entries if e.path == locked] == ["cannot open this folder: permission denied: "
                                                              "medge may not read it"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every folder; the monkeypatched test covers it")
def test_a_folder_without_permission_is_an_error_entry(folder):
    (folder / "sub").chmod(0)
    try:
        assert any(e.path == str(folder / "sub") and "permission denied" in e.error for e in scan_inputs([folder]).entries)
    finally:
        (folder / "sub").chmod(0o755)


def test_explicit_paths_are_always_entries_and_an_empty_folder_is_an_error(tmp_path, folder):
    (tmp_path / "empty").mkdir()
    (tmp_path / "only_text").mkdir()
    (tmp_path / "only_text" / "a.txt").write_text("x")
    scan = scan_inputs([folder / "notes.txt", tmp_path / "missing.png", tmp_path / "empty", tmp_path / "only_text"])
    assert [(os.path.basename(e.path), e.error) for e in scan.entries] == [
        ("notes.txt", None), ("missing.png", None), ("empty", "the folder is empty"),
        ("only_text", "no image in this folder (1 other file(s) skipped)")]


def test_non_utf8_names_are_found_and_written_faithfully(tmp_path):
    d = tmp_path / "share"
    d.mkdir()
    write_image(d / NON_UTF8, xray_like(80, 70))
    (entry,) = scan_inputs([d]).entries
    assert os.path.basename(entry.path) == NON_UTF8 and classify_file(entry.path) == ("input", None)
    text = to_json({"path": entry.path})
    assert "\\udcfc" in text and "\\udcff" in text and os.fsencode(json.loads(text)["path"]).endswith(
        b"Patient_M\xfcller_\xff.png")
    assert shown(entry.path).endswith("Patient_M\\udcfcller_\\udcff.png")
    assert to_json({"name": "환자"}) == '{"name": "환자"}'  # valid UTF-8 stays readable
