"""Per-finding calibration and thresholds of a multi-label model (export.findings), on hand-made validation arrays."""
import json
from pathlib import Path

import numpy as np
import pytest

from medge.edge.decision import SECTION
from medge.edge.errors import ModelIntegrityError, UsageError
from medge.edge.findings import FindingsPoint
from medge.edge.golive.thresholds import guaranteed_rank
from medge.export.findings import findings_section, summary_lines

FINDINGS = ["Effusion", "Nodule"]


def quiet(line):
    pass


def _cases(rng, positives=(100, 80), negatives=(100, 80), masked=(0, 40), separation=(2.0, 1.5), scale=(1.0, 3.0)):
    """Logits and targets of two findings: finding k has exactly positives[k] positives, negatives[k] negatives and
    masked[k] masked cases (in a random order), its logit scale[k] * N(separation[k] * truth, 1)."""
    n = positives[0] + negatives[0] + masked[0]
    assert all(p + q + m == n for p, q, m in zip(positives, negatives, masked, strict=True))
    z, t = np.empty((n, len(positives))), np.empty((n, len(positives)))
    for k in range(len(positives)):
        t[:, k] = rng.permutation(np.r_[np.ones(positives[k]), np.zeros(negatives[k]), np.full(masked[k], np.nan)])
        truth = np.nan_to_num(t[:, k], nan=rng.random() < 0.5)
        z[:, k] = scale[k] * rng.normal(separation[k] * truth, 1.0)
    return z, t


def _point(section, findings=FINDINGS):
    return FindingsPoint.from_manifest({"task": "multilabel", "classes": list(findings), SECTION: section})


def test_each_finding_meets_its_sensitivity_target_by_simulation():
    """400 validation splits of two findings (100 and 80 positives, the second with 40 masked cases), sensitivity=0.9
    at 95% confidence: each finding's true sensitivity at its threshold is short of 0.9 in at most about 5% of the
    exports, as the binomial tail of its rank says (the threshold moved between scores only raises it)."""
    stats = pytest.importorskip("scipy.stats")
    rng, runs = np.random.default_rng(3500), 400
    short = np.zeros(2)
    for _ in range(runs):
        z, t = _cases(rng)
        section = findings_section(z, t, FINDINGS, "sensitivity=0.9", "simulation")
        for k, e in enumerate(section["findings"]):
            assert e["guarantee"]["supported"]
            z_threshold = e["temperature"] * np.log(e["threshold"] / (1 - e["threshold"]))  # the logit it sits on
            true_sensitivity = stats.norm.sf(z_threshold / (1.0, 3.0)[k] - (2.0, 1.5)[k])
            short[k] += true_sensitivity < 0.9
    exact = np.array([stats.binom.cdf(guaranteed_rank(n, 0.9) - 1, n, 0.1) for n in (100, 80)])
    se = np.sqrt(exact * (1 - exact) / runs)
    assert np.all(short / runs <= exact + 4 * se) and np.all(exact <= 0.05)
    assert np.all(short / runs >= exact - 6 * se)  # the bound is used, not a threshold far below it


def test_temperature_per_finding_matches_scipy_minimising_the_binary_nll():
    optimize = pytest.importorskip("scipy.optimize")
    z, t = _cases(np.random.default_rng(7), scale=(0.5, 3.0))
    section = findings_section(z, t, FINDINGS, "youden", "test")
    for k, e in enumerate(section["findings"]):
        known = ~np.isnan(t[:, k])
        zk, yk = z[known, k], t[known, k]

        def nll(temperature, zk=zk, yk=yk):
            p = 1 / (1 + np.exp(-zk / temperature))
            return -np.mean(yk * np.log(p) + (1 - yk) * np.log1p(-p))

        oracle = optimize.minimize_scalar(nll, bounds=(0.05, 50), method="bounded", options={"xatol": 1e-10}).x
        assert e["calibration"]["at_bound"] is None
        assert e["temperature"] == pytest.approx(oracle, rel=1e-5)
        assert e["calibration"]["nll_calibrated"] == pytest.approx(nll(oracle), rel=1e-9)
        assert e["calibration"]["nll_uncalibrated"] == pytest.approx(nll(1.0), rel=1e-9)
    assert section["findings"][1]["temperature"] > 2  # the logits scaled by 3 are over-confident


