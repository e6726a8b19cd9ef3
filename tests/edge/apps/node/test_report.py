"""The node's result objects (``edge.apps.node.report``): the SR as highdicom's TID 1500 parser reads it back (one
measurement group, or one per finding of a multi-label bundle), the SR template against the full build, the heatmap
SC's geometry, references and legend, and both checked by an independent validator, dicom3tools' ``dciodvfy``, on
several sources."""
import dataclasses
import io
import os
import re
import subprocess
import time

import numpy as np
import pytest

pytest.importorskip("highdicom", reason="the node extra is not installed")

from medge.edge.apps.node import report  # noqa: E402
from tests.edge.apps.node.nodes import PYDICOM_GRAY, pydicom_file, with_study, write_radiograph  # noqa: E402

DCIODVFY = "/usr/bin/dciodvfy"
ALGORITHM = report.Algorithm("resnet18 (xray)", "1.0", "ab" * 32, "opencv engine, fp32 variant")
P = 0.1 + 0.2  # 0.30000000000000004: its 16-character decimal is not the float, FloatingPointValue must be
FINDING = report.Finding(("disease", "normal"), {"disease": P, "normal": 1 - P}, "normal", threshold=0.35,
                         positive="disease", warnings=("low contrast",),
                         operating_point="sensitivity=0.95 unsupported: 40 positives (59 needed at 95% confidence)")
# Each SR path: the full highdicom build, and the template the node fills.
BUILDS = {"build_sr": report.build_sr,
          "template": lambda source, finding, algorithm, series, uid: report.sr_template(algorithm, finding).fill(
              source, finding, series, uid)}


def _findings(effusion: float, warnings=()) -> "report.Findings":
    """The ``multilabel_bundle`` fixture's findings: Effusion (threshold 0.4), Nodule unsupported (no threshold)."""
    return report.Findings(("Effusion", "Nodule"), {"Effusion": effusion, "Nodule": 1 - P},
                           {"Effusion": effusion >= 0.4, "Nodule": None}, (0.4, None),
                           ("youden: sensitivity 0.90, specificity 0.85 on 40 validation images",
                            "unsupported: 3 positives in the validation split (5 needed for a threshold)"), warnings)


PRESENT, ABSENT = ("52101004", "SCT", "Present"), ("272519000", "SCT", "Absent")
EFFUSION, NODULE = ("41699000", "SCT", "Effusion"), ("27925004", "SCT", "Nodule")  # medge's table codes them


def _code(concept) -> tuple[str, str, str]:
    return concept.value, concept.scheme_designator, concept.meaning


def _reread(ds):
    import pydicom

    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buf.getvalue()))


def _header(path):
    import pydicom

    return pydicom.dcmread(path, stop_before_pixels=True)


