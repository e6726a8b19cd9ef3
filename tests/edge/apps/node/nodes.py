"""Tools for the ``medge node`` tests: DICOM files as modalities send them, the node as a process, dcmtk's tools.

Usage (in a test):
    files = [write_radiograph(tmp_path / "a.dcm", modality="CR"), *pydicom_test_files(tmp_path / "in")]
    with NodeProcess(bundle, tmp_path / "out", "--heatmap-sc") as node:
        storescu(node.port, files[0])
        node.wait_results(1)
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from tests.conftest import xray_like

STORESCU, ECHOSCU, DSRDUMP = "/usr/bin/storescu", "/usr/bin/echoscu", "/usr/bin/dsrdump"  # dcmtk's, not pynetdicom's
DCMTK = all(os.access(p, os.X_OK) for p in (STORESCU, ECHOSCU, DSRDUMP))

CR = "1.2.840.10008.5.1.4.1.1.1"
DX = "1.2.840.10008.5.1.4.1.1.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
SOP_CLASS = {"CR": CR, "DX": DX, "CT": CT}

# dcmtk storescu proposes uncompressed transfer syntaxes unless told which compressed one to propose.
STORESCU_PROPOSE = {
    "1.2.840.10008.1.2.4.50": "-xy", "1.2.840.10008.1.2.4.51": "-xx", "1.2.840.10008.1.2.4.57": "-xs",
    "1.2.840.10008.1.2.4.70": "-xs", "1.2.840.10008.1.2.4.80": "-xt", "1.2.840.10008.1.2.4.81": "-xu",
    "1.2.840.10008.1.2.4.90": "-xv", "1.2.840.10008.1.2.4.91": "-xw", "1.2.840.10008.1.2.5": "-xr",
    "1.2.840.10008.1.2.1.99": "-xd",
}

# pydicom's own test files (never get_testdata_file: it may try to download): grayscale compressed Secondary Captures.
PYDICOM_GRAY = ["JPEG2000.dcm", "JPEGLSNearLossless_16.dcm", "JPGExtended.dcm", "image_dfl.dcm"]
PYDICOM_RGB = ["SC_rgb_rle.dcm", "SC_rgb_jpeg_dcmtk.dcm"]  # colour: acknowledged, recorded as skipped


def pydicom_file(name: str) -> Path:
    import pydicom

    return Path(pydicom.__file__).parent / "data" / "test_files" / name


def with_study(src: Path, dst: Path, study_uid: str | None = None, modality: str | None = None,
               new_instance: bool = False) -> Path:
    """``src`` with the Study and Series UIDs (and patient) a PACS object has, pixel data left as encoded; with
    ``modality``, that Modality instead of its own (pydicom's Secondary Captures say NM or nothing); with
    ``new_instance``, a SOP Instance UID of its own (a second instance made from the same file)."""
    import pydicom
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(src)
    ds.StudyInstanceUID = study_uid or ds.get("StudyInstanceUID") or generate_uid()
    ds.SeriesInstanceUID = ds.get("SeriesInstanceUID") or generate_uid()
    ds.PatientID = ds.get("PatientID") or "TEST-1"
    ds.PatientName = ds.get("PatientName") or "Test^Patient"
    if modality is not None:
        ds.Modality = modality
    if new_instance:
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(dst, enforce_file_format=True)
    return dst


def write_radiograph(path, modality: str = "DX", study_uid: str | None = None, size: int = 256, seed: int = 0,
                     transfer: str | None = None, patient_id: str = "PAT-1", columns: int | None = None) -> Path:
    """A CR, DX or CT instance as a modality writes it (patient, study, series), 12-bit values, uncompressed or
    JPEG baseline (``transfer`` 1.2.840.10008.1.2.4.50: 8-bit); ``size`` rows and ``columns`` (default: ``size``)."""
    import cv2
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

    transfer = transfer or ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SOP_CLASS[modality]
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = transfer
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SOPClassUID, ds.SOPInstanceUID = SOP_CLASS[modality], ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid or generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = patient_id, "Doe^Jane", "19700101", "F"
    ds.AccessionNumber, ds.StudyID, ds.StudyDate, ds.StudyTime = "ACC1", "1", "20260101", "120000"
    ds.ReferringPhysicianName = ""
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, 1, 1
    if modality == "DX":
        ds.PresentationIntentType, ds.ImageType = "FOR PRESENTATION", ["ORIGINAL", "PRIMARY"]
    ds.Rows, ds.Columns = size, columns or size
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PixelRepresentation = 1, "MONOCHROME2", 0
    if transfer == JPEGBaseline8Bit:
        pixels = xray_like(size, columns or size, seed=seed, bits=8)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.PixelData = encapsulate([cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()])
        ds["PixelData"].VR = "OB"
        ds.LossyImageCompression = "01"
    else:
        pixels = xray_like(size, columns or size, seed=seed, bits=12)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return Path(path)


def storescu(port: int, *files, calling: str = "TESTSCU", called: str = "MEDGE", extra=(), check: bool = True,
             timeout_s: float = 60) -> subprocess.CompletedProcess:
    """dcmtk's storescu, proposing each file's own transfer syntax (one call per group of the same syntax)."""
    import pydicom

    groups: dict[str, list[str]] = {}
    for f in files:
        ts = str(pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        groups.setdefault(STORESCU_PROPOSE.get(ts, "-x="), []).append(str(f))
    last = None
    for option, group in groups.items():
        last = subprocess.run([STORESCU, option, "-nh", "-aet", calling, "-aec", called, *extra, "127.0.0.1", str(port),
                               *group], capture_output=True, text=True, timeout=timeout_s)
        if check and last.returncode != 0:
            raise AssertionError(f"storescu {option} {group}: exit {last.returncode}\n{last.stdout}{last.stderr}")
    return last


def echoscu(port: int, calling: str = "TESTSCU", called: str = "MEDGE", extra=()) -> subprocess.CompletedProcess:
    return subprocess.run([ECHOSCU, "-aet", calling, "-aec", called, *extra, "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=30)


def results(out: Path) -> list[dict]:
    path = Path(out) / "results.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def bundle_classes(bundle: Path) -> list[str]:
    """The classes (a multi-label bundle's findings) its manifest names, in the model's order."""
    return json.loads((Path(bundle) / "model.json").read_text(encoding="utf-8"))["classes"]


def sr_probabilities(ds, classes) -> dict[str, float]:
    """Class -> probability of a medge SR (a pydicom Dataset) of a bundle of ``classes``, as highdicom's TID 1500
    parser reads it: each measurement group's "Probability" (FloatingPointValue, the float64 exactly), its class
    known by the group's finding, the class's code (``report.class_codes``)."""
    import highdicom as hd

    from medge.edge.apps.node.report import PROBABILITY, class_codes

    by_code = {code[:2]: name for name, code in zip(classes, class_codes(classes), strict=True)}
    found: dict[str, float] = {}
    for group in hd.sr.Comprehensive3DSR.from_dataset(ds).content.get_image_measurement_groups():
        name = by_code[group.finding_type.value, group.finding_type.scheme_designator]
        (found[name],) = [m.value for m in group.get_measurements() if (m.name.value, m.name.scheme_designator)
                          == PROBABILITY[:2]]
    assert len(found) == len(classes), f"{len(found)} groups for {len(classes)} classes"
    return found


def certificates(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, made with the openssl CLI."""
    folder.mkdir()
    p = {k: folder / k for k in ("ca.key", "ca.pem", "server.key", "server.pem", "client.key", "client.pem")}
    run = lambda *args: subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, cwd=folder)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=medge test CA",
        "-keyout", p["ca.key"], "-out", p["ca.pem"])
    ext = folder / "san.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    for who in ("server", "client"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN=medge test {who}", "-keyout", p[f"{who}.key"],
            "-out", folder / f"{who}.csr")
        run("x509", "-req", "-in", folder / f"{who}.csr", "-CA", p["ca.pem"], "-CAkey", p["ca.key"],
            "-CAcreateserial", "-days", "2", "-extfile", ext, "-out", p[f"{who}.pem"])
    return p


