"""The web page of ``medge serve`` (Gradio): classify dropped files, a batch tab, the model card.

For each file the page shows the record ``medge predict`` writes (label, class
probabilities, timings), the preprocessing stages as ``medge preview`` draws them, and
a heatmap when the model has one (``Model.explain``, for bundles whose
manifest names a method). Results are HTML with the pictures inline (data: URLs) and
the batch downloads are data: URLs too, so nothing derived from a patient's image is
ever written to the server's disk; the uploads Gradio stores (in the server's private
folder) are deleted as soon as they are classified.

Gradio is imported inside ``build_page`` (extra ``serve``).
"""

import base64
import html
import io
import json
import logging
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from medge.edge.apps.records import RecordWriter
from medge.edge.apps.serve.api import InferenceService, Overloaded, model_info
from medge.edge.apps.serve.figures import (
    findings_html,
    operating_point_figure_rows,
    parity_rows,
    rules_differ_html,
    training_html,
)
from medge.edge.apps.serve.texts import TEXT, pick_language
from medge.edge.errors import MedgeError
from medge.edge.findings import MULTILABEL
from medge.edge.golive.wording import number_text
from medge.edge.inputs.image import load_image
from medge.edge.preview import render_preview

log = logging.getLogger("medge.serve")

DETAIL_MAX_FILES = 24  # files shown with pictures on the Classify tab; the Batch tab takes any number
EMPTY_FILE_AGE_S = 60.0  # an empty file this old in Gradio's folder is no upload in progress
PAGE_WAIT_S = 60.0  # how long a page request waits for a free inference place before saying "busy"
FONTS = ("ui-sans-serif", "system-ui", "Noto Sans KR", "Malgun Gothic", "Apple SD Gothic Neo", "sans-serif")
CSS = """
.medge-card {border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 12px; margin: 0 0 12px 0;}
.medge-card h3 {margin: 0 0 6px 0; word-break: break-all;}
.medge-label {font-size: 1.25em; margin: 4px 0;}
.medge-refused {color: #b00020;}
.medge-bar {background: var(--color-accent); height: 12px; border-radius: 3px;}
.medge-probs td, .medge-table td, .medge-table th, .medge-kv td {padding: 2px 8px; vertical-align: top;}
.medge-pictures {display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start;}
.medge-pictures figure {margin: 0;}
.medge-pictures img {max-width: 100%; height: auto; image-rendering: auto;}
.medge-timings {color: var(--body-text-color-subdued); font-size: 0.9em;}
.medge-downloads a {margin-right: 16px; font-weight: 600;}
.medge-probs {min-width: 420px; border-collapse: collapse;}
/* the uploads are deleted once classified: no download links to them */
#medge-files td.download, #medge-batch-files td.download {display: none;}
"""


@dataclass
class PageResult:
    """One file's result on the page: the record and, on the Classify tab, its pictures."""

    record: dict
    stages_png: bytes | None = None
    heatmap_png: bytes | None = None
    heatmap_note: tuple[str, str] | None = None  # (class, method)
    heatmap_error: str | None = None  # why the heatmap could not be drawn
    stages_error: str | None = None  # why the preprocessing stages could not be drawn
    extra_ms: dict[str, float] = field(default_factory=dict)  # heatmap, total
    busy_s: int | None = None  # not classified: the server was busy; retry after this many seconds