# --- the SR and SC as built ----------------------------------------------------------------------------------------
def test_sr_and_sc_objects(tmp_path):
    source = _header(write_radiograph(tmp_path / "cr.dcm", "CR"))
    del source.PatientBirthDate  # Type 2 and absent: the SR has it empty
    source.StudyDescription = "CHEST PA"
    uid = report.result_uid(source.SOPInstanceUID, ALGORITHM.model_sha256, "sr")
    assert uid == report.result_uid(source.SOPInstanceUID, ALGORITHM.model_sha256, "sr") and len(uid) <= 64
    sr = _reread(report.build_sr(source, FINDING, ALGORITHM, report.result_uid(source.StudyInstanceUID, "ab", "sr"), uid))
    assert "PatientBirthDate" not in source  # the caller's dataset is left as it was
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34" and sr.SOPInstanceUID == uid
    assert sr.PatientBirthDate == "" and sr.PatientID == source.PatientID and sr.StudyDescription == "CHEST PA"
    assert sr.VerificationFlag == "UNVERIFIED" and "not for diagnostic use" in sr.SeriesDescription
    (ihe,) = sr.CodingSchemeIdentificationSequence  # both classes in SNOMED CT: no private scheme to declare
    assert ihe.CodingSchemeDesignator == "99IHE" and ihe.CodingSchemeResponsibleOrganization == "IHE International"
    items = {}

    def walk(seq):
        for item in seq:
            items.setdefault(item.ValueType, []).append(item)
            walk(item.get("ContentSequence", []))

    walk(sr.ContentSequence)
    texts = [i.TextValue for i in items["TEXT"]]
    assert "operating point: sensitivity=0.95 unsupported: 40 positives (59 needed at 95% confidence)" in texts
    assert "warning: low contrast" in texts and "resnet18 (xray)" in texts and f"model sha256 {'ab' * 32}" in texts
    sc = _reread(report.build_heatmap_sc(source, np.full((32, 48, 3), 200, np.uint8), ALGORITHM, "1.2.3.4", "1.2.3.5"))
    assert sc.BurnedInAnnotation == "YES" and sc.Rows == 32 and sc.Columns == 48
    assert sc.PatientOrientation in (None, "", [])  # the source did not say; not made up
    assert sc.StudyDescription == "CHEST PA" and "PixelSpacing" not in sc
    (reference,) = sc.SourceImageSequence
    assert (reference.ReferencedSOPClassUID, reference.ReferencedSOPInstanceUID) == (source.SOPClassUID,
                                                                                     source.SOPInstanceUID)
    purpose = reference.PurposeOfReferenceCodeSequence[0]
    assert (purpose.CodeValue, purpose.CodingSchemeDesignator) == ("121322", "DCM")


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("threshold", [0.35, None])
def test_the_sr_reads_back_through_highdicoms_tid_1500_parser(tmp_path, build, threshold):
    """A group per class, found by highdicom's parser: the class's code as its finding, its probability (the exact
    float), present for the label and absent for the others, the threshold and what it guarantees in the positive
    class's group (an argmax bundle: none), the warnings and the algorithm in each."""
    import highdicom as hd
    from highdicom.sr.utils import find_content_items
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    algorithm_id = [Code("111001", "DCM", "Algorithm Name"), Code("111003", "DCM", "Algorithm Version"),
                    Code("111002", "DCM", "Algorithm Parameters")]
    source = _header(write_radiograph(tmp_path / "dx.dcm"))
    if threshold is not None:  # an operating point: two classes, the threshold on "disease"
        finding = report.Finding(("disease", "normal"), {"disease": P, "normal": 1 - P}, "normal", threshold, "disease",
                                 ("low contrast",), "sensitivity >= 0.95 with 95% confidence (lower bound 0.951)")
    else:  # argmax, and a class medge has no code for: coded privately
        finding = report.Finding(("disease", "normal", "other"), {"disease": P, "normal": 0.6, "other": 1 - P - 0.6},
                                 "disease", warnings=("low contrast",))
    ds = _reread(BUILDS[build](source, finding, ALGORITHM, "1.2.3.4", "1.2.3.5"))
    groups = hd.sr.Comprehensive3DSR.from_dataset(ds).content.get_image_measurement_groups()
    assert len(groups) == len(finding.classes)
    expected_codes = [("64572001", "SCT", "Disease"), ("17621005", "SCT", "Normal"), ("C2", "99MEDGE", "other")]
    for name, code, group in zip(finding.classes, expected_codes, groups, strict=False):
        assert _code(group.finding_type) == code and group.tracking_identifier == f"medge class {name}"
        measured = {_code(m.name): m.value for m in group.get_measurements()}
        assert measured.pop(report.PROBABILITY) == finding.probabilities[name]  # == on floats: bit for bit
        on_this_class = threshold is not None and name == "disease"
        assert measured == ({report.THRESHOLD: threshold} if on_this_class else {})
        (presence,) = group.get_qualitative_evaluations()
        assert (_code(presence.name), _code(presence.value)) == (code, PRESENT if name == finding.label else ABSENT)
        assert [i.referenced_sop_instance_uid for i in group.source_images] == [source.SOPInstanceUID]
        texts = {concept: [i.value for i in find_content_items(group[0], name=concept)]
                 for concept in (codes.DCM.Comment, *algorithm_id)}
        assert texts[codes.DCM.Comment] == [*([f"operating point: {finding.operating_point}"] if on_this_class else []),
                                            "warning: low contrast"]
        assert [texts[concept] for concept in algorithm_id] == [
            ["resnet18 (xray)"], ["1.0"], [f"model sha256 {'ab' * 32}", "opencv engine, fp32 variant"]]


# --- the template ------------------------------------------------------------------------------------------------
TIMES = ("InstanceCreationDate", "InstanceCreationTime", "ContentDate", "ContentTime")


def _template_sources(tmp_path):
    bare = _header(write_radiograph(tmp_path / "cr.dcm", "CR"))
    del bare.PatientSex, bare.StudyDate  # Type 2 the source lacks: present and empty in both
    full = _header(write_radiograph(tmp_path / "dx.dcm", "DX"))
    full.update({"Manufacturer": "ACME", "ManufacturerModelName": "DR-1", "StationName": "ROOM 2",
                 "SpecificCharacterSet": "ISO_IR 100", "PatientName": "Müller^Jörg", "StudyDescription": "KNEE",
                 "PatientAge": "051Y", "PatientWeight": 80, "AcquisitionDateTime": "20260101120000"})
    ct = _header(with_study(pydicom_file("CT_small.dcm"), tmp_path / "ct.dcm"))
    mr = _header(with_study(pydicom_file("MR_small.dcm"), tmp_path / "mr.dcm"))
    return [bare, full, ct, mr]


LONG_CODE = ("PNEUMOTHORAX-RIGHT-01", "99LOCAL", "Right pneumothorax")  # a user's code over 16 characters: Long Code Value


def test_the_template_gives_the_full_build_element_for_element(tmp_path):
    findings = [FINDING, dataclasses.replace(FINDING, warnings=(), label="disease", probabilities={"disease": 1.0,
                                                                                             "normal": 0.0}),
                report.Finding(("a", "b", "c"), {"a": 0.2, "b": 0.3, "c": 0.5}, "c", warnings=("x", "y")),
                _findings(P, warnings=("x", "y")), _findings(0.5),
                dataclasses.replace(_findings(0.5), codes=(LONG_CODE, ("C1", "99MEDGE", "Nodule"))),
                *WORDED, UNDECIDED]
    for finding in findings:
        template = report.sr_template(ALGORITHM, finding)
        before = _reread(template.sr)
        for source in _template_sources(tmp_path):
            expected = report.build_sr(source, finding, ALGORITHM, "1.2.3.4", "1.2.3.5")
            started = time.time()
            filled = template.fill(source, finding, "1.2.3.4", "1.2.3.5")
            for created in ("Instance", "Content"):  # made now, within this call
                assert started - 1 <= _seconds(filled, created) <= time.time() + 1
            for keyword in TIMES:  # then set to the reference's, to compare the rest
                filled[keyword].value = expected[keyword].value
            stamp = filled.ContributingEquipmentSequence[-1]["ContributionDateTime"]
            stamp.value = expected.ContributingEquipmentSequence[-1].ContributionDateTime
            assert _encoded(filled) == _encoded(expected), _difference(filled, expected)
        assert _encoded(template.sr) == _encoded(before)  # filling never changes the template


