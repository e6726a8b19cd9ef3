"""Result objects that go back into PACS: a TID 1500 structured report per instance and a heatmap Secondary Capture.

Built with highdicom (extra ``node``; imported inside the functions), as the IHE AI
Results profile asks of an AI result:

- ``build_sr``: a Comprehensive 3D SR holding a TID 1500 Imaging Measurement Report
  with one TID 1501 measurement group per class of a single-label bundle (``Finding``)
  or per finding of a multi-label one (``Findings``, ``edge.findings``), in the bundle's
  order, each built from a ``Group``: the class as its "Finding" (what highdicom's parser
  reads back as ``finding_type``), its probability as a measurement (122157, DCM,
  "Probability"; unit "no units"; ``FloatingPointValue`` holds the float64 exactly,
  ``NumericValue`` its 16-character decimal), present or absent as a qualitative
  evaluation (the class's code = CID 240's SNOMED CT Present / Absent: the label present
  and the other classes absent; a multi-label finding as decided), the operating
  threshold as a measurement (122411, DCM, "Threshold Value") in the group of the class it
  is on (a multi-label finding's own) with what it was chosen to guarantee as a comment
  ("operating point: sensitivity >= 0.95 with 95% confidence ...", or its "unsupported"
  mark), the warnings as comments, and the algorithm identification (TID 4019: name,
  medge version, model SHA-256). A bundle without an operating point (argmax) states no
  threshold; a multi-label finding without one (unsupported) no presence, and a comment
  that it is not decided. A multi-label SR's exam-level flag (any finding present) is the
  report's own qualitative evaluation (TID 1500 row 12). The algorithm is also in the
  Contributing Equipment Sequence with purpose of reference (1630, 99IHE, "Processing
  Algorithm"). The SR references the source instance, is a new series of the same study,
  stays UNVERIFIED and its SeriesDescription says it is not for diagnostic use.
- ``SRTemplate``: ``build_sr`` costs ~15 ms an instance (highdicom checks the content
  and deep-copies it on every build), three times the SR's encoding. The node builds the
  SR of its model once with ``build_sr`` and fills a copy per instance: patient and study
  (copied as highdicom copies them), UIDs, times, evidence, equipment, and in each group
  the tracking UID, probability, presence, source reference and warnings; ~2 ms. The
  result equals ``build_sr``'s element for element (tested); what does not change is
  shared with the template, not copied.
- ``build_heatmap_sc``: the heatmap overlay (RGB) as a Secondary Capture of the same
  patient and study (patient and study attributes copied as in the SR, Study Description
  included), in a new series per source series (so that the source's Laterality and Body
  Part Examined, series attributes, can be copied as they are; a Laterality that nothing
  states is present and empty, unknown, as Type 2C allows), BurnedInAnnotation YES, a
  Source Image Sequence that references the source with purpose (121322, DCM, "Source
  image for image processing operation"). A multi-label bundle's SC is the heatmap of the
  most probable finding with a legend burned in (``findings_legend``: that finding, the
  positive ones, the undecided ones).
- ``heatmap_rgb``: the SC's pixels. The heatmap is the model's input size (224 x 224 for
  most bundles), drawn over the image the model saw (blurred, CLAHE, squeezed to a
  square). The SC gives it back the source's proportions (its pixel spacing when its
  pixels are not square) and the source's size, its long side capped at
  ``SC_LONG_SIDE_PX`` (1024): an overlay of a 224-pixel view holds no more detail at
  2048 px, and a 2048 x 2048 RGB SC would be 12 MB per instance into PACS (3 MB at 1024).
  The image under the colours stays the model's view, resampled, not the source's own
  pixels: the SC shows where the model looked, not diagnostic detail, and needs no second
  decoding of the source. So it carries no Pixel Spacing: distances are measured on the
  source.

UIDs come from ``result_uid``: derived from the source's UID and the model's hash,
and the times in them from the instance's receipt (``stamp``), so the same instance
classified again (after a crash) yields the same objects, byte for byte.
Each class is coded in a standard scheme when medge knows its code (``class_codes``):
the user's (``medge node --class-code NAME=SCHEME:VALUE[:MEANING]``), else the built-in
table's (``CLASS_CODES``: SNOMED CT codes that PS3.16 holds with that meaning, by class
name). A class with neither keeps a private code, ``99MEDGE`` "C<k>" (k its index; the
meaning its name: PACS viewers show the name), and only then does the SR declare
``99MEDGE`` in its Coding Scheme Identification Sequence (with IHE's ``99IHE``, always).
Every other concept is DICOM's, SNOMED CT's, UCUM's or UMLS's: dicom3tools' ``dciodvfy``
knows those, and warns once per use of ``99MEDGE``, declared or not, for it checks
designators against a fixed list. The node says at start which classes are coded
privately.
"""
from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, replace

import cv2
import numpy as np

from medge.edge.errors import UsageError
from medge.edge.findings import MULTILABEL