SLOW_PREDICT = """import sys, time
from medge.edge.model import Model
from medge.edge.apps.cli import main
fast = Model.predict_iter
def slow(*args, **kwargs):
    for pred in fast(*args, **kwargs):
        time.sleep({0})
        yield pred
Model.predict_iter = slow
sys.argv[0] = "medge"
sys.exit(main())
"""


class NodeProcess:
    """``medge node`` as a subprocess on a free loopback port (--port 0; the port is read from its log)."""

    def __init__(self, bundle, out, *args: str, env: dict | None = None, slow_predict_s: float = 0.0):
        """``slow_predict_s``: the node's Model.predict_iter sleeps this long before each result (a slow box, to catch the
        node with instances acknowledged and not yet classified); the product code is unchanged."""
        self.bundle, self.out, self.args, self.env = Path(bundle), Path(out), list(args), env
        self.slow_predict_s = slow_predict_s
        self.log_path = self.out.parent / f"{self.out.name}.log"
        self.process: subprocess.Popen | None = None
        self.port: int | None = None

    def start(self, timeout_s: float = 60) -> "NodeProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        entry = ["-m", "medge.edge.apps.cli"]
        if self.slow_predict_s:
            entry = ["-c", SLOW_PREDICT.format(self.slow_predict_s)]
        command = [sys.executable, *entry, "node", "--model", str(self.bundle), "--out",
                   str(self.out), "--port", "0", *self.args]
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        env={**os.environ, **(self.env or {})}, start_new_session=True)
        log.close()
        started = self.log().count("listening on")
        deadline = time.monotonic() + timeout_s
        while True:
            found = re.findall(r"listening on [^:\s]+:(\d+)", self.log())
            if len(found) > started:
                self.port = int(found[-1])
                return self
            if self.process.poll() is not None:
                raise RuntimeError(f"medge node exited with {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"medge node did not listen within {timeout_s} s:\n{self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20) -> int:
        """Send ``sig``; wait for the exit; returns the exit status."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"medge node did not exit within {timeout_s} s of {signal.Signals(sig).name}:\n"
                                 f"{self.log()}") from None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def wait_results(self, n: int, timeout_s: float = 60) -> list[dict]:
        """Wait until results.jsonl has at least ``n`` records; returns them."""
        deadline = time.monotonic() + timeout_s
        while True:
            got = results(self.out)
            if len(got) >= n:
                return got
            if self.process.poll() is not None:
                raise RuntimeError(f"medge node exited with {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(got)} of {n} results after {timeout_s} s:\n{self.log()}")
            time.sleep(0.1)

    def __enter__(self) -> "NodeProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        try:
            self.stop()
        finally:
            self.kill()


def wait_until(condition, timeout_s: float = 30.0) -> bool:
    """True as soon as ``condition()`` is (a ceiling for slow machines, not a timing requirement)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True