def _png(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise MedgeError("cannot encode a PNG")
    return buf.tobytes()


def explain_supported(model) -> bool:
    """Whether this model can draw heatmaps: ``Model.explain`` exists and the bundle names a method."""
    return callable(getattr(model, "explain", None)) and bool(getattr(model, "explain_method", None))


def analyze(service: InferenceService, path: Path, name: str, pictures: bool) -> PageResult:
    """Classify one uploaded file (on an inference thread); with ``pictures`` also draw its stages and heatmap.

    The record is exactly the API's; a picture that cannot be drawn is reported on the card
    and never costs the file its result.
    """
    result = PageResult(service.predict_file(path, name))
    if not pictures or result.record["error"] is not None:
        return result
    model = service.model
    try:
        image, info = load_image(path, service.max_pixels)
        result.stages_png = _png(render_preview(image, model.preprocess_config, info.display_range))
    except Exception as err:  # the file was just classified, so this is unexpected
        result.stages_error = _reason(err, path, name)
        return result
    if explain_supported(model):
        t0 = time.perf_counter()
        try:
            e = model.explain(path, max_pixels=service.max_pixels)  # read as predict reads it (DICOM window)
            result.heatmap_png = _png(e.overlay())
            result.heatmap_note = (model.classes[e.class_index], e.method)
        except Exception as err:
            result.heatmap_error = _reason(err, path, name)
        result.extra_ms["heatmap"] = 1000 * (time.perf_counter() - t0)
    return result


def _reason(err: Exception, path: Path, name: str) -> str:
    text = str(err) if isinstance(err, MedgeError) else f"unexpected {type(err).__name__}: {err}"
    return text.replace(os.fspath(path), name)


class Page:
    """The page's handlers, bound to one inference service and Gradio's private upload folder."""

    def __init__(self, service: InferenceService, gradio_dir: Path):
        self.service, self.gradio_dir = service, Path(gradio_dir).resolve()
        self.info = model_info(service.model)

    def _uploads(self, files) -> list[tuple[Path | None, str]]:
        """(path, name) per uploaded file; path None for anything outside Gradio's upload folder."""
        out = []
        for f in files or []:
            p = Path(f if isinstance(f, (str, os.PathLike)) else getattr(f, "path", "") or "")
            name = p.name
            try:
                inside = p.resolve().is_relative_to(self.gradio_dir) and p.is_file()
            except OSError:
                inside = False
            out.append((p if inside else None, name))
        return out

    def _delete(self, uploads) -> None:
        for p, _ in uploads:
            if p is None:
                continue
            p.unlink(missing_ok=True)
            try:
                p.parent.rmdir()  # Gradio keeps each upload in a folder of its own
            except OSError:
                pass
        # Gradio's upload route leaves an empty temporary file per upload; sweep the old ones.
        cutoff = time.time() - EMPTY_FILE_AGE_S
        for f in self.gradio_dir.iterdir():
            try:
                st = f.lstat()
                if stat.S_ISREG(st.st_mode) and st.st_size == 0 and st.st_mtime < cutoff:
                    f.unlink()
            except OSError:
                continue

    def _run(self, uploads, pictures: bool, progress=None) -> list[PageResult]:
        """Classify every upload through the shared service, ``threads`` at a time, in order."""
        results: list[PageResult | None] = [None] * len(uploads)
        pending: list[tuple[int, float, object]] = []

        def collect(i, t0, fut):
            try:
                res = fut.result()
                res.extra_ms["total"] = 1000 * (time.perf_counter() - t0)
            except Overloaded as e:
                res = _busy_result(uploads[i][1], self.service, e.retry_after_s)
            except Exception as e:  # a bug: this file gets an error, the others their results
                log.warning("page job failed: %s", type(e).__name__)
                res = PageResult(_refused_record(uploads[i][1], self.service, f"{uploads[i][1]}: unexpected {type(e).__name__}"))
            results[i] = res
            if progress is not None:
                progress((sum(r is not None for r in results), len(uploads)))

        for i, (path, name) in enumerate(uploads):
            if path is None:
                results[i] = PageResult(_refused_record(name, self.service, f"{name}: not an uploaded file"))
                continue
            while len(pending) >= self.service.threads:
                collect(*pending.pop(0))
            t0 = time.perf_counter()
            try:
                fut = self.service.submit(analyze, self.service, path, name, pictures, wait_s=PAGE_WAIT_S)
            except Overloaded as e:
                results[i] = _busy_result(name, self.service, e.retry_after_s)
                continue
            pending.append((i, t0, fut))
        for item in pending:
            collect(*item)
        return results

    def classify(self, files, request) -> str:
        """Classify tab: a card per file with label, probabilities, stages, heatmap and timings."""
        lang = _lang(request)
        uploads = self._uploads(files)
        try:
            t0 = time.perf_counter()
            shown = uploads[:DETAIL_MAX_FILES]
            results = self._run(shown, pictures=True)
            _log_page("classify", results, t0)
        finally:
            self._delete(uploads)
        parts = [result_card(r, lang) for r in results]
        if len(uploads) > len(shown):
            names = ", ".join(n for _, n in uploads[len(shown):])
            note = TEXT[lang]["too_many"].format(shown=len(shown), total=len(uploads), names=names)
            parts.insert(0, f'<p class="medge-refused">{_e(note)}</p>')
        return "".join(parts)

    def batch(self, files, request, progress=None) -> str:
        """Batch tab: every file classified; a summary, a table and CSV/JSONL downloads."""
        lang = _lang(request)
        uploads = self._uploads(files)
        try:
            t0 = time.perf_counter()
            results = self._run(uploads, pictures=False, progress=progress)
            _log_page("batch", results, t0)
        finally:
            self._delete(uploads)
        model = self.service.model
        return _batch_html(results, model.classes, lang, getattr(model, "findings", None) is not None)

    def card(self, request) -> tuple[str, str]:
        """The header line and the model card, in the request's language."""
        lang = _lang(request)
        return _header_html(self.info, lang), card_html(self.info, lang)


def _lang(request) -> str:
    headers = getattr(request, "headers", None) or {}
    return pick_language(headers.get("accept-language"))


def _refused_record(name: str, service: InferenceService, reason: str) -> dict:
    """A record for a file the page could not classify (the keys of ``Prediction.to_record``; a multi-label
    bundle's with its findings' thresholds and no decisions)."""
    rec = {"path": name, "label": None, "probabilities": None, "model_sha256": service.model.sha256,
           "timings_ms": {}, "error": reason}
    point = getattr(service.model, "findings", None)
    if point is not None:
        rec.update(task=MULTILABEL, decisions=None, thresholds=point.thresholds, positive_findings=None,
                   any_positive=None)
    return rec


def _busy_result(name: str, service: InferenceService, retry_after_s: int) -> PageResult:
    return PageResult(_refused_record(name, service, f"{name}: the server is busy; retry in {retry_after_s} s"),
                      busy_s=retry_after_s)


def _log_page(what: str, results: list[PageResult], t0: float) -> None:
    failed = sum(r.record["error"] is not None for r in results)
    log.info("page %s: %d file(s), %d refused, %.1f ms", what, len(results), failed, 1000 * (time.perf_counter() - t0))


def _e(text) -> str:
    """HTML-escape, and also the characters Gradio's HTML templates would read as template syntax."""
    return html.escape(str(text)).replace("{", "&#123;").replace("}", "&#125;").replace("$", "&#36;")


def _img(png: bytes, alt: str) -> str:
    return f'<img src="data:image/png;base64,{base64.b64encode(png).decode()}" alt="{_e(alt)}">'


def result_card(r: PageResult, lang: str) -> str:
    """One file's card on the Classify tab (HTML, every value escaped)."""
    t, rec = TEXT[lang], r.record
    name = rec["path"]
    if rec["error"] is not None:
        reason = t["busy"].format(seconds=r.busy_s) if r.busy_s else rec["error"]
        return (f'<div class="medge-card medge-result" data-file="{_e(name)}" data-error="1"><h3>{_e(name)}</h3>'
                f'<p class="medge-refused"><b>{_e(t["refused"])}:</b> <span class="medge-error">{_e(reason)}</span></p></div>')
    if rec.get("task") == MULTILABEL:
        return _findings_card(r, t)
    probs = rec["probabilities"]
    top = probs[rec["label"]]
    rows = "".join(
        f'<tr><td>{_e(c)}</td><td style="width:60%"><div class="medge-bar" style="width:{100 * p:.1f}%"></div></td>'
        f'<td class="medge-p" data-class="{_e(c)}">{p:.4f}</td></tr>' for c, p in probs.items())
    pictures, timing_text = _pictures_and_timings(r, t)
    return (f'<div class="medge-card medge-result" data-file="{_e(name)}" data-label="{_e(rec["label"])}">'
            f'<h3>{_e(name)}</h3><p class="medge-label">{_e(t["label"])}: <b class="medge-label-value">{_e(rec["label"])}</b>'
            f' ({top:.4f})</p>{_warnings_html(rec, t)}<table class="medge-probs"><caption style="text-align:left">'
            f'{_e(t["probabilities"])}</caption>{rows}</table><div class="medge-pictures">{pictures}</div>'
            f'<p class="medge-timings">{_e(t["timings"])}: {_e(timing_text)}</p></div>')


def _warnings_html(rec: dict, t: dict) -> str:
    warn = rec.get("warnings") or []
    return (f'<p class="medge-refused"><b>{_e(t["warnings"])}:</b> {_e("; ".join(map(str, warn)))}</p>'
            if warn else "")


def _decision_text(decided: bool | None, t: dict) -> str:
    return t["not_decided"] if decided is None else t["present" if decided else "absent"]


def _findings_card(r: PageResult, t: dict) -> str:
    """The card of a multi-label bundle's result (``edge.findings``): per finding its calibrated probability,
    threshold and decision (an undecided one marked so), the positive findings and the exam-level flag."""
    rec = r.record
    name, probs, thresholds, decisions = rec["path"], rec["probabilities"], rec["thresholds"], rec["decisions"]
    rows = "".join(
        f'<tr class="medge-finding" data-finding="{_e(c)}" data-decision="{_e(_decision_attr(decisions[c]))}"><td>{_e(c)}</td>'
        f'<td style="width:45%"><div class="medge-bar" style="width:{100 * p:.1f}%"></div></td>'
        f'<td class="medge-p" data-class="{_e(c)}">{p:.4f}</td>'
        f'<td class="medge-threshold">{_e("n/a" if thresholds[c] is None else f"{thresholds[c]:.4g}")}</td>'
        f'<td class="medge-decision">{_e(_decision_text(decisions[c], t))}</td></tr>' for c, p in probs.items())
    head = "".join(f"<th>{_e(h)}</th>" for h in (t["finding"], "", t["probability"], t["threshold"], t["decision"]))
    positive = ", ".join(rec["positive_findings"]) or t["no_finding"]
    pictures, timing_text = _pictures_and_timings(r, t)
    flag = "1" if rec["any_positive"] else "0"
    return (f'<div class="medge-card medge-result" data-file="{_e(name)}" data-label="{_e(rec["label"])}" '
            f'data-any-positive="{flag}"><h3>{_e(name)}</h3>'
            f'<p class="medge-label">{_e(t["positive_findings"])}: <b class="medge-label-value">{_e(positive)}</b></p>'
            f'<p class="medge-any-positive">{_e(t["any_positive"])}: <b>{_e(t["yes" if rec["any_positive"] else "no"])}'
            f'</b></p>{_warnings_html(rec, t)}<table class="medge-probs medge-findings"><caption style="text-align:left">'
            f'{_e(t["finding_probabilities"])}</caption><thead><tr>{head}</tr></thead>{rows}</table>'
            f'<p class="medge-timings">{_e(t["findings_rule"])}</p><div class="medge-pictures">{pictures}</div>'
            f'<p class="medge-timings">{_e(t["timings"])}: {_e(timing_text)}</p></div>')


def _decision_attr(decided: bool | None) -> str:
    return "undecided" if decided is None else "present" if decided else "absent"


def _pictures_and_timings(r: PageResult, t: dict) -> tuple[str, str]:
    """A result's pictures (stages, heatmap, or why not) as HTML, and its timings as text."""
    rec = r.record
    pictures = ""
    if r.stages_png:
        pictures += f'<figure>{_img(r.stages_png, t["stages"])}<figcaption>{_e(t["stages"])}</figcaption></figure>'
    elif r.stages_error:
        pictures += f'<p class="medge-timings">{_e(t["stages_failed"].format(reason=r.stages_error))}</p>'
    if r.heatmap_png:
        cls, method = r.heatmap_note
        pictures += (f'<figure class="medge-heatmap">{_img(r.heatmap_png, t["heatmap"])}<figcaption>{_e(t["heatmap"])}: '
                     f'{_e(t["heatmap_note"].format(cls=cls, method=method))}</figcaption></figure>')
    elif r.heatmap_error:
        pictures += f'<p class="medge-timings">{_e(t["heatmap_failed"].format(reason=r.heatmap_error))}</p>'
    timings = {**rec["timings_ms"], **r.extra_ms}
    keys = [("read", "read"), ("preprocess", "preprocess"), ("inference", "inference"), ("heatmap", "heatmap_ms"),
            ("total", "total")]
    return pictures, " · ".join(f"{t[label]} {timings[k]:.1f} ms" for k, label in keys if k in timings)


def _data_url(text: str, mime: str) -> str:
    return f"data:{mime};charset=utf-8;base64,{base64.b64encode(text.encode()).decode()}"


def records_as(records: list[dict], fmt: str, classes: list[str], multilabel: bool = False) -> str:
    """The records as ``medge predict`` writes them (jsonl or csv; ``multilabel``: a multi-label bundle's columns)."""
    buf = io.StringIO(newline="")
    writer = RecordWriter(buf, fmt, classes, multilabel=multilabel)
    for rec in records:
        writer.write(rec)
    return buf.getvalue()


def _batch_html(results: list[PageResult], classes: list[str], lang: str, multilabel: bool = False) -> str:
    t = TEXT[lang]
    records = [r.record for r in results]
    failed = sum(r["error"] is not None for r in records)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    links = (f'<p class="medge-downloads"><a class="medge-csv" download="medge-{stamp}.csv" '
             f'href="{_data_url(records_as(records, "csv", classes, multilabel), "text/csv")}">{_e(t["download_csv"])}</a>'
             f'<a class="medge-jsonl" download="medge-{stamp}.jsonl" '
             f'href="{_data_url(records_as(records, "jsonl", classes), "application/x-ndjson")}">'
             f'{_e(t["download_jsonl"])}</a></p>')
    flag = [t["any_positive"]] if multilabel else []
    head = "".join(f"<th>{_e(c)}</th>" for c in [t["file"], t["label"], *classes, *flag, t["error"]])
    rows = []
    for res in results:
        r, p = res.record, res.record["probabilities"] or {}
        error = t["busy"].format(seconds=res.busy_s) if res.busy_s else r["error"] or ""
        if multilabel:  # each finding's probability and decision, then the exam-level flag
            d = r.get("decisions") or {}
            probs = [f"{p[c]:.4f} {_decision_text(d.get(c), t)}" if c in p else "" for c in classes]
            flag = [] if r.get("any_positive") is None else [t["yes" if r["any_positive"] else "no"]]
            cells = [r["path"], r["label"] or "", *probs, *(flag or [""]), error]
        else:
            cells = [r["path"], r["label"] or "", *[f"{p[c]:.4f}" if c in p else "" for c in classes], error]
        rows.append("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>")
    summary = t["summary"].format(total=len(records), ok=len(records) - failed, failed=failed)
    return (f'<p class="medge-summary" data-total="{len(records)}" data-failed="{failed}">{_e(summary)}</p>{links}'
            f'<table class="medge-table"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>')


def _header_html(info: dict, lang: str) -> str:
    t = TEXT[lang]
    st = info["self_test"]
    status = t["self_test_passed" if st["passed"] else "self_test_failed"].format(
        worst=st["max_abs_logit"] if st["max_abs_logit"] is not None else float("nan"), tol=st["tolerance"], n=st["inputs"])
    return (f'<div id="medge-header"><h2 style="margin:0">{_e(t["title"])}</h2><p>{_e(t["model"])} {_e(info["arch"] or "")} · '
            f'{_e(t["findings" if info.get("findings") else "classes"])}: {_e(", ".join(info["classes"]))} · {_e(t["sha256"])} '
            f'<code>{_e(info["model_sha256"][:16])}…</code> · {_e(t["self_test"])}: {_e(status)}</p>'
            f'<p class="medge-timings">{_e(t["privacy"])}</p></div>')


def _gate_text(gate: dict | None, t: dict) -> str:
    """The running variant's gate in a few words ("" for fp32, the exported model)."""
    if not gate:
        return ""
    return t["variant_gate"].format(flips=gate["flips"], images=gate.get("decisions") or gate["images"],
                                    drift=gate["logit_drift"]["max"])


def _kv(rows) -> str:
    return '<table class="medge-kv">' + "".join(f"<tr><td><b>{_e(k)}</b></td><td>{v}</td></tr>" for k, v in rows) + "</table>"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items())
    if isinstance(v, list):
        return json.dumps(v)
    return "n/a" if v is None else str(v)


