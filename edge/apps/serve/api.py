"""The JSON API of ``medge serve`` and the bounded inference service it shares with the page.

Routes (OpenAPI at /docs): ``GET /healthz``, ``GET /api/v1/model``, ``POST /api/v1/predict``
(multipart field ``file``) -> the record ``medge predict`` writes for that file. For a
multi-label bundle (``edge.findings``) the record has its ``decisions``, ``thresholds``,
``positive_findings`` and ``any_positive``, and the model's description its ``task`` and
``findings`` (each finding's threshold, criterion, guarantee and validation figures).

Hazards this module guards against:
- **Unbounded uploads.** The body is streamed, counted and written to the server's
  private upload folder under a name of the server's choosing; past ``--max-upload-mb``
  the answer is 413 and nothing more is written. A client that stalls is dropped (408).
  The file is deleted as soon as the answer is known.
- **Overload.** At most ``threads`` inputs are classified at once (each inference
  thread has its own cv2.dnn net, as ``Model`` arranges) and at most ``queue`` more
  requests wait; the next one is answered 503 with Retry-After at once, before its
  body is stored. The page goes through the same gate.
- **Server paths.** No request names a file on the server: the API takes bytes, the
  record names the uploaded file name, and errors never show the upload folder.
- **Patient data in logs.** The log has counts, timings, status codes and error kinds,
  never file names, DICOM tags or error texts (which name the file).

FastAPI and python-multipart come with the ``serve`` extra and are imported inside
the functions that need them.
"""

import asyncio
import logging
import math
import os
import secrets
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from medge import __version__
from medge.edge.decision import guarantee_text
from medge.edge.findings import MULTILABEL
from medge.edge.inputs.formats import DEFAULT_MAX_PIXELS, DICOM_SUFFIXES, IMAGE_SUFFIXES
from medge.edge.model import Model

log = logging.getLogger("medge.serve")

BODY_OVERHEAD = 64 << 10  # multipart boundaries and part headers allowed on top of the file itself
IDLE_TIMEOUT_S = 30.0  # a client that sends nothing for this long is dropped
NAME_MAX_CHARS = 255


class Overloaded(Exception):
    """Every inference thread is busy and the queue is full."""

    def __init__(self, retry_after_s: int):
        self.retry_after_s = retry_after_s
        super().__init__(f"the server is busy (all inference threads and queue places taken); retry in {retry_after_s} s")


class UploadRefused(Exception):
    """A request body that cannot be used: status code and reason for the client."""

    def __init__(self, status: int, reason: str):
        self.status, self.reason = status, reason
        super().__init__(reason)


@dataclass(frozen=True)
class Upload:
    """An uploaded file: where the server stored it and the name the client gave it."""

    path: Path
    name: str
    size: int