NOT_FOR_DIAGNOSIS = "medge AI result - not for diagnostic use"
Code = tuple[str, str, str]  # (code value, coding scheme designator, code meaning), as CodedConcept takes them
SCHEME = "99MEDGE"  # medge's private scheme: the classes without a standard code, "C<k>"
# DICOM's concept names of what a group measures (PS3.16), and CID 240 "Present-Absent" (SNOMED CT).
PROBABILITY, THRESHOLD = ("122157", "DCM", "Probability"), ("122411", "DCM", "Threshold Value")
PRESENT, ABSENT = ("52101004", "SCT", "Present"), ("272519000", "SCT", "Absent")
QUALITATIVE_EVALUATIONS = ("C0034375", "UMLS", "Qualitative Evaluations")  # the TID 1500 row 12 container
# The exam-level flag, any finding present: SNOMED CT's clinical finding, its meaning as PS3.16 writes it (PS3.16's
# other meaning of the code, "Finding", would read as TID 1501's own (121071, DCM, "Finding") item).
ANY_FINDING = ("404684003", "SCT", "Clinical finding (finding)")
# Classes coded by name (lower case, "_" read as a space): SNOMED CT codes that PS3.16 holds with these meanings
# (a test checks each against pydicom's dictionary of PS3.16). Codes it does not hold are the user's to give.
CLASS_CODES: dict[str, Code] = {
    "normal": ("17621005", "SCT", "Normal"), "abnormal": ("263654008", "SCT", "Abnormal"),
    "disease": ("64572001", "SCT", "Disease"), "cardiomegaly": ("287272002", "SCT", "Cardiomegaly"),
    "effusion": ("41699000", "SCT", "Effusion"), "pleural effusion": ("60046008", "SCT", "Pleural effusion"),
    "edema": ("79654002", "SCT", "Edema"), "pulmonary edema": ("19242006", "SCT", "Pulmonary edema"),
    "pneumothorax": ("36118008", "SCT", "Pneumothorax"), "fibrosis": ("112674009", "SCT", "Fibrosis"),
    "mass": ("4147007", "SCT", "Mass"),  # the finding; 118538004 "Mass" is the quantity
    "nodule": ("27925004", "SCT", "Nodule"), "lesion": ("52988006", "SCT", "Lesion"),
    "lung cancer": ("93880001", "SCT", "Lung cancer"), "malignant": ("21594007", "SCT", "Malignant"),
    "benign": ("30807003", "SCT", "Benign"), "neoplasm": ("108369006", "SCT", "Neoplasm"),
    "tumor": ("108369006", "SCT", "Tumor"),
}
# The concept names the SR uses besides its classes' (value, designator; a test walks SRs for them): a class coded as
# one of them would be read as that item (one coded (121071, DCM), "Finding", had its presence read as the finding).
SR_CONCEPTS = frozenset({
    ("111001", "DCM"), ("111002", "DCM"), ("111003", "DCM"), ("112039", "DCM"), ("112040", "DCM"), ("121005", "DCM"),
    ("121012", "DCM"), ("121013", "DCM"), ("121014", "DCM"), ("121015", "DCM"), ("121049", "DCM"), ("121058", "DCM"),
    ("121071", "DCM"), ("121106", "DCM"), ("121112", "DCM"), ("125007", "DCM"), ("126010", "DCM"), PROBABILITY[:2],
    THRESHOLD[:2], ANY_FINDING[:2], QUALITATIVE_EVALUATIONS[:2]})
SR_SERIES_NUMBER, SC_SERIES_NUMBER = 9901, 9902
SC_LONG_SIDE_PX = 1024  # the SC's long side at most (module docstring: why)
SC_DRAWN = (", drawn over the image the model saw (its input), resampled to the source's proportions; "
            + NOT_FOR_DIAGNOSIS)
SC_DERIVATION = "heatmap of where the model looked" + SC_DRAWN


def class_codes(classes, given: Mapping[str, Code] | None = None) -> tuple[Code, ...]:
    """The code of each class: the user's, else ``CLASS_CODES``' by its name, else private (C<k>, 99MEDGE, name).

    Args:
        classes: the model's classes (a multi-label model's findings), in its order.
        given: the user's codes by class name (``medge node --class-code``).

    Returns:
        One code per class, in the order of ``classes``.

    Raises:
        UsageError: a given name that is no class of the model, a code the SR uses for one of its own items
            (``SR_CONCEPTS``), or two classes with the same code.
    """
    given = given or {}
    unknown = [name for name in given if name not in classes]
    if unknown:
        raise UsageError(f"--class-code {', '.join(unknown)}: no such class in the bundle (its classes: "
                         f"{', '.join(classes)})")
    codes = tuple(given.get(name) or CLASS_CODES.get(name.lower().replace("_", " "))
                  or (f"C{k}", SCHEME, name.replace("\\", "/")[:64])  # a backslash would split the meaning (LO) in two
                  for k, name in enumerate(classes))
    first: dict[tuple[str, str], str] = {}
    for name, code in zip(classes, codes, strict=True):
        if code[:2] in SR_CONCEPTS:
            raise UsageError(f"--class-code {name}: {code[1]} {code[0]} is a concept of the SR's own structure; give "
                             "the class a code of what it is")
        if (other := first.setdefault(code[:2], name)) != name:
            raise UsageError(f"classes {other!r} and {name!r} have the same code ({code[1]} {code[0]}): give one of "
                             f"them another with --class-code")
    return codes


def private_classes(classes, codes) -> list[str]:
    """The classes coded in medge's private scheme (``class_codes``' last resort)."""
    return [name for name, code in zip(classes, codes, strict=True) if code[1] == SCHEME]


UTF8 = "ISO_IR 192"


def character_set(source, *made_of):
    """The Specific Character Set of a result object on ``source`` whose own text is in ``made_of`` (texts, and
    dataclasses such as a ``Finding`` and the ``Algorithm``: their class names, codes, what thresholds guarantee,
    warnings, the model's name): the source's, as highdicom copies it, while all that text is ASCII, which every character
    set holds; else UTF-8 (ISO_IR 192), which holds the source's text and medge's alike (pydicom writes every
    text in the object's character set). Without it a class "pneumonía" was written in Latin-1 under the default
    repertoire (an object dsrdump cannot read), and "肺炎" as "??"."""
    texts: list[str] = []

    def walk(value):
        if isinstance(value, str):
            texts.append(value)
        elif dataclasses.is_dataclass(value):
            walk(dataclasses.astuple(value))
        elif isinstance(value, dict):
            for pair in value.items():
                walk(pair)
        elif isinstance(value, tuple | list):
            for item in value:
                walk(item)

    walk(made_of)
    return source.get("SpecificCharacterSet") if all(t.isascii() for t in texts) else UTF8


@dataclass(frozen=True)
class Algorithm:
    """What made the result (TID 4019 Algorithm Identification)."""

    name: str  # e.g. "resnet18 (xray)"
    version: str  # medge's version
    model_sha256: str
    runtime: str = ""  # what computed it: "openvino engine, int8 variant" (edge.runtime.variants)