def test_masked_cases_are_left_out_of_their_finding_only():
    rng = np.random.default_rng(11)
    z, t = _cases(rng)
    masked = np.isnan(t[:, 1])
    other = z.copy()
    other[masked, 1] = rng.normal(0, 50, masked.sum())  # what a masked case's logit is must not matter
    a, b = (findings_section(x, t, FINDINGS, "sensitivity=0.9", "test") for x in (z, other))
    known = lambda e: {**e, "validation": {k: v for k, v in e["validation"].items() if k != "all_scores"}}  # noqa: E731
    assert known(a["findings"][1]) == known(b["findings"][1])
    v = a["findings"][1]["validation"]
    assert (v["cases"], v["n_positive"], v["n_negative"], v["masked"]) == (160, 80, 80, 40)
    assert len(v["scores"]) == len(v["positives"]) == 160 and sum(v["positives"]) == 80
    alone = findings_section(z[~masked][:, [1]], t[~masked][:, [1]], ["Nodule"], "sensitivity=0.9", "test")
    drop = lambda e: {k: v for k, v in e.items() if k != "validation"}  # noqa: E731
    assert drop(alone["findings"][0]) == drop(a["findings"][1])


def test_every_validation_image_s_calibrated_probability_is_the_drift_reference():
    """all_scores: per finding, each validation image's sigmoid(z / T) as the edge computes it, masked ones
    included (a site's records hold every image); scores: the known cases only, in the same order."""
    rng = np.random.default_rng(12)
    z, t = _cases(rng, positives=(100, 3), negatives=(100, 137), masked=(0, 60))  # Nodule: unsupported, T 1
    section = findings_section(z, t, FINDINGS, "youden", "test")
    edge = _point(section).probabilities(z)
    for k, e in enumerate(section["findings"]):
        v = e["validation"]
        assert len(v["all_scores"]) == 200 and np.allclose(v["all_scores"], edge[:, k], rtol=0, atol=1e-15)
        assert v["scores"] == [s for s, m in zip(v["all_scores"], np.isnan(t[:, k]), strict=True) if not m]
    assert section["findings"][1]["threshold"] is None and section["findings"][1]["validation"]["masked"] == 60


def test_a_finding_with_three_positives_has_no_threshold_and_no_decision():
    z, t = _cases(np.random.default_rng(5), positives=(100, 3), negatives=(100, 197), masked=(0, 0))
    section = findings_section(z, t, FINDINGS, "sensitivity=0.9", "test")
    nodule = section["findings"][1]
    assert nodule["threshold"] is None and nodule["criterion"] is None and "guarantee" not in nodule
    assert nodule["unsupported"].startswith("3 positives and 197 negatives") and "at least 5" in nodule["unsupported"]
    point = _point(section)
    assert point.thresholds["Nodule"] is None and point.thresholds["Effusion"] is not None
    decisions = point.decisions(point.probabilities(np.array([[9.0, 9.0], [-9.0, -9.0]])))
    assert decisions == [{"Effusion": True, "Nodule": None}, {"Effusion": False, "Nodule": None}]
    assert "no threshold (unsupported: 3 positives" in summary_lines(section)[1]


def test_a_finding_short_of_the_guarantee_gets_the_point_estimate_marked_unsupported():
    """20 positives cannot support sensitivity=0.95 at 95% (59 needed): the threshold is the point estimate, marked,
    and the export goes on (single-label would exit 2 without --operating-point-unsupported)."""
    z, t = _cases(np.random.default_rng(9), positives=(100, 20), negatives=(100, 180), masked=(0, 0))
    nodule = findings_section(z, t, FINDINGS, "sensitivity=0.95", "test")["findings"][1]
    g = nodule["guarantee"]
    assert nodule["threshold"] is not None and not g["supported"] and (g["n"], g["needed"]) == (20, 59)
    assert g["estimate"] >= 0.95 and nodule["validation"]["sensitivity"]["value"] >= 0.95


def test_macro_and_micro_auc_match_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    z, t = _cases(np.random.default_rng(13))
    section = findings_section(z, t, FINDINGS, "youden", "test")
    point = _point(section)
    p = point.probabilities(z)
    known = ~np.isnan(t)
    per = [metrics.roc_auc_score(t[known[:, k], k], p[known[:, k], k]) for k in range(2)]
    for k, e in enumerate(section["findings"]):
        assert e["validation"]["auc"]["auc"] == pytest.approx(per[k], abs=1e-12)
    v = section["validation"]
    assert v["macro_auc"]["auc"] == pytest.approx(np.mean(per), abs=1e-12) and v["macro_auc"]["findings"] == 2
    assert v["micro_auc"]["auc"] == pytest.approx(metrics.roc_auc_score(t[known], p[known]), abs=1e-12)
    assert v["micro_auc"]["pairs"] == int(known.sum()) == 360


