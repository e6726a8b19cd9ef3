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


def png(path, value: int = 100):
    from medge.edge.inputs.image import write_image

    write_image(path, np.full((16, 16), value, np.uint8))
    return path


def indexed_set(tmp_path, n_patients: int = 30, split_column: bool = False):
    """A generic index of 2 findings over n_patients patients of 3 images each, the images in a folder."""
    rows = ["path,patient,Effusion,Nodule" + (",split" if split_column else "")]
    for p in range(n_patients):
        for j in range(3):
            name = f"p{p}_{j}.png"
            png(tmp_path / "img" / name, 50 + p)
            split = ("," + ("test" if p < 3 else "")) if split_column else ""
            rows.append(f"{name},P{p},{int(p % 3 == 0)},{'-1' if (p + j) % 5 == 0 else int(p % 4 == 1)}{split}")
    (tmp_path / "index.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "index.csv", tmp_path / "img"


def test_an_index_is_split_by_patient_with_multilabel_targets_and_a_summary(tmp_path):
    from medge.edge.inputs.index import read_index

    csv, images = indexed_set(tmp_path)
    (images / "p0_0.png").unlink()  # named but missing: listed, never a crash
    findings, splits = D.discover_index(read_index(csv, images), val_fraction=0.2, test_fraction=0.1, seed=0)
    assert findings == ["Effusion", "Nodule"] and set(splits) == {"train", "val", "test"}
    patients = [set(s.patients) for s in splits.values()]
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
    assert splits["train"].failures == [("p0_0.png", f"p0_0.png: not found under {images}")]
    assert all(isinstance(y, tuple) and len(y) == 2 for s in splits.values() for y in s.labels)
    summary = D.split_summary(splits)
    assert sum(r["images"] for r in summary.values()) == 89 and sum(r["patients"] for r in summary.values()) == 30
    assert sum(r["positives"]["Effusion"] for r in summary.values()) == 29
    assert summary["val"]["patients"] == 6 and summary["test"]["patients"] == 3
    assert sum(r["masked"]["Nodule"] for r in summary.values()) == 17  # -1 under "ignore" (18, less p0_0.png)
    fp = D.fingerprint(images, findings, splits)
    assert fp["classes"] == findings and sum(fp["images"]["train"].values()) > 0
    again = D.discover_index(read_index(csv, images), 0.2, 0.1, 0)[1]
    assert D.fingerprint(images, findings, again) == fp
    assert D.discover_index(read_index(csv, images), 0.2, 0.1, 1)[1]["val"].patients != splits["val"].patients
    (images / "p5_1.png").unlink()  # a file gone: no other patient moves
    later = D.discover_index(read_index(csv, images), 0.2, 0.1, 0)[1]
    assert {n: set(s.patients) for n, s in later.items()} == {n: set(s.patients) for n, s in splits.items()}
    assert sum(map(len, later.values())) == 88


def test_the_uncertain_policy_moves_no_patient_between_splits(tmp_path):
    """Runs of one index under ignore, zeros and ones are split alike (a -1 counted as masked when drawing), so that
    their validation figures are on the same patients."""
    from medge.edge.inputs.index import read_index

    csv, images = indexed_set(tmp_path)
    drawn = {}
    for policy in ("ignore", "zeros", "ones"):
        _, splits = D.discover_index(read_index(csv, images, uncertain=policy), 0.2, 0.1, 0)
        drawn[policy] = {name: sorted(s.patients) for name, s in splits.items()}
    assert drawn["zeros"] == drawn["ignore"] and drawn["ones"] == drawn["ignore"]
    _, ones = D.discover_index(read_index(csv, images, uncertain="ones"), 0.2, 0.1, 0)
    assert sum(y[1] == 1.0 for s in ones.values() for y in s.labels) > sum(
        y[1] == 1.0 for s in D.discover_index(read_index(csv, images), 0.2, 0.1, 0)[1].values() for y in s.labels)


def test_files_an_index_names_but_lacks_are_reported_as_missing_not_as_non_images(tmp_path, capsys):
    from medge.edge.inputs.index import read_index

    csv, images = indexed_set(tmp_path)
    (images / "p0_0.png").unlink()
    _, splits = D.discover_index(read_index(csv, images), val_fraction=0.2, test_fraction=0.1, seed=0)
    D.prepare(splits["train"], PreprocessConfig(size=32), str(tmp_path / "c"), name="train")
    assert "train: left out 1 file(s) named in the index but missing or not images" in capsys.readouterr().err


def test_indexed_splits_are_prepared_with_their_patients_and_unreadable_files_counted(tmp_path):
    from medge.edge.inputs.index import read_index

    csv, images = indexed_set(tmp_path)
    (images / "p1_0.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # truncated: counted at preprocessing
    _, splits = D.discover_index(read_index(csv, images), 0.2, 0.0, 0)
    assert set(splits) == {"train", "val"}
    name = next(n for n, s in splits.items() if str(images / "p1_0.png") in s.paths)
    ready = D.prepare(splits[name], PreprocessConfig(size=32), str(tmp_path / "c"), verbose=False)
    assert len(ready) == len(splits[name]) - 1 and len(ready.patients) == len(ready)
    assert ready.failures[-1][0] == str(images / "p1_0.png") and ready.findings == ("Effusion", "Nodule")
    D.check_usable(ready, ["Effusion", "Nodule"], name)
    empty = D.Split([], [], findings=("Effusion",))
    with pytest.raises(DataError, match="the val split has no usable image"):
        D.check_usable(empty, ["Effusion"], "val")
    with pytest.raises(DataError, match=r"no usable positive image of finding\(s\) \['Nodule'\]: nothing to learn them "
                       r"from; leave their columns out of the index"):
        D.check_usable(D.Split(["a"], [(1.0, 0.0)]), ["Effusion", "Nodule"], "train")
    D.check_usable(D.Split(["a"], [(1.0, 0.0)]), ["Effusion", "Nodule"], "val")  # validation may lack one


def test_an_index_split_column_is_kept_and_the_rest_split_by_patient(tmp_path):
    from medge.edge.inputs.index import read_index

    csv, images = indexed_set(tmp_path, split_column=True)
    _, splits = D.discover_index(read_index(csv, images), val_fraction=0.2, test_fraction=0.0, seed=0)
    assert set(splits) == {"train", "val", "test"}
    assert sorted(set(splits["test"].patients)) == ["P0", "P1", "P2"]
    assert not set(splits["train"].patients) & set(splits["val"].patients)
    lines = csv.read_text().splitlines()
    lines[2] = lines[2][: -len("test")] + "val"  # patient P0's second image
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"index.csv: patient P0 is in the test split \(line 2\) and the val split "
                                        r"\(line 3\)"):
        D.discover_index(read_index(csv, images))


def dicom_classes(tmp_path, patient_ids: bool):
    """ROOT/<class>/*.dcm: 12 patients of 3 images per class (PatientID set or not)."""
    pytest.importorskip("pydicom")
    import pydicom

    from medge.train.synth import write_dicom

    root = tmp_path / ("with" if patient_ids else "without")
    for cls in ("disease", "normal"):
        (root / cls).mkdir(parents=True)
        for p in range(12):
            for j in range(3):
                path = write_dicom(root / cls / f"{p}_{j}.dcm", np.full((16, 16), 100 * (p + 1), np.uint16))
                if patient_ids:
                    ds = pydicom.dcmread(path)
                    ds.PatientID = f"{cls}-{p}" if p < 10 else f"both-{p}"  # 2 patients in both classes
                    ds.save_as(path)
    return root


def test_dicom_class_folders_are_split_by_patient_id(tmp_path):
    from medge.edge.inputs.index import dicom_patient

    root = dicom_classes(tmp_path, patient_ids=True)
    classes, splits = D.discover(root, val_fraction=0.25, seed=0)
    patient = {s: {dicom_patient(p) for p in splits[s].paths} for s in ("train", "val")}
    assert not patient["train"] & patient["val"]
    assert len(splits["val"]) % 3 == 0 and sorted(set(splits["val"].labels)) == [0, 1]
    assert 12 <= len(splits["val"]) <= 24  # about a quarter of 72 images, whole patients
    # each image's patient is kept, so that the run records patients per split
    assert [splits["val"].patients[i] == dicom_patient(p) for i, p in enumerate(splits["val"].paths)] == [True] * len(
        splits["val"])
    summary = D.split_summary(splits)
    assert summary["val"]["patients"] == len(patient["val"]) and summary["train"]["patients"] == len(patient["train"])
    plain = dicom_classes(tmp_path, patient_ids=False)  # no PatientID: today's per-image split
    _, by_image = D.discover(plain, val_fraction=0.25, seed=0)
    files = {c: sorted(str(p) for p in (plain / c).iterdir()) for c in classes}
    expected = D._stratified(files, 0.25, 0)[1]
    assert by_image["val"].paths == [p for c in classes for p in expected[c]]
    assert by_image["val"].patients == [] and D.split_summary(by_image)["val"]["patients"] is None


def test_user_made_folders_that_share_a_dicom_patient_are_said(tmp_path, capsys):
    root = dicom_classes(tmp_path, patient_ids=True)
    for cls in ("disease", "normal"):  # the user's own train/ and val/ folders: patient 0's third image in val
        (root / "train" / cls).mkdir(parents=True)
        (root / "val" / cls).mkdir(parents=True)
        for f in sorted((root / cls).iterdir()):
            f.rename(root / ("val" if f.name.startswith(("1_", "0_2")) else "train") / cls / f.name)
        (root / cls).rmdir()
    _, splits = D.discover(root)
    err = capsys.readouterr().err
    assert "patient disease-0 has images in the train and the val split" in err
    assert "patient normal-1" not in err  # all of patient 1's images are in val
    assert D.split_summary(splits)["val"]["patients"] == 4  # disease-0, disease-1, normal-0, normal-1


def test_an_index_without_patients_groups_dicom_files_by_their_patient_id(tmp_path):
    from medge.edge.inputs.index import dicom_patient, read_index

    root = dicom_classes(tmp_path, patient_ids=True)
    files = sorted((root / "disease").iterdir()) + sorted((root / "normal").iterdir())
    rows = ["path,Effusion"] + [f"{p.parent.name}/{p.name},{int(p.parent.name == 'disease')}" for p in files]
    (tmp_path / "index.csv").write_text("\n".join(rows) + "\n")
    _, splits = D.discover_index(read_index(tmp_path / "index.csv", root), 0.25, 0.0, seed=0)
    ids = {name: {dicom_patient(p) for p in s.paths} for name, s in splits.items()}
    assert not ids["train"] & ids["val"]
    assert splits["val"].patients == [dicom_patient(p) for p in splits["val"].paths]
    assert D.split_summary(splits)["val"]["patients"] == len(ids["val"])


def fixed_index(tmp_path, splits_of):
    """A generic index of 40 one-image patients whose split column holds ``splits_of(p)`` (blank: to be drawn)."""
    rows = ["path,patient,Effusion,split"]
    for p in range(40):
        png(tmp_path / "img" / f"p{p}.png", 50 + p)
        rows.append(f"p{p}.png,P{p},{int(p % 3 == 0)},{splits_of(p)}")
    (tmp_path / "index.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "index.csv", tmp_path / "img"


def test_an_index_that_fixes_every_row_gives_exactly_its_own_splits(tmp_path):
    from medge.edge.inputs.index import read_index

    csv, images = fixed_index(tmp_path, lambda p: "val" if p % 4 == 0 else "train")
    _, splits = D.discover_index(read_index(csv, images), val_fraction=0.2, test_fraction=0.1, seed=0)
    assert {n: len(s) for n, s in splits.items()} == {"train": 30, "val": 10}  # no empty test split
    with pytest.raises(DataError, match=r"index.csv: every row's split is given by its split column and none is "
                                        r"'val'"):
        D.discover_index(read_index(fixed_index(tmp_path, lambda p: "train")[0], images))


def test_a_test_split_the_index_never_names_is_left_out_when_empty_and_an_empty_split_names_the_options(tmp_path):
    from medge.edge.inputs.index import read_index

    csv, images = fixed_index(tmp_path, lambda p: "" if p < 2 else "train")  # 2 free patients: both to val
    _, splits = D.discover_index(read_index(csv, images), val_fraction=0.2, test_fraction=0.1, seed=0)
    assert set(splits) == {"train", "val"} and sum(map(len, splits.values())) == 40
    csv, images = fixed_index(tmp_path, lambda p: "" if p < 1 else "train")  # 1 free patient: to test, val empty
    with pytest.raises(DataError, match=r"index.csv: .*the val split.*--test-fraction 0.*--val-fraction"):
        D.discover_index(read_index(csv, images), val_fraction=0.1, test_fraction=0.3, seed=0)


def test_a_split_by_image_is_said_for_every_format_and_images_without_a_patient_are_counted(tmp_path, capsys):
    from medge.edge.inputs.index import read_index

    rows = ["path,Effusion"] + [f"p{p}.png,{p % 2}" for p in range(20)]  # generic, no patient column
    (tmp_path / "g.csv").write_text("\n".join(rows) + "\n")
    D.discover_index(read_index(tmp_path / "g.csv"), 0.2, 0.0)
    err = capsys.readouterr().err
    assert "g.csv: no image has a patient" in err and "each image is its own patient, so the split is by image" in err
    assert "validation figures may be inflated" in err and err.count("no image has a patient") == 1
    chexpert = ["Path,Sex,Age,Frontal/Lateral,AP/PA,Effusion"] + [f"train/study{p}/view1.jpg,M,50,Frontal,PA,{p % 2}"
                                                                    for p in range(20)]
    (tmp_path / "c.csv").write_text("\n".join(chexpert) + "\n")
    D.discover_index(read_index(tmp_path / "c.csv", fmt="chexpert"), 0.2, 0.0)
    assert "c.csv: no image has a patient" in capsys.readouterr().err
    rows = ["path,patient,Effusion"] + [f"p{p}.png,{'' if p < 3 else f'P{p}'},{p % 2}" for p in range(20)]
    (tmp_path / "s.csv").write_text("\n".join(rows) + "\n")
    D.discover_index(read_index(tmp_path / "s.csv"), 0.2, 0.0)
    err = capsys.readouterr().err
    assert "s.csv: 3 of 20 image(s) have no patient: each of those is its own patient" in err
    assert "no image has a patient" not in err
    D.discover_index(read_index(indexed_set(tmp_path)[0]), 0.2, 0.0)  # every image has a patient: nothing said
    assert "patient" not in capsys.readouterr().err


def test_the_split_under_zeros_and_ones_is_drawn_without_reading_the_index_again(tmp_path, monkeypatch):
    """The labels that were uncertain are kept from the one read: the index moved or gone after reading changes no
    split, and the split is the one ignore draws."""
    from medge.edge.inputs.index import read_index

    csv, images = indexed_set(tmp_path)
    expected = {name: sorted(s.patients) for name, s in D.discover_index(read_index(csv, images), 0.2, 0.1)[1].items()}
    read = {policy: read_index(csv, images, uncertain=policy) for policy in ("zeros", "ones")}
    csv.unlink()
    monkeypatch.setattr(D, "read_index", lambda *a, **k: pytest.fail("the index read again"), raising=False)
    for policy, index in read.items():
        drawn = {name: sorted(s.patients) for name, s in D.discover_index(index, 0.2, 0.1)[1].items()}
        assert drawn == expected, policy