@dataclass(frozen=True)
class Group:
    """What one TID 1501 measurement group states: a class of a single-label model, or a finding of a multi-label
    one."""

    index: int  # the class's index in the model (its tracking UID's)
    name: str
    code: Code  # the group's finding_type, and the concept its presence is stated of
    probability: float
    present: bool | None  # None: not decided (no threshold), so no presence is stated
    threshold: float | None  # the operating threshold, in the group of the class it is on
    notes: tuple[str, ...]  # comments the same for every instance: what the threshold guarantees, "not decided"
    tracking: str  # the tracking identifier


@dataclass(frozen=True)
class Finding:
    """One instance's classification, as the SR states it."""

    classes: tuple[str, ...]
    probabilities: dict[str, float]
    label: str
    threshold: float | None = None  # the bundle's operating threshold, when it has one
    positive: str | None = None  # the class the threshold applies to
    warnings: tuple[str, ...] = ()
    operating_point: str | None = None  # what the threshold guarantees (edge.decision.guarantee_text), when it has one
    codes: tuple[Code, ...] = ()  # per class (class_codes); none given: the built-in table's, else private

    def __post_init__(self):
        if self.threshold is not None and self.positive not in self.classes:
            raise ValueError(f"threshold {self.threshold} on {self.positive!r}, not one of the classes {self.classes}")
        if self.operating_point and self.threshold is None:
            raise ValueError("an operating point without a threshold")
        _set_codes(self, self.classes)

    def per_model(self) -> tuple:
        """What is the same for every instance the model classifies (an SR template is made for it)."""
        return self.classes, self.threshold, self.positive, self.operating_point, self.codes

    def groups(self) -> list[Group]:
        """One per class: the label present, the others absent; the threshold and what it guarantees in the
        positive class's group."""
        guarantee = (f"operating point: {self.operating_point}",) if self.operating_point else ()
        return [Group(k, name, code, self.probabilities[name], name == self.label,
                      self.threshold if name == self.positive else None, guarantee if name == self.positive else (),
                      f"medge class {name}"[:64])
                for k, (name, code) in enumerate(zip(self.classes, self.codes, strict=True))]


def _set_codes(finding, names) -> None:
    """The codes of a new ``Finding`` or ``Findings``: ``class_codes(names)`` when none were given; one per class."""
    if not finding.codes:
        object.__setattr__(finding, "codes", class_codes(names))  # frozen: set once, in the constructor
    if len(finding.codes) != len(names):
        raise ValueError(f"{len(finding.codes)} codes for {len(names)} classes: one each")


@dataclass(frozen=True)
class Findings:
    """One instance's multi-label result (``edge.findings``), as the SR states it: each finding's calibrated
    probability and decision (present True, absent False, undecided None: the finding has no threshold), with what
    is the same for every instance, the findings' thresholds, what each threshold guarantees and their codes."""

    names: tuple[str, ...]
    probabilities: dict[str, float]
    decisions: dict[str, bool | None]
    thresholds: tuple[float | None, ...]  # per finding, in the order of ``names``; None: unsupported
    operating_points: tuple[str, ...]  # per finding: what its threshold guarantees, or why it has none
    warnings: tuple[str, ...] = ()
    codes: tuple[Code, ...] = ()  # per finding (class_codes); none given: the built-in table's, else private

    def __post_init__(self):
        if not (len(self.names) == len(self.thresholds) == len(self.operating_points)):
            raise ValueError(f"{len(self.names)} findings, {len(self.thresholds)} thresholds and "
                             f"{len(self.operating_points)} operating points: one each")
        for name, threshold in zip(self.names, self.thresholds, strict=True):
            if (self.decisions.get(name) is None) != (threshold is None):
                raise ValueError(f"finding {name!r}: decision {self.decisions.get(name)!r} with threshold "
                                 f"{threshold!r} (a finding is decided exactly when it has a threshold)")
        _set_codes(self, self.names)

    def per_model(self) -> tuple:
        """What is the same for every instance the model classifies (an SR template is made for it)."""
        return MULTILABEL, self.names, self.thresholds, self.operating_points, self.codes

    def groups(self) -> list[Group]:
        """One per finding: its threshold, what it guarantees, its decision (none, and a note why, when it has no
        threshold)."""
        undecided = "not decided: {} has no threshold, so it is stated neither present nor absent"
        return [Group(k, name, code, self.probabilities[name], self.decisions[name], threshold,
                      (f"operating point: {guarantee}", *([undecided.format(name)] if threshold is None else [])),
                      f"medge finding {name}"[:64])
                for k, (name, code, threshold, guarantee) in enumerate(zip(self.names, self.codes, self.thresholds,
                                                                           self.operating_points, strict=True))]

    @property
    def positive(self) -> list[str]:
        """The findings decided present, in the model's order."""
        return [n for n in self.names if self.decisions.get(n)]

    @property
    def undecided(self) -> list[str]:
        """The findings without a threshold (unsupported): neither present nor absent."""
        return [n for n, t in zip(self.names, self.thresholds, strict=True) if t is None]


def algorithm_of(model) -> Algorithm:
    """The ``Algorithm`` of a loaded ``edge.model.Model``: its architecture and bundle folder, medge's version, the
    model's SHA-256, the engine and variant that run it.

    Args:
        model: a loaded ``Model``.

    Returns:
        The model's ``Algorithm``.
    """
    from medge import __version__

    return Algorithm(name=f"{model.manifest['model'].get('arch', 'model')} ({model.bundle_dir.name})"[:64],
                     version=__version__, model_sha256=model.sha256,
                     runtime=f"{model.engine} engine, {model.variant} variant")


