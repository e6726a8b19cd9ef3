import json

import numpy as np
import pytest

from medge.edge.errors import UsageError
from medge.edge.inputs.image import read_image
from medge.edge.inputs.scanning import scan_inputs
from medge.train.synth import (
    LESION_INDEX,
    SynthConfig,
    generate,
    index_key,
    make_case,
    make_image,
    read_lesion_index,
)


def test_deterministic_by_seed():
    cfg = SynthConfig(size=64, seed=3)
    np.testing.assert_array_equal(make_image(5, True, cfg), make_image(5, True, cfg))
    assert not np.array_equal(make_image(5, True, cfg), make_image(5, True, SynthConfig(size=64, seed=4)))


def test_writes_imagefolder_with_8_and_16_bit(tmp_path):
    counts = generate(tmp_path / "d", SynthConfig(n=40, size=64, bits="mix"))
    assert counts == {"train": {"disease": 14, "normal": 14}, "val": {"disease": 4, "normal": 4},
                      "test": {"disease": 2, "normal": 2}}
    files = sorted((tmp_path / "d").rglob("*.png"))
    assert len(files) == 40
    dtypes = {read_image(f).dtype for f in files}
    assert dtypes == {np.dtype(np.uint8), np.dtype(np.uint16)}
    for label in ("disease", "normal"):  # each class half 8-bit, half 16-bit: the bit depth says nothing of the class
        per_class = [read_image(f).dtype for f in files if f.parent.name == label]
        assert per_class.count(np.dtype(np.uint8)) == per_class.count(np.dtype(np.uint16)) == 10
    sixteen = [read_image(f) for f in files if read_image(f).dtype == np.uint16]
    assert max(int(a.max()) for a in sixteen) <= 4095  # 12-bit values in 16-bit files
    assert json.loads((tmp_path / "d" / "synth.json").read_text())["counts"] == counts


def test_refuses_to_overwrite_unless_asked_and_replaces_atomically(tmp_path, capsys):
    from medge.edge.apps.cli import main

    generate(tmp_path / "d", SynthConfig(n=4, size=32))
    with pytest.raises(UsageError, match="exists and is not empty"):
        generate(tmp_path / "d", SynthConfig(n=4, size=32))
    assert main(["synth", str(tmp_path / "d"), "--n", "6", "--size", "32"]) == 2
    assert main(["synth", str(tmp_path / "d"), "--n", "6", "--size", "32", "--overwrite"]) == 0
    assert len(list((tmp_path / "d").rglob("*.png"))) == 6 and f"wrote 6 images: {tmp_path / 'd'}" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no temporary folder left
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("not a data set")
    with pytest.raises(UsageError, match="not a synthetic data set; refusing"):
        generate(tmp_path / "mine", SynthConfig(n=4, size=32), overwrite=True)
    assert main(["synth", str(tmp_path / "mine" / "notes.txt" / "x"), "--n", "4", "--size", "32"]) == 2
    assert "notes.txt is a file, not a folder" in capsys.readouterr().err


def test_classes_not_separable_by_mean_brightness():
    cfg = SynthConfig(size=96)
    means = {label: np.array([make_image(i, label, cfg).mean() for i in range(60)]) for label in (True, False)}
    # AUC of "mean brightness" as a classifier stays near chance.
    from medge.edge.numeric import roc_auc

    scores = np.concatenate([means[True], means[False]])
    auc = roc_auc(np.r_[np.ones(60, bool), np.zeros(60, bool)], scores)
    assert 0.35 < auc < 0.65, auc


def test_lesion_index_says_where_the_lesions_are(tmp_path):
    cfg = SynthConfig(n=12, size=96, lesion_contrast=1.0, seed=2)  # strong lesions: visible against the anatomy
    generate(tmp_path / "d", cfg)
    pngs = sorted((tmp_path / "d").rglob("*.png"))
    index = read_lesion_index(tmp_path / "d")
    assert sorted(index) == sorted(index_key(tmp_path / "d", p) for p in pngs)  # every image, nothing else
    yy, xx = np.mgrid[0:96, 0:96]
    for png in pngs:
        drawn = index[index_key(tmp_path / "d", png)]
        assert drawn.label == png.parent.name and drawn.size == (96, 96)
        assert (len(drawn.lesions) > 0) == (png.parent.name == "disease") and len(drawn.lesions) <= 3
        assert list(drawn.lesions) == make_case(int(png.stem), drawn.label == "disease", cfg)[1]  # what was drawn
        img = read_image(png).astype(float)
        for les in drawn.lesions:
            d = np.hypot(xx - les.x, yy - les.y)
            inside, ring = img[d < 0.5 * les.radius].mean(), img[(d > 1.5 * les.radius) & (d < 2.5 * les.radius)].mean()
            assert inside > ring + 20, (png, les)  # a bright disc where the index says
    image, lesions = make_case(1, True, cfg)
    np.testing.assert_array_equal(image, make_image(1, True, cfg))  # make_image is make_case's image


def test_class_folders_hold_images_only(tmp_path):
    """The lesion index lies beside the splits: a scan of a split, as predict and validate make it, skips nothing
    (issue 31: a .json beside each image was counted 40 times as "not an image")."""
    generate(tmp_path / "d", SynthConfig(n=20, size=32))
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [LESION_INDEX, "synth.json", "test", "train", "val"]
    for split in ("train", "val", "test"):
        scan = scan_inputs([tmp_path / "d" / split])
        assert scan.skipped == [] and len(scan.paths) > 0 and all(p.endswith(".png") for p in scan.paths)
    assert {p.suffix for p in (tmp_path / "d").rglob("*") if p.is_file() and p.parent.parent != tmp_path} == {".png"}


def test_lesion_index_is_deterministic_and_readable_only_when_whole(tmp_path):
    cfg = SynthConfig(n=8, size=32, seed=5)
    generate(tmp_path / "a", cfg)
    generate(tmp_path / "b", cfg)
    assert (tmp_path / "a" / LESION_INDEX).read_bytes() == (tmp_path / "b" / LESION_INDEX).read_bytes()
    lines = (tmp_path / "a" / LESION_INDEX).read_text().splitlines()
    assert len(lines) == 8 and [json.loads(ln)["path"] for ln in lines] == sorted(json.loads(ln)["path"] for ln in lines)
    with pytest.raises(UsageError, match="no lesions.jsonl: not a data set of medge synth"):
        read_lesion_index(tmp_path)
    (tmp_path / "a" / LESION_INDEX).write_text(lines[0] + "\n" + lines[1][:20] + "\n")
    with pytest.raises(UsageError, match="line 2: not a record"):
        read_lesion_index(tmp_path / "a")
