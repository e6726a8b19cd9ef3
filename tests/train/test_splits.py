"""Splits by patient: no patient in two splits (NIH, CheXpert, generic, simulated), stratification against oracles."""
from collections import defaultdict

import numpy as np
import pytest

from medge.edge.errors import DataError
from medge.edge.inputs.index import read_index
from medge.train.splits import fractions_of, group_ids, split_by_patient
from tests.helpers import xrv_data

FRACTIONS = {"train": 0.7, "val": 0.2, "test": 0.1}




def splits_per_patient(patients, assigned) -> dict:
    seen = defaultdict(set)
    for p, s in zip(patients, assigned, strict=True):
        if p is not None:
            seen[p].add(s)
    return seen


def simulate(n_patients: int, seed: int, prevalence=(0.02, 0.05, 0.1, 0.2, 0.3)):
    """(targets (N, K) with some nan, patient ids): 1 to 5 images per patient, findings that run in patients."""
    rng = np.random.default_rng(seed)
    per = rng.integers(1, 6, n_patients)
    patients = np.repeat([f"p{i}" for i in range(n_patients)], per)
    propensity = rng.uniform(0.3, 3.0, (n_patients, len(prevalence)))  # a patient's findings come back
    p = np.clip(np.repeat(propensity, per, axis=0) * np.array(prevalence), 0, 0.95)
    targets = (rng.random(p.shape) < p).astype(float)
    targets[rng.random(p.shape) < 0.05] = np.nan  # masked (uncertain) labels
    return targets, list(patients)


@pytest.mark.parametrize("source", ["nih", "chexpert"])
def test_no_patient_of_the_real_indexes_is_in_two_splits_and_findings_are_shared_out(source):
    path = xrv_data({"nih": "Data_Entry_2017_v2020.csv.gz", "chexpert": "chexpert_train.csv.gz"}[source])
    if path is None:
        pytest.skip("torchxrayvision (dev extra) is not installed: the simulated and generic cases cover the rule")
    index = read_index(path, fmt=source)
    targets, patients = index.targets(), index.patients()
    assigned = split_by_patient(targets, patients, FRACTIONS, seed=0)
    assert max(len(s) for s in splits_per_patient(patients, assigned).values()) == 1
    positives = np.nansum(targets == 1, axis=0)
    for name, share in FRACTIONS.items():
        in_split = assigned == name
        assert abs(in_split.mean() - share) < 0.02
        np.testing.assert_allclose(np.nansum(targets[in_split] == 1, axis=0) / positives, share, atol=0.02)


def test_generic_index_patients_and_images_without_one(tmp_path):
    rows = ["path,patient,A,B"] + [f"{i}.png,{'' if i % 7 == 0 else i // 3},{i % 2},{int(i % 5 == 0)}"
                                   for i in range(300)]
    (tmp_path / "i.csv").write_text("\n".join(rows) + "\n")
    index = read_index(tmp_path / "i.csv")
    patients = index.patients()
    assert patients.count(None) == 43
    assigned = split_by_patient(index.targets(), patients, FRACTIONS, seed=1)
    assert max(len(s) for s in splits_per_patient(patients, assigned).values()) == 1
    assert set(assigned) == set(FRACTIONS)


@pytest.mark.parametrize("seed", range(5))
def test_no_patient_in_two_splits_and_each_finding_shared_as_asked(seed):
    """Seeded simulation: per-finding shares within 0.03 of the fractions for every finding with 100+ positives,
    and closer than a random grouped split (the oracle for the grouping: scikit-learn's GroupShuffleSplit)."""
    model_selection = pytest.importorskip("sklearn.model_selection")
    targets, patients = simulate(3000, seed)
    assigned = split_by_patient(targets, patients, {"train": 0.8, "val": 0.2}, seed=seed)
    assert max(len(s) for s in splits_per_patient(patients, assigned).values()) == 1
    known = np.nan_to_num(targets, nan=0.0) == 1
    ours = known[assigned == "val"].sum(0) / known.sum(0)
    assert np.all(np.abs(ours - 0.2) < 0.03)
    assert abs((assigned == "val").mean() - 0.2) < 0.02
    gss = model_selection.GroupShuffleSplit(n_splits=1, test_size=0.2, random_state=seed)
    _, val = next(gss.split(targets, groups=patients))
    theirs = known[val].sum(0) / known.sum(0)
    assert np.abs(ours - 0.2).max() < np.abs(theirs - 0.2).max()
    assert not set(np.array(patients)[val]) & set(np.array(patients)[np.setdiff1d(np.arange(len(patients)), val)])


@pytest.mark.parametrize("seed", range(3))
def test_single_label_classes_are_shared_as_well_as_stratified_group_kfold_does(seed):
    """Oracle: scikit-learn's StratifiedGroupKFold (5 folds: one is a 20 % validation split)."""
    model_selection = pytest.importorskip("sklearn.model_selection")
    rng = np.random.default_rng(seed)
    per = rng.integers(1, 5, 800)
    groups = np.repeat(np.arange(800), per)
    labels = np.repeat(rng.choice(3, 800, p=[0.6, 0.3, 0.1]), per)
    assigned = split_by_patient(labels, groups, {"train": 0.8, "val": 0.2}, seed=seed)
    assert max(len(s) for s in splits_per_patient(groups.tolist(), assigned).values()) == 1
    ours = np.abs(np.bincount(labels[assigned == "val"], minlength=3) / np.bincount(labels) - 0.2).max()
    sgkf = model_selection.StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=seed)
    _, val = next(sgkf.split(labels, labels, groups))
    theirs = np.abs(np.bincount(labels[val], minlength=3) / np.bincount(labels) - 0.2).max()
    assert ours <= theirs + 0.01 and ours < 0.02