def finding_of(model, pred, codes: Mapping[str, Code] | None = None) -> Finding | Findings:
    """What an SR states of ``pred``, a classified ``Prediction`` of ``model``.

    Args:
        model: the loaded ``Model`` that made ``pred``.
        pred: a ``Prediction`` without error.
        codes: the user's codes of classes, by name (``medge node --class-code``); the others as ``class_codes``
            codes them.

    Returns:
        A ``Finding`` (label, probabilities, the bundle's operating threshold when it has one) or, of a multi-label
        bundle, a ``Findings`` (each finding's probability, decision, threshold and what the threshold guarantees);
        either with the code of each class.
    """
    coded = class_codes(model.classes, codes)
    rules = model.findings
    if rules is not None:
        return Findings(names=tuple(rules.names), probabilities=dict(pred.probabilities), decisions=dict(pred.decisions),
                        thresholds=tuple(r.threshold for r in rules.findings),
                        operating_points=tuple(r.guarantee for r in rules.findings), warnings=tuple(pred.warnings),
                        codes=coded)
    op = model.operating_point  # the bundle's threshold and positive class, when it has them (else argmax)
    threshold, positive = (op.threshold, op.positive) if op is not None else (None, None)
    return Finding(classes=tuple(model.classes), probabilities=dict(pred.probabilities), label=pred.label,
                   threshold=threshold, positive=positive, warnings=tuple(pred.warnings),
                   operating_point=op.guarantee if threshold is not None else None, codes=coded)


ACQUISITION_EQUIPMENT = "109101"  # DCM code of the source's own equipment in a Contributing Equipment Sequence


def stamp(ds, when: datetime.datetime) -> None:
    """Put ``when`` in every date and time highdicom sets to "now" (instance creation, content, secondary capture,
    our and highdicom's contribution), so that a result object made again for the same instance (after a crash,
    from its receipt time) is the same bytes, not only the same UIDs. The source's own equipment keeps its time."""
    from pydicom.dataset import Dataset
    from pydicom.valuerep import DA, DT, TM

    ds.InstanceCreationDate = ds.ContentDate = DA(when.date())
    ds.InstanceCreationTime = ds.ContentTime = TM(when.time())
    if "DateOfSecondaryCapture" in ds:
        ds.DateOfSecondaryCapture, ds.TimeOfSecondaryCapture = DA(when.date()), TM(when.time())
    items = []
    for item in ds.get("ContributingEquipmentSequence", []):
        purpose = item.get("PurposeOfReferenceCodeSequence") or [None]
        if "ContributionDateTime" in item and getattr(purpose[0], "CodeValue", None) != ACQUISITION_EQUIPMENT:
            item = Dataset(item)  # a new item: an SR filled from a template shares the template's items
            item.ContributionDateTime = DT(when)
        items.append(item)
    if items:
        ds.ContributingEquipmentSequence = items


def result_uid(source_uid: str, model_sha256: str, kind: str) -> str:
    """A UID for a result object of ``kind`` ("sr", "sc") made from ``source_uid`` by this model (2.25 + 128-bit hash)."""
    digest = hashlib.sha256(f"medge:{kind}:{model_sha256}:{source_uid}".encode()).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


# Type 2 attributes of the Patient and General Study modules: highdicom copies them from the source, which may lack them.
TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate",
         "StudyTime", "ReferringPhysicianName")


def _with_type2(source):
    """A copy of ``source``'s header with the Type 2 patient and study attributes it lacks present and empty.

    A new dataset over the same elements: ``source`` itself is left as it was."""
    from pydicom.dataset import Dataset

    ds = Dataset(dict(source.items()))
    for keyword in TYPE2:
        if keyword not in ds:
            setattr(ds, keyword, None)
    if not ds.get("Modality"):  # Type 1, yet some Secondary Captures lack it: "OT", other, is what it is
        if "Modality" in ds:  # empty: a new element, not a new value in the source's
            del ds.Modality
        ds.Modality = "OT"
    return ds


def instance_number(uid: str) -> int:
    """An Instance Number for a result object, distinct within its series (all of a study's SRs share one) and the
    same each time: from the object's UID (IS holds up to 12 characters)."""
    return 1 + int(hashlib.sha256(uid.encode()).hexdigest()[:8], 16) % 999_999_999


# The private coding schemes the results use, as PS3.3 C.12.1.1.1 declares one that is not registered: no registry,
# no UID; a name (Type 3, given where we can state it) and the organization that answers for it.
CODING_SCHEMES = {SCHEME: {"name": "medge classes", "responsible_organization": "medge"},
                  "99IHE": {"responsible_organization": "IHE International"}}


def _coding_schemes(*designators: str) -> list:
    """Coding Scheme Identification Sequence items for ``designators`` (keys of CODING_SCHEMES)."""
    from highdicom.coding_schemes import CodingSchemeIdentificationItem

    return [CodingSchemeIdentificationItem(d, **CODING_SCHEMES[d]) for d in designators]


def _contributing_equipment(algorithm: Algorithm):
    """The algorithm as contributing equipment. highdicom takes only CID 7005 purposes, so the item is built with
    "Processing Equipment" and its purpose then set to what IHE AIR asks: (1630, 99IHE, "Processing Algorithm")."""
    import highdicom as hd
    from highdicom.sr import CodedConcept
    from pydicom.sr.codedict import codes

    item = hd.ContributingEquipment(
        manufacturer="medge",
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=algorithm.name[:64],
        software_versions=[f"medge {algorithm.version}"[:64], algorithm.model_sha256[:64],
                           *([algorithm.runtime[:64]] if algorithm.runtime else [])],
        contribution_description=f"classification by {algorithm.name}; {NOT_FOR_DIAGNOSIS}"[:1024],
    )
    item.PurposeOfReferenceCodeSequence = [CodedConcept(value="1630", scheme_designator="99IHE",
                                                        meaning="Processing Algorithm")]
    return item


def _patient_and_study(source) -> dict:
    """The Patient and Study attributes highdicom copies from ``source`` into a result object, by tag: its own
    ``copy_patient_and_study_information`` (the modules of the source's IOD) on a bare object, without the rest
    of a build."""
    import highdicom as hd
    from pydicom.dataset import Dataset

    bare = hd.SOPClass.__new__(hd.SOPClass)
    Dataset.__init__(bare)
    bare.copy_patient_and_study_information(source)
    return dict(bare.items())


