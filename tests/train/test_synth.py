import json

import numpy as np
import pytest

from medge.edge.errors import UsageError
from medge.edge.inputs.image import read_image
from medge.train.synth import SynthConfig, generate, make_case, make_image, read_lesions


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


def test_lesion_sidecars_say_where_the_lesions_are(tmp_path):
    cfg = SynthConfig(n=12, size=96, lesion_contrast=1.0, seed=2)  # strong lesions: visible against the anatomy
    generate(tmp_path / "d", cfg)
    pngs = sorted((tmp_path / "d").rglob("*.png"))
    assert sorted(p.with_suffix(".json") for p in pngs) == sorted((tmp_path / "d").rglob("0*.json"))
    yy, xx = np.mgrid[0:96, 0:96]
    for png in pngs:
        side = json.loads(png.with_suffix(".json").read_text())
        assert side["label"] == png.parent.name and side["size"] == [96, 96]
        lesions = read_lesions(png)
        assert (len(lesions) > 0) == (png.parent.name == "disease") and len(lesions) <= 3
        img = read_image(png).astype(float)
        for les in lesions:
            d = np.hypot(xx - les.x, yy - les.y)
            inside, ring = img[d < 0.5 * les.radius].mean(), img[(d > 1.5 * les.radius) & (d < 2.5 * les.radius)].mean()
            assert inside > ring + 20, (png, les)  # a bright disc where the sidecar says
    assert read_lesions(tmp_path / "nowhere.png") is None
    image, lesions = make_case(1, True, cfg)
    np.testing.assert_array_equal(image, make_image(1, True, cfg))  # make_image is make_case's image