class InferenceService:
    """A bounded pool of inference threads and a bounded number of waiting requests.

    A request takes a place (``admit``) before its upload is stored and keeps it until
    its answer is ready, so that at most ``threads + queue`` uploads are on disk or in
    flight at any time; ``run`` executes a job on one of the ``threads`` threads.
    """

    def __init__(self, model: Model, threads: int, queue: int, upload_dir: Path,
                 max_pixels: int = DEFAULT_MAX_PIXELS):
        self.model, self.threads, self.queue = model, threads, queue
        self.upload_dir, self.max_pixels = Path(upload_dir), max_pixels
        self._places = threading.BoundedSemaphore(threads + queue)
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="medge-infer")
        self._job_s = 0.1  # moving average of a job's duration, for Retry-After
        self._lock = threading.Lock()

    def _take_place(self, wait_s: float = 0.0) -> None:
        got = self._places.acquire(timeout=wait_s) if wait_s > 0 else self._places.acquire(blocking=False)
        if not got:
            raise Overloaded(self.retry_after_s())

    @contextmanager
    def admit(self):
        """Hold a place for one request from its upload to its answer; Overloaded when none is free."""
        self._take_place()
        try:
            yield
        finally:
            self._places.release()

    def retry_after_s(self) -> int:
        """Seconds until a full queue has likely drained (at least 1)."""
        return max(1, math.ceil(self._job_s * (self.threads + self.queue) / self.threads))

    def run(self, fn, *args) -> Future:
        """Run ``fn(*args)`` on an inference thread (the caller holds a place from ``admit``)."""
        def timed():
            t0 = time.perf_counter()
            try:
                return fn(*args)
            finally:
                with self._lock:
                    self._job_s = 0.8 * self._job_s + 0.2 * (time.perf_counter() - t0)
        return self._pool.submit(timed)

    def submit(self, fn, *args, wait_s: float = 0.0) -> Future:
        """Take a place (waiting up to ``wait_s``), run ``fn(*args)`` on an inference thread, free the place when done.

        Raises:
            Overloaded: no place freed up in time.
        """
        self._take_place(wait_s)
        try:
            fut = self.run(fn, *args)
        except BaseException:
            self._places.release()
            raise
        fut.add_done_callback(lambda _: self._places.release())
        return fut

    def predict_file(self, path: Path, name: str) -> dict:
        """The record ``medge predict`` writes for this file, naming it ``name`` instead of its server path (a
        multi-label bundle's with each finding's probability, decision and threshold, ``edge.findings``)."""
        pred = self.model.predict([path], batch_size=1, workers=0, max_pixels=self.max_pixels)[0]
        rec = pred.to_record(self.model.sha256, self.model.runtime)
        rec["path"] = name
        if rec.get("error"):  # messages start with the path they were given: name the upload instead
            rec["error"] = rec["error"].replace(os.fspath(path), name)
        return rec

    def new_upload_path(self, name: str) -> Path:
        """A fresh file name in the private upload folder, keeping only a known image suffix of ``name``."""
        suffix = Path(name).suffix.lower()
        suffix = suffix if suffix in IMAGE_SUFFIXES + DICOM_SUFFIXES else ""
        return self.upload_dir / f"upload-{secrets.token_hex(8)}{suffix}"

    def warm_up(self) -> None:
        """Build every inference thread's cv2.dnn net now, so that the first requests do not pay for it."""
        barrier = threading.Barrier(self.threads)

        def build():
            barrier.wait(timeout=60)  # one job per thread: each waits until all threads have one
            self.model.infer(np.zeros((1, *self.model.chw), np.float32))

        for fut in [self._pool.submit(build) for _ in range(self.threads)]:
            fut.result()

    def close(self) -> None:
        """Finish running jobs, drop waiting ones."""
        self._pool.shutdown(wait=True, cancel_futures=True)


def clean_name(name: str | None) -> str:
    """The client's file name as shown in records: control characters removed, length bounded."""
    name = "".join(ch for ch in (name or "") if ch.isprintable()).strip()
    return name[:NAME_MAX_CHARS] or "upload"


def variant_gate(model) -> dict | None:
    """The export gate of the running (engine, variant) pair (None for fp32): what a user must know about it."""
    v = model.bundle.variants.get(model.variant)
    gate = v.gates.get(model.engine) if v is not None else None
    if not gate:
        return None
    more = {k: gate[k] for k in ("decisions", "findings") if k in gate}  # a multi-label bundle's: per finding
    return {**{k: gate.get(k) for k in ("images", "flips", "max_flips", "logit_drift", "top1_agreement",
                                        "max_abs_probability", "validation")}, **more}


def model_info(model: Model) -> dict:
    """What a client may know about the model: the manifest without paths or data-set file names."""
    m = model.manifest
    parity = dict(m.get("parity") or {})
    for key in ("label_flips", "near_threshold", "skipped"):  # lists that name training files: counts only
        if isinstance(parity.get(key), list):
            parity[key] = len(parity[key])
    if isinstance(parity.get("inputs"), str):
        parity["inputs"] = parity["inputs"].split(" of ")[0]  # "val images of /data/..." -> "val images"
    golden = model.bundle.golden(model.engine, model.variant)  # a variant's self-test is against its own gated outputs
    training = m.get("training") or {}
    info = {
        "classes": model.classes,
        "model_sha256": model.sha256,
        "arch": m["model"].get("arch"),
        "created": m.get("created"),
        "synthetic": (m.get("data_profile") or {}).get("synthetic"),  # trained on medge synth data; None: not recorded
        "preprocess": model.preprocess_config.to_dict(),
        "input": {"name": m["model"]["input_name"], "shape": m["model"]["input_shape"], "size": list(model.chw),
                  "dynamic_batch": model.dynamic_batch},
        "opset": m["model"]["opset"],
        "runtime": {"engine": model.engine, "variant": model.variant, "backend": model.backend, "opencv": cv2.__version__,
                    "medge": __version__, "variant_gate": variant_gate(model)},
        "versions": m.get("versions", {}),
        "training": {"epoch": training.get("epoch"), "metrics": training.get("metrics", {})},
        "parity": parity,
        "self_test": {"passed": model.self_test_max_abs is not None and model.self_test_max_abs <= float(golden["tolerance"]),
                      "max_abs_logit": model.self_test_max_abs, "tolerance": float(golden["tolerance"]),
                      "inputs": int(golden["count"])},
        "explain_method": getattr(model, "explain_method", None),
        "operating_point": operating_point_card(m.get("operating_point")),
    }
    point = getattr(model, "findings", None)
    if point is not None:  # a multi-label bundle (edge.findings): its findings instead of one operating point
        info.update(task=MULTILABEL, operating_point=None, findings=findings_card(m.get("operating_point"), point))
    return _finite(info)


