"""The Orthanc harness (benchmarks/pacs.py) against Debian's Orthanc: upload, look up, send by C-STORE
to a pynetdicom Storage SCP, failure to send to a modality that is down, persistence across a restart.
"""
import os
import threading

import numpy as np
import pytest

httpx = pytest.importorskip("httpx", reason="the dev extra is not installed")
pytest.importorskip("pynetdicom", reason="the node extra (pynetdicom) is not installed")

from medge.benchmarks.pacs import ORTHANC, Orthanc, free_port  # noqa: E402

if not os.access(ORTHANC, os.X_OK):
    pytest.skip(f"Orthanc is not installed ({ORTHANC} is not executable; apt-get install orthanc)", allow_module_level=True)

DX = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation


def write_dx(path, patient_id="PAT-1"):
    """A 64x64 uint16 DX file, Explicit VR Little Endian; returns its dataset."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = DX
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SOPClassUID, ds.SOPInstanceUID = DX, ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.AccessionNumber = patient_id, "Test^Patient", "ACC1"
    ds.Modality, ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "DX", "1", 1, 1
    ds.StudyDate, ds.StudyTime = "20240101", "120000"
    ds.PresentationIntentType, ds.ImageType = "FOR PRESENTATION", ["ORIGINAL", "PRIMARY"]
    ds.Rows = ds.Columns = 64
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) % 4096).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return ds


class StorageSCP:
    """A pynetdicom Storage SCP on 127.0.0.1 (AE title MEDGE, DX over Explicit VR LE) that records what it receives."""

    def __init__(self, port):
        from pydicom.uid import ExplicitVRLittleEndian
        from pynetdicom import AE, evt
        from pynetdicom.sop_class import DigitalXRayImageStorageForPresentation

        self.port, self.received, self._lock = port, [], threading.Lock()
        ae = AE(ae_title="MEDGE")
        ae.add_supported_context(DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian)
        self.server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)])

    def _on_store(self, event):
        with self._lock:
            self.received.append(event.request.AffectedSOPInstanceUID)
        return 0x0000

    def close(self):
        self.server.shutdown()


@pytest.fixture
def scp():
    server = StorageSCP(free_port())
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def dx(tmp_path):
    path = tmp_path / "dx.dcm"
    return path, write_dx(path)


def test_upload_send_and_restart(tmp_path, scp, dx):
    path, ds = dx
    pacs = Orthanc(tmp_path / "pacs", {"medge": ("MEDGE", "127.0.0.1", scp.port)})
    try:
        pacs.start()
        assert pacs.study_id(ds.StudyInstanceUID) is None
        instance = pacs.upload(path)
        study = pacs.study_id(ds.StudyInstanceUID)
        assert study is not None
        assert [item["ID"] for item in pacs.instances(study)] == [instance]
        tags = pacs.tags(instance)
        assert (tags["PatientID"], tags["SOPInstanceUID"], tags["Modality"]) == ("PAT-1", ds.SOPInstanceUID, "DX")
        assert pacs.file(instance) == path.read_bytes()

        answer = pacs.send_study("medge", study)
        assert answer["InstancesCount"] == 1 and answer["FailedInstancesCount"] == 0, answer
        assert pacs.wait_for(lambda: scp.received, timeout_s=10) == [ds.SOPInstanceUID]

        pacs.stop()
        with pytest.raises(httpx.TransportError):
            pacs.tags(instance)
        pacs.start()
        assert pacs.study_id(ds.StudyInstanceUID) == study
        assert pacs.tags(instance)["SOPInstanceUID"] == ds.SOPInstanceUID
        assert len(scp.received) == 1  # the restart did not replay the send
    finally:
        pacs.stop()


def test_send_to_a_modality_that_is_down(tmp_path, dx):
    path, ds = dx
    with Orthanc(tmp_path / "pacs", {"down": ("DOWN", "127.0.0.1", free_port())}) as pacs:
        pacs.upload(path)
        with pytest.raises(httpx.HTTPStatusError, match="HTTP 500") as failure:
            pacs.send_study("down", pacs.study_id(ds.StudyInstanceUID))
        body = failure.value.response.json()
        assert body["HttpStatus"] == 500 and body["OrthancError"] == "Error in the network protocol", body


def test_start_failure_reports_the_log(tmp_path):
    busy = Orthanc(tmp_path / "one")
    with busy:
        second = Orthanc(tmp_path / "two")
        second.http_port, second.url = busy.http_port, busy.url  # the HTTP port is taken: Orthanc exits
        with pytest.raises(RuntimeError, match="did not start") as failure:
            second.start(timeout_s=60)
        # the exit was seen (wait_for's RuntimeError), not waited out (its TimeoutError)
        assert isinstance(failure.value.__cause__, RuntimeError), repr(failure.value.__cause__)
        assert "Orthanc exited with" in str(failure.value.__cause__)
        assert second.pid is None