# Classes in other scripts, a backslash (LO's value delimiter) in one, and a multi-label model that decides nothing.
WORDED = [report.Finding(("pneumonía", "肺炎", "a\\b"), {"pneumonía": 0.2, "肺炎": 0.3, "a\\b": 0.5}, "肺炎",
                         warnings=("contraste bajo",)),
          report.Findings(("Effusion", "肺炎"), {"Effusion": 0.5, "肺炎": 0.7}, {"Effusion": True, "肺炎": False},
                          (0.4, 0.6), ("youden", "youden"))]
UNDECIDED = report.Findings(("Effusion", "Nodule"), {"Effusion": 0.5, "Nodule": 0.7}, {"Effusion": None, "Nodule": None},
                            (None, None), ("unsupported", "unsupported"))


@pytest.mark.parametrize("finding", WORDED, ids=["single-label", "multi-label"])
def test_text_that_is_not_ascii_makes_the_result_utf8_and_reads_back(tmp_path, finding):
    """Class names beyond ASCII: the SR and SC in UTF-8 (ISO_IR 192), each name read back as it was, a source's Latin-1
    patient name too; dciodvfy finds nothing of it (before: a Latin-1 byte under the default repertoire, which
    dciodvfy and dsrdump refused, and "??" for 肺炎); an ASCII result keeps its source's character set."""
    import highdicom as hd

    source = _header(write_radiograph(tmp_path / "cr.dcm", "CR"))
    source.SpecificCharacterSet, source.PatientName = "ISO_IR 100", "Müller^Jürgen"
    names = finding.classes if isinstance(finding, report.Finding) else finding.names
    for build in BUILDS.values():
        sr = _reread(build(source, finding, ALGORITHM, "1.2.3.4", "1.2.3.5"))
        assert sr.SpecificCharacterSet == "ISO_IR 192" and sr.PatientName == "Müller^Jürgen"
        groups = hd.sr.Comprehensive3DSR.from_dataset(sr).content.get_image_measurement_groups()
        assert [g.finding_type.meaning for g in groups] == [n.replace("\\", "/") for n in names]
    assert _reread(BUILDS["template"](source, FINDING, ALGORITHM, "1.2.3.4", "1.2.3.5")).SpecificCharacterSet == \
        "ISO_IR 100"  # all of medge's text ASCII: the source's, as before
    rgb = np.zeros((32, 32, 3), np.uint8)
    sc = _reread(report.build_heatmap_sc(source, rgb, ALGORITHM, "1.2.3.6", "1.2.3.7", explained="肺炎"))
    assert sc.SpecificCharacterSet == "ISO_IR 192" and "肺炎" in sc.DerivationDescription
    if os.access(DCIODVFY, os.X_OK):
        for kind, ds in (("SR", sr), ("SC", sc)):
            found = _dciodvfy(ds, tmp_path / f"{kind}.dcm", kind)
            assert [line for line in found if line != PRIVATE_SCHEME and not _inherited(line, source)] == [], found


def test_a_multilabel_model_that_decides_nothing_states_no_exam_flag(tmp_path):
    """"Any finding present" of findings none of which has a threshold would be neither true nor false: not stated."""
    source = _header(write_radiograph(tmp_path / "cr.dcm", "CR"))
    for build in BUILDS.values():
        root = _reread(build(source, UNDECIDED, ALGORITHM, "1.2.3.4", "1.2.3.5")).ContentSequence
        names = [item.ConceptNameCodeSequence[0].CodeValue for item in root]
        assert report.QUALITATIVE_EVALUATIONS[0] not in names and "126010" in names
        decided = _reread(build(source, _findings(0.5), ALGORITHM, "1.2.3.4", "1.2.3.5")).ContentSequence
        assert report.QUALITATIVE_EVALUATIONS[0] in [item.ConceptNameCodeSequence[0].CodeValue for item in decided]


def test_sr_concepts_are_every_concept_the_sr_names_and_no_class_may_take_one(tmp_path):
    from medge.edge.errors import UsageError

    source = _header(write_radiograph(tmp_path / "cr.dcm", "CR"))
    used = set()
    for finding in (FINDING, _findings(0.5), report.Finding(("a", "b"), {"a": 0.4, "b": 0.6}, "b")):
        sr = report.build_sr(source, finding, ALGORITHM, "1.2.3.4", "1.2.3.5")
        used |= _concept_names(sr.ContentSequence) - {code[:2] for code in finding.codes}
    assert used == report.SR_CONCEPTS
    with pytest.raises(UsageError, match="--class-code ptx: DCM 121071 is a concept of the SR's own structure"):
        report.class_codes(("ptx", "normal"), {"ptx": ("121071", "DCM", "Finding")})


def _concept_names(items) -> set[tuple[str, str]]:
    """Every concept name (value, designator) in a content tree."""
    names = set()
    for item in items:
        if "ConceptNameCodeSequence" in item:
            concept = item.ConceptNameCodeSequence[0]
            names.add((concept.CodeValue, concept.CodingSchemeDesignator))
        names |= _concept_names(item.get("ContentSequence", []))
    return names


def _seconds(ds, which: str) -> float:
    """``ds``'s Instance Creation or Content date and time (``which``), local, as seconds since the epoch."""
    import datetime

    date, clock = (ds.InstanceCreationDate, ds.InstanceCreationTime) if which == "Instance" else (ds.ContentDate,
                                                                                                 ds.ContentTime)
    return datetime.datetime.strptime(f"{date}{clock}", "%Y%m%d%H%M%S.%f").timestamp()