def test_validation_figures_at_each_threshold_match_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    z, t = _cases(np.random.default_rng(17))
    section = findings_section(z, t, FINDINGS, "sensitivity=0.9", "test")
    p = _point(section).probabilities(z)
    for k, e in enumerate(section["findings"]):
        known = ~np.isnan(t[:, k])
        y, s = t[known, k], p[known, k]
        tn, fp, fn, tp = metrics.confusion_matrix(y, s >= e["threshold"]).ravel()
        v = e["validation"]
        assert (v["sensitivity"]["value"], v["specificity"]["value"]) == (tp / (tp + fn), tn / (tn + fp))
        assert v["brier"] == pytest.approx(metrics.brier_score_loss(y, s), abs=1e-12)
        assert np.allclose(v["scores"], s, rtol=0, atol=1e-15) and v["positives"] == y.astype(int).tolist()
        assert not np.any(np.isclose(s, e["threshold"], rtol=0, atol=1e-12))  # no score sits on a threshold


def test_an_edited_section_is_refused():
    z, t = _cases(np.random.default_rng(19))
    section = json.loads(json.dumps(findings_section(z, t, FINDINGS, "youden", "test")))  # as read from model.json
    _point(section)
    section["findings"][0]["threshold"] = 0.01
    with pytest.raises(ModelIntegrityError, match="does not match its SHA-256"):
        _point(section)


def test_bad_arrays_are_usage_errors():
    z, t = _cases(np.random.default_rng(23))
    with pytest.raises(UsageError, match=r"must both be \(N, 3\)"):
        findings_section(z, t, [*FINDINGS, "Mass"], "youden", "test")
    t2 = t.copy()
    t2[0, 0] = -1.0  # an uncertain label that no policy mapped
    with pytest.raises(UsageError, match="1, 0 or NaN"):
        findings_section(z, t2, FINDINGS, "youden", "test")


def test_the_validation_index_is_the_run_s_own_unless_one_is_given(tmp_path):
    from medge.export.findings import IndexArgs, index_of_data, index_source

    run = {"labels": "/d/Data_Entry.csv", "images": "/d/images", "labels_format": "nih", "uncertain": "zeros",
           "val_fraction": 0.25, "test_fraction": 0.0, "seed": 4}
    own = index_source(run, None)
    assert (own.labels, own.images, own.labels_format, own.uncertain, own.given) == (
        "/d/Data_Entry.csv", "/d/images", "nih", "zeros", False)
    assert (own.val_fraction, own.test_fraction, own.seed) == (0.25, 0.0, 4)  # the run's split, drawn again
    given = index_source(run, IndexArgs("/e/val.csv", labels_format="chexpert"))
    assert (given.labels, given.images, given.labels_format, given.uncertain, given.given) == (
        "/e/val.csv", "/e", "chexpert", "zeros", True)  # its images under its folder; the model's policy
    assert index_source({"labels": ""}, None) is None
    (tmp_path / "index.csv").write_text("path,A\n")
    assert index_of_data(str(tmp_path)) == IndexArgs(str(tmp_path / "index.csv"), str(tmp_path))
    assert index_of_data(str(tmp_path / "index.csv")) == IndexArgs(str(tmp_path / "index.csv"))
    (tmp_path / "other.csv").write_text("path,A\n")
    with pytest.raises(UsageError, match=r"a folder holding exactly one \(found 2: index.csv, other.csv\)"):
        index_of_data(str(tmp_path))


def _site_index(tmp_path, split_column):
    """20 images of 20 patients, findings Effusion and Nodule; with a split column: 5 val rows, the rest train."""
    import cv2

    rows = ["path,Effusion,Nodule,patient" + (",split" if split_column else "")]
    for i in range(20):
        cv2.imwrite(str(tmp_path / f"im{i:02d}.png"), np.full((16, 16), 10 * i, np.uint8))
        rows.append(f"im{i:02d}.png,{i % 2},{(i // 2) % 2},P{i}" + (f",{'val' if i < 5 else 'train'}" if split_column
                                                                     else ""))
    (tmp_path / "index.csv").write_text("\n".join(rows) + "\n")
    return str(tmp_path / "index.csv")


