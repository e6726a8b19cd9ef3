"""medge serve without a running server: options, the inference service's bounds, the guard, the texts.

The server itself, its API under many concurrent clients and its page in a real browser
are tested in test_serve_live.py.
"""
import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import replace
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

import medge
from medge.edge.apps.cli import main
from medge.edge.apps.serve import ServeConfig
from medge.edge.apps.serve.api import InferenceService, Overloaded, clean_name, model_info
from medge.edge.apps.serve.guard import TOKEN_COOKIE, Guard, host_name
from medge.edge.apps.serve.page import analyze, result_card
from medge.edge.apps.serve.texts import TEXT, pick_language
from medge.edge.errors import ConfigError, UsageError
from medge.edge.inputs.image import read_image, write_image
from medge.edge.model import Model
from medge.edge.preview import render_preview
from tests.conftest import xray_like

TOKEN = "s3cret-token_0123456789"


def test_other_addresses_need_a_token_or_insecure(capsys):
    assert ServeConfig(host="127.0.0.1").loopback and ServeConfig(host="localhost").loopback
    assert ServeConfig(host="::1").loopback
    with pytest.raises(UsageError, match="give --token"):
        ServeConfig(host="0.0.0.0")
    assert not ServeConfig(host="0.0.0.0", token=TOKEN).loopback
    assert ServeConfig(host="0.0.0.0", insecure=True).insecure
    with pytest.raises(UsageError, match="at least 16"):
        ServeConfig(token="short")
    with pytest.raises(UsageError, match="only letters"):
        ServeConfig(token="spaces are not allowed in it")
    with pytest.raises(ConfigError, match="--port"):
        ServeConfig(port=70000)
    # Through the command: exit 2 before any bundle is read or anything listens.
    assert main(["serve", "--model", "nowhere", "--host", "0.0.0.0"]) == 2
    assert "give --token" in capsys.readouterr().err


def test_bad_bundle_exits_2_before_listening(tmp_path, capsys):
    assert main(["serve", "--model", str(tmp_path), "--port", "0"]) == 2
    assert "no model.json manifest" in capsys.readouterr().err