def card_html(info: dict, lang: str) -> str:
    """The model card (HTML, every value escaped): identity, runtime, self-test, operating point, metrics, parity."""
    t = TEXT[lang]
    st = info["self_test"]
    status = t["self_test_passed" if st["passed"] else "self_test_failed"].format(
        worst=st["max_abs_logit"] if st["max_abs_logit"] is not None else float("nan"), tol=st["tolerance"], n=st["inputs"])
    rt = info["runtime"]
    main = _kv([
        (t["findings" if info.get("findings") else "classes"], _e(", ".join(info["classes"]))),
        (t["sha256"], f'<code id="medge-sha256">{_e(info["model_sha256"])}</code>'),
        (t["architecture"], _e(info["arch"] or "n/a")),
        (t["input"], _e(f'{info["input"]["name"]} {info["input"]["shape"]}')),
        (t["created"], _e(info["created"] or "n/a")),
        (t["training_data"], _e(t["training_data_" + {True: "synthetic", False: "real"}.get(info.get("synthetic"), "unknown")])),
        (t["opencv"], _e(f'{rt["opencv"]} (medge {rt["medge"]})')),
        (t["engine"], _e(f'{rt["engine"]} / {rt.get("variant", "fp32")} / {rt["backend"]}'
                         + _gate_text(rt.get("variant_gate"), t))),
        (t["self_test"], f'<span id="medge-self-test">{_e(status)}</span>'),
        (t["heatmap_method"], _e(info["explain_method"] or t["none"])),
        (t["preprocessing"], _e(_fmt(info["preprocess"]))),
    ])
    parity = info["parity"] or {}
    verdict = t["parity_passed"] if parity.get("passed") else t["parity_failed"]
    versions = _kv([(k, _e(v)) for k, v in (info["versions"] or {}).items()])
    point = (f'<h3>{_e(t["findings_card"])}</h3>{findings_html(info["findings"], t)}' if info.get("findings") else
             f'<h3>{_e(t["operating_point"])}</h3>{_operating_point_html(info, t)}')
    return (f'<div id="medge-model-card">{main}{point}'
            f'<h3>{_e(t["training_metrics"])}</h3>{training_html(info["training"], info["classes"], t)}'
            f'<h3>{_e(t["parity"])}</h3>{_kv([(t["verdict"], _e(verdict)), *parity_rows(parity, t)])}'
            f'<h3>{_e(t["versions"])}</h3>{versions}</div>')