FINDING_FIGURES = ("auc", "sensitivity", "specificity", "ppv", "npv", "brier", "ece")  # no scores, truth or ROC


def findings_card(section: dict | None, point) -> dict:
    """A multi-label bundle's findings for the card: per finding its threshold (None: unsupported, with the reason),
    criterion, guarantee, temperature and validation figures; the macro and micro AUC (no per-case scores, no paths).

    Args:
        section: the manifest's sealed multi-label ``operating_point`` section, or None (each finding at 0.5).
        point: the bundle's ``edge.findings.FindingsPoint`` (checked against the section when it was loaded).

    Returns:
        {"calibrated", "findings": [{"name", "threshold", "criterion", "temperature", "temperature_at_bound",
        "guarantee", "supported", "unsupported", "validation"}], "validation": {"cases", "skipped", "macro_auc",
        "micro_auc"}}.
    """
    entries = {e.get("name"): e for e in (section or {}).get("findings") or [] if isinstance(e, dict)}
    findings = []
    for rule in point.findings:
        e = entries.get(rule.name, {})
        v = e.get("validation") or {}
        findings.append({"name": rule.name, "threshold": rule.threshold, "criterion": rule.criterion,
                         "temperature": rule.temperature, "temperature_at_bound": (e.get("calibration") or {}).get("at_bound"),
                         "guarantee": rule.guarantee, "supported": rule.supported, "unsupported": e.get("unsupported"),
                         "validation": {**{k: v.get(k) for k in ("cases", "n_positive", "n_negative", "masked")},
                                        **{k: v[k] for k in FINDING_FIGURES if v.get(k) is not None}}})
    val = (section or {}).get("validation") or {}
    return {"calibrated": point.calibrated, "findings": findings,
            "validation": {k: val.get(k) for k in ("cases", "skipped", "macro_auc", "micro_auc")}}


def operating_point_card(section: dict | None) -> dict | None:
    """The bundle's calibration and operating point with its validation figures (no per-case scores); None: argmax."""
    if not section:
        return None
    v = section.get("validation") or {}
    figures = {k: v[k] for k in ("auc", "sensitivity", "specificity", "ppv", "npv", "brier", "ece") if k in v}
    guarantee = section.get("guarantee")
    return {"positive": section.get("positive"), "threshold": section.get("threshold"),
            "criterion": section.get("criterion"), "temperature": section.get("temperature"),
            "temperature_at_bound": (section.get("calibration") or {}).get("at_bound"),  # None in older bundles too
            "guarantee": guarantee_text(section.get("criterion"), guarantee, "guarantee" in section),
            "supported": guarantee.get("supported") if isinstance(guarantee, dict) else None,
            "validation": {"cases": v.get("cases"), "per_class": v.get("per_class"), **figures}}


