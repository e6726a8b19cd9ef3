"""Orthanc as a PACS for the node's tests and its load benchmark: a real DICOM peer that sends studies to the node
and receives its results (needs httpx and Debian's orthanc: apt-get install orthanc).

Usage (in a test):
    with Orthanc(tmp_path / "pacs", {"medge": ("MEDGE", "127.0.0.1", scp_port)}) as pacs:
        pacs.upload(path)
        pacs.send_study("medge", pacs.study_id(study_instance_uid))

The hazard guarded against is a test server left behind or open to others on a shared machine.
Orthanc runs in its own process group and stop() ends it (SIGTERM, then SIGKILL); its configuration,
index, storage, temporary files and log live in the given folder, and no plugins are loaded (Debian's
/etc/orthanc/orthanc.json loads /usr/share/orthanc/plugins; ours is written from scratch). The REST API
answers loopback clients only ("RemoteAccessAllowed": false) but, like the DICOM port, Orthanc 1.10 has
no bind-address option and listens on all interfaces (0.0.0.0): anyone who can reach this machine may
C-STORE into it while a test runs ("DicomAlwaysAllowStore"). The tests only ever connect via 127.0.0.1.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (another process may take it before we bind it: rare)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orthanc:
    """Orthanc started on loopback ports with a temporary configuration (storage and index in a temporary folder),
    declaring the given modalities (name -> (AE title, host, port)) so that Orthanc can send to them and accept from them.

    The ports are chosen once, so a restart (stop(), start()) keeps them and the stored instances. `modalities`
    may be changed between stop() and start(): the configuration is written at each start.
    """

    def __init__(self, folder: Path, modalities: dict[str, tuple[str, str, int]] | None = None, aet: str = "ORTHANC",
                 binary: str = ORTHANC):
        self.folder, self.binary = Path(folder), binary
        self.modalities = dict(modalities or {})
        self.aet = aet
        self.name = f"medge-test-{aet}-{os.urandom(4).hex()}"  # GET /system tells this Orthanc from another on the port
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.log_path = self.folder / "orthanc.log"
        self._process: subprocess.Popen | None = None

    def _config(self) -> dict:
        return {
            "Name": self.name,
            "StorageDirectory": str(self.folder / "db"),
            "IndexDirectory": str(self.folder / "db"),
            "TemporaryDirectory": str(self.folder / "tmp"),  # zip archives and transcoding, not /tmp
            "Plugins": [],
            "LuaScripts": [],
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "WebDavEnabled": False,
            "HttpDescribeErrors": True,  # error bodies are JSON with "Message" and "OrthancError"
            "DicomServerEnabled": True,
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "DicomModalities": {name: list(entry) for name, entry in self.modalities.items()},
            "DicomModalitiesInDatabase": False,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "DicomCheckModalityHost": False,
            "DicomCheckCalledAet": False,
            "DicomScuTimeout": 5,  # a send to a modality that accepts the connection but never answers fails in 5 s
            "StableAge": 1,
            "KeepAlive": True,
            "SaveJobs": False,  # a restart must not replay the sends of the previous run
        }

    def start(self, timeout_s: float = 30) -> "Orthanc":
        """Start Orthanc and wait until GET /system answers; raise RuntimeError with its log tail if it does not."""
        if self._process is not None:
            raise RuntimeError("Orthanc is already running")
        (self.folder / "tmp").mkdir(parents=True, exist_ok=True)
        config = self.folder / "orthanc.json"
        config.write_text(json.dumps(self._config(), indent=2))
        with open(self.log_path, "ab") as log:  # stderr too: a bad configuration fails before Orthanc's logging starts
            self._process = subprocess.Popen([self.binary, str(config)], cwd=self.folder, stdin=subprocess.DEVNULL,
                                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self.wait_for(self._answers, timeout_s, poll_s=0.05)
        except BaseException as e:
            self.stop()
            raise RuntimeError(f"Orthanc did not start in {timeout_s} s:\n{self.log_tail()}") from e
        return self

    def _answers(self) -> bool:
        try:
            answer = httpx.get(f"{self.url}/system", timeout=1)
            return answer.status_code == 200 and answer.json().get("Name") == self.name
        except (httpx.TransportError, ValueError):
            return False

    def stop(self) -> None:
        """End Orthanc (SIGTERM, then SIGKILL after 10 s); the folder, hence the stored instances, stays."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def __enter__(self) -> "Orthanc":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of Orthanc's log (stdout and stderr)."""
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def _request(self, method: str, path: str, timeout_s: float = 30, **kwargs) -> httpx.Response:
        """One REST call; an error status raises httpx.HTTPStatusError whose message holds Orthanc's answer."""
        response = httpx.request(method, f"{self.url}{path}", timeout=timeout_s, **kwargs)
        if response.is_error:
            raise httpx.HTTPStatusError(f"{method} {path}: HTTP {response.status_code}: {response.text}",
                                        request=response.request, response=response)
        return response

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def get_json(self, path: str, client: "httpx.Client | None" = None):
        """GET ``path`` as JSON, on ``client`` (a kept-alive connection) when given."""
        if client is None:
            return self._request("GET", path).json()
        response = client.get(f"{self.url}{path}", timeout=30)
        response.raise_for_status()
        return response.json()

    def upload(self, path) -> str:
        """Store a DICOM file (POST /instances); returns its Orthanc instance ID."""
        return self._request("POST", "/instances", content=Path(path).read_bytes()).json()["ID"]

    def study_id(self, study_instance_uid: str) -> str | None:
        """The Orthanc ID of the study with this StudyInstanceUID, or None when Orthanc does not hold it."""
        found = self._request("POST", "/tools/lookup", content=study_instance_uid).json()
        return next((item["ID"] for item in found if item["Type"] == "Study"), None)

    def send_study(self, modality: str, orthanc_study_id: str, timeout_s: float = 60) -> dict:
        """C-STORE a study to a declared modality and wait for the end (POST /modalities/{modality}/store).

        A modality that is down answers HTTP 500 (see test_send_to_a_modality_that_is_down), raised as httpx.HTTPStatusError.
        """
        body = {"Resources": [orthanc_study_id], "Synchronous": True}
        return self._request("POST", f"/modalities/{modality}/store", timeout_s=timeout_s + 5, json=body).json()

    def instances(self, orthanc_study_id: str) -> list[dict]:
        """The instances of a study (GET /studies/{id}/instances), each with "ID" and "MainDicomTags"."""
        return self._request("GET", f"/studies/{orthanc_study_id}/instances").json()

    def tags(self, instance_id: str) -> dict:
        """An instance's tags by keyword (GET /instances/{id}/simplified-tags)."""
        return self._request("GET", f"/instances/{instance_id}/simplified-tags").json()

    def file(self, instance_id: str) -> bytes:
        """An instance's DICOM file as stored (GET /instances/{id}/file)."""
        return self._request("GET", f"/instances/{instance_id}/file").content

    def wait_for(self, predicate, timeout_s: float = 30, poll_s: float = 0.2):
        """Poll until predicate() is truthy and return its value; raise TimeoutError, or RuntimeError if Orthanc died."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = predicate()
            if value:
                return value
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self._process.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                name = getattr(predicate, "__name__", repr(predicate))
                raise TimeoutError(f"{name} still false after {timeout_s} s")
            time.sleep(poll_s)