def _temperature_text(op: dict, t: dict) -> str:
    """The temperature, and when its fit stopped at an end of its range, saying so."""
    capped = t.get(f"temperature_capped_{op.get('temperature_at_bound')}")
    return number_text(op["temperature"]) + (f" ({capped.format(temperature=op['temperature'])})" if capped else "")


def _operating_point_html(info: dict, t: dict) -> str:
    """The bundle's threshold and calibration with its validation figures (95% CIs), or that it labels by argmax."""
    op = info.get("operating_point")
    if not op:
        return f'<p id="medge-operating-point">{_e(t["argmax_uncalibrated"])}</p>'
    v = op["validation"]
    threshold = op.get("threshold") is not None
    rows = [(t["decision_rule"], _e(t["threshold_rule"].format(positive=op["positive"],
                                                               threshold=number_text(op["threshold"]),
                                                               criterion=op["criterion"]))
             if threshold else _e(t["argmax"])),
            (t["guarantee"], _e(op.get("guarantee") or "")),
            (t["temperature"], _e(_temperature_text(op, t))),
            (t["validation_cases"], _e(t["validation_cases_value"].format(cases=v.get("cases"),
                                                                          per_class=_fmt(v.get("per_class")))))]
    rows += operating_point_figure_rows(v, t)
    rows += [(t["rules_differ"], rules_differ_html(op, t))] if threshold else []
    return f'<div id="medge-operating-point">{_kv(rows)}</div>'


