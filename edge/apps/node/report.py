"""Result objects that go back into PACS: a TID 1500 structured report per instance and a heatmap Secondary Capture.

Built with highdicom (extra ``node``; imported inside the functions), as the IHE AI
Results profile asks of an AI result:

- ``build_sr``: a Comprehensive 3D SR holding a TID 1500 Imaging Measurement Report
  with one measurement group for the source image: the label as a qualitative
  evaluation (concept "Finding"), each class probability as a measurement (unit
  "no units"; ``FloatingPointValue`` holds the float64 exactly, ``NumericValue``
  its 16-character decimal), the operating threshold when the bundle has one with
  what it was chosen to guarantee as a text comment ("operating point: sensitivity >=
  0.95 with 95% confidence ...", or its "unsupported" mark), the warnings as text,
  and the algorithm identification (TID 4019: name, medge version, model SHA-256).
  The algorithm is also in the Contributing Equipment Sequence with purpose of
  reference (1630, 99IHE, "Processing Algorithm"). The SR references the source instance, is a new series of the same study, stays
  UNVERIFIED and its SeriesDescription says it is not for diagnostic use.
- ``build_heatmap_sc``: the heatmap overlay (RGB) as a Secondary Capture of the same
  patient and study, new series, BurnedInAnnotation YES.

UIDs come from ``result_uid``: derived from the source's UID and the model's hash,
so the same instance classified again (after a crash) yields the same objects.
Class names and labels are coded in a private scheme, ``99MEDGE``, whose code
values are the class index (C0, C1, ...): PACS viewers show the meaning, the name.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

NOT_FOR_DIAGNOSIS = "medge AI result - not for diagnostic use"
SCHEME = "99MEDGE"
SR_SERIES_NUMBER, SC_SERIES_NUMBER = 9901, 9902


@dataclass(frozen=True)
class Algorithm:
    """What made the result (TID 4019 Algorithm Identification)."""

    name: str  # e.g. "resnet18 (xray)"
    version: str  # medge's version
    model_sha256: str
    runtime: str = ""  # what computed it: "openvino engine, int8 variant" (edge.runtime.variants)


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


def result_uid(source_uid: str, model_sha256: str, kind: str) -> str:
    """A UID for a result object of ``kind`` ("sr", "sc") made from ``source_uid`` by this model (2.25 + 128-bit hash)."""
    digest = hashlib.sha256(f"medge:{kind}:{model_sha256}:{source_uid}".encode()).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


# Type 2 attributes of the Patient and General Study modules: highdicom copies them from the source, which may lack them.
TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate",
         "StudyTime", "ReferringPhysicianName")


def _with_type2(source):
    """A copy of ``source``'s header with the Type 2 patient and study attributes it lacks present and empty."""
    import copy

    ds = copy.copy(source)
    for keyword in TYPE2:
        if keyword not in ds:
            setattr(ds, keyword, None)
    if not ds.get("Modality"):  # Type 1, yet some Secondary Captures lack it: "OT", other, is what it is
        ds.Modality = "OT"
    return ds


def instance_number(uid: str) -> int:
    """An Instance Number for a result object, distinct within its series (all of a study's SRs share one) and the
    same each time: from the object's UID (IS holds up to 12 characters)."""
    return 1 + int(hashlib.sha256(uid.encode()).hexdigest()[:8], 16) % 999_999_999


def _code(value: str, meaning: str):
    from highdicom.sr import CodedConcept

    return CodedConcept(value=value, scheme_designator=SCHEME, meaning=meaning[:64])


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


def build_sr(source, finding: Finding, algorithm: Algorithm, series_uid: str, instance_uid: str):
    """The Comprehensive 3D SR (TID 1500) of ``finding`` on ``source`` (a pydicom Dataset; pixels not needed)."""
    import highdicom as hd
    from highdicom.sr import CodedConcept
    from pydicom.sr.codedict import codes

    source = _with_type2(source)
    algorithm_id = hd.sr.AlgorithmIdentification(name=algorithm.name[:64], version=algorithm.version[:64],
                                                 parameters=[f"model sha256 {algorithm.model_sha256}",
                                                             *([algorithm.runtime] if algorithm.runtime else [])])
    unit = CodedConcept(value="1", scheme_designator="UCUM", meaning="no units")
    measurements = [hd.sr.Measurement(name=_code(f"C{i}", f"Probability of {name}"),
                                      value=float(finding.probabilities[name]), unit=unit)
                    for i, name in enumerate(finding.classes)]
    if finding.threshold is not None:
        about = f" for {finding.positive}" if finding.positive else ""
        measurements.append(hd.sr.Measurement(name=_code("THRESHOLD", f"Operating threshold{about}"),
                                              value=float(finding.threshold), unit=unit, algorithm_id=algorithm_id))
    label = _code(f"C{finding.classes.index(finding.label)}", finding.label)
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=result_uid(instance_uid, algorithm.model_sha256, "track"),
                                                     identifier="medge classification"),
        algorithm_id=algorithm_id,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
        measurements=measurements,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=codes.DCM.Finding, value=label)],
    )
    comments = ([f"operating point: {finding.operating_point}"] if finding.operating_point else []) + [
        f"warning: {text}" for text in finding.warnings]
    for text in comments:  # UT: up to 2^32 - 2 characters, ASCII (guarantee_text)
        group[0].ContentSequence.append(hd.sr.TextContentItem(name=codes.DCM.Comment, value=text,
                                                              relationship_type="CONTAINS"))
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=result_uid(algorithm.name, algorithm.model_sha256, "device"), name="medge", manufacturer_name="medge",
            model_name=algorithm.name[:64]))
    content = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=CodedConcept(value="363679005", scheme_designator="SCT", meaning="Imaging procedure"),
        imaging_measurements=[group],
    )
    return hd.sr.Comprehensive3DSR(
        evidence=[source], content=content[0], series_instance_uid=series_uid, series_number=SR_SERIES_NUMBER,
        sop_instance_uid=instance_uid, instance_number=instance_number(instance_uid), manufacturer="medge",
        is_complete=True, is_final=False,
        is_verified=False, contributing_equipment=[_contributing_equipment(algorithm)],
        series_description=NOT_FOR_DIAGNOSIS, manufacturer_model_name=algorithm.name[:64],
        software_versions=f"medge {algorithm.version}"[:64],
    )


def build_heatmap_sc(source, rgb, algorithm: Algorithm, series_uid: str, instance_uid: str):
    """The heatmap overlay ``rgb`` (H x W x 3 uint8) as a Secondary Capture of ``source``'s patient and study."""
    import highdicom as hd

    source = _with_type2(source)
    orientation = [str(v) for v in (source.get("PatientOrientation") or [])]
    known = len(orientation) == 2 and all(orientation)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source, pixel_array=rgb, photometric_interpretation="RGB", bits_allocated=8,
        coordinate_system="PATIENT", series_instance_uid=series_uid, series_number=SC_SERIES_NUMBER,
        sop_instance_uid=instance_uid, instance_number=instance_number(instance_uid), manufacturer="medge",
        patient_orientation=tuple(orientation) if known else ("L", "F"),
        transfer_syntax_uid="1.2.840.10008.1.2.1", contributing_equipment=[_contributing_equipment(algorithm)],
        series_description=NOT_FOR_DIAGNOSIS,
    )
    if not known:  # Type 2: empty when the source does not say; never made up
        sc.PatientOrientation = None
    sc.BurnedInAnnotation = "YES"
    sc.ImageComments = NOT_FOR_DIAGNOSIS
    return sc
