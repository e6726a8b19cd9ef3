"""``medge node`` with Orthanc as the PACS: a study sent from PACS comes back as SR and SC objects of the same study,
and results wait in the on-disk outbox while the PACS is down (across a restart of the node too); the same by
DICOMweb STOW-RS into an Orthanc with its DICOMweb plugin (Debian's orthanc-dicomweb), beside C-STORE.

Orthanc's ports are chosen when the ``Orthanc`` object is made, so the node can be started first with
``--forward ORTHANC@127.0.0.1:<dicom port>`` and Orthanc then with the node's port as its modality ``medge``.
"""
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx", reason="the dev extra is not installed")
pytest.importorskip("pynetdicom", reason="the node extra (pynetdicom) is not installed")
pytest.importorskip("highdicom", reason="the node extra (highdicom) is not installed")
pydicom = pytest.importorskip("pydicom", reason="the node extra (pydicom) is not installed")

from pydicom.uid import generate_uid  # noqa: E402

from medge.benchmarks.pacs import ORTHANC, Orthanc  # noqa: E402
from tests.edge.apps.node.nodes import (  # noqa: E402
    STORESCU,
    NodeProcess,
    bundle_classes,
    results,
    sr_probabilities,
    storescu,
    write_radiograph,
)

if not os.access(ORTHANC, os.X_OK):
    pytest.skip(f"Orthanc is not installed ({ORTHANC} is not executable; apt-get install orthanc)", allow_module_level=True)

needs_storescu = pytest.mark.skipif(not os.access(STORESCU, os.X_OK), reason=f"dcmtk's {STORESCU} is not installed")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
needs_dicomweb = pytest.mark.skipif(not DICOMWEB_PLUGIN.is_file(), reason=f"Orthanc's DICOMweb plugin is not installed "
                                                                         f"({DICOMWEB_PLUGIN}; apt-get install orthanc-dicomweb)")

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR Storage
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage
WAIT_S = 60  # the longest wait for anything (a ceiling for slow CI machines, not a timing requirement)


def medge_predict(bundle: Path, files: list[Path]) -> dict[str, dict]:
    """``medge predict --batch-size 1`` on ``files``: file name -> record."""
    run = subprocess.run([sys.executable, "-m", "medge.edge.apps.cli", "predict", "--model", str(bundle),
                          "--batch-size", "1", *map(str, files)], capture_output=True, text=True, timeout=WAIT_S)
    assert run.returncode == 0, run.stderr
    records = [json.loads(line) for line in run.stdout.splitlines() if line.strip()]
    return {Path(r["path"]).name: r for r in records}


def study_instances(pacs: Orthanc, study_uid: str) -> list[dict]:
    """The instances Orthanc holds of the study with this StudyInstanceUID ([] when it holds none)."""
    study = pacs.study_id(study_uid)
    return pacs.instances(study) if study else []


def sop_uids(instances: list[dict]) -> list[str]:
    return sorted(i["MainDicomTags"]["SOPInstanceUID"] for i in instances)


def outbox(out: Path, folder: str = "outbox") -> list[str]:
    """What waits in a channel's outbox: ``outbox`` (C-STORE) or ``outbox-stow`` (STOW-RS)."""
    return sorted(p.name for p in (out / folder).glob("*.dcm"))