def build_page(service: InferenceService, gradio_dir: Path, queue: int):
    """The Gradio Blocks of the page and the keyword arguments ``gr.mount_gradio_app`` needs for it.

    Args:
        service: the inference service shared with the API.
        gradio_dir: Gradio's upload folder (GRADIO_TEMP_DIR), private to this server.
        queue: requests allowed to wait in Gradio's queue.
    """
    import gradio as gr

    page = Page(service, gradio_dir)
    i18n = gr.I18n(**{lang: TEXT[lang] for lang in TEXT})
    with gr.Blocks(title="medge", analytics_enabled=False, delete_cache=(300, 600)) as blocks:
        header = gr.HTML(elem_id="medge-header-box", js_on_load=None)
        with gr.Tabs():
            with gr.Tab(i18n("tab_classify"), id="classify"):
                files = gr.File(label=i18n("drop_files"), file_count="multiple", type="filepath", elem_id="medge-files")
                results = gr.HTML(elem_id="medge-results", js_on_load=None)
            with gr.Tab(i18n("tab_batch"), id="batch"):
                gr.Markdown(i18n("batch_help"))
                batch_files = gr.File(label=i18n("drop_batch"), file_count="multiple", type="filepath",
                                      elem_id="medge-batch-files")
                batch_out = gr.HTML(elem_id="medge-batch", js_on_load=None)
            with gr.Tab(i18n("tab_model"), id="model"):
                card = gr.HTML(elem_id="medge-card", js_on_load=None)

        def classify(files, request: gr.Request):
            return page.classify(files, request)

        def batch(files, request: gr.Request, progress=gr.Progress()):  # noqa: B008 (Gradio's way to ask for progress)
            return page.batch(files, request, progress)

        def card_load(request: gr.Request):
            return page.card(request)

        limit = service.threads
        blocks.load(card_load, None, [header, card], show_progress="hidden")
        files.upload(classify, files, results, concurrency_limit=limit, show_progress="minimal")
        files.clear(lambda: "", None, results, show_progress="hidden")
        batch_files.upload(batch, batch_files, batch_out, concurrency_limit=limit)
        batch_files.clear(lambda: "", None, batch_out, show_progress="hidden")
    blocks.queue(max_size=max(1, queue), default_concurrency_limit=limit)
    theme = gr.themes.Default(font=(gr.themes.LocalFont("Source Sans Pro"), *FONTS),
                              font_mono=(gr.themes.LocalFont("IBM Plex Mono"), "ui-monospace", "monospace"))
    mount_kwargs = {"i18n": i18n, "theme": theme, "css": CSS, "footer_links": ["settings"], "run_history": False,
                    "ssr_mode": False, "mcp_server": False, "enable_monitoring": False, "pwa": False,
                    "show_error": False}
    return blocks, mount_kwargs