def test_an_index_given_to_export_is_used_whole_unless_it_has_a_split_column(tmp_path):
    """A site's dedicated calibration index (no split column) is all validation cases, not its 20% val share; one
    with a split column gives its val rows; the run's own index is split again as in training (its val share)."""
    from medge.export.findings import IndexArgs, index_source, validation_split

    run = {"labels": _site_index(tmp_path, False), "val_fraction": 0.2, "test_fraction": 0.1, "seed": 0}
    lines = []
    site = validation_split(index_source({**run, "labels": "/elsewhere/run.csv"}, IndexArgs(run["labels"])),
                            FINDINGS, lines.append)
    given = site.split
    assert len(given) == 20 and given.patients == [f"P{i}" for i in range(20)]
    assert "the index given, without a split column: all validation cases" in lines[-1]
    assert site.source.startswith("every row of ") and site.notes == ()
    own = validation_split(index_source(run, None), FINDINGS, lines.append)
    assert 0 < len(own.split) < 10 and "split again as in training" in own.source
    (tmp_path / "s").mkdir()
    with_split = _site_index(tmp_path / "s", True)
    cases = validation_split(index_source(run, IndexArgs(with_split)), FINDINGS, lines.append)
    assert sorted(cases.split.paths) == [str(tmp_path / "s" / f"im{i:02d}.png") for i in range(5)]
    assert "its split column's val rows" in cases.source


def _recorded(labels, **change):
    """The checkpoint's data_source hashes of a run on ``labels`` (as ``medge train`` records them)."""
    from medge.edge.inputs.index import read_index
    from medge.train.checkpoint import file_sha256, membership_sha256
    from medge.train.data import discover_index

    root = str(Path(labels).parent)  # training reads the index with its images folder (--images, or the index's)
    _, splits = discover_index(read_index(labels, root, "generic", "ignore"), 0.2, 0.1, 0)
    return {"index_sha256": file_sha256(labels),
            "split_sha256": {n: membership_sha256(s.paths, root) for n, s in splits.items()}, **change}


def test_the_run_s_index_given_with_labels_is_split_as_in_training_never_used_whole(tmp_path):
    """Named by its path or a copy of its bytes, the run's own index gives training's val split, not every row."""
    import shutil

    from medge.export.findings import IndexArgs, index_source, validation_split

    labels = _site_index(tmp_path, False)
    run = {"labels": labels, "val_fraction": 0.2, "test_fraction": 0.1, "seed": 0}
    own = validation_split(index_source(run, None, _recorded(labels)), FINDINGS, quiet)
    (tmp_path / "copy").mkdir()
    copy = shutil.copy(labels, tmp_path / "copy" / "renamed.csv")
    for given in (IndexArgs(labels), IndexArgs(copy, str(tmp_path))):
        src = index_source({**run, "labels": "/moved/away.csv"} if given.labels == copy else run, given,
                           _recorded(labels))
        assert not src.given and src.named
        cases = validation_split(src, FINDINGS, quiet)
        assert sorted(cases.split.paths) == sorted(own.split.paths) and len(cases.split) < 20
        assert "the run's own index, given with --labels, split again as in training" in cases.source


def test_a_rebuilt_split_that_is_not_training_s_is_refused_and_an_old_checkpoint_noted(tmp_path):
    """The recorded val membership must match: an edited index or images lost since training (patients from DICOM
    headers then move) refuse with what changed and the way out; a checkpoint without hashes is accepted, noted."""
    from medge.edge.errors import ExportError
    from medge.export.findings import index_source, validation_split

    labels = _site_index(tmp_path, False)
    run = {"labels": labels, "val_fraction": 0.2, "test_fraction": 0.1, "seed": 0}
    recorded, lines = _recorded(labels), []
    held_out = validation_split(index_source(run, None, recorded), FINDINGS, lines.append).split
    assert not any("records no hash" in line for line in lines)
    validation_split(index_source(run, None, {}), FINDINGS, lines.append)
    assert "note: this checkpoint records no hash of its validation split" in lines[-2]
    moved = _recorded(labels, split_sha256={"val": "0" * 64})  # same index bytes, other images held out
    with pytest.raises(ExportError, match=r"not the one training held out \(the index is unchanged, but 0 of its images "
                                          r"are missing.*DICOM header.*Restore the index and images.*--labels INDEX.csv"):
        validation_split(index_source(run, None, moved), FINDINGS, quiet)
    gone = Path(held_out.paths[0]).name  # an edited index: a validation image's row taken out
    Path(labels).write_text("".join(r for r in Path(labels).read_text().splitlines(True) if not r.startswith(gone)))
    with pytest.raises(ExportError, match=r"the index file has changed since training"):
        validation_split(index_source(run, None, recorded), FINDINGS, quiet)


