"""Label indexes: the real NIH and CheXpert CSVs (from the torchxrayvision wheel, or excerpts of their exact columns),
generic indexes of both styles, file resolution and the errors."""
import gzip
import os

import numpy as np
import pytest

from medge.edge.errors import DataError
from medge.edge.inputs.image import write_image
from medge.edge.inputs.index import dicom_patient, read_index
from tests.helpers import xrv_data

NIH_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
              "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n")
NIH_EXCERPT = NIH_HEADER + """\
00000001_000.png,Cardiomegaly,0,1,57,M,PA,2682,2749,0.14300000000000002,0.14300000000000002
00000001_001.png,Cardiomegaly|Emphysema,1,1,58,M,PA,2894,2729,0.14300000000000002,0.14300000000000002
00000001_002.png,Cardiomegaly|Effusion,2,1,58,M,PA,2500,2048,0.168,0.168
00000002_000.png,No Finding,0,2,80,M,PA,2500,2048,0.171,0.171
00000003_001.png,Hernia,0,3,74,F,PA,2500,2048,0.168,0.168
00000003_002.png,Hernia|Infiltration,1,3,75,F,AP,2048,2500,0.168,0.168
"""
# The figures the issue states for Data_Entry_2017_v2020.csv, and those of the excerpt above.
NIH_FIGURES = {
    "wheel": {"rows": 112120, "patients": 30805, "views": {"PA": 67310, "AP": 44810},
              "positives": {"Infiltration": 19894, "Hernia": 227}, "findings": 14, "no_finding": 60361},
    "excerpt": {"rows": 6, "patients": 3, "views": {"PA": 5, "AP": 1},
                "positives": {"Infiltration": 1, "Hernia": 2}, "findings": 5, "no_finding": 1},
}


@pytest.fixture(params=["wheel", "excerpt"])
def nih_csv(request, tmp_path):
    if request.param == "wheel":
        path = xrv_data("Data_Entry_2017_v2020.csv.gz")
        if path is None:
            pytest.skip("torchxrayvision (dev extra) is not installed: the excerpt case covers the columns")
        return request.param, path
    path = tmp_path / "Data_Entry_2017_v2020.csv"
    path.write_text(NIH_EXCERPT, encoding="utf-8")
    return request.param, str(path)


def test_the_nih_index_parses_with_its_findings_patients_and_views(nih_csv):
    case, path = nih_csv
    want = NIH_FIGURES[case]
    index = read_index(path, fmt="nih")
    targets = index.targets()
    assert len(index) == targets.shape[0] == want["rows"]
    assert len(index.findings) == want["findings"] and "No Finding" not in index.findings
    assert list(index.findings) == sorted(index.findings)
    assert len(set(index.patients())) == want["patients"]
    views = {v: sum(e.view == v for e in index.entries) for v in want["views"]}
    assert views == want["views"]
    for finding, n in want["positives"].items():
        assert targets[:, index.findings.index(finding)].sum() == n
    assert not np.isnan(targets).any() and index.missing == ()
    assert (targets.sum(1) == 0).sum() == want["no_finding"]  # "No Finding": a row of zeros
    first = index.entries[0]
    assert (first.path, first.patient, first.sex, first.age, first.line) == ("00000001_000.png", "1", "M", 57.0, 2)


def test_nih_images_are_found_in_subfolders_and_the_rest_is_listed_missing(tmp_path):
    csv = tmp_path / "index.csv"
    csv.write_text(NIH_EXCERPT, encoding="utf-8")
    images = tmp_path / "nih"
    for i, name in enumerate(["00000001_000.png", "00000002_000.png"]):
        write_image(images / f"images_00{i + 1}" / "images" / name, np.full((8, 8), 100, np.uint8))
    index = read_index(csv, images, fmt="nih")
    assert [os.path.relpath(e.file, images) for e in index.entries] == [
        "images_001/images/00000001_000.png", "images_002/images/00000002_000.png"]
    assert [p for p, _ in index.missing] == ["00000001_001.png", "00000001_002.png", "00000003_001.png",
                                             "00000003_002.png"]
    assert "not found under" in dict(index.missing)["00000001_001.png"]
    assert index.missing_summary(limit=2).endswith("and 2 more)")