def test_token_file(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.write_text("")
    assert main(["serve", "--model", str(tmp_path), "--token-file", str(empty)]) == 2
    assert "cannot read a token" in capsys.readouterr().err
    assert main(["serve", "--model", str(tmp_path), "--token-file", str(empty), "--token", TOKEN]) == 2
    assert "not both" in capsys.readouterr().err


BLOCK_GRADIO = (
    "import sys\n"
    "for m in ('gradio', 'fastapi', 'uvicorn', 'fastapi_offline'): sys.modules[m] = None  # as if not installed\n"
    "from medge.edge.apps.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def test_without_the_extra_exits_2_naming_it(bundle, tmp_path):
    res = subprocess.run([sys.executable, "-c", BLOCK_GRADIO, "serve", "--model", str(bundle), "--port", "0"],
                         capture_output=True, text=True, timeout=120, env={"TMPDIR": str(tmp_path), "PATH": ""})
    assert res.returncode == 2, res.stderr
    assert "needs the 'serve' extra" in res.stderr and "pip install" in res.stderr
    # the private folder is removed again (other libraries may leave their own files: onnxruntime writes .ses)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("medge-serve-")]


@pytest.fixture(scope="module")
def model(bundle):
    return Model.load(bundle)


def test_the_service_bounds_waiting_and_running_jobs(model, tmp_path):
    service = InferenceService(model, threads=1, queue=1, upload_dir=tmp_path)
    release = threading.Event()
    try:
        running = service.submit(release.wait, 30)  # holds the only thread
        with service.admit():  # the one queue place
            with pytest.raises(Overloaded) as info:
                service.submit(lambda: None)
            assert info.value.retry_after_s >= 1
            with pytest.raises(Overloaded):
                with service.admit():
                    pass
            with pytest.raises(Overloaded):
                service.submit(lambda: None, wait_s=0.05)  # waited, nothing freed up
        late = service.submit(lambda: "done", wait_s=30)  # the queue place is free again
        release.set()
        assert running.result(timeout=30) is True and late.result(timeout=30) == "done"
    finally:
        release.set()
        service.close()


def test_records_name_the_upload_never_the_server_path(model, tmp_path):
    service = InferenceService(model, threads=1, queue=0, upload_dir=tmp_path)
    try:
        path = service.new_upload_path("../../etc/흉부 X.PNG")
        assert path.parent == tmp_path and path.suffix == ".png" and "etc" not in path.name
        assert service.new_upload_path("scan").suffix == "" and service.new_upload_path("a.exe").suffix == ""
        path.write_bytes(b"\x89PNG\r\n\x1a\n broken")
        rec = service.predict_file(path, "흉부 X.png")
        assert rec["path"] == "흉부 X.png" and rec["error"] == "흉부 X.png: truncated PNG: no IHDR header"
        assert str(tmp_path) not in json.dumps(rec)
    finally:
        service.close()
    assert clean_name("a\x00b\nc.png") == "abc.png" and clean_name("") == "upload" and len(clean_name("x" * 999)) == 255


def test_model_info_has_no_paths_and_no_nan(model):
    m = {**model.manifest, "parity": {**model.manifest["parity"], "inputs": "val images of /data/patients",
                                      "skipped": [["/data/patients/KIM.png", "unreadable"]],
                                      "label_flips": [{"name": "/data/patients/LEE.png"}]},
         "training": {**model.manifest["training"], "metrics": {"val": {"auc": float("nan"), "accuracy": 0.5}}}}
    fake = Model(replace(model.bundle, manifest=m), model.engine_choice)
    info = model_info(fake)
    text = json.dumps(info, allow_nan=False)  # NaN would make this raise
    assert "/data" not in text and "KIM" not in text and "LEE" not in text and "checkpoint" not in text
    assert info["parity"]["skipped"] == 1 and info["parity"]["label_flips"] == 1
    assert info["training"]["metrics"]["val"] == {"auc": None, "accuracy": 0.5}
    assert info["classes"] == model.classes and info["model_sha256"] == model.sha256
    assert info["runtime"]["medge"] == medge.__version__


def test_model_card_says_whether_the_model_was_trained_on_synthetic_images(model):
    from medge.edge.apps.serve.page import card_html

    def card(profile, lang="en"):
        fake = Model(replace(model.bundle, manifest={**model.manifest, "data_profile": profile}), model.engine_choice)
        return model_info(fake)["synthetic"], card_html(model_info(fake), lang)

    synthetic, html = card({"images": 40, "synthetic": True})
    assert synthetic is True and "synthetic images (medge synth): not for real patients" in html
    assert TEXT["ko"]["training_data_synthetic"] in card({"images": 40, "synthetic": True}, "ko")[1]
    assert card({"images": 40, "synthetic": False}) == (False, card({"synthetic": False})[1])
    assert "not marked synthetic" in card({"synthetic": False})[1] and "not for real patients" not in card({})[1]
    assert card(None)[0] is None and "not recorded (an older bundle)" in card(None)[1]


def test_model_card_shows_the_operating_point_and_validation_figures(model, bundle, tmp_path):
    from medge.edge.apps.serve.page import card_html
    from tests.edge.calibrated import calibrated_copy, synth_split

    val, _ = synth_split(tmp_path / "d", n=60)
    calibrated = Model.load(calibrated_copy(bundle, tmp_path / "b", val))
    info = model_info(calibrated)
    op = calibrated.manifest["operating_point"]
    card = info["operating_point"]
    assert (card["positive"], card["threshold"], card["criterion"], card["temperature"]) == (
        "disease", op["threshold"], "sensitivity=0.95", op["temperature"])
    assert card["validation"]["auc"] == op["validation"]["auc"] and card["validation"]["cases"] == 30
    assert not {"scores", "positives", "roc", "source"} & set(card["validation"])  # figures, not cases or paths
    html = card_html(info, "en")
    assert f"disease when its calibrated probability &gt;= {op['threshold']:.3f} (sensitivity=0.95)" in html
    assert info["operating_point"] is not None and model_info(model)["operating_point"] is None
    assert "none in this bundle" in card_html(model_info(model), "en")
    # the test split's 15 positives support no 0.95: calibrated_copy marks it unsupported, and the card says so
    assert card["supported"] is False
    assert card["guarantee"].startswith("sensitivity=0.95 unsupported: 15 positives (59 needed at 95% confidence)")
    assert "Guarantee at export" in html and "sensitivity=0.95 unsupported: 15 positives (59 needed" in html


async def _inner(scope, receive, send):
    """A trivial ASGI app behind the guard: says which path it served."""
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": scope["path"].encode()})


def _client(app):
    httpx = pytest.importorskip("httpx", reason="the dev extra is not installed")  # CI's base-install environments

    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:7860")


def test_guard_token_login_cookie_and_headers():
    async def scenario():
        async with _client(Guard(_inner, token=TOKEN, loopback_only=True)) as c:
            r = await c.get("/api/v1/model")
            assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
            assert "bearer token" in r.json()["detail"]
            r = await c.get("/api/v1/model", headers={"Authorization": "Bearer wrong-token-0123456789"})
            assert r.status_code == 401
            r = await c.get("/api/v1/model", headers={"Authorization": f"Bearer {TOKEN}"})
            assert r.status_code == 200 and r.text == "/api/v1/model" and r.headers["cache-control"] == "no-store"
            assert "default-src 'self'" in r.headers["content-security-policy"]
            # A browser asking for the page gets the sign-in form, in its language.
            r = await c.get("/", headers={"Accept": "text/html", "Accept-Language": "ko-KR,ko"})
            assert r.status_code == 401 and TEXT["ko"]["login_prompt"] in r.text and 'name="token"' in r.text
            r = await c.post("/login", data={"token": "wrong"})
            assert r.status_code == 401 and TEXT["en"]["login_wrong"] in r.text
            r = await c.post("/login", data={"token": TOKEN})
            assert r.status_code == 303 and r.headers["location"] == "/"
            cookie = r.headers["set-cookie"]
            assert cookie.startswith(f"{TOKEN_COOKIE}=") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
            r = await c.get("/", headers={"Cookie": f"{TOKEN_COOKIE}={TOKEN}"})
            assert r.status_code == 200 and r.text == "/"
            # DNS rebinding: a loopback server answers to loopback names only.
            r = await c.get("/healthz", headers={"Authorization": f"Bearer {TOKEN}", "Host": "evil.example:7860"})
            assert r.status_code == 400
        async with _client(Guard(_inner)) as c:  # no token: open, headers still set
            r = await c.get("/x", headers={"Host": "[::1]:7860"})
            assert r.status_code == 200 and r.headers["x-frame-options"] == "DENY"

    asyncio.run(scenario())
    assert host_name("LOCALHOST:80") == "localhost" and host_name("[::1]:7860") == "::1" and host_name("::1") == "::1"


def test_language_follows_the_browser_and_both_have_every_text():
    assert pick_language("ko-KR,ko;q=0.9,en-US;q=0.8") == "ko"
    assert pick_language("en-US,en;q=0.9,ko;q=0.8") == "en"
    assert pick_language("fr-FR") == "en" and pick_language(None) == "en"
    assert set(TEXT["en"]) == set(TEXT["ko"])


def test_page_result_pictures_stages_as_preview_and_heatmap_only_when_supported(model, heat_bundle, tmp_path):
    path = tmp_path / "a.png"
    write_image(path, xray_like(120, 90))
    service = InferenceService(model, threads=1, queue=0, upload_dir=tmp_path)
    try:
        plain = analyze(service, path, "a.png", pictures=True)
        stages = cv2.imdecode(np.frombuffer(plain.stages_png, np.uint8), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(stages, render_preview(read_image(path), model.preprocess_config))
        if not model.explain_method:
            assert plain.heatmap_png is None and plain.heatmap_error is None  # no heatmaps: none shown, no error
            card = result_card(plain, "en")
            assert "medge-heatmap" not in card and 'data-label="' in card and "inference" in card
    finally:
        service.close()
    heat_model = Model.load(heat_bundle[0])
    service = InferenceService(heat_model, threads=1, queue=0, upload_dir=tmp_path)
    try:
        shown = analyze(service, path, "a.png", pictures=True)
        expected = heat_model.explain(str(path))
        assert shown.heatmap_note == (heat_model.classes[expected.class_index], "cam") and "heatmap" in shown.extra_ms
        got = cv2.imdecode(np.frombuffer(shown.heatmap_png, np.uint8), cv2.IMREAD_COLOR)
        np.testing.assert_array_equal(got, expected.overlay())  # the page shows Model.explain's overlay
        card = result_card(shown, "ko")
        assert "medge-heatmap" in card and "히트맵" in card
    finally:
        service.close()
    old = tmp_path / "old"  # a bundle exported before heatmaps: nothing shown, no error
    shutil.copytree(heat_bundle[0], old)
    manifest = json.loads((old / "model.json").read_text())
    del manifest["explain"]
    (old / "model.json").write_text(json.dumps(manifest))
    service = InferenceService(Model.load(old), threads=1, queue=0, upload_dir=tmp_path)
    try:
        none = analyze(service, path, "a.png", pictures=True)
        assert none.heatmap_png is None and none.heatmap_error is None and none.stages_png
        assert "medge-heatmap" not in result_card(none, "en")
    finally:
        service.close()


def test_page_classifies_deletes_uploads_and_says_what_it_does_not_show(model, tmp_path):
    from medge.edge.apps.serve.page import DETAIL_MAX_FILES, Page

    service = InferenceService(model, threads=2, queue=2, upload_dir=tmp_path / "api")
    gradio_dir = tmp_path / "gradio"
    uploads = []
    for i in range(DETAIL_MAX_FILES + 2):
        folder = gradio_dir / f"h{i:03d}"
        folder.mkdir(parents=True)
        uploads.append(str(folder / f"img{i:03d}.png"))
        write_image(uploads[-1], xray_like(40, 40, seed=i))
    outside = tmp_path / "outside.png"
    write_image(outside, xray_like(40, 40))
    stale, fresh = gradio_dir / "tmpstale", gradio_dir / "tmpfresh"  # Gradio's empty upload leftovers
    stale.touch()
    fresh.touch()
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    try:
        page = Page(service, gradio_dir)
        html = page.classify(uploads[:3] + [str(outside)] + uploads[3:], SimpleNamespace(headers={}))
        assert html.count("medge-result") == DETAIL_MAX_FILES
        assert "outside.png: not an uploaded file" in html
        assert f"img{DETAIL_MAX_FILES:03d}.png, img{DETAIL_MAX_FILES + 1:03d}.png" in html and "Batch tab" in html
        # every upload deleted, the old empty leftover swept, an upload in progress and other files left alone
        assert list(gradio_dir.iterdir()) == [fresh] and outside.exists()
        batch = page.batch([], SimpleNamespace(headers={"accept-language": "ko"}))
        assert 'data-total="0"' in batch and "파일 0개" in batch
    finally:
        service.close()
