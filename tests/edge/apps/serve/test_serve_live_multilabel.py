"""medge serve with a multi-label bundle in a real browser (Playwright + Chromium): each finding's probability,
threshold and decision on the page, the unsupported one marked, the flag, the findings on the model card."""
import json

import pytest

from medge.edge.inputs.image import write_image
from tests.conftest import xray_like
from tests.edge.apps.serve.test_serve_live import AUTH, CHROMIUM, CHROMIUM_FLAGS, TOKEN, Server, _chromium_or_skip

httpx = pytest.importorskip("httpx", reason="the dev extra is not installed")


@pytest.fixture(scope="module")
def ml_server(multilabel_bundle, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve-ml")
    (tmp / "token").write_text(TOKEN + "\n")
    srv = Server(["--model", str(multilabel_bundle), "--port", "0", "--token-file", str(tmp / "token")], tmp)
    yield srv
    srv.stop()


def test_the_findings_page_and_api_in_a_real_browser(ml_server, tmp_path):
    image = tmp_path / "chest.png"
    write_image(image, xray_like(128, 128, seed=2))
    with httpx.Client(headers=AUTH, timeout=60) as client:
        rec = client.post(ml_server.url + "/api/v1/predict", files={"file": ("chest.png", image.read_bytes())}).json()
        info = client.get(ml_server.url + "/api/v1/model").json()
    assert rec["task"] == "multilabel" and rec["thresholds"] == {"Effusion": 0.4, "Nodule": None}
    assert [f["name"] for f in info["findings"]["findings"]] == ["Effusion", "Nodule"]
    sync_api = _chromium_or_skip()
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            ctx = browser.new_context(locale="en-US", viewport={"width": 1280, "height": 900})
            ctx.add_cookies([{"name": "medge_token", "value": TOKEN, "url": ml_server.url}])
            page = ctx.new_page()
            page.goto(ml_server.url + "/")
            page.wait_for_selector("#medge-header", timeout=60_000)
            page.set_input_files("#medge-files input[type=file]", [str(image)])
            page.wait_for_selector(".medge-result", timeout=60_000)
            card = page.query_selector(".medge-result")
            effusion = "present" if rec["decisions"]["Effusion"] else "absent"
            row = card.query_selector('tr[data-finding="Effusion"]')
            assert row.get_attribute("data-decision") == effusion and effusion in row.inner_text()
            assert row.query_selector(".medge-p").inner_text() == f'{rec["probabilities"]["Effusion"]:.4f}'
            assert "not decided: unsupported" in card.query_selector('tr[data-finding="Nodule"]').inner_text()
            assert card.get_attribute("data-any-positive") == str(int(rec["any_positive"]))
            page.get_by_role("tab", name="Model card").click()
            table = page.inner_text("#medge-findings-table")
            assert "Effusion" in table and "not decided: unsupported (3 positives" in table
            ctx.close()
        finally:
            browser.close()
    assert json.dumps(rec)  # the API's record is JSON as the page's