def _finite(obj):
    """JSON has no NaN: undefined metrics (an AUC with one class) become null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


async def _chunks(request):
    """The request body, chunk by chunk; UploadRefused when the client stalls (408) or leaves (400)."""
    from starlette.requests import ClientDisconnect

    stream = request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), IDLE_TIMEOUT_S)
        except StopAsyncIteration:
            return
        except asyncio.TimeoutError:
            raise UploadRefused(408, f"no data from the client for {IDLE_TIMEOUT_S:g} s") from None
        except ClientDisconnect:
            raise UploadRefused(400, "the client disconnected during the upload") from None
        if chunk:
            yield chunk


async def drain(request, limit: int) -> None:
    """Read and discard what is left of a refused request's body (up to ``limit`` bytes) so that a
    client still sending its upload reads the answer instead of a reset connection."""
    seen = 0
    try:
        async for chunk in _chunks(request):
            seen += len(chunk)
            if seen > limit:
                return
    except Exception:  # the client left, or stalled: nothing more to do
        return


async def receive_upload(request, service: InferenceService, max_bytes: int) -> Upload:
    """Stream the multipart field ``file`` of ``request`` into the private upload folder.

    Raises:
        UploadRefused: not multipart (415), malformed or truncated multipart (400), no or
            several ``file`` parts (422), larger than ``max_bytes`` (413), a stalled client (408).
    """
    from python_multipart.multipart import MultipartParser, parse_options_header

    boundary = _multipart_boundary(request, max_bytes, parse_options_header)
    part = _FilePart(service, max_bytes, parse_options_header)
    parser = MultipartParser(boundary, part.callbacks())
    try:
        await _feed(request, parser, max_bytes)
        part.check_complete()
        return Upload(part.path, part.name, part.size)
    except BaseException:
        part.discard()
        raise
    finally:
        part.close()


def _multipart_boundary(request, max_bytes: int, parse_options_header) -> bytes:
    """The request's multipart boundary, after the checks its headers allow (415, 400, 413 by Content-Length)."""
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data":
        raise UploadRefused(415, "send the image as multipart/form-data in a field named 'file'")
    boundary = params.get(b"boundary")
    if not boundary or len(boundary) > 200:
        raise UploadRefused(400, "malformed multipart request: no boundary in the Content-Type header")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes + BODY_OVERHEAD:
        raise UploadRefused(413, f"upload of {int(declared) / 2**20:.1f} MB is over the limit of {max_bytes / 2**20:g} MB")
    return boundary


async def _feed(request, parser, max_bytes: int) -> None:
    """The body into the multipart parser, chunk by chunk, counted against the limit."""
    from python_multipart.exceptions import MultipartParseError

    total = 0
    async for chunk in _chunks(request):
        total += len(chunk)
        if total > max_bytes + BODY_OVERHEAD:
            raise UploadRefused(413, f"upload is over the limit of {max_bytes / 2**20:g} MB")
        try:
            parser.write(chunk)
        except MultipartParseError as e:
            raise UploadRefused(400, f"malformed multipart request: {e}") from None


class _FilePart:
    """The multipart parser's callbacks: the first ``file`` part goes to a new file of the upload folder
    (named by the server), the other parts are counted and dropped."""

    def __init__(self, service: InferenceService, max_bytes: int, parse_options_header):
        self._service, self._max_bytes, self._parse_options_header = service, max_bytes, parse_options_header
        self._headers: list = []
        self._field, self._value = b"", b""
        self._current_is_file = False
        self.files, self.ended = 0, False
        self.fh, self.path, self.name = None, None, None
        self.size, self.complete = 0, False

    def callbacks(self) -> dict:
        return {"on_header_field": self.on_header_field, "on_header_value": self.on_header_value,
                "on_header_end": self.on_header_end, "on_headers_finished": self.on_headers_finished,
                "on_part_data": self.on_part_data, "on_part_end": self.on_part_end, "on_end": self.on_end}

    def on_header_field(self, data, start, end):
        self._field += data[start:end]

    def on_header_value(self, data, start, end):
        self._value += data[start:end]

    def on_header_end(self):
        self._headers.append((self._field.lower(), self._value))
        self._field, self._value = b"", b""

    def on_headers_finished(self):
        disposition = dict(self._headers).get(b"content-disposition", b"")
        _, opts = self._parse_options_header(disposition)
        self._headers = []
        is_file = opts.get(b"name") == b"file" and b"filename" in opts
        if is_file:
            self.files += 1
            if self.files == 1:
                self.name = clean_name(opts[b"filename"].decode("utf-8", "replace"))
                self.path = self._service.new_upload_path(self.name)
                self.fh = open(self.path, "xb")  # noqa: SIM115 (closed by close() or discard(), whatever happens)
        self._current_is_file = is_file and self.files == 1

    def on_part_data(self, data, start, end):
        if self._current_is_file:
            self.size += end - start
            if self.size > self._max_bytes:
                raise UploadRefused(413, f"upload is over the limit of {self._max_bytes / 2**20:g} MB")
            self.fh.write(data[start:end])

    def on_part_end(self):
        if self._current_is_file:
            self.complete = True
        self._current_is_file = False

    def on_end(self):
        self.ended = True

    def check_complete(self) -> None:
        """UploadRefused unless the body held exactly one whole ``file`` part and ended properly."""
        if not self.ended:
            raise UploadRefused(400, "malformed multipart request: the body ends before the closing boundary")
        if self.files == 0:
            raise UploadRefused(422, "no file in the request: send the image in a multipart field named 'file'")
        if self.files > 1:
            raise UploadRefused(422, f"{self.files} files in one request: send one file per request")
        if not self.complete:
            raise UploadRefused(400, "malformed multipart request: the file part is incomplete")

    def discard(self) -> None:
        """Close and delete a file written so far (the upload failed)."""
        if self.fh is not None:
            self.fh.close()
            self.fh = None
            self.path.unlink(missing_ok=True)

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()