# --- the structured report ---------------------------------------------------------------------------------------
def _unit():
    from highdicom.sr import CodedConcept

    return CodedConcept(value="1", scheme_designator="UCUM", meaning="no units")


def _coded(code: Code):
    from highdicom.sr import CodedConcept

    return CodedConcept(value=code[0], scheme_designator=code[1], meaning=code[2])


def _tracking(instance_uid: str, algorithm: Algorithm, group: Group):
    """The tracking identifier of ``group`` (a UID per instance and class)."""
    import highdicom as hd

    return hd.sr.TrackingIdentifier(uid=result_uid(instance_uid, algorithm.model_sha256, f"track:C{group.index}"),
                                    identifier=group.tracking)


def _probability(group: Group):
    """The class's probability, as given (float64, exactly)."""
    import highdicom as hd

    return hd.sr.Measurement(name=_coded(PROBABILITY), value=float(group.probability), unit=_unit())


def _presence(group: Group) -> list:
    """The class present or absent (TID 1501's qualitative evaluation: the class's code, CID 240's value), as a list:
    empty when it is not decided."""
    import highdicom as hd

    if group.present is None:
        return []
    return [hd.sr.QualitativeEvaluation(name=_coded(group.code), value=_coded(PRESENT if group.present else ABSENT))]


def _comment(text: str):
    """A text comment of the measurement group (UT: up to 2^32 - 2 characters; ASCII, as guarantee_text writes)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    return hd.sr.TextContentItem(name=codes.DCM.Comment, value=text, relationship_type="CONTAINS")


def _measurement_group(source, group: Group, algorithm: Algorithm, instance_uid: str, warnings) -> list:
    """The measurement group of ``group``: the class as its finding (``finding_type``), its probability, the
    threshold where it is on this class, present or absent when decided, its notes and the warnings as comments."""
    import highdicom as hd

    algorithm_id = _algorithm_id(algorithm)
    measurements = [_probability(group)]
    if group.threshold is not None:
        measurements.append(hd.sr.Measurement(name=_coded(THRESHOLD), value=float(group.threshold), unit=_unit(),
                                              algorithm_id=algorithm_id))
    items = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(instance_uid, algorithm, group), finding_type=_coded(group.code),
        algorithm_id=algorithm_id, source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
        measurements=measurements, qualitative_evaluations=_presence(group) or None,
    )
    items[0].ContentSequence.extend(_comment(text) for text in [*group.notes, *(f"warning: {text}" for text
                                                                                in warnings)])
    return items


def _exam_flag(findings: Findings):
    """The report's qualitative evaluation (TID 1500 row 12): any finding present, the exam-level flag."""
    import highdicom as hd

    container = hd.sr.ContainerContentItem(name=_coded(QUALITATIVE_EVALUATIONS), relationship_type="CONTAINS")
    decided = [n for n in findings.names if n not in findings.undecided]
    about = (f"exam-level flag: Present when any decided finding ({', '.join(decided) or 'none'}) is present"
             + (f"; not decided: {', '.join(findings.undecided)}" if findings.undecided else ""))
    container.ContentSequence = hd.sr.ContentSequence([
        hd.sr.CodeContentItem(name=_coded(ANY_FINDING), value=_coded(PRESENT if findings.positive else ABSENT),
                              relationship_type="CONTAINS"), _comment(about)])
    return container


def _algorithm_id(algorithm: Algorithm):
    import highdicom as hd

    return hd.sr.AlgorithmIdentification(name=algorithm.name[:64], version=algorithm.version[:64],
                                         parameters=[f"model sha256 {algorithm.model_sha256}",
                                                     *([algorithm.runtime] if algorithm.runtime else [])])


def build_sr(source, finding: Finding | Findings, algorithm: Algorithm, series_uid: str, instance_uid: str):
    """The Comprehensive 3D SR (TID 1500) of ``finding`` on ``source`` (a pydicom Dataset; pixels not needed):
    a measurement group per class of a single-label ``Finding`` or per finding of a multi-label ``Findings``."""
    import highdicom as hd
    from highdicom.sr import CodedConcept
    from pydicom.sr.codedict import codes

    source = _with_type2(source)
    groups = [_measurement_group(source, group, algorithm, instance_uid, finding.warnings) for group in finding.groups()]
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=result_uid(algorithm.name, algorithm.model_sha256, "device"), name="medge", manufacturer_name="medge",
            model_name=algorithm.name[:64]))
    content = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=CodedConcept(value="363679005", scheme_designator="SCT", meaning="Imaging procedure"),
        imaging_measurements=groups,
    )
    if _has_exam_flag(finding):  # TID 1500 row 12: the report's own qualitative evaluations
        content[0].ContentSequence.append(_exam_flag(finding))
    private = [SCHEME] if any(code[1] == SCHEME for code in finding.codes) else []  # declared where it is used
    return hd.sr.Comprehensive3DSR(
        evidence=[source], content=content[0], series_instance_uid=series_uid, series_number=SR_SERIES_NUMBER,
        sop_instance_uid=instance_uid, instance_number=instance_number(instance_uid), manufacturer="medge",
        is_complete=True, is_final=False,
        is_verified=False, contributing_equipment=[_contributing_equipment(algorithm)],
        series_description=NOT_FOR_DIAGNOSIS, manufacturer_model_name=algorithm.name[:64],
        software_versions=f"medge {algorithm.version}"[:64], coding_schemes=_coding_schemes(*private, "99IHE"),
        specific_character_set=character_set(source, finding, algorithm),
    )


def _has_exam_flag(finding: Finding | Findings) -> bool:
    """Whether the SR states the exam-level flag: a multi-label model's with at least one finding it decides (of
    findings none of which has a threshold, "any present" would be neither true nor false)."""
    return isinstance(finding, Findings) and any(t is not None for t in finding.thresholds)