def _encoded(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _difference(a, b) -> str:
    import difflib

    return "\n".join(difflib.unified_diff(str(_reread(b)).splitlines(), str(_reread(a)).splitlines(), "build_sr",
                                          "template", lineterm="", n=1))


def test_a_template_refuses_another_models_finding():
    template = report.sr_template(ALGORITHM, FINDING)
    with pytest.raises(ValueError, match="another model's classes"):
        template.fill(None, dataclasses.replace(FINDING, threshold=0.5), "1.2.3.4", "1.2.3.5")
    recoded = dataclasses.replace(FINDING, codes=(LONG_CODE, FINDING.codes[1]))  # the same classes, coded otherwise
    with pytest.raises(ValueError, match="another model's classes, codes"):
        template.fill(None, recoded, "1.2.3.4", "1.2.3.5")
    assert report.sr_template(ALGORITHM, recoded) is not template
    assert report.sr_template(ALGORITHM, dataclasses.replace(FINDING, label="disease")) is template


# --- class codes -------------------------------------------------------------------------------------------------
def ps3_16_mismatches(table) -> list[str]:
    """Entries of a table of class codes (name -> code) that pydicom's dictionary of PS3.16 does not hold with that
    meaning."""
    from pydicom.sr._concepts_dict import concepts

    held = {(scheme, value, meaning) for scheme, by_name in concepts.items() for by_value in by_name.values()
            for value, (meaning, _cids) in by_value.items()}
    return [f"{name}: {code}" for name, code in table.items() if (code[1], code[0], code[2]) not in held]


def test_every_standard_code_of_the_sr_is_in_ps3_16_with_its_meaning():
    """The built-in class table and every other concept the SR states, against pydicom's dictionary of PS3.16 (DICOM's
    own codes and the SNOMED CT codes DICOM uses); a planted entry from memory, or a meaning that is not the code's,
    is found."""
    assert len(report.CLASS_CODES) == 18 and all(name == name.lower() for name in report.CLASS_CODES)
    assert {code[1] for code in report.CLASS_CODES.values()} == {"SCT"}
    assert ps3_16_mismatches(report.CLASS_CODES) == []
    concepts = {"probability": report.PROBABILITY, "threshold": report.THRESHOLD, "present": report.PRESENT,
                "absent": report.ABSENT, "exam flag": report.ANY_FINDING}
    assert ps3_16_mismatches(concepts) == []
    planted = {"pneumonia": ("233604007", "SCT", "Pneumonia"), "effusion": ("41699000", "SCT", "Pleural effusion")}
    assert ps3_16_mismatches(planted) == ["pneumonia: ('233604007', 'SCT', 'Pneumonia')",
                                          "effusion: ('41699000', 'SCT', 'Pleural effusion')"]


def test_class_codes_are_the_users_then_the_tables_then_private():
    from medge.edge.errors import UsageError

    assert report.class_codes(("Normal", "Pleural_Effusion", "ptx", "MASS")) == (
        ("17621005", "SCT", "Normal"), ("60046008", "SCT", "Pleural effusion"), ("C2", "99MEDGE", "ptx"),
        ("4147007", "SCT", "Mass"))  # by name, case and "_" aside; the finding, not the quantity 118538004
    given = {"ptx": ("36118008", "SCT", "Pneumothorax"), "Normal": ("263654008", "SCT", "Abnormal")}
    assert report.class_codes(("Normal", "ptx"), given) == (given["Normal"], given["ptx"])  # the user's first
    assert report.private_classes(("a", "normal"), report.class_codes(("a", "normal"))) == ["a"]
    with pytest.raises(UsageError, match=r"--class-code Ptx: no such class in the bundle \(its classes: ptx, normal\)"):
        report.class_codes(("ptx", "normal"), {"Ptx": given["ptx"]})
    with pytest.raises(UsageError, match="classes 'tumor' and 'neoplasm' have the same code .*--class-code"):
        report.class_codes(("tumor", "neoplasm"))
    with pytest.raises(UsageError, match="classes 'ptx' and 'pneumothorax' have the same code"):
        report.class_codes(("ptx", "pneumothorax"), {"ptx": given["ptx"]})


def test_a_finding_states_what_it_can():
    with pytest.raises(ValueError, match="threshold 0.35 on 'other', not one of the classes"):
        dataclasses.replace(FINDING, positive="other")
    with pytest.raises(ValueError, match="an operating point without a threshold"):
        dataclasses.replace(FINDING, threshold=None, positive=None)
    with pytest.raises(ValueError, match="1 codes for 2 classes"):
        dataclasses.replace(FINDING, codes=(LONG_CODE,))
    with pytest.raises(ValueError, match="1 codes for 2 classes"):
        dataclasses.replace(_findings(0.5), codes=(LONG_CODE,))


# --- the heatmap SC ----------------------------------------------------------------------------------------------
def _geometry_source(rows, columns, **attributes):
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.Rows, ds.Columns = rows, columns
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize("attributes, expected", [
    ({"Rows": 2048, "Columns": 1536}, (1024, 768)),  # capped, proportions kept
    ({"Rows": 1536, "Columns": 2048}, (768, 1024)),
    ({"Rows": 256, "Columns": 200}, (256, 200)),  # the source's own size
    ({"Rows": 100, "Columns": 100, "PixelSpacing": [0.2, 0.1]}, (100, 50)),  # rows 0.2 mm apart: twice as tall
    ({"Rows": 100, "Columns": 100, "ImagerPixelSpacing": [0.1, 0.2]}, (50, 100)),
    ({"Rows": 100, "Columns": 100, "PixelAspectRatio": [2, 1]}, (100, 50)),
    ({"Rows": 100, "Columns": 80, "PixelSpacing": ""}, (100, 80)),  # nothing usable: square pixels
    ({"Rows": 4000, "Columns": 10}, (1024, 3)),
])
def test_sc_geometry(attributes, expected):
    rows, columns = attributes.pop("Rows"), attributes.pop("Columns")
    assert report.display_size(_geometry_source(rows, columns, **attributes), (224, 224)) == expected
    assert report.display_size(_geometry_source(None, None), (96, 96)) == (96, 96)  # no size stated: the heatmap's


def test_the_sc_is_the_overlay_at_the_sources_proportions():
    from medge.edge.explain import Explanation

    heat = np.zeros((96, 96), np.float32)
    heat[:, 48:] = 1.0  # the right half: the most evidence (red in JET)
    seen = np.full((96, 96), 128, np.uint8)
    explanation = Explanation(heatmap=heat, class_index=0, method="cam", logits=np.zeros(2, np.float32), image=seen)
    rgb = report.heatmap_rgb(explanation, _geometry_source(3000, 1500))
    assert rgb.shape == (1024, 512, 3) and rgb.dtype == np.uint8
    right, left = rgb[512, 500].astype(int), rgb[512, 10].astype(int)
    assert right[0] > right[2] and left[2] > left[0]  # RGB: red where the heatmap is high, blue where it is not


@pytest.mark.parametrize("given, expected", [
    ({"Laterality": "L", "BodyPartExamined": "HAND"}, {"Laterality": "L", "BodyPartExamined": "HAND"}),
    ({"ImageLaterality": "R", "BodyPartExamined": "KNEE"}, {"ImageLaterality": "R", "BodyPartExamined": "KNEE"}),
    ({"BodyPartExamined": "CHEST"}, {"BodyPartExamined": "CHEST"}),  # judged unpaired by its modality: no Laterality
    ({}, {"Laterality": ""}),  # nothing says whether the part is paired: present and empty, unknown
    ({"Laterality": ""}, {"Laterality": ""}),
])
def test_the_sc_copies_laterality_and_body_part_as_the_source_states_them(tmp_path, given, expected):
    source = _header(write_radiograph(tmp_path / "cr.dcm", "CR"))
    source.update(given)
    sc = _reread(report.build_heatmap_sc(source, np.zeros((8, 8, 3), np.uint8), ALGORITHM, "1.2.3.4", "1.2.3.5"))
    keywords = ("Laterality", "ImageLaterality", "BodyPartExamined")
    assert {k: str(sc[k].value or "") for k in keywords if k in sc} == expected


def test_the_sc_keeps_what_stays_true_and_drops_what_would_not(tmp_path):
    source = _header(write_radiograph(tmp_path / "dx.dcm", transfer="1.2.840.10008.1.2.4.50"))  # JPEG: lossy
    source.update({"PatientOrientation": ["P", "F"], "PixelSpacing": [0.1, 0.1], "ImagerPixelSpacing": [0.1, 0.1]})
    sc = _reread(report.build_heatmap_sc(source, np.zeros((8, 8, 3), np.uint8), ALGORITHM, "1.2.3.4", "1.2.3.5"))
    assert list(sc.PatientOrientation) == ["P", "F"]  # same proportions, neither turned nor flipped
    assert sc.LossyImageCompression == "01"  # derived from a lossy image
    assert not {"PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing"} & set(sc.dir())


# --- dciodvfy ----------------------------------------------------------------------------------------------------
# What dciodvfy says of a result object that is not of medge's making: (message pattern, why, whether the source
# shows the cause). An allowance holds only for a source that shows its cause, so it cannot hide a fault of ours.
INHERITED = [
    (r"Warning - Value is zero for value 1 of attribute <Patient's (Size|Weight)>$",
     "the source's Patient's Size or Weight is 0, copied as it is (Patient Study module, as highdicom copies it)",
     lambda source, m: source.get(f"Patient{m[1]}") == 0),
    (r"Warning - Value dubious for this VR - \(0x0008,0x1060\) PN Name of Physician\(s\) Reading Study .*"
     r"Retired Person Name form$",
     "the source's value, copied (General Study)", lambda source, m: "NameOfPhysiciansReadingStudy" in source),
    (r"Warning - Missing attribute or value that would be needed to build DICOMDIR - Study (Date|Time|ID)$",
     "the source has none: Type 2, present and empty, never made up",
     lambda source, m: not source.get(f"Study{m[1]}")),
    (r"Warning - Unrecognized defined term <([^>]*)> for value 1 of attribute <Body Part Examined>$",
     "the source's Body Part Examined, not a DICOM defined term, copied as it is",
     lambda source, m: source.get("BodyPartExamined") == m[1]),
    (r"Error - Missing attribute Type 2C Conditional Element=<Laterality> Module=<GeneralSeries>$",
     "the source names a body part dciodvfy does not know as unpaired, and no side: copied as it states it",
     lambda source, m: bool(source.get("BodyPartExamined")) and not _side(source)),
    (r"Warning - is only permitted to be empty when actually unknown; .* attribute <Laterality>$",
     "the source states no side, and no body part or an empty Laterality: unknown, which Type 2C allows empty "
     "(dciodvfy warns on every empty Laterality)",
     lambda source, m: not _side(source) and ("Laterality" in source or not source.get("BodyPartExamined"))),
]
# dciodvfy checks Coding Scheme Designators against its own list (99IHE, 99PMP ... are on it) and warns on any other,
# declared in the Coding Scheme Identification Sequence or not (dicom3tools' attrvrfy.cc). PS3.16 section 8 gives
# private schemes a "99" prefix and PS3.3 section 6.2 lets Defined Terms be extended: this warning is of the
# validator's list, once per use of 99MEDGE (the declaration included). Only a class that medge has no standard code
# for is coded in 99MEDGE, and the node says so at start.
PRIVATE_SCHEME = "Warning - Unrecognized defined term <99MEDGE> for value 1 of attribute <Coding Scheme Designator>"
needs_dciodvfy = pytest.mark.skipif(not os.access(DCIODVFY, os.X_OK),
                                    reason=f"{DCIODVFY} is not installed (dicom3tools: apt-get install dicom3tools)")


def _side(source) -> bool:
    return any(source.get(k) for k in ("Laterality", "ImageLaterality"))


def _complete(source, **more):
    """``source`` with everything a result copies stated (a modality that fills in its header)."""
    source.update({"Manufacturer": "ACME", "StudyDescription": "XR KNEE RIGHT", "PatientOrientation": ["L", "F"],
                   "SpecificCharacterSet": "ISO_IR 100", **more})
    return source


def _dciodvfy_source(name, tmp_path):
    if name == "cr":
        return _header(write_radiograph(tmp_path / "cr.dcm", "CR"))
    if name == "dx":
        return _header(write_radiograph(tmp_path / "dx.dcm", "DX", size=300, columns=200))
    if name == "cr complete":
        return _complete(_header(write_radiograph(tmp_path / "cr.dcm", "CR")), BodyPartExamined="HAND",
                         Laterality="L")
    if name == "dx complete":
        return _complete(_header(write_radiograph(tmp_path / "dx.dcm", transfer="1.2.840.10008.1.2.4.50")),
                         BodyPartExamined="KNEE", ImageLaterality="R", ImagerPixelSpacing=[0.15, 0.15])
    if name == "chest":
        return _complete(_header(write_radiograph(tmp_path / "cr.dcm", "CR")), BodyPartExamined="CHEST")
    return _header(with_study(pydicom_file(name), tmp_path / name))


COMPLETE = ["cr complete", "dx complete", "chest"]


def _dciodvfy(ds, path, kind: str) -> list[str]:
    """What dciodvfy says of ``ds`` (written to ``path``, checked as the IOD of ``kind``): its errors and warnings."""
    ds.save_as(path, enforce_file_format=True)
    out = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
    lines = (out.stdout + out.stderr).splitlines()
    found = [line for line in lines if line.startswith(("Error", "Warning"))]
    iod = {"SR": "Comprehensive3DSR", "SC": "SCImage"}[kind]
    assert [line for line in lines if line not in found] == [iod], lines  # it read the file, checked that IOD
    return found


@needs_dciodvfy
@pytest.mark.parametrize("name", ["cr", "dx", *COMPLETE, *PYDICOM_GRAY, "CT_small.dcm", "MR_small.dcm"])
@pytest.mark.parametrize("bundle_task", ["single-label", "multi-label"])
def test_dciodvfy_finds_nothing_of_medges_making(tmp_path, name, bundle_task):
    """Classes with a standard code (each class here is in medge's table): no remark on anything medge made, not
    even a coding scheme; only what the result copies from a source that shows its cause."""
    source = _dciodvfy_source(name, tmp_path)
    rgb = np.full((*report.display_size(source, (224, 224)), 3), 90, np.uint8)
    finding, explained = (FINDING, None) if bundle_task == "single-label" else (_findings(0.5, ("x",)), "Effusion")
    objects = {"SR": report.sr_template(ALGORITHM, finding).fill(source, finding, "1.2.3.4", "1.2.3.5"),
               "SC": report.build_heatmap_sc(source, rgb, ALGORITHM, "1.2.3.6", "1.2.3.7", explained=explained)}
    for kind, ds in objects.items():
        found = _dciodvfy(ds, tmp_path / f"{kind}.dcm", kind)
        unexplained = [line for line in found if not _inherited(line, source)]
        assert unexplained == [], f"{kind} of {name}: {unexplained}"
        if name in COMPLETE:  # a source that states it all: nothing to inherit
            assert found == [], f"{kind} of {name}: {found}"


@needs_dciodvfy
@pytest.mark.parametrize("bundle_task", ["single-label", "multi-label"])
def test_a_class_without_a_standard_code_is_coded_privately_until_it_is_given_one(tmp_path, bundle_task):
    """"ptx" is in no table: coded (C0, 99MEDGE, "ptx"), 99MEDGE declared, and dciodvfy warns at each use of it (the
    group's finding, the presence, the declaration) and of nothing else; with a code given (--class-code) the SR is
    all standard and dciodvfy says nothing."""
    source = _dciodvfy_source("cr complete", tmp_path)
    for given in ({}, {"ptx": ("36118008", "SCT", "Pneumothorax")}):
        codes = report.class_codes(("ptx", "normal"), given)
        if bundle_task == "single-label":
            finding = report.Finding(("ptx", "normal"), {"ptx": P, "normal": 1 - P}, "normal", 0.35, "ptx",
                                     codes=codes)
        else:
            finding = report.Findings(("ptx", "normal"), {"ptx": P, "normal": 1 - P}, {"ptx": False, "normal": None},
                                      (0.4, None), ("youden", "unsupported"), codes=codes)
        sr = report.sr_template(ALGORITHM, finding).fill(source, finding, "1.2.3.4", "1.2.3.5")
        found = _dciodvfy(sr, tmp_path / "SR.dcm", "SR")
        schemes = {s.CodingSchemeDesignator: s for s in sr.CodingSchemeIdentificationSequence}
        if given:
            assert codes[0] == given["ptx"] and list(schemes) == ["99IHE"] and found == []
            continue
        assert codes[0] == ("C0", "99MEDGE", "ptx") and list(schemes) == ["99MEDGE", "99IHE"]
        assert schemes["99MEDGE"].CodingSchemeResponsibleOrganization == "medge" and schemes["99MEDGE"].CodingSchemeName
        assert "CodingSchemeUID" not in schemes["99MEDGE"] and "CodingSchemeRegistry" not in schemes["99MEDGE"]
        assert _uses_of_99medge(sr) == 3 and found == [PRIVATE_SCHEME] * 3, found


def _inherited(line, source) -> bool:
    return any((m := re.match(pattern, line)) and shows(source, m) for pattern, _why, shows in INHERITED)


def _uses_of_99medge(ds) -> int:
    return sum(1 for elem in ds.iterall() if elem.keyword == "CodingSchemeDesignator" and elem.value == "99MEDGE")


@pytest.mark.parametrize("finding", [FINDING, _findings(0.5, ("x",))], ids=["single-label", "multi-label"])
def test_a_result_made_again_for_the_same_instance_is_the_same_bytes(tmp_path, finding):
    """After a crash the node classifies an instance again and sends its objects again: with the times of the
    instance's receipt (``report.stamp``) they are byte for byte what the PACS may already hold."""
    import datetime

    source = _header(write_radiograph(tmp_path / "cr.dcm", "CR"))
    source.Manufacturer, source.AcquisitionDateTime = "ACME", "20260101120000"  # its equipment keeps its own time
    received = datetime.datetime(2026, 12, 6, 1, 2, 3, 456789)
    rgb = np.zeros((48, 32, 3), np.uint8)
    template = report.sr_template(ALGORITHM, finding)
    before = _encoded(template.sr)

    def made():
        sr = template.fill(source, finding, "1.2.3.4", "1.2.3.5")
        sc = report.build_heatmap_sc(source, rgb, ALGORITHM, "1.2.3.6", "1.2.3.7")
        for ds in (sr, sc):
            report.stamp(ds, received)
        return sr, sc

    sr, sc = made()
    time.sleep(0.01)  # "now" has moved on
    again = made()
    assert (_encoded(sr), _encoded(sc)) == tuple(_encoded(ds) for ds in again)
    assert [str(v) for v in (sr.ContentDate, sr.ContentTime, sc.InstanceCreationTime, sc.TimeOfSecondaryCapture)] \
        == ["20261206", "010203.456789", "010203.456789", "010203.456789"]
    times = {i.PurposeOfReferenceCodeSequence[0].CodeValue: str(i.get("ContributionDateTime", ""))
             for i in sc.ContributingEquipmentSequence}
    assert times[report.ACQUISITION_EQUIPMENT].startswith("20260101")  # the source's, as it was
    assert sum(t.startswith("20261206010203") for t in times.values()) >= 1  # ours: the receipt
    assert _encoded(template.sr) == before  # stamping a filled SR leaves the template as it was


# --- multi-label bundles: one measurement group per finding -------------------------------------------------------
@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("effusion", [P, 0.5])
def test_the_multilabel_sr_reads_back_through_highdicoms_tid_1500_parser(tmp_path, build, effusion):
    """One group per finding: the finding, its probability (the exact float), threshold and presence (none for a
    finding without a threshold, said in a comment), what the threshold guarantees; and the exam-level flag."""
    import highdicom as hd
    from highdicom.sr.utils import find_content_items
    from pydicom.sr.codedict import codes

    source = _header(write_radiograph(tmp_path / "dx.dcm"))
    findings = _findings(effusion, warnings=("low contrast",))
    ds = _reread(BUILDS[build](source, findings, ALGORITHM, "1.2.3.4", "1.2.3.5"))
    sr = hd.sr.Comprehensive3DSR.from_dataset(ds)
    effusion_group, nodule_group = sr.content.get_image_measurement_groups()
    for group, name, code in [(effusion_group, "Effusion", EFFUSION), (nodule_group, "Nodule", NODULE)]:
        assert _code(group.finding_type) == code
        assert [i.referenced_sop_instance_uid for i in group.source_images] == [source.SOPInstanceUID]
        assert group.tracking_identifier == f"medge finding {name}"
    assert {_code(m.name): m.value for m in effusion_group.get_measurements()} == {
        report.PROBABILITY: effusion, report.THRESHOLD: 0.4}  # == on floats: bit for bit
    assert {_code(m.name): m.value for m in nodule_group.get_measurements()} == {report.PROBABILITY: 1 - P}
    (presence,) = effusion_group.get_qualitative_evaluations()
    assert _code(presence.name) == EFFUSION
    assert _code(presence.value) == (PRESENT if effusion >= 0.4 else ABSENT)
    assert nodule_group.get_qualitative_evaluations() == []  # not decided: neither present nor absent

    def comments(group):
        return [i.value for i in find_content_items(group[0], name=codes.DCM.Comment)]

    assert comments(effusion_group) == ["operating point: youden: sensitivity 0.90, specificity 0.85 on 40 validation "
                                        "images", "warning: low contrast"]
    assert comments(nodule_group) == [
        "operating point: unsupported: 3 positives in the validation split (5 needed for a threshold)",
        "not decided: Nodule has no threshold, so it is stated neither present nor absent", "warning: low contrast"]
    (flag,) = [i for i in ds.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "C0034375"]  # TID 1500 row 12
    any_finding, about = flag.ContentSequence
    concept = any_finding.ConceptNameCodeSequence[0]
    assert (concept.CodeValue, concept.CodingSchemeDesignator, concept.CodeMeaning) == report.ANY_FINDING
    assert any_finding.ConceptCodeSequence[0].CodeValue == (PRESENT if effusion >= 0.4 else ABSENT)[0]
    assert about.TextValue == "exam-level flag: Present when any decided finding (Effusion) is present; not decided: " \
                              "Nodule"


def test_findings_refuse_a_decision_without_a_threshold_and_templates_another_models():
    with pytest.raises(ValueError, match="'Nodule': decision False with threshold None"):
        dataclasses.replace(_findings(0.5), decisions={"Effusion": True, "Nodule": False})
    with pytest.raises(ValueError, match="'Effusion': decision None with threshold 0.4"):
        dataclasses.replace(_findings(0.5), decisions={"Nodule": None})
    with pytest.raises(ValueError, match="one each"):
        dataclasses.replace(_findings(0.5), thresholds=(0.4,))
    template = report.sr_template(ALGORITHM, _findings(0.5))
    assert report.sr_template(ALGORITHM, _findings(0.1, warnings=("x",))) is template  # per model, not per instance
    with pytest.raises(ValueError, match="another model's classes"):
        template.fill(None, dataclasses.replace(_findings(0.5), thresholds=(0.5, None)), "1.2.3.4", "1.2.3.5")
    with pytest.raises(ValueError, match="another model's classes"):
        template.fill(None, FINDING, "1.2.3.4", "1.2.3.5")


def test_the_multilabel_sc_legend(tmp_path):
    """The heatmap of the most probable finding, with the finding, the positive ones and the undecided ones burned
    in at the top left; the rest of the image is the single-label SC's."""
    from medge.edge.explain import Explanation

    heat = np.zeros((96, 96), np.float32)
    heat[48:, :] = 1.0
    explanation = Explanation(heatmap=heat, class_index=1, method="cam", logits=np.zeros(2, np.float32),
                              image=np.full((96, 96), 128, np.uint8))
    findings = _findings(0.5)
    legend = report.findings_legend(findings, "Nodule")
    assert legend == [f"heatmap: Nodule (p {1 - P:.2f})", "positive: Effusion", "not decided: Nodule"]
    assert report.findings_legend(_findings(P), "Effusion")[1] == "positive: none"
    source = _geometry_source(512, 384)
    plain, marked = report.heatmap_rgb(explanation, source), report.heatmap_rgb(explanation, source, legend)
    changed = np.argwhere(np.any(plain != marked, axis=2))
    assert len(changed) and changed[:, 0].max() < 512 // 4 and changed[:, 1].max() < 384  # the legend's box only
    assert (marked[changed[:, 0], changed[:, 1]] == 255).all(axis=1).any()  # white text
    assert np.array_equal(plain[512 // 4:], marked[512 // 4:])
    source = _header(write_radiograph(tmp_path / "cr.dcm", "CR"))
    sc = _reread(report.build_heatmap_sc(source, marked, ALGORITHM, "1.2.3.4", "1.2.3.5", explained="Nodule"))
    assert sc.DerivationDescription.startswith("heatmap of where the model looked for Nodule, the most probable finding")
    assert sc.DerivationDescription.endswith(report.NOT_FOR_DIAGNOSIS) and sc.BurnedInAnnotation == "YES"


def test_what_the_sr_states_of_a_models_prediction(tmp_path, bundle, multilabel_bundle):
    """``finding_of``: a single-label bundle's label and probabilities; a multi-label bundle's decisions, and per
    finding its threshold and what it guarantees (the unsupported finding: none, and why)."""
    from medge.edge.model import Model

    image = write_radiograph(tmp_path / "dx.dcm", size=64)
    single, multi = Model.load(bundle), Model.load(multilabel_bundle)
    (pred,) = single.predict([str(image)])
    finding = report.finding_of(single, pred)
    assert isinstance(finding, report.Finding) and (finding.label, finding.probabilities) == (pred.label,
                                                                                             pred.probabilities)
    assert finding.codes == report.class_codes(single.classes)  # disease, normal: medge's table
    assert report.finding_of(single, pred, {"disease": LONG_CODE}).codes == (LONG_CODE, report.CLASS_CODES["normal"])
    (pred,) = multi.predict([str(image)])
    findings = report.finding_of(multi, pred)
    assert (findings.names, findings.thresholds, findings.codes) == (("Effusion", "Nodule"), (0.4, None),
                                                                      (EFFUSION, NODULE))
    assert report.finding_of(multi, pred, {"Nodule": LONG_CODE}).codes == (EFFUSION, LONG_CODE)
    assert (findings.probabilities, findings.decisions) == (pred.probabilities, pred.decisions)
    assert findings.positive == pred.positive_findings
    assert findings.operating_points[1] == "unsupported: 3 positives in the validation split (5 needed for a threshold)"
    assert findings.operating_points[0] == multi.findings.findings[0].guarantee
    algorithm = report.algorithm_of(multi)
    assert algorithm.model_sha256 == multi.sha256 and algorithm.name.endswith(f"({multilabel_bundle.name})")