class DicomWebOrthanc(Orthanc):
    """Orthanc with its DICOMweb plugin at /dicom-web/ (``stow_url``, what --forward-stow is given); with ``login``
    (user, password) its REST API and DICOMweb ask for it (HTTP basic)."""

    def __init__(self, folder: Path, login: tuple[str, str] | None = None, aet: str = "WEB"):
        super().__init__(folder, aet=aet)
        self.login = login
        self.stow_url = f"{self.url}/dicom-web"

    def _config(self) -> dict:
        config = {**super()._config(), "Plugins": [str(DICOMWEB_PLUGIN)],
                  "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
        if self.login:
            config.update(AuthenticationEnabled=True, RegisteredUsers=dict([self.login]))
        return config

    def _answers(self) -> bool:
        try:
            answer = httpx.get(f"{self.url}/system", timeout=1, auth=self.login)
            return answer.status_code == 200 and answer.json().get("Name") == self.name
        except (httpx.TransportError, ValueError):
            return False

    def _request(self, method: str, path: str, timeout_s: float = 30, **kwargs) -> httpx.Response:
        return super()._request(method, path, timeout_s, auth=self.login, **kwargs)

    def start(self, timeout_s: float = 30) -> "DicomWebOrthanc":
        super().start(timeout_s)
        assert "dicom-web" in self.get_json("/plugins"), f"the DICOMweb plugin did not load:\n{self.log_tail()}"
        return self


def result_names(records: list[dict]) -> list[str]:
    """The file names of the SR and SC of these records (as in DIR/reports/ and DIR/outbox/)."""
    return sorted(Path(r[k]).name for r in records for k in ("sr", "sc"))


def result_uids(records: list[dict]) -> list[str]:
    return sorted(r[k] for r in records for k in ("sr_sop_instance_uid", "sc_sop_instance_uid"))


def wait_until(predicate, node: NodeProcess, what: str, timeout_s: float = WAIT_S):
    """Poll ``predicate`` (a node-side condition) until truthy; the node's log in the failure message."""
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        if node.process.poll() is not None:
            raise AssertionError(f"medge node exited with {node.process.returncode} waiting for {what}:\n{node.log()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout_s} s:\n{node.log()[-3000:]}")
        time.sleep(0.1)
    return value


@pytest.fixture
def study(tmp_path) -> tuple[str, list[Path]]:
    """A study of three radiographs (DX, CR, DX), each of its own series, as a modality writes them."""
    uid = generate_uid()
    folder = tmp_path / "in"
    folder.mkdir()
    files = [write_radiograph(folder / f"{i}.dcm", modality=m, study_uid=uid, seed=i + 1)
             for i, m in enumerate(("DX", "CR", "DX"))]
    return uid, files


def test_study_from_orthanc_comes_back_as_sr_and_sc(tmp_path, heat_bundle, study):
    _round_trip(tmp_path, heat_bundle[0], study)


def test_a_multilabel_bundles_results_come_back_too(tmp_path, heat_bundle, study):
    """The same round trip with the bundle relabelled as a multi-label one (tests/edge/multilabel.py): its SR (a
    group per finding) and SC stored by Orthanc as sent, the probabilities in the stored SR exactly medge predict's."""
    from tests.edge.multilabel import finding_entry, multilabel_copy

    entries = [finding_entry("Effusion", 1.5, 0.4), finding_entry("Nodule", threshold=None)]
    _round_trip(tmp_path, multilabel_copy(heat_bundle[0], tmp_path / "multilabel", entries), study)


def _round_trip(tmp_path, bundle, study):
    """Orthanc sends ``study`` to a node of ``bundle`` that forwards its results to Orthanc: each instance's SR and
    SC are in the study, as the node's records and ``medge predict`` say."""
    study_uid, files = study
    sources = {str(ds.SOPInstanceUID): (f, ds) for f in files for ds in [pydicom.dcmread(f)]}
    out = tmp_path / "out"
    pacs = Orthanc(tmp_path / "pacs")
    node = NodeProcess(bundle, out, "--forward", f"{pacs.aet}@127.0.0.1:{pacs.dicom_port}", "--heatmap-sc")
    try:
        node.start()
        pacs.modalities = {"medge": ("MEDGE", "127.0.0.1", node.port)}
        pacs.start()
        originals = sorted(pacs.upload(f) for f in files)
        answer = pacs.send_study("medge", pacs.study_id(study_uid))
        assert answer["InstancesCount"] == 3 and answer["FailedInstancesCount"] == 0, answer

        records = node.wait_results(3, timeout_s=WAIT_S)
        assert sorted(r["sop_instance_uid"] for r in records) == sorted(sources), records
        assert [r["status"] for r in records] == ["classified"] * 3, records
        assert all(r["sr_sop_instance_uid"] and r["sc_sop_instance_uid"] for r in records), records
        expected = sorted([*sources, *result_uids(records)])
        try:
            pacs.wait_for(lambda: sop_uids(study_instances(pacs, study_uid)) == expected, timeout_s=WAIT_S)
        except TimeoutError:
            raise AssertionError(f"Orthanc holds {sop_uids(study_instances(pacs, study_uid))}, not {expected}:\n"
                                 f"{node.log()[-3000:]}") from None
        wait_until(lambda: not outbox(out), node, "the outbox empty once Orthanc holds everything")

        instances = study_instances(pacs, study_uid)
        assert sorted(i["ID"] for i in instances if i["ID"] in originals) == originals
        by_uid = {i["MainDicomTags"]["SOPInstanceUID"]: i["ID"] for i in instances}
        source_series = {str(ds.SeriesInstanceUID) for _, ds in sources.values()}
        predicted = medge_predict(bundle, files)
        sr_series, sc_series = set(), {}
        for rec in records:
            source_file, source = sources[rec["sop_instance_uid"]]

            sr_tags = pacs.tags(by_uid[rec["sr_sop_instance_uid"]])
            assert (sr_tags["Modality"], sr_tags["SOPClassUID"]) == ("SR", SR_CLASS)
            assert sr_tags["StudyInstanceUID"] == study_uid and sr_tags["PatientID"] == source.PatientID
            assert sr_tags["SeriesInstanceUID"] not in source_series
            assert "not for diagnostic use" in sr_tags["SeriesDescription"]
            assert sr_tags["VerificationFlag"] == "UNVERIFIED"
            sr_series.add(sr_tags["SeriesInstanceUID"])

            sc_tags = pacs.tags(by_uid[rec["sc_sop_instance_uid"]])
            assert sc_tags["SOPClassUID"] == SC_CLASS
            assert sc_tags["StudyInstanceUID"] == study_uid and sc_tags["PatientID"] == source.PatientID
            assert sc_tags["BurnedInAnnotation"] == "YES"
            assert sc_tags["SeriesInstanceUID"] not in source_series
            sc_series.setdefault(sc_tags["SeriesInstanceUID"], set()).add(str(source.SeriesInstanceUID))

            # The SR as Orthanc stores it: it references its source, and its probabilities are exactly medge predict's.
            sr = pydicom.dcmread(io.BytesIO(pacs.file(by_uid[rec["sr_sop_instance_uid"]])))
            evidence = [ref.ReferencedSOPInstanceUID for e in sr.CurrentRequestedProcedureEvidenceSequence
                        for s in e.ReferencedSeriesSequence for ref in s.ReferencedSOPSequence]
            assert evidence == [rec["sop_instance_uid"]]
            probabilities = sr_probabilities(sr, bundle_classes(bundle))
            expected_probabilities = predicted[source_file.name]["probabilities"]
            assert set(probabilities) == set(expected_probabilities), probabilities
            for cls, p in expected_probabilities.items():
                assert probabilities[cls] == p, (source_file.name, cls, probabilities[cls], p)
            assert rec["probabilities"] == expected_probabilities
            assert rec["label"] == predicted[source_file.name]["label"]
        # one SR series for the study; an SC series per source series (it copies the source series' Laterality)
        assert len(sr_series) == 1 and not sr_series & set(sc_series)
        assert sorted(len(s) for s in sc_series.values()) == [1] * len(source_series) and set().union(
            *sc_series.values()) == source_series
    finally:
        try:
            node.stop()
        finally:
            node.kill()
            pacs.stop()


@needs_storescu
def test_outbox_keeps_results_while_orthanc_is_down(tmp_path, heat_bundle):
    bundle = heat_bundle[0]
    study_uid = generate_uid()
    files = [write_radiograph(tmp_path / f"{i}.dcm", modality="DX", study_uid=study_uid, seed=10 + i) for i in range(4)]
    out = tmp_path / "out"
    pacs = Orthanc(tmp_path / "pacs")
    args = ("--forward", f"{pacs.aet}@127.0.0.1:{pacs.dicom_port}", "--heatmap-sc")
    node = NodeProcess(bundle, out, *args)
    restarted = NodeProcess(bundle, out, *args)

    def in_pacs() -> list[str]:
        return sop_uids(study_instances(pacs, study_uid)) if pacs.pid is not None else []

    def wait_in_pacs(records, running: NodeProcess, what: str) -> None:
        expected = result_uids(records)
        try:
            pacs.wait_for(lambda: set(expected) <= set(in_pacs()), timeout_s=WAIT_S)
        except TimeoutError:
            raise AssertionError(f"{what}: Orthanc holds {in_pacs()}, not {expected}:\n{running.log()[-3000:]}") from None
        wait_until(lambda: not outbox(out), running, f"{what}: the outbox empty")

    def failed_forwards() -> int:
        return len(re.findall(r"forward: association with .* not established", node.log()))

    try:
        pacs.start()
        node.start()
        # Forwarding works while Orthanc is up.
        storescu(node.port, files[0])
        wait_in_pacs(node.wait_results(1, timeout_s=WAIT_S), node, "with Orthanc up")

        # Orthanc down: results are written and their SR and SC wait in the outbox, identical to DIR/reports/.
        pacs.stop()
        storescu(node.port, *files[1:3])
        records = node.wait_results(3, timeout_s=WAIT_S)
        assert [r["status"] for r in records] == ["classified"] * 3, records
        wait_until(failed_forwards, node, "a failed try to forward while Orthanc is down")
        waiting = outbox(out)
        assert waiting == result_names(records[1:]), (waiting, records)
        assert all((out / "outbox" / n).read_bytes() == (out / "reports" / n).read_bytes() for n in waiting)

        # Orthanc back (same ports and storage): a retry delivers them and the outbox empties.
        pacs.start()
        wait_in_pacs(records, node, "after Orthanc's restart")

        # Orthanc down and the node stopped with results in the outbox: the next node sends them.
        pacs.stop()
        storescu(node.port, files[3])
        records = node.wait_results(4, timeout_s=WAIT_S)
        assert node.stop() == 0, node.log()
        assert outbox(out) == result_names(records[3:]), (outbox(out), records)
        pacs.start()
        restarted.start()
        wait_in_pacs(records, restarted, "after the node's restart")
        assert restarted.stop() == 0, restarted.log()

        # Every result once: one record per instance, each SR and SC once in Orthanc and forwarded once.
        final = results(out)
        assert sorted(r["sop_instance_uid"] for r in final) == sorted(str(pydicom.dcmread(f).SOPInstanceUID)
                                                                      for f in files)
        assert in_pacs() == result_uids(final)  # no originals: they went to the node only
        log = restarted.log()  # both runs append to the same log
        for name in result_names(final):
            assert log.count(f"forwarded {name} ") == 1, (name, log[-3000:])
        assert not outbox(out)
    finally:
        stop_nodes(node, restarted)
        pacs.stop()


def forwarded_once(log: str, names: list[str], destination: str) -> dict[str, int]:
    """The names not logged exactly once as forwarded to ``destination`` (an AE@HOST:PORT or a URL), with their count."""
    counts = {name: log.count(f"forwarded {name} to {destination} ") for name in names}
    return {name: n for name, n in counts.items() if n != 1}


@needs_storescu
@needs_dicomweb
def test_results_reach_orthanc_by_stow_rs_with_basic_authentication(tmp_path, heat_bundle):
    study_uid = generate_uid()
    files = [write_radiograph(tmp_path / f"{i}.dcm", modality="DX", study_uid=study_uid, seed=20 + i) for i in range(2)]
    password = tmp_path / "stow.pw"
    password.write_text("s3cret-pw\n")
    out = tmp_path / "out"
    web = DicomWebOrthanc(tmp_path / "web", login=("medge", "s3cret-pw"))
    node = NodeProcess(heat_bundle[0], out, "--forward-stow", web.stow_url, "--stow-user", "medge",
                       "--stow-password-file", str(password), "--heatmap-sc")
    try:
        web.start()
        node.start()
        storescu(node.port, *files)
        records = node.wait_results(2, timeout_s=WAIT_S)
        assert [r["status"] for r in records] == ["classified"] * 2, records
        expected = result_uids(records)
        try:
            web.wait_for(lambda: sop_uids(study_instances(web, study_uid)) == expected, timeout_s=WAIT_S)
        except TimeoutError:
            raise AssertionError(f"Orthanc holds {sop_uids(study_instances(web, study_uid))}, not {expected}:\n"
                                 f"{node.log()[-3000:]}") from None
        wait_until(lambda: not outbox(out, "outbox-stow"), node, "the STOW-RS outbox empty")
        assert not (out / "outbox").exists()  # no --forward: no C-STORE outbox

        # Orthanc holds each SR and SC as the node wrote it, byte for byte, of the source's study and patient.
        by_uid = {i["MainDicomTags"]["SOPInstanceUID"]: i["ID"] for i in study_instances(web, study_uid)}
        for rec in records:
            for kind, sop_class in (("sr", SR_CLASS), ("sc", SC_CLASS)):
                instance = by_uid[rec[f"{kind}_sop_instance_uid"]]
                assert web.file(instance) == (out / rec[kind]).read_bytes()
                assert web.tags(instance)["SOPClassUID"] == sop_class
        log = node.log()
        assert forwarded_once(log, result_names(records), web.stow_url) == {}, log[-3000:]
        assert "s3cret-pw" not in log and "Doe" not in log and "PAT-1" not in log
        assert node.stop() == 0, node.log()
        assert "stowed 4, stow_refused 0, outbox_stow 0" in node.log()
    finally:
        try:
            node.stop()
        finally:
            node.kill()
            web.stop()


@needs_storescu
@needs_dicomweb
def test_stow_outbox_keeps_results_while_orthanc_is_down_and_c_store_goes_on(tmp_path, heat_bundle):
    """Both channels: the DICOMweb Orthanc down (then the node restarted too) holds back nothing of the C-STORE one,
    and every result reaches each Orthanc once."""
    study_uid = generate_uid()
    files = [write_radiograph(tmp_path / f"{i}.dcm", modality="DX", study_uid=study_uid, seed=30 + i) for i in range(4)]
    out = tmp_path / "out"
    dimse, web = Orthanc(tmp_path / "dimse"), DicomWebOrthanc(tmp_path / "web")
    args = ("--forward", f"{dimse.aet}@127.0.0.1:{dimse.dicom_port}", "--forward-stow", web.stow_url, "--heatmap-sc")
    node = NodeProcess(heat_bundle[0], out, *args)
    restarted = NodeProcess(heat_bundle[0], out, *args)

    def holds(pacs: Orthanc) -> list[str]:
        return sop_uids(study_instances(pacs, study_uid)) if pacs.pid is not None else []

    def wait_held(pacs: Orthanc, records, running: NodeProcess, what: str) -> None:
        expected, folder = result_uids(records), "outbox-stow" if pacs is web else "outbox"
        try:
            pacs.wait_for(lambda: set(expected) <= set(holds(pacs)), timeout_s=WAIT_S)
        except TimeoutError:
            raise AssertionError(f"{what}: {pacs.aet} holds {holds(pacs)}, not {expected}:\n{running.log()[-3000:]}") from None
        wait_until(lambda: not outbox(out, folder), running, f"{what}: {folder} empty")

    try:
        dimse.start()
        web.start()
        node.start()
        storescu(node.port, files[0])
        records = node.wait_results(1, timeout_s=WAIT_S)
        wait_held(dimse, records, node, "both up")
        wait_held(web, records, node, "both up")

        # The DICOMweb Orthanc down: C-STORE delivers meanwhile; the STOW-RS outbox keeps the results.
        web.stop()
        storescu(node.port, *files[1:3])
        records = node.wait_results(3, timeout_s=WAIT_S)
        wait_held(dimse, records, node, "DICOMweb down")
        wait_until(lambda: f"forward-stow: {web.stow_url} did not answer" in node.log(), node, "a failed STOW-RS try")
        assert outbox(out, "outbox-stow") == result_names(records[1:])
        web.start()
        wait_held(web, records, node, "after the DICOMweb Orthanc's restart")

        # Down again, and the node stopped with results in the STOW-RS outbox: the next node sends them.
        web.stop()
        storescu(node.port, files[3])
        records = node.wait_results(4, timeout_s=WAIT_S)
        wait_held(dimse, records, node, "DICOMweb down, before the node stops")
        assert node.stop() == 0, node.log()
        assert outbox(out, "outbox-stow") == result_names(records[3:]) and not outbox(out)
        web.start()
        restarted.start()
        wait_held(web, records, restarted, "after the node's restart")
        assert restarted.stop() == 0, restarted.log()

        final = results(out)
        assert len(final) == 4 and holds(web) == holds(dimse) == result_uids(final)
        log = restarted.log()  # both runs append to the same log
        names = result_names(final)
        assert forwarded_once(log, names, web.stow_url) == {}, log[-3000:]
        assert forwarded_once(log, names, f"{dimse.aet}@127.0.0.1:{dimse.dicom_port}") == {}, log[-3000:]
    finally:
        stop_nodes(node, restarted)
        dimse.stop()
        web.stop()


def stop_nodes(*nodes) -> None:
    """Stop each node (SIGTERM, then SIGKILL if it lingers), whatever the others do."""
    for process in nodes:
        try:
            process.stop()
        finally:
            process.kill()
