"""medge serve as users use it: a real server process, many concurrent API clients, the page in Chromium.

One server for the module (``medge serve --port 0 --token-file ...``, 2 inference threads,
2 queue places, uploads up to 1 MB); every answer is checked against ``medge predict`` on
the same file. The last test stops the server with SIGTERM while a request is in flight.
The browser test drives Debian's chromium with Playwright and is skipped, with the reason,
only where chromium or Playwright is not installed (CI installs both).
"""
import csv
import io
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from medge.edge.apps.cli import main
from medge.edge.inputs.image import write_image
from tests.conftest import xray_like

httpx = pytest.importorskip("httpx", reason="the dev extra is not installed")
pytest.importorskip("gradio", reason="the serve extra is not installed")

ROOT = Path(__file__).resolve().parents[4]
ARTIFACTS = Path(os.environ.get("MEDGE_TEST_ARTIFACTS", ROOT / "runs" / "test-artifacts"))
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
TOKEN = "live-test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PATIENT = "KIM_Minsoo_19650312"  # in a file name and, as PatientName, in a DICOM: never in the log
MAX_UPLOAD_MB = 1


class Server:
    """A ``medge serve`` subprocess; its stderr is collected line by line."""

    def __init__(self, args, tmpdir: Path):
        self.tmpdir = tmpdir
        env = {**os.environ, "TMPDIR": str(tmpdir)}
        self.proc = subprocess.Popen([sys.executable, "-m", "medge", "serve", *args], stderr=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True, env=env)
        self.lines: list[str] = []
        ready: queue.Queue = queue.Queue()

        def read():
            for line in self.proc.stderr:
                self.lines.append(line)
                if m := re.search(r"listening on http://127\.0\.0\.1:(\d+)/", line):
                    ready.put(int(m.group(1)))
            ready.put(None)

        self.reader = threading.Thread(target=read, daemon=True)
        self.reader.start()
        port = ready.get(timeout=180)
        if port is None:
            raise RuntimeError("medge serve did not start:\n" + "".join(self.lines))
        self.url = f"http://127.0.0.1:{port}"

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def workdir(self) -> Path:
        (d,) = self.tmpdir.glob("medge-serve-*")
        return d

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=30)
        self.reader.join(timeout=10)
        return rc


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Files as a hospital sends them, good and bad, and medge predict's records for them."""
    import pydicom

    from medge.train.synth import write_dicom

    d = tmp_path_factory.mktemp("serve-inputs")
    write_image(d / f"{PATIENT}.png", xray_like(300, 257, seed=1))
    write_image(d / "scan16.tif", xray_like(200, 180, seed=2, bits=12))
    write_image(d / "photo.jpg", xray_like(150, 150, seed=3))
    write_image(d / "old.bmp", xray_like(120, 90, seed=4))
    write_image(d / "흉부 사진.png", xray_like(96, 128, seed=5))
    dcm = write_dicom(d / "study.dcm", xray_like(128, 96, seed=6, bits=12), window=(2000, 3000))
    ds = pydicom.dcmread(dcm)
    ds.PatientName, ds.PatientID = PATIENT.replace("_", "^"), "PID-778899"
    ds.save_as(dcm)
    rng = np.random.default_rng(0)
    write_image(d / "large.png", rng.integers(0, 256, (880, 1000), dtype=np.uint8))  # ~0.9 MB: under the limit
    write_image(d / "too-big.png", rng.integers(0, 256, (1300, 1300), dtype=np.uint8))  # ~1.7 MB: over it
    (d / "truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (d / "notes.txt").write_text("not an image")
    assert (d / "large.png").stat().st_size < MAX_UPLOAD_MB * 2**20 < (d / "too-big.png").stat().st_size
    return d


@pytest.fixture(scope="module")
def expected(inputs, bundle, tmp_path_factory):
    """name -> the record ``medge predict`` writes for that file."""
    out = tmp_path_factory.mktemp("serve-expected") / "r.jsonl"
    files = sorted(str(p) for p in inputs.iterdir() if p.name != "too-big.png")
    assert main(["predict", "--model", str(bundle), *files, "--out", str(out)]) == 1  # two bad inputs
    recs = {}
    for line in out.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        name = Path(rec["path"]).name
        if rec["error"]:
            rec["error"] = rec["error"].replace(rec["path"], name)
        recs[name] = {**rec, "path": name}
    return recs


@pytest.fixture(scope="module")
def server(bundle, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve-tmp")
    token_file = tmp / "token"
    token_file.write_text(TOKEN + "\n")
    srv = Server(["--model", str(bundle), "--port", "0", "--token-file", str(token_file), "--inference-threads", "2",
                  "--queue", "2", "--max-upload-mb", str(MAX_UPLOAD_MB)], tmp)
    yield srv
    srv.stop()


def _same_record(got: dict, want: dict) -> None:
    assert set(got) == set(want), (sorted(got), sorted(want))
    for key in want:
        if key == "runtime":  # the server and medge predict each time OpenCV's engines at load
            assert got[key]["variant"] == want[key]["variant"] and got[key]["engine"], key
        elif key != "timings_ms":
            assert got[key] == want[key], key  # probabilities: the same floats, bit for bit
    assert set(got["timings_ms"]) == set(want["timings_ms"])


def test_health_model_and_offline_docs(server, bundle):
    sha = json.loads((bundle / "model.json").read_text())["model"]["sha256"]
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as c:
        assert c.get("/healthz").json() == {"status": "ok", "model_sha256": sha}
        info = c.get("/api/v1/model").json()
        assert info["model_sha256"] == sha and info["classes"] == ["disease", "normal"]
        assert info["self_test"]["passed"] and info["input"]["size"] == [1, 32, 32]
        assert info["parity"]["passed"] and "val" in info["training"]["metrics"] and info["runtime"]["opencv"]
        docs = c.get("/docs").text
        assert "/static-offline-docs/swagger-ui-bundle.js" in docs and "cdn." not in docs
        assert c.get("/static-offline-docs/swagger-ui-bundle.js").status_code == 200
        schema = c.get("/openapi.json").json()["paths"]["/api/v1/predict"]["post"]["requestBody"]["content"]
        assert "file" in schema["multipart/form-data"]["schema"]["properties"]
        assert c.get("/healthz", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert httpx.get(server.url + "/healthz").status_code == 401


def _post(client, name, data, field="file"):
    """POST one file, retrying while the server says 503 (checking its Retry-After each time)."""
    for _ in range(300):
        r = client.post("/api/v1/predict", files={field: (name, data)})
        if r.status_code != 503:
            return r, True
        assert int(r.headers["retry-after"]) >= 1 and "busy" in r.json()["detail"]
        time.sleep(0.05)
    raise AssertionError("still 503 after 300 tries")


def test_concurrent_clients_get_medge_predicts_records(server, inputs, expected):
    files = {p.name: p.read_bytes() for p in inputs.iterdir()}
    good = [n for n in expected if expected[n]["error"] is None]
    bad = [n for n in expected if expected[n]["error"] is not None]
    assert len(good) == 7 and sorted(bad) == ["notes.txt", "truncated.png"]
    jobs = [("file", n) for n in good + bad] * 3 + [("too-big", "too-big.png")] * 3 + [
        ("no-field", "photo.jpg"), ("malformed", None), ("truncated-body", None), ("not-multipart", None)] * 2
    overloaded = []

    def one(job):
        kind, name = job
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as c:
            if kind == "file":
                r, _ = _post(c, name, files[name])
                if expected[name]["error"] is None:
                    assert r.status_code == 200, r.text
                    _same_record(r.json(), expected[name])
                else:
                    assert r.status_code == 422, r.text
                    assert r.json()["detail"] == expected[name]["error"]
                    _same_record(r.json()["record"], expected[name])
            elif kind == "too-big":
                r, _ = _post(c, name, files[name])
                assert r.status_code == 413 and "over the limit of 1 MB" in r.json()["detail"]
            elif kind == "no-field":
                r, _ = _post(c, name, files[name], field="image")
                assert r.status_code == 422 and "field named 'file'" in r.json()["detail"]
            elif kind == "malformed":
                r = c.post("/api/v1/predict", content=b"--x\r\nno headers at all",
                           headers={"Content-Type": "multipart/form-data; boundary=zzz"})
                assert r.status_code in (400, 503) and ("malformed" in r.text or "busy" in r.text)
            elif kind == "truncated-body":
                body = b'--zzz\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n' + files["photo.jpg"]
                r = c.post("/api/v1/predict", content=body, headers={"Content-Type": "multipart/form-data; boundary=zzz"})
                assert r.status_code in (400, 503) and ("ends before the closing boundary" in r.text or "busy" in r.text)
            else:
                r = c.post("/api/v1/predict", content=files["photo.jpg"], headers={"Content-Type": "image/jpeg"})
                assert r.status_code in (415, 503)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, jobs))

    # A burst bigger than the 4 places (2 threads + 2 queued) is answered 503 with Retry-After, then served.
    barrier = threading.Barrier(12)

    def burst(_):
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as c:
            barrier.wait(timeout=60)
            r = c.post("/api/v1/predict", files={"file": ("large.png", files["large.png"])})
            if r.status_code == 503:
                overloaded.append(int(r.headers["retry-after"]))
                r, _ = _post(c, "large.png", files["large.png"])
            assert r.status_code == 200
            _same_record(r.json(), expected["large.png"])

    with ThreadPoolExecutor(12) as pool:
        list(pool.map(burst, range(12)))
    assert overloaded and min(overloaded) >= 1

    with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as c:  # still healthy
        assert c.get("/healthz").status_code == 200
    assert list((server.workdir() / "uploads").iterdir()) == []  # every upload deleted after its answer


def test_the_page_cannot_be_made_to_read_a_server_file(server, inputs):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as c:
        assert c.get("/gradio_api/file=/etc/passwd").status_code == 403
        secret = inputs / "photo.jpg"  # a readable image outside the upload folder
        for path in ("/etc/passwd", str(secret)):
            payload = {"data": [[{"path": path, "meta": {"_type": "gradio.FileData"}}]]}
            event = c.post("/gradio_api/call/classify", json=payload).json()["event_id"]
            answer = c.get(f"/gradio_api/call/classify/{event}").text
            assert "event: error" in answer and "root:" not in answer and "medge-result" not in answer


def test_the_load_benchmark_gets_correct_answers(server, inputs, expected):
    from medge.benchmarks.serve_load import multipart, run_level

    names = ["photo.jpg", "old.bmp"]
    bodies = [(n, *multipart(n, (inputs / n).read_bytes())) for n in names]
    row = run_level(server.url, TOKEN, bodies, {n: expected[n]["probabilities"] for n in names}, clients=2, seconds=0.5)
    assert row["ok"] >= 2 and row["errors"] == {} and row["latency_ms"]["n"] == row["ok"]


def test_the_log_has_no_patient_data(server):
    log = server.log
    assert "predict 200" in log and "predict 413" in log and "predict 422" in log and "predict 503" in log
    for secret in (PATIENT, "KIM^Minsoo", "PID-778899", "흉부", "scan16", "photo.jpg", "truncated"):
        assert secret not in log


def _chromium_or_skip():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium) to run the browser test")
    return pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (dev extra)")