def test_the_real_nih_index_against_a_folder_of_a_few_images_lists_the_rest_briefly(tmp_path):
    path = xrv_data("Data_Entry_2017_v2020.csv.gz")
    if path is None:
        pytest.skip("torchxrayvision (dev extra) is not installed")
    write_image(tmp_path / "images_001" / "images" / "00000001_000.png", np.zeros((8, 8), np.uint8))
    index = read_index(path, tmp_path, fmt="nih")
    assert len(index) == 1 and len(index.missing) == 112119
    summary = index.missing_summary()
    assert "\n" not in summary and summary.count("not found") == 3 and summary.endswith(" and 112116 more)")


def test_two_images_of_the_same_base_name_in_subfolders_are_an_error_naming_both(tmp_path):
    csv = tmp_path / "index.csv"
    csv.write_text(NIH_EXCERPT, encoding="utf-8")
    for folder in ("a", "b"):
        write_image(tmp_path / "img" / folder / "00000001_000.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(DataError, match=r"two files of that name .*a/00000001_000.png and .*b/00000001_000.png"):
        read_index(csv, tmp_path / "img", fmt="nih")


CHEXPERT_EXCERPT = """\
Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,Lung Opacity,Lung Lesion,\
Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,Fracture,Support Devices
CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg,Female,68,Frontal,AP,1.0,,,,,,,,,0.0,,,,1.0
CheXpert-v1.0-small/train/patient00002/study2/view1_frontal.jpg,Female,87,Frontal,AP,,,-1.0,1.0,,-1.0,-1.0,,-1.0,,-1.0,,1.0,
CheXpert-v1.0-small/train/patient00002/study1/view1_frontal.jpg,Female,83,Frontal,AP,,,,1.0,,,-1.0,,,,,,1.0,
CheXpert-v1.0-small/train/patient00002/study1/view2_lateral.jpg,Female,83,Lateral,,,,,1.0,,,-1.0,,,,,,1.0,
"""


@pytest.fixture(scope="module", params=["wheel", "excerpt"])
def chexpert_csv(request, tmp_path_factory):
    """(path, what pandas reads there: observation names, raw values, patients, views), read once for the policies."""
    pd = pytest.importorskip("pandas")
    if request.param == "wheel":
        path = xrv_data("chexpert_train.csv.gz")
        if path is None:
            pytest.skip("torchxrayvision (dev extra) is not installed: the excerpt case covers the columns")
    else:
        path = tmp_path_factory.mktemp("chexpert") / "train.csv"
        path.write_text(CHEXPERT_EXCERPT, encoding="utf-8")
    frame = pd.read_csv(path)
    observations = [c for c in frame.columns[5:] if c != "No Finding"]
    patients = frame["Path"].str.extract(r"/(patient\d+)/")[0].tolist()
    views = frame["AP/PA"].fillna(frame["Frontal/Lateral"]).tolist()
    return str(path), (observations, frame[observations].to_numpy(dtype=float), patients, views)


@pytest.mark.parametrize("policy", ["ignore", "zeros", "ones"])
def test_chexpert_uncertain_labels_and_blanks_follow_the_policy(chexpert_csv, policy):
    """Oracle: pandas reads the same CSV; blank = 0, -1 = nan / 0 / 1 per the policy."""
    path, (observations, raw, patients, views) = chexpert_csv
    expected = np.where(np.isnan(raw), 0.0, raw)
    expected[raw == -1] = {"ignore": np.nan, "zeros": 0.0, "ones": 1.0}[policy]
    index = read_index(path, fmt="chexpert", uncertain=policy)
    assert index.findings == tuple(observations) and len(index.findings) == 13
    np.testing.assert_array_equal(index.targets(), expected)
    assert (np.isnan(index.targets()).sum() > 0) == (policy == "ignore")
    assert index.patients() == patients
    assert [e.view for e in index.entries] == views


def test_chexpert_files_are_found_without_the_leading_folders(tmp_path):
    csv = tmp_path / "train.csv"
    csv.write_text(CHEXPERT_EXCERPT, encoding="utf-8")
    image = tmp_path / "small" / "train" / "patient00002" / "study1" / "view1_frontal.jpg"
    image.parent.mkdir(parents=True)
    import cv2
    cv2.imwrite(str(image), np.zeros((8, 8), np.uint8))
    index = read_index(csv, tmp_path / "small", fmt="chexpert")
    assert [e.file for e in index.entries] == [str(image)] and len(index.missing) == 3
    assert index.entries[0].patient == "patient00002"


def write(tmp_path, text: str, name: str = "index.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_generic_index_with_one_column_per_finding(tmp_path):
    path = write(tmp_path, "Filename,Patient_ID,Split,Sex,Age,View,Effusion,No Finding,Nodule\n"
                           "a.png,p1,train,f,40,PA,1,0,0\nb.png,p1,Train,M,,AP,-1,,\nc.png,,test,,3,,0.0,0,1.0\n")
    index = read_index(path)
    assert index.findings == ("Effusion", "Nodule")
    np.testing.assert_array_equal(index.targets(), [[1, 0], [np.nan, 0], [0, 1]])
    assert [(e.patient, e.split, e.sex, e.age, e.view) for e in index.entries] == [
        ("p1", "train", "F", 40.0, "PA"), ("p1", "train", "M", None, "AP"), (None, "test", None, 3.0, None)]
    assert read_index(path, findings=["Nodule"]).targets()[:, 0].tolist() == [0, 0, 1]
    assert read_index(path, uncertain="ones").targets()[1, 0] == 1.0


def test_generic_index_with_a_column_of_finding_names(tmp_path):
    path = write(tmp_path, "image,labels,patient\nx/a.png,Nodule|Effusion,7\nx/b.png,No Finding,7\nx/c.png,,8\n")
    index = read_index(path)
    assert index.findings == ("Effusion", "Nodule")
    assert index.targets().tolist() == [[1, 1], [0, 0], [0, 0]]
    assert read_index(path, findings=["Nodule", "Mass"]).targets().tolist() == [[1, 0], [0, 0], [0, 0]]
    assert read_index(path, findings=["Nodule", "Mass"]).named == ("Effusion", "Nodule")  # what the index names


def test_named_is_every_finding_the_index_names_whatever_was_asked_for(tmp_path):
    path = write(tmp_path, "path,Pleural Effusion,No Finding,Nodule,patient\na.png,1,0,0,p\n")
    index = read_index(path, findings=["Nodule"])
    assert index.findings == ("Nodule",) and index.named == ("Pleural Effusion", "Nodule")


@pytest.mark.parametrize(("text", "match"), [
    ("path,A\na.png,1\nb.png,0\na.png,1\n", r"index.csv: the same file twice, line 2 \(a.png\) and line 4 \(a.png\)"),
    ("path,A\na.png,1\n./a.png,0\n", r"the same file twice, line 2"),
    ("name,A\na.png,1\n", r"index.csv: no path column .*columns found: name, A"),
    ("path,A\na.png,1\nb.png,yes\n", r"index.csv, line 3: A = 'yes': a label is 1, 0, -1"),
    ("path,A\na.png,2\n", r"line 2: A = '2'"),
    ("path,A,Height\na.png,1,170\n", r"Height = '170': .* \('Height' is read as a finding: every column but the path"),
    ("path,A,split\na.png,1,holdout\n", r"line 2: split 'holdout' is not one of train, val, test"),
    ("path,A,age\na.png,1,old\n", r"line 2: age 'old' is not a number"),
    ("path,findings\na.png,No Finding|A\n", r"line 2: findings = 'No Finding\|A'"),
    ("path,findings\na.png,No Finding\n", r"no findings"),
    ("path,A\n", r"a header but no rows"),
    ("path;A\na.png;1\n", r"index.csv, line 1: columns separated by ';', not by commas: save the index as CSV"),
    ("path\tA\na.png\t1\n", r"line 1: columns separated by tab, not by commas"),
    ("path,findings\na.png,Effusion\nb.png,effusion|Mass\n", r"findings names 'effusion', and 'Effusion' elsewhere"),
    ("path,findings,patient\na.png,A,B,7\n", r"line 2: 4 cells, the header has 3: a comma in a value that is not quot"),
    ("path,A,B\na.png,1,0\nb.png,1\n", r"line 3: 2 cells, the header has 3: a row cut short"),
])
def test_generic_index_errors_name_the_csv_and_the_line(tmp_path, text, match):
    with pytest.raises(DataError, match=match):
        read_index(write(tmp_path, text))


def test_a_finding_asked_for_in_another_case_is_an_error_not_a_finding_absent_everywhere(tmp_path):
    # medge validate asks for the bundle's findings: a site's 'effusion' must not read as Effusion absent.
    path = write(tmp_path, "path,labels\na.png,effusion\nb.png,No Finding\n")
    with pytest.raises(DataError, match=r"labels names 'effusion', and 'Effusion' elsewhere or as a finding asked"):
        read_index(path, findings=["Effusion"])
    assert read_index(path, findings=["Mass"]).targets().tolist() == [[0], [0]]  # other findings: as before


def test_nih_and_dicom_names_of_the_patient_sex_age_and_view_columns_are_no_findings(tmp_path):
    # A generic index with NIH's 'Patient ID' once read it as a finding (ids 0/1) and split by image in silence.
    index = read_index(write(tmp_path, "path,Patient ID,Patient Gender,Patient Age,View Position,Effusion\n"
                                       "a.png,0,F,61,PA,1\nb.png,1,M,40,AP,0\nc.png,1,M,41,AP,1\n"))
    assert index.findings == ("Effusion",) and [e.patient for e in index.entries] == ["0", "1", "1"]
    assert [(e.sex, e.age, e.view) for e in index.entries][0] == ("F", 61.0, "PA")


def test_empty_cells_past_the_header_are_no_error(tmp_path):
    # A spreadsheet may end rows with empty cells beyond the last named column.
    index = read_index(write(tmp_path, "path,A,B\na.png,1,0,,\nb.png,0,1,\n"))
    assert index.targets().tolist() == [[1, 0], [0, 1]]


def test_missing_nih_and_chexpert_columns_are_listed(tmp_path):
    with pytest.raises(DataError, match=r"no findings column \('Finding Labels'\); columns found: Image Index, x"):
        read_index(write(tmp_path, "Image Index,x\na.png,1\n"), fmt="nih")
    with pytest.raises(DataError, match=r"no path column \('Path'\)"):
        read_index(write(tmp_path, "file,Sex\na.png,F\n"), fmt="chexpert")
    with pytest.raises(DataError, match=r"no column for finding\(s\) \['Mass'\]"):
        read_index(write(tmp_path, "path,A\na.png,1\n"), findings=["Mass"])
    with pytest.raises(DataError, match="unknown index format 'kaggle'"):
        read_index(write(tmp_path, "path,A\na.png,1\n"), fmt="kaggle")
    with pytest.raises(DataError, match="unknown uncertain-label policy 'half'"):
        read_index(write(tmp_path, "path,A\na.png,1\n"), uncertain="half")


def test_a_csv_that_is_not_utf8_is_an_error_naming_the_line_and_gzip_is_read(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("path,A\na.png,1\nb\xe9.png,0\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.csv, line 3: not UTF-8 \(byte 0xe9\)"):
        read_index(path)
    bom = tmp_path / "bom.csv.gz"
    with gzip.open(bom, "wb") as f:
        f.write("\ufeffpath,A\nb\u00e9.png,1\n".encode())
    assert read_index(bom).entries[0].path == "b\u00e9.png"


def test_files_are_resolved_under_the_images_folder_as_given_then_by_base_name(tmp_path):
    write_image(tmp_path / "img" / "sub" / "a.png", np.zeros((8, 8), np.uint8))
    write_image(tmp_path / "img" / "deep" / "b.png", np.zeros((8, 8), np.uint8))
    (tmp_path / "img" / "notes.txt").write_text("a report, not an image")
    path = write(tmp_path, "path,A\nsub/a.png,1\nother/b.png,0\nc.png,1\nnotes.txt,0\n")
    index = read_index(path, tmp_path / "img")
    assert [os.path.relpath(e.file, tmp_path / "img") for e in index.entries] == ["sub/a.png", "deep/b.png"]
    assert index.missing[0] == ("c.png", f"not found under {tmp_path / 'img'}")
    assert index.missing[1][0] == "notes.txt" and "not an image" in index.missing[1][1]
    assert read_index(path).entries[1].file == "other/b.png"  # no images folder: nothing resolved
    with pytest.raises(DataError, match=r"images folder not found .*the data has moved\? give --labels INDEX.csv --images DIR"):
        read_index(path, tmp_path / "nowhere")


def test_two_index_rows_resolving_to_one_file_are_an_error(tmp_path):
    write_image(tmp_path / "img" / "deep" / "a.png", np.zeros((8, 8), np.uint8))
    path = write(tmp_path, "path,A\ndeep/a.png,1\nelsewhere/a.png,0\n")
    with pytest.raises(DataError, match=r"the same file twice, line 2 \(deep/a.png\) and line 3 \(elsewhere/a.png\)"):
        read_index(path, tmp_path / "img")


def test_dicom_patient_reads_the_header_only(tmp_path):
    pytest.importorskip("pydicom")
    from medge.train.synth import write_dicom

    path = write_dicom(tmp_path / "a.dcm", np.zeros((8, 8), np.uint16))
    assert dicom_patient(path) is None  # written without a PatientID
    import pydicom
    ds = pydicom.dcmread(path)
    ds.PatientID = " PAT-9 "
    ds.save_as(path)
    assert dicom_patient(path) == "PAT-9"
    (tmp_path / "b.dcm").write_bytes(b"not dicom")
    assert dicom_patient(tmp_path / "b.dcm") is None


def test_nih_needs_only_image_index_and_finding_labels_and_a_missing_patient_id(tmp_path, capsys):
    """A site's NIH-shaped export without sex, age or view columns is read, without Patient ID too (the split by image
    is said by ``train.data.discover_index``, tests/train/test_data.py)."""
    index = read_index(write(tmp_path, "Image Index,Finding Labels,Patient ID\na.png,Effusion,7\nb.png,No Finding,8\n"),
                       fmt="nih")
    assert index.findings == ("Effusion",) and [(e.patient, e.sex, e.age, e.view) for e in index.entries] == [
        ("7", None, None, None), ("8", None, None, None)]
    assert "Patient ID" not in capsys.readouterr().err
    index = read_index(write(tmp_path, "Image Index,Finding Labels\na.png,Effusion\n"), fmt="nih")
    assert index.entries[0].patient is None
    assert capsys.readouterr().err == ""  # the split by image is said where a split is drawn, for every format


@pytest.mark.parametrize(("text", "findings", "match"), [
    ("path,A,B,A\na.png,1,0,1\n", None, r"index.csv: the finding column 'A' twice \(columns 2 and 4\)"),
    ("path,Effusion,effusion\na.png,1,0\n", None, r"the finding column 'effusion' twice \(columns 2 and 3\)"),
    ("path,A,B\na.png,1,0\n", ["A", "B", "a"], r"index.csv: the finding 'a' asked for twice"),
    ("path,findings\na.png,A|B\n", ["B", "A", "B"], r"index.csv: the finding 'B' asked for twice"),
    ("Path,Sex,Age,Frontal/Lateral,AP/PA,A,A\na.png,M,5,Frontal,PA,1,0\n", None, r"finding column 'A' twice"),
])
def test_a_finding_named_twice_is_an_error_naming_it(tmp_path, text, findings, match):
    """Records hold one entry per finding name: a repeated one would collapse in silence."""
    fmt = "chexpert" if text.startswith("Path,") else "generic"
    with pytest.raises(DataError, match=match):
        read_index(write(tmp_path, text), fmt=fmt, findings=findings)


def test_an_index_over_the_cap_is_an_error_naming_the_file_its_size_and_the_limit(tmp_path, monkeypatch):
    from medge.edge.inputs import index as index_module

    assert index_module.MAX_INDEX_BYTES == 256 << 20  # about 2.3 million rows of CheXpert's width
    path = write(tmp_path, "path,A\n" + "".join(f"a{i}.png,1\n" for i in range(100)))
    monkeypatch.setattr(index_module, "MAX_INDEX_BYTES", 512)
    size = os.path.getsize(path)
    with pytest.raises(DataError, match=rf"index.csv: {size} bytes of CSV text, over the limit of 512 bytes"):
        read_index(path)
    gz = tmp_path / "index.csv.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    with pytest.raises(DataError, match=r"index.csv.gz: over 512 bytes of CSV text once decompressed \(the limit, "):
        read_index(gz)


@pytest.mark.parametrize("policy", ["ignore", "zeros", "ones"])
def test_each_entry_keeps_which_labels_were_uncertain_whatever_the_policy(tmp_path, policy):
    path = write(tmp_path, "path,A,B,C\na.png,-1,1,-1.0\nb.png,0,,1\nc.png,1,-1,0\n")
    index = read_index(path, uncertain=policy)
    assert [e.uncertain for e in index.entries] == [(0, 2), (), (1,)]
    assert [e.uncertain for e in read_index(path, uncertain=policy, findings=["C", "B"]).entries] == [(0,), (), (1,)]
    names = write(tmp_path, "path,findings\na.png,A|B\n", "names.csv")
    assert read_index(names, uncertain=policy).entries[0].uncertain == ()