def test_the_split_is_deterministic_for_a_seed():
    targets, patients = simulate(300, 0)
    a = split_by_patient(targets, patients, FRACTIONS, seed=4)
    assert (a == split_by_patient(targets, patients, FRACTIONS, seed=4)).all()
    assert (a != split_by_patient(targets, patients, FRACTIONS, seed=5)).any()


def test_an_index_split_is_kept_and_only_the_rest_assigned_with_the_patients_following():
    targets, patients = simulate(200, 1)
    fixed = [None] * len(patients)
    fixed[0] = "test"  # patient p0's other images follow it
    for i in range(len(patients) // 2, len(patients)):
        fixed[i] = "train"
    assigned = split_by_patient(targets, patients, FRACTIONS, seed=0, fixed=fixed)
    assert all(a == f for a, f in zip(assigned, fixed, strict=True) if f)
    assert all(a == "test" for a, p in zip(assigned, patients, strict=True) if p == patients[0])
    assert max(len(s) for s in splits_per_patient(patients, assigned).values()) == 1
    assert (split_by_patient(targets, patients, FRACTIONS, fixed=["val"] * len(patients)) == "val").all()


def test_a_patient_given_two_splits_is_an_error_and_so_is_an_unknown_split():
    targets = np.zeros((3, 1))
    with pytest.raises(DataError, match=r"image 1: its patient is in the train and the val split"):
        split_by_patient(targets, ["a", "a", "b"], fixed=["train", "val", None])
    with pytest.raises(DataError, match=r"image 0: split 'holdout' is not one of train, val"):
        split_by_patient(targets, ["a", "a", "b"], fixed=["holdout", None, None])


def test_images_without_a_patient_are_groups_of_their_own_and_too_few_patients_is_an_error():
    ids = group_ids(["a", None, "a", "", "b"], 5)
    assert ids[0] == ids[2] and len(set(ids.tolist())) == 4
    assigned = split_by_patient(np.zeros((10, 1)), None, {"train": 0.5, "val": 0.5})
    assert (assigned == "val").sum() == 5
    with pytest.raises(DataError, match=r"1 patient\(s\): too few to give the val split"):
        split_by_patient(np.ones((4, 2)), ["a"] * 4, {"train": 0.8, "val": 0.2})
    with pytest.raises(DataError, match="must be >= 0 and sum to 1"):
        split_by_patient(np.ones((4, 2)), None, {"train": 0.8, "val": 0.3})
    assert fractions_of(0.2) == {"train": 0.8, "val": 0.2}
    with pytest.raises(DataError, match="val_fraction"):
        fractions_of(0.6, 0.5)


def pixels_and_findings(cfg, patient_ids):
    """(16 x 16 pixels per image, standardised; findings shown; patient) of synthetic patients, drawn in memory."""
    import cv2

    from medge.train.synth import make_findings_case, make_patient

    rows = []
    for pid in patient_ids:
        patient = make_patient(pid, cfg)
        for j in range(patient.images):
            img, shown, _, _ = make_findings_case(patient, j, cfg)
            rows.append((cv2.resize(img, (16, 16), interpolation=cv2.INTER_AREA).ravel(), shown, pid))
    x = np.array([r[0] for r in rows])
    x = (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)
    return x, np.array([r[1] for r in rows], dtype=float), np.array([r[2] for r in rows])


def mean_auc(x_train, y_train, x_test, y_test) -> float:
    """Mean over findings of the AUC of a 5-nearest-neighbour vote (scikit-learn), one finding at a time."""
    from sklearn.metrics import roc_auc_score
    from sklearn.neighbors import KNeighborsClassifier

    return float(np.mean([roc_auc_score(y_test[:, k], KNeighborsClassifier(5).fit(x_train, y_train[:, k])
                                        .predict_proba(x_test)[:, 1]) for k in range(y_train.shape[1])]))


@pytest.mark.parametrize("seed", range(3))
def test_a_split_by_image_inflates_validation_auc_and_the_split_by_patient_does_not(seed):
    """medge synth's patients share anatomy and findings across their images. A 5-nearest-neighbour learner on
    16 x 16 pixels, validated on a split by image, finds each image's own patient in training: its AUC exceeds
    the split by patient's by more than 0.15. The split by patient's validation AUC agrees with the AUC on 100
    new patients within 0.1 (what the model will meet after go-live)."""
    pytest.importorskip("sklearn")
    from medge.train.synth import FindingsConfig

    cfg = FindingsConfig(findings=3, size=32, seed=seed)
    x, y, patients = pixels_and_findings(cfg, range(1, 151))
    x_new, y_new, _ = pixels_and_findings(cfg, range(5001, 5101))
    fractions = {"train": 0.8, "val": 0.2}
    by_image = split_by_patient(y, None, fractions, seed)
    by_patient = split_by_patient(y, patients, fractions, seed)
    assert set(patients[by_image == "train"]) & set(patients[by_image == "val"])  # the leak
    auc_image = mean_auc(x[by_image == "train"], y[by_image == "train"], x[by_image == "val"], y[by_image == "val"])
    train, val = by_patient == "train", by_patient == "val"
    auc_patient = mean_auc(x[train], y[train], x[val], y[val])
    auc_new = mean_auc(x[train], y[train], x_new, y_new)
    assert auc_image > auc_patient + 0.15
    assert abs(auc_patient - auc_new) < 0.1