def test_an_index_sharing_patients_with_training_is_warned_in_the_log_and_the_manifest(tmp_path):
    from medge.export.findings import IndexArgs, findings_section, index_source, run_train_patients, validation_split

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "data_report.json").write_text(json.dumps({"train_patients": ["P1", "P7", "X9"]}))
    train = run_train_patients(tmp_path / "run" / "best.pt")
    assert train == ["P1", "P7", "X9"] and run_train_patients(tmp_path / "none" / "best.pt") is None
    labels, lines = _site_index(tmp_path, False), []
    run = {"labels": "/run/index.csv", "val_fraction": 0.2, "test_fraction": 0.1, "seed": 0}
    cases = validation_split(index_source(run, IndexArgs(labels)), FINDINGS, lines.append, train)
    assert lines[-1].startswith("warning: 2 of the 20 patients of ") and "(e.g. P1, P7)" in lines[-1]
    assert cases.notes == (lines[-1].removeprefix("warning: "),)
    assert validation_split(index_source(run, IndexArgs(labels)), FINDINGS, quiet, ["Q1"]).notes == ()
    rng = np.random.default_rng(0)
    z, t = _cases(rng)
    section = findings_section(z, t, FINDINGS, "youden", cases.source, notes=cases.notes)
    assert section["validation"]["notes"] == list(cases.notes)
    _point(section)  # the edge accepts it
    assert "notes" not in findings_section(z, t, FINDINGS, "youden", cases.source)["validation"]


def test_a_training_image_lost_since_training_that_moves_dicom_patients_is_refused(tmp_path):
    """The reviewer's case: an index without patients whose DICOM files carry a PatientID. A train image missing at
    export becomes its own patient and the split reshuffles; export stops instead of calibrating on training images."""
    pytest.importorskip("pydicom")
    import pydicom

    from medge.edge.errors import ExportError
    from medge.edge.inputs.index import read_index
    from medge.export.findings import index_source, validation_split
    from medge.train.checkpoint import file_sha256, membership_sha256
    from medge.train.data import discover_index
    from medge.train.synth import write_dicom

    rows = ["path,Effusion,Nodule"]
    for p in range(24):
        for j in range(3):
            path = write_dicom(tmp_path / f"p{p}_{j}.dcm", np.full((8, 8), 50 * (p + 1), np.uint16))
            ds = pydicom.dcmread(path)
            ds.PatientID = f"P{p}"
            ds.save_as(path)
            rows.append(f"p{p}_{j}.dcm,{p % 2},{(p // 2) % 2}")
    labels = tmp_path / "index.csv"
    labels.write_text("\n".join(rows) + "\n")
    run = {"labels": str(labels), "val_fraction": 0.25, "test_fraction": 0.0, "seed": 0}
    _, splits = discover_index(read_index(str(labels), str(tmp_path), "generic", "ignore"), 0.25, 0.0, 0)
    recorded = {"index_sha256": file_sha256(labels),  # as medge train records them
                "split_sha256": {n: membership_sha256(s.paths, tmp_path) for n, s in splits.items()}}
    held_out = validation_split(index_source(run, None, recorded), FINDINGS, quiet).split
    assert sorted(held_out.paths) == sorted(splits["val"].paths)
    for p in splits["train"].paths[:1] + splits["train"].paths[3::6]:  # a few training images lost
        Path(p).unlink()
    _, now = discover_index(read_index(str(labels), str(tmp_path), "generic", "ignore"), 0.25, 0.0, 0)
    assert set(now["val"].paths) & set(splits["train"].paths)  # the reshuffle: training images now in val
    with pytest.raises(ExportError, match=r"the index is unchanged, but \d+ of its images are missing"):
        validation_split(index_source(run, None, recorded), FINDINGS, quiet)