def test_the_page_in_a_real_browser(server, inputs, expected, bundle):
    sync_api = _chromium_or_skip()
    sha = json.loads((bundle / "model.json").read_text())["model"]["sha256"]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    host = server.url
    outside, csp = [], []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            ctx = browser.new_context(locale="en-US", viewport={"width": 1280, "height": 900}, accept_downloads=True)
            ctx.on("request", lambda r: None if r.url.startswith((host, "data:", "blob:")) else outside.append(r.url))
            page = ctx.new_page()
            page.on("console", lambda m: csp.append(m.text) if "Content Security Policy" in m.text else None)

            # Sign in with the token, as a radiographer would.
            page.goto(host + "/")
            page.fill("input[name=token]", TOKEN)
            page.click("button[type=submit]")
            page.wait_for_selector("#medge-header", timeout=60_000)
            assert sha[:16] in page.inner_text("#medge-header")

            # Classify tab: drop a good image, a DICOM and a broken file; read the answers off the page.
            names = [f"{PATIENT}.png", "study.dcm", "truncated.png"]
            page.set_input_files("#medge-files input[type=file]", [str(inputs / n) for n in names])
            page.wait_for_selector(".medge-result >> nth=2", timeout=60_000)
            cards = {c.get_attribute("data-file"): c for c in page.query_selector_all(".medge-result")}
            assert sorted(cards) == sorted(names)
            for n in names[:2]:
                assert cards[n].query_selector(".medge-label-value").inner_text() == expected[n]["label"]
                for cls, prob in expected[n]["probabilities"].items():
                    assert cards[n].query_selector(f'.medge-p[data-class="{cls}"]').inner_text() == f"{prob:.4f}"
                stages = cards[n].query_selector("figure img")
                assert stages.evaluate("img => img.complete && img.naturalWidth > 4 * img.naturalHeight / 2")
                assert "inference" in cards[n].query_selector(".medge-timings:last-child").inner_text()
            assert cards["truncated.png"].query_selector(".medge-error").inner_text() == expected["truncated.png"]["error"]
            page.screenshot(path=str(ARTIFACTS / "serve-page.png"), full_page=True)

            # Batch tab: every file, then the CSV download equals medge predict --format csv (timings aside).
            page.get_by_role("tab", name="Batch").click()
            batch = sorted(expected)
            page.set_input_files("#medge-batch-files input[type=file]", [str(inputs / n) for n in batch])
            page.wait_for_selector(".medge-summary", timeout=60_000)
            assert page.get_attribute(".medge-summary", "data-total") == str(len(batch))
            with page.expect_download() as download:
                page.click("a.medge-csv")
            rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text(encoding="utf-8"))))
            assert [r["path"] for r in rows] == batch
            for r in rows:
                want = expected[r["path"]]
                assert r["label"] == (want["label"] or "") and r["error"] == (want["error"] or "")
                for cls, prob in (want["probabilities"] or {}).items():
                    assert float(r[f"p_{cls}"]) == prob
            with page.expect_download() as download:
                page.click("a.medge-jsonl")
            lines = Path(download.value.path()).read_text(encoding="utf-8").splitlines()
            for line in lines:
                rec = json.loads(line)
                _same_record(rec, expected[rec["path"]])

            # Model card tab.
            page.get_by_role("tab", name="Model card").click()
            assert page.inner_text("#medge-sha256") == sha
            assert page.inner_text("#medge-self-test").startswith("passed")

            # The offline API docs.
            page.goto(host + "/docs")
            page.wait_for_selector(".swagger-ui .opblock", timeout=30_000)
            ctx.close()

            # In Korean, for a browser that prefers Korean.
            ctx = browser.new_context(locale="ko-KR", viewport={"width": 1280, "height": 900})
            ctx.on("request", lambda r: None if r.url.startswith((host, "data:", "blob:")) else outside.append(r.url))
            ctx.add_cookies([{"name": "medge_token", "value": TOKEN, "url": host}])
            page = ctx.new_page()
            page.goto(host + "/")
            page.wait_for_selector("#medge-header", timeout=60_000)
            assert page.get_by_role("tab", name="일괄 처리").is_visible()
            page.set_input_files("#medge-files input[type=file]", [str(inputs / "old.bmp")])
            page.wait_for_selector(".medge-result", timeout=60_000)
            assert "판정" in page.inner_text(".medge-result") and "처리 시간" in page.inner_text(".medge-result")
            ctx.close()
        finally:
            browser.close()
    assert outside == [], f"the page reached outside this server: {outside}"
    assert csp == [], f"the page tried to load something the policy forbids: {csp}"
    leftovers = [p for p in server.workdir().rglob("*") if p.is_file() and p.stat().st_size > 0]
    assert leftovers == [], "uploads left on the server after their answer"


