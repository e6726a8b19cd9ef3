import shutil

import numpy as np
import pytest

from medge.edge.errors import DataError
from medge.edge.inputs.image import read_image
from medge.edge.preprocess import PreprocessConfig, preprocess
from medge.train import data as D


def test_discovers_imagefolder_splits(tiny_data):
    classes, splits = D.discover(tiny_data)
    assert classes == ["disease", "normal"]
    assert {k: len(v) for k, v in splits.items()} == {"train": 28, "val": 8, "test": 4}
    assert sorted(set(splits["val"].labels)) == [0, 1]


def test_one_folder_of_classes_is_split_stratified_and_seeded(tmp_path, tiny_data):
    flat = tmp_path / "flat"
    for c in ("disease", "normal"):
        shutil.copytree(tiny_data / "train" / c, flat / c)
    classes, splits = D.discover(flat, val_fraction=0.25, seed=3)
    assert set(splits) == {"train", "val"}
    assert np.bincount(splits["val"].labels).tolist() == [4, 4]  # 14 per class * 0.25 rounded
    assert not set(splits["train"].paths) & set(splits["val"].paths)
    assert D.discover(flat, 0.25, 3)[1]["val"].paths == splits["val"].paths
    assert D.discover(flat, 0.25, 4)[1]["val"].paths != splits["val"].paths


def test_the_profile_records_whether_medge_synth_made_the_data(tiny_data, tmp_path):
    """From the set's synth.json marker, never from the pixels: the same images copied without it are not marked."""
    flat = tmp_path / "flat"
    for c in ("disease", "normal"):
        shutil.copytree(tiny_data / "train" / c, flat / c)
    _, splits = D.discover(tiny_data)
    train = D.prepare(splits["train"], PreprocessConfig(size=32), str(tmp_path / "c"), verbose=False)
    assert D.data_profile(train, tiny_data)["synthetic"] is True
    assert D.data_profile(train, tiny_data / "train")["synthetic"] is True  # a split folder given as the data
    assert D.data_profile(train, flat)["synthetic"] is False
    assert D.data_profile(train, flat / "disease")["synthetic"] is False


def test_evaluation_tensors_equal_edge_preprocess_bit_for_bit(tiny_data, tmp_path):
    cfg = PreprocessConfig(size=48)
    _, splits = D.discover(tiny_data)
    val = D.prepare(splits["val"], cfg, str(tmp_path / "cache"))
    batch = D.load_normalized(val, range(len(val)), cfg)
    for i, path in enumerate(val.paths):
        np.testing.assert_array_equal(batch[i], preprocess(read_image(path), cfg))
    # Second pass reads the cache and gives the same tensors.
    again = D.prepare(splits["val"], cfg, str(tmp_path / "cache"))
    np.testing.assert_array_equal(D.load_normalized(again, range(len(again)), cfg), batch)


def test_cache_key_follows_file_changes(tiny_data, tmp_path):
    cfg = PreprocessConfig(size=32)
    src = next((tiny_data / "train" / "normal").iterdir())
    path = tmp_path / "x.png"
    shutil.copy(src, path)
    first = D.prepare_one(str(path), cfg, str(tmp_path / "c"))
    shutil.copy(next((tiny_data / "train" / "disease").iterdir()), path)  # new content, new mtime/size
    second = D.prepare_one(str(path), cfg, str(tmp_path / "c"))
    assert first != second
    assert D.prepare_one(str(path), PreprocessConfig(size=40), str(tmp_path / "c")) != second


def test_unreadable_images_are_skipped_and_reported(tiny_data, tmp_path, capsys):
    root = tmp_path / "d"
    shutil.copytree(tiny_data, root)
    (root / "train" / "normal" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (root / "train" / "normal" / "empty.png").write_bytes(b"")
    _, splits = D.discover(root)
    train = D.prepare(splits["train"], PreprocessConfig(size=32), str(tmp_path / "c"), name="train")
    assert len(train) == 28
    assert sorted(p.rsplit("/", 1)[1] for p, _ in train.failures) == ["broken.png", "empty.png"]
    err = capsys.readouterr().err
    assert "broken.png: truncated PNG" in err and "train: skipped 2 of 30 image(s)" in err


def test_files_that_are_not_images_are_left_out_and_reported(tiny_data, tmp_path, capsys):
    """A notes file or a sidecar in a class folder is neither trained on nor dropped silently: it is a failure
    of its split, with the reason predict and validate give (edge.inputs.scanning.classify_file)."""
    root = tmp_path / "d"
    shutil.copytree(tiny_data, root)
    (root / "train" / "normal" / "notes.txt").write_text("seen by Dr X\n")
    (root / "val" / "disease" / "00001.json").write_text('{"lesions": []}')
    _, splits = D.discover(root)
    assert [p.rsplit("/", 1)[1] for p, _ in splits["train"].failures] == ["notes.txt"]
    assert [p.rsplit("/", 1)[1] for p, _ in splits["val"].failures] == ["00001.json"]
    assert all("not an image" in reason for s in splits.values() for _, reason in s.failures)
    assert not any(p.endswith((".txt", ".json")) for s in splits.values() for p in s.paths)
    train = D.prepare(splits["train"], PreprocessConfig(size=32), str(tmp_path / "c"), name="train")
    assert [p.rsplit("/", 1)[1] for p, _ in train.failures] == ["notes.txt"] and len(train) == len(splits["train"])
    assert "train: left out 1 file(s) that are not images" in capsys.readouterr().err


def test_empty_class_folder_is_an_error(tiny_data, tmp_path):
    root = tmp_path / "d"
    shutil.copytree(tiny_data, root)
    for f in (root / "val" / "normal").iterdir():
        f.unlink()
    with pytest.raises(DataError, match="class 'normal' has no images in the val split"):
        D.discover(root)


def test_class_with_only_unreadable_images_is_an_error(tiny_data, tmp_path):
    root = tmp_path / "d"
    shutil.copytree(tiny_data, root)
    for f in (root / "val" / "normal").iterdir():
        f.write_bytes(b"not an image")
    classes, splits = D.discover(root)
    val = D.prepare(splits["val"], PreprocessConfig(size=32), str(tmp_path / "c"), verbose=False)
    with pytest.raises(DataError, match=r"the val split has no usable image of class\(es\) \['normal'\]"):
        D.check_usable(val, classes, "val")


def test_missing_folder_and_single_class(tmp_path):
    with pytest.raises(DataError, match="data folder not found"):
        D.discover(tmp_path / "nope")
    (tmp_path / "one" / "a").mkdir(parents=True)
    (tmp_path / "one" / "a" / "x.png").write_bytes(b"x")
    with pytest.raises(DataError, match="need at least 2 class folders"):
        D.discover(tmp_path / "one")