# The root attributes of an SR that differ per instance (besides the patient and study's): put in by SRTemplate.fill.
PER_INSTANCE = ("SOPInstanceUID", "SeriesInstanceUID", "InstanceNumber", "InstanceCreationDate", "InstanceCreationTime",
                "ContentDate", "ContentTime", "SpecificCharacterSet", "ContributingEquipmentSequence",
                "CurrentRequestedProcedureEvidenceSequence", "ContentSequence")


def _concept(item) -> tuple[str, str, str]:
    """A content item's value type and concept name (code value, scheme): what it is, whatever its value. A class's
    code may be long (over 16 characters: a Long Code Value, as highdicom writes it)."""
    name = item.ConceptNameCodeSequence[0]
    value = name.get("CodeValue") or name.get("LongCodeValue")
    return str(item.ValueType), str(value), str(name.CodingSchemeDesignator)


def _shallow(item, **elements):
    """A new dataset over ``item``'s elements (shared, not copied), with ``elements`` new in it alone."""
    from pydicom.dataset import Dataset

    ds = Dataset(dict(item.items()))
    for keyword, value in elements.items():
        if keyword in ds:  # setting a present element sets its value: that of the shared one
            del ds[keyword]
        setattr(ds, keyword, value)
    return ds


class SRTemplate:
    """``build_sr`` for one model, built once; ``fill`` gives the SR of an instance, equal element for element to
    ``build_sr``'s (tested) at a fraction of the cost.

    The template is ``build_sr`` of a placeholder source with a finding of the model's classes, codes, threshold and
    operating point. ``fill`` shares every element that is the same for all instances (the observer, the algorithm,
    the classes' codes, the threshold, the coding schemes ...) and puts in what is not: patient and study, UIDs,
    times, character set, evidence, contributing equipment (the source's, then the algorithm's, then highdicom's,
    stamped now), in each measurement group the tracking UID, probability, presence, source reference and warnings,
    and a multi-label model's exam-level flag. A filled dataset shares elements with the template: encode it, do not
    modify it.
    """

    def __init__(self, algorithm: Algorithm, finding: Finding | Findings):
        from pydicom.dataset import Dataset

        placeholder = Dataset()
        placeholder.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR; what it names is replaced in every fill
        placeholder.SOPInstanceUID = placeholder.StudyInstanceUID = placeholder.SeriesInstanceUID = "2.25.0"
        placeholder.Rows = placeholder.Columns = 1  # an image, as highdicom checks of a source
        placeholder = _with_type2(placeholder)
        model = _blank(finding)
        self.algorithm, self.per_model = algorithm, finding.per_model()
        self.sr = build_sr(placeholder, model, algorithm, "2.25.0", "2.25.0")
        self._placeholder_tags = set(_patient_and_study(placeholder))
        self._ours = self.sr.ContributingEquipmentSequence[0]  # the placeholder names no acquisition equipment
        root = self.sr.ContentSequence  # what each item of the content tree is, found once (not per fill)
        self._root_concepts = [_concept(item) for item in root]
        at = self._root_concepts.index(("CONTAINER", "126010", "DCM"))
        self._group_concepts = [[_concept(item) for item in group.ContentSequence]
                                for group in root[at].ContentSequence]
        # A class's presence item is one of two per model (present, absent): made here, shared by every fill.
        self._presences = {(group.index, present): _presence(replace(group, present=present))[0][0]
                           for group in model.groups() if group.present is not None for present in (True, False)}

    def fill(self, source, finding: Finding | Findings, series_uid: str, instance_uid: str):
        """The SR of ``finding`` on ``source``, as ``build_sr(source, finding, self.algorithm, ...)`` makes it."""
        import copy

        import highdicom as hd
        from pydicom.dataset import Dataset
        from pydicom.valuerep import DA, TM

        if finding.per_model() != self.per_model:
            raise ValueError("this SR template was made for another model's classes, codes, threshold or operating "
                             "point")
        source = _with_type2(source)
        shared = {tag: elem for tag, elem in self.sr.items()
                  if tag not in self._placeholder_tags and elem.keyword not in PER_INSTANCE}
        ds = Dataset({**shared, **_patient_and_study(source)})
        ds.file_meta = copy.deepcopy(self.sr.file_meta)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = instance_uid
        ds.SeriesInstanceUID, ds.InstanceNumber = series_uid, instance_number(instance_uid)
        now = datetime.datetime.now()
        ds.InstanceCreationDate = ds.ContentDate = DA(now.date())
        ds.InstanceCreationTime = ds.ContentTime = TM(now.time())
        if (charset := character_set(source, finding, self.algorithm)) is not None:
            ds.SpecificCharacterSet = charset
        ds.ContributingEquipmentSequence = [*_acquisition_equipment(source), self._ours,
                                            hd.ContributingEquipment.for_highdicom()]
        ds.CurrentRequestedProcedureEvidenceSequence = [_evidence(source)]
        ds.ContentSequence = self._content(source, finding, instance_uid)
        return ds

    def _content(self, source, finding: Finding | Findings, instance_uid: str) -> list:
        """The template's content tree with the instance's measurement groups (and exam-level flag) in it."""
        root = list(self.sr.ContentSequence)
        at = self._root_concepts.index(("CONTAINER", "126010", "DCM"))
        groups = root[at].ContentSequence  # "Imaging Measurements" holds the "Measurement Group"s, one per class
        filled = []
        for group, concepts, fresh in zip(groups, self._group_concepts, self._fresh(source, finding, instance_uid),
                                          strict=True):
            by_concept = {_concept(item): item for item in fresh}
            items = [by_concept.get(concept, item) for concept, item in zip(concepts, group.ContentSequence,
                                                                             strict=True)]
            items += [_comment(f"warning: {text}") for text in finding.warnings]  # each group its own items
            filled.append(_shallow(group, ContentSequence=items))
        root[at] = _shallow(root[at], ContentSequence=filled)
        if _has_exam_flag(finding):
            root[self._root_concepts.index(("CONTAINER", *QUALITATIVE_EVALUATIONS[:2]))] = _exam_flag(finding)
        return root

    def _fresh(self, source, finding: Finding | Findings, instance_uid: str) -> list[list]:
        """Per measurement group, the items that differ per instance (what is the same is the template's)."""
        import highdicom as hd

        source_image = hd.sr.SourceImageForMeasurementGroup.from_source_image(source)  # the same item in each group
        return [[*_tracking(instance_uid, self.algorithm, group), _probability(group)[0],
                 *([] if group.present is None else [self._presences[group.index, group.present]]), source_image]
                for group in finding.groups()]