def test_sigterm_finishes_the_request_in_flight_then_stops(server, inputs, expected):
    """Last in this module: it stops the module's server."""
    data = (inputs / "scan16.tif").read_bytes()
    boundary = "medgeboundary"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="scan16.tif"\r\n'
            "Content-Type: image/tiff\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    signalled = threading.Event()

    def body():  # half the upload, then the server is told to stop, then the rest
        yield head + data[: len(data) // 2]
        signalled.wait(timeout=30)
        time.sleep(0.3)
        yield data[len(data) // 2 :] + tail

    result = {}

    def client():
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as c:
            result["response"] = c.post("/api/v1/predict", content=body(),
                                        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})

    t = threading.Thread(target=client)
    t.start()
    time.sleep(1.0)  # the request is in flight, its upload half sent
    workdir = server.workdir()
    server.proc.send_signal(signal.SIGTERM)
    signalled.set()
    rc = server.proc.wait(timeout=60)  # a guard against a hang; how fast it stops is the benchmarks' to measure
    t.join(timeout=60)
    r = result["response"]
    assert r.status_code == 200, r.text
    _same_record(r.json(), expected["scan16.tif"])
    assert rc == 0, (rc, server.log)
    assert not workdir.exists()  # the private folder, uploads and all, is gone
    assert "medge serve: stopped" in server.log
