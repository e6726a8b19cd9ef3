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


# ---- multi-label sets: medge synth --findings K ----

def test_findings_set_writes_an_nih_index_of_patients_and_is_deterministic(tmp_path):
    from medge.edge.inputs.index import read_index
    from medge.train.synth import FINDINGS, INDEX_FILE, NIH_HEADER, FindingsConfig, generate_findings, is_synthetic

    cfg = FindingsConfig(n=20, findings=3, size=32, bits="mix", seed=2)
    counts = generate_findings(tmp_path / "a", cfg)
    generate_findings(tmp_path / "b", cfg)
    text = (tmp_path / "a" / INDEX_FILE).read_text()
    assert text == (tmp_path / "b" / INDEX_FILE).read_text()
    assert text.splitlines()[0] == NIH_HEADER == ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,"
                                                  "Patient Gender,View Position,OriginalImage[Width,Height],"
                                                  "OriginalImagePixelSpacing[x,y]")
    images = sorted((tmp_path / "a" / "images").iterdir())
    assert len(images) == counts["images"] == 20
    assert all(p.read_bytes() == (tmp_path / "b" / "images" / p.name).read_bytes() for p in images)
    index = read_index(tmp_path / "a" / INDEX_FILE, tmp_path / "a" / "images", fmt="nih", findings=FINDINGS[:3])
    assert len(index) == 20 and index.missing == () and index.findings == ("Mass", "Nodule", "Atelectasis")
    assert index.targets().sum(0).tolist() == list(counts["positives"].values())
    per_patient = np.unique(index.patients(), return_counts=True)[1]
    assert per_patient[:-1].min() >= 2 and per_patient.max() <= 4 and counts["patients"] == len(per_patient)
    assert {e.view for e in index.entries} <= {"PA", "AP"} and {e.sex for e in index.entries} <= {"M", "F"}
    assert is_synthetic(tmp_path / "a")
    assert set(read_lesion_index(tmp_path / "a")) == {f"images/{p.name}" for p in images}
    assert generate_findings(tmp_path / "c", FindingsConfig(n=20, findings=3, size=32, bits="mix", seed=3)) != counts


def test_a_patients_images_share_the_anatomy_and_differ_from_another_patients():
    from medge.train.synth import FindingsConfig, Patient, make_findings_case

    cfg = FindingsConfig(findings=2, size=64, seed=0)
    healthy = [Patient(pid, 3, "F", 50, (False, False)) for pid in (1, 2)]
    a0, a1 = (make_findings_case(healthy[0], j, cfg)[0] for j in (0, 1))
    b0 = make_findings_case(healthy[1], 0, cfg)[0]
    same, other = np.corrcoef(a0.ravel(), a1.ravel())[0, 1], np.corrcoef(a0.ravel(), b0.ravel())[0, 1]
    assert same > other + 0.05
    np.testing.assert_array_equal(make_findings_case(healthy[0], 1, cfg)[0], a1)


def expected_phi(q: float, pair: float, a: float, b: float) -> float:
    """The image-level phi of findings 0 and 1 under synth's model (the oracle): patient has 0 with q, has 1 with
    ``pair`` if it has 0 else q; an image shows a finding the patient has with a, one it has not with b."""
    show = {True: a, False: b}
    joint = {(h0, h1): (q if h0 else 1 - q) * ((pair if h0 else q) if h1 else 1 - (pair if h0 else q))
             for h0 in (True, False) for h1 in (True, False)}
    p11 = sum(w * show[h0] * show[h1] for (h0, h1), w in joint.items())
    p0 = sum(w * show[h0] for (h0, _), w in joint.items())
    p1 = sum(w * show[h1] for (_, h1), w in joint.items())
    return (p11 - p0 * p1) / np.sqrt(p0 * (1 - p0) * p1 * (1 - p1))


@pytest.mark.parametrize("seed", range(3))
def test_findings_0_and_1_come_together_and_the_others_independently(seed):
    """Seeded simulation of 3000 patients' labels: phi (scikit-learn's matthews_corrcoef) of the pair within 0.05
    of the model's value (above 0.2), of an unrelated pair within 0.05 of 0."""
    metrics = pytest.importorskip("sklearn.metrics")
    from medge.train import synth

    cfg = synth.FindingsConfig(findings=4, seed=seed)
    y = np.array([synth.findings_shown(p, j, cfg) for pid in range(1, 3001)
                  for p in [synth.make_patient(pid, cfg)] for j in range(p.images)])
    q = (cfg.prevalence - synth.SHOWN_IF_NOT) / (synth.SHOWN_IF_HAS - synth.SHOWN_IF_NOT)
    want = expected_phi(q, 0.7, synth.SHOWN_IF_HAS, synth.SHOWN_IF_NOT)
    assert want > 0.2
    assert abs(metrics.matthews_corrcoef(y[:, 0], y[:, 1]) - want) < 0.05
    assert abs(metrics.matthews_corrcoef(y[:, 2], y[:, 3])) < 0.05
    assert abs(y[:, 2].mean() - cfg.prevalence) < 0.03


def test_synth_findings_command(tmp_path, capsys):
    from medge.edge.apps.cli import main

    assert main(["synth", str(tmp_path / "d"), "--findings", "2", "--n", "7", "--size", "32"]) == 0
    captured = capsys.readouterr()
    assert "7 images of" in captured.out and "Data_Entry.csv" in captured.err
    assert json.loads((tmp_path / "d" / "synth.json").read_text())["config"]["findings"] == 2
    assert main(["synth", str(tmp_path / "e"), "--findings", "9", "--n", "7", "--size", "32"]) == 2
    assert "1 <= findings <= 8" in capsys.readouterr().err