def _blank(finding: Finding | Findings) -> Finding | Findings:
    """``finding`` with what differs per instance set to placeholders: the model's part, for a template."""
    if isinstance(finding, Findings):
        return replace(finding, probabilities=dict.fromkeys(finding.names, 0.0),
                       decisions=_undecided_or_absent(finding.names, finding.thresholds), warnings=())
    return replace(finding, probabilities=dict.fromkeys(finding.classes, 0.0), label=finding.classes[0], warnings=())


@functools.lru_cache(maxsize=64)
def _is_image(sop_class_uid: str) -> bool:
    """Whether highdicom takes an instance of ``sop_class_uid`` for an image (its IOD has pixel data), asked once per
    SOP class: its check reads the IOD tables, ~2 ms, more than the rest of a fill."""
    import highdicom as hd
    from pydicom.dataset import Dataset

    probe = Dataset()
    probe.SOPClassUID, probe.Manufacturer = sop_class_uid, "probe"
    try:
        hd.ContributingEquipment.for_image_acquisition(probe)
    except (ValueError, KeyError):
        return False
    return True


def _acquisition_equipment(source) -> list:
    """The source's acquisition equipment, as highdicom puts it first in a result's Contributing Equipment Sequence
    (``ContributingEquipment.for_image_acquisition``, whose image check ``_is_image`` remembers): none for a source
    without a Manufacturer, or whose equipment highdicom cannot describe."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    if not source.get("Manufacturer") or not _is_image(str(source.SOPClassUID)):
        return []
    when = source.get("AcquisitionDateTime")
    date, clock = source.get("AcquisitionDate"), source.get("AcquisitionTime")
    if when is None and isinstance(date, datetime.date) and isinstance(clock, datetime.time):
        when = datetime.datetime.combine(date, clock)
    try:
        return [hd.ContributingEquipment(
            manufacturer=source.Manufacturer, purpose_of_reference=codes.DCM.AcquisitionEquipment,
            manufacturer_model_name=source.get("ManufacturerModelName"), software_versions=source.get("SoftwareVersions"),
            device_serial_number=source.get("DeviceSerialNumber"), institution_name=source.get("InstitutionName"),
            institutional_department_name=source.get("InstitutionalDepartmentName"),
            institution_address=source.get("InstitutionAddress"), station_name=source.get("StationName"),
            contribution_datetime=when, contribution_description="Acquisition equipment of the source image(s)")]
    except Exception:  # highdicom leaves it out when it cannot make it (a value it rejects), so does the template
        return []


def _evidence(source):
    """The Current Requested Procedure Evidence item of an SR on ``source``, as highdicom makes it."""
    from pydicom.dataset import Dataset

    instance, series, study = Dataset(), Dataset(), Dataset()
    instance.ReferencedSOPClassUID, instance.ReferencedSOPInstanceUID = source.SOPClassUID, source.SOPInstanceUID
    series.SeriesInstanceUID, series.ReferencedSOPSequence = source.SeriesInstanceUID, [instance]
    study.StudyInstanceUID, study.ReferencedSeriesSequence = source.StudyInstanceUID, [series]
    return study


@functools.lru_cache(maxsize=4)
def _template(algorithm: Algorithm, classes: tuple, threshold, positive, operating_point, codes: tuple) -> SRTemplate:
    finding = Finding(classes, dict.fromkeys(classes, 0.0), classes[0], threshold, positive, (), operating_point, codes)
    return SRTemplate(algorithm, finding)


@functools.lru_cache(maxsize=4)
def _findings_template(algorithm: Algorithm, names: tuple, thresholds: tuple, operating_points: tuple,
                       codes: tuple) -> SRTemplate:
    decisions = _undecided_or_absent(names, thresholds)
    return SRTemplate(algorithm, Findings(names, dict.fromkeys(names, 0.0), decisions, thresholds, operating_points,
                                          codes=codes))


def _undecided_or_absent(names, thresholds) -> dict[str, bool | None]:
    return {n: None if t is None else False for n, t in zip(names, thresholds, strict=True)}


def sr_template(algorithm: Algorithm, finding: Finding | Findings) -> SRTemplate:
    """The SR template of ``algorithm`` for ``finding``'s model, made on first use and kept.

    Args:
        algorithm: what makes the results.
        finding: an instance's result: a ``Finding`` (its classes, threshold, operating point and codes make the
            model's part) or a multi-label ``Findings`` (its findings, thresholds, operating points and codes).

    Returns:
        The model's ``SRTemplate``.
    """
    if isinstance(finding, Findings):
        return _findings_template(algorithm, *finding.per_model()[1:])
    return _template(algorithm, *finding.per_model())


# --- the heatmap Secondary Capture -------------------------------------------------------------------------------
def _pixel_shape(source) -> tuple[float, float]:
    """Height and width of one source pixel, in any unit: its Pixel Spacing, Imager Pixel Spacing or Pixel Aspect
    Ratio (row, column); (1, 1), square, when it states none or nothing usable."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing", "PixelAspectRatio"):
        try:
            dy, dx = (float(v) for v in source.get(keyword) or ())
        except (TypeError, ValueError):  # absent, empty, not two numbers
            continue
        if dy > 0 and dx > 0:
            return dy, dx
    return 1.0, 1.0


