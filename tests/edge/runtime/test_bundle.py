"""medge.edge.runtime.bundle without an exported model: the manifest written and read, atomic replacement, the golden inputs."""
import json

import numpy as np
import pytest

from medge.edge.errors import BundleError
from medge.edge.preprocess import PreprocessConfig
from medge.edge.runtime.bundle import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_FILE,
    MODEL_FILE,
    golden_inputs,
    read_manifest,
    sha256_bytes,
    write_bundle,
)

ONNX = b"not parsed here: the bundle stores the bytes and their hash"


def manifest(**changes):
    m = {"classes": ["normal", "disease"], "preprocess": PreprocessConfig(size=32).to_dict(),
         "model": {"input_name": "input", "input_shape": [1, 1, 32, 32], "opset": 12},
         "golden": {"seed": 0, "count": 2, "logits": [[0, 1], [1, 0]]}}
    return {**m, **changes}


def test_written_then_read_the_manifest_carries_format_hash_and_size(tmp_path):
    out = write_bundle(tmp_path / "deep" / "b", ONNX, manifest(), extra_files={"cam_head.npy": b"w"})
    assert sorted(p.name for p in out.iterdir()) == sorted(["cam_head.npy", MODEL_FILE, MANIFEST_FILE])
    assert (out / MODEL_FILE).read_bytes() == ONNX
    m = read_manifest(out)
    assert (m["format"], m["format_version"]) == (FORMAT, FORMAT_VERSION)
    assert m["model"] == {"input_name": "input", "input_shape": [1, 1, 32, 32], "opset": 12, "file": MODEL_FILE,
                          "sha256": sha256_bytes(ONNX), "size_bytes": len(ONNX)}
    assert m["classes"] == ["normal", "disease"]
    assert sha256_bytes(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_an_existing_bundle_is_replaced_only_with_overwrite(tmp_path):
    first = write_bundle(tmp_path / "b", ONNX, manifest())
    with pytest.raises(BundleError, match="exists already"):
        write_bundle(first, b"second", manifest())
    assert (first / MODEL_FILE).read_bytes() == ONNX
    write_bundle(first, b"second", manifest(), overwrite=True)
    assert (first / MODEL_FILE).read_bytes() == b"second"
    assert read_manifest(first)["model"]["sha256"] == sha256_bytes(b"second")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no hidden sibling left behind


def test_a_folder_that_is_not_a_bundle_is_never_replaced(tmp_path):
    other = tmp_path / "photos"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(BundleError, match="exists and is not a medge bundle; refusing to replace it"):
        write_bundle(other, ONNX, manifest(), overwrite=True)
    assert [p.name for p in other.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("name", [MODEL_FILE, MANIFEST_FILE, "../up.npy", "sub/x.npy", ".hidden"])
def test_bad_extra_file_names_are_refused(tmp_path, name):
    with pytest.raises(BundleError, match="bad extra bundle file name"):
        write_bundle(tmp_path / "b", ONNX, manifest(), extra_files={name: b"x"})
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("edit, message", [
    (lambda d: (d / MANIFEST_FILE).unlink(), "no model.json manifest"),
    (lambda d: (d / MANIFEST_FILE).write_text(json.dumps({"format": "other"})), "not a medge bundle manifest"),
    (lambda d: (d / MANIFEST_FILE).write_text(json.dumps({**manifest(), "format": FORMAT, "format_version": 1,
                                                          "model": {"file": MODEL_FILE}})),
     r"manifest lacks \['model.sha256', 'model.input_name', 'model.input_shape', 'model.opset'\]"),
    (lambda d: (d / MANIFEST_FILE).write_text(json.dumps({**json.loads((d / MANIFEST_FILE).read_text()),
                                                          "preprocess": {"size": 0}})), "bad preprocess section"),
])
def test_a_broken_manifest_is_a_bundle_error(tmp_path, edit, message):
    d = write_bundle(tmp_path / "b", ONNX, manifest())
    edit(d)
    with pytest.raises(BundleError, match=message):
        read_manifest(d)


def test_a_file_or_a_missing_folder_is_named(tmp_path):
    d = write_bundle(tmp_path / "b", ONNX, manifest())
    with pytest.raises(BundleError, match="is a file: give the bundle folder"):
        read_manifest(d / MODEL_FILE)
    with pytest.raises(BundleError, match="bundle folder not found"):
        read_manifest(tmp_path / "none")


def test_golden_inputs_are_the_same_for_a_seed_and_preprocessed():
    cfg = PreprocessConfig(size=32, channels=3)
    a, b = golden_inputs(7, 3, cfg), golden_inputs(7, 3, cfg)
    assert a.shape == (3, 3, 32, 32) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, golden_inputs(8, 3, cfg))
    assert not np.array_equal(a[0], a[1])  # each input its own image
    np.testing.assert_array_equal(a[:, 0], a[:, 2])  # the gray plane repeated, as the preprocessing does


def test_a_run_folder_given_as_the_bundle_points_at_the_bundle_inside(tmp_path):
    (tmp_path / "run" / "bundle").mkdir(parents=True)
    (tmp_path / "run" / "bundle" / "model.json").write_text("{}")
    (tmp_path / "run" / "data").mkdir()
    with pytest.raises(BundleError, match=r"no model\.json manifest: .*; the bundle inside it: .*run/bundle$"):
        read_manifest(tmp_path / "run")
    with pytest.raises(BundleError, match=r"no model\.json manifest: not a medge bundle, or an incomplete copy$"):
        read_manifest(tmp_path / "run" / "data")