PREDICT_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": ["file"],
            "properties": {"file": {"type": "string", "format": "binary",
                                    "description": "PNG, JPEG, TIFF, BMP or DICOM file"}}}}},
    },
    "responses": {
        "200": {"description": "the record medge predict writes for this file (path = the uploaded file name)"},
        "413": {"description": "upload over --max-upload-mb"},
        "422": {"description": "an input medge refuses: {detail: reason, record: the record with its error}"},
        "503": {"description": "all inference threads and queue places are taken: retry after Retry-After seconds"},
    },
}


def create_api(service: InferenceService, max_upload_mb: float):
    """The FastAPI app with /healthz, /api/v1/model, /api/v1/predict and /docs (the page is mounted on it later).

    Args:
        service: the inference service (model, pool, upload folder).
        max_upload_mb: uploads over this size are answered 413.
    """
    from fastapi import Request
    from fastapi.responses import JSONResponse
    from fastapi_offline import FastAPIOffline  # /docs from local files: the edge box is offline

    model = service.model
    max_bytes = int(max_upload_mb * 2**20)
    drain_bytes = 2 * max_bytes + BODY_OVERHEAD
    app = FastAPIOffline(title="medge serve", version=__version__, redoc_url=None, favicon_url="/favicon.ico",
                  description=f"Grayscale medical image classifier {model.sha256[:12]} on the medge edge runtime "
                              "(numpy + OpenCV). Every answer carries the model's SHA-256.")
    info = model_info(model)

    @app.get("/healthz", tags=["service"], summary="200 once the model is loaded and verified")
    def healthz() -> dict:
        return {"status": "ok", "model_sha256": model.sha256}

    @app.get("/api/v1/model", tags=["model"], summary="classes, SHA-256, preprocessing, versions, metrics, parity")
    def model_card() -> dict:
        return info

    @app.post("/api/v1/predict", tags=["model"], summary="classify one image or DICOM file",
              openapi_extra=PREDICT_OPENAPI)
    async def predict(request: Request):
        t0 = time.perf_counter()
        try:
            with service.admit():
                upload = None
                try:
                    upload = await receive_upload(request, service, max_bytes)
                    rec = await asyncio.wrap_future(service.run(service.predict_file, upload.path, upload.name))
                finally:
                    if upload is not None:
                        upload.path.unlink(missing_ok=True)
        except Overloaded as e:
            await drain(request, drain_bytes)
            _log_request("predict", 503, t0, "overloaded")
            return JSONResponse({"detail": str(e)}, 503, headers={"Retry-After": str(e.retry_after_s)})
        except UploadRefused as e:
            if e.status != 408:
                await drain(request, drain_bytes)
            _log_request("predict", e.status, t0, "upload refused")
            return JSONResponse({"detail": e.reason}, e.status)
        if rec["error"] is not None:
            _log_request("predict", 422, t0, "input refused")
            return JSONResponse({"detail": rec["error"], "record": rec}, 422)
        _log_request("predict", 200, t0, None)
        return JSONResponse(rec)

    return app


def _log_request(route: str, status: int, t0: float, kind: str | None) -> None:
    log.info("%s %d %.1f ms%s", route, status, 1000 * (time.perf_counter() - t0), f" ({kind})" if kind else "")