def display_size(source, fallback: tuple[int, int]) -> tuple[int, int]:
    """Rows and columns of the heatmap SC of ``source``: its proportions on the patient (square pixels), its size,
    the long side at most ``SC_LONG_SIDE_PX``; ``fallback`` (rows, columns) where it has no Rows and Columns."""
    rows, cols = int(source.get("Rows") or fallback[0]), int(source.get("Columns") or fallback[1])
    dy, dx = _pixel_shape(source)
    height, width = rows * dy, cols * dx
    scale = min(SC_LONG_SIDE_PX, max(rows, cols)) / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def heatmap_rgb(explanation, source, legend=()) -> np.ndarray:
    """The SC's pixels: ``explanation``'s overlay (an ``edge.explain.Explanation``) at ``display_size``, RGB uint8.

    The image the model saw is resampled to that size first and the heatmap drawn over it there (``overlay``
    resizes the heatmap itself), so the colours are smooth at any size.

    Args:
        explanation: the heatmap and the image the model saw.
        source: the source instance's header (its size and pixel spacing).
        legend: lines of text burned in at the top left (a multi-label SC's, ``findings_legend``); none by default.

    Returns:
        uint8 (rows, columns, 3), RGB.
    """
    seen = explanation.image
    rows, cols = display_size(source, seen.shape[:2])
    shrink = rows * cols < seen.shape[0] * seen.shape[1]
    base = cv2.resize(seen, (cols, rows), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    bgr = explanation.overlay(base)
    if legend:
        _draw_legend(bgr, legend)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def findings_legend(findings: Findings, explained: str) -> list[str]:
    """The legend of a multi-label SC.

    Args:
        findings: the instance's findings.
        explained: the finding the heatmap explains (the most probable one).

    Returns:
        Lines of text: that finding and its probability, the positive findings, and the undecided ones (no
        threshold) when there are any.
    """
    lines = [f"heatmap: {explained} (p {findings.probabilities[explained]:.2f})",
             f"positive: {', '.join(findings.positive) or 'none'}"]
    if findings.undecided:
        lines.append(f"not decided: {', '.join(findings.undecided)}")
    return lines


def _draw_legend(bgr: np.ndarray, lines) -> None:
    """``lines`` in white on black boxes at the top left of ``bgr``, in place; the text scaled to the image's width
    (what does not fit is cut off at the edge). ASCII only: OpenCV's fonts have no other characters."""
    scale = max(0.35, bgr.shape[1] / 1400)
    thickness = max(1, round(scale * 1.5))
    y = 0
    for line in lines:
        text = line.encode("ascii", "replace").decode()
        (width, height), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        pad = max(2, height // 4)
        cv2.rectangle(bgr, (0, y), (width + 2 * pad, y + height + base + 2 * pad), (0, 0, 0), cv2.FILLED)
        cv2.putText(bgr, text, (pad, y + pad + height), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness,
                    cv2.LINE_AA)
        y += height + base + 2 * pad


def _source_image(source):
    """An item of the Source Image Sequence: the image the SC explains, and why it is referenced (CID 7202)."""
    from highdicom.sr import CodedConcept
    from pydicom.dataset import Dataset

    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = source.SOPClassUID, source.SOPInstanceUID
    item.PurposeOfReferenceCodeSequence = [CodedConcept(value="121322", scheme_designator="DCM",
                                                        meaning="Source image for image processing operation")]
    return item


def _copy_anatomy(sc, source) -> None:
    """Body part and laterality as the source states them (the SC's series is the source series' counterpart).

    Laterality is Type 2C, required for a paired body part unless Image Laterality is given: copied as it is, or
    present and empty (unknown) when the source states neither a body part nor a side, for nothing then says the part
    is unpaired. A source that names its body part and no side was judged unpaired by its modality: left absent."""
    for keyword in ("BodyPartExamined", "Laterality", "ImageLaterality"):
        if keyword in source:
            sc.add(source[keyword])
    if not any(source.get(k) for k in ("BodyPartExamined", "ImageLaterality")) and "Laterality" not in source:
        sc.Laterality = None


def build_heatmap_sc(source, rgb, algorithm: Algorithm, series_uid: str, instance_uid: str,
                     explained: str | None = None):
    """The heatmap overlay ``rgb`` (H x W x 3 uint8, ``heatmap_rgb``) as a Secondary Capture of ``source``'s patient
    and study, referencing ``source`` as the image it was derived from; ``explained``: the finding a multi-label
    SC's heatmap is of (its Derivation Description names it and the legend)."""
    import highdicom as hd

    source = _with_type2(source)
    orientation = [str(v) for v in (source.get("PatientOrientation") or [])]
    known = len(orientation) == 2 and all(orientation)  # still true of the SC: same proportions, neither turned nor flipped
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source, pixel_array=rgb, photometric_interpretation="RGB", bits_allocated=8,
        coordinate_system="PATIENT", series_instance_uid=series_uid, series_number=SC_SERIES_NUMBER,
        sop_instance_uid=instance_uid, instance_number=instance_number(instance_uid), manufacturer="medge",
        patient_orientation=tuple(orientation) if known else ("L", "F"),
        transfer_syntax_uid="1.2.840.10008.1.2.1", contributing_equipment=[_contributing_equipment(algorithm)],
        series_description=NOT_FOR_DIAGNOSIS, coding_schemes=_coding_schemes("99IHE"),  # the algorithm's purpose
        specific_character_set=character_set(source, algorithm, explained or ""),
    )
    if not known:  # Type 2: empty when the source does not say; never made up
        sc.PatientOrientation = None
    sc.copy_patient_and_study_information(source)  # Study Description and the rest, as the SR has them
    _copy_anatomy(sc, source)
    sc.SourceImageSequence = [_source_image(source)]
    sc.DerivationDescription = SC_DERIVATION if explained is None else (
        f"heatmap of where the model looked for {explained}, the most probable finding; legend burned in: the "
        f"positive findings{SC_DRAWN}")[:1024]
    if source.get("LossyImageCompression") == "01":  # once lossy, every image derived from it says so (C.7.6.1.1.5)
        sc.LossyImageCompression = "01"
    sc.BurnedInAnnotation = "YES"
    sc.ImageComments = NOT_FOR_DIAGNOSIS
    return sc
