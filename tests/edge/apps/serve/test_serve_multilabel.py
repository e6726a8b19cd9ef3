"""medge serve with a multi-label bundle (edge.findings), without a running server: the API's JSON carries the record's
findings keys, the page shows each finding's probability, threshold and decision, the card lists the findings."""
import csv
import io
import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

from medge.edge.apps.serve.api import InferenceService, model_info
from medge.edge.apps.serve.page import PageResult, _batch_html, _refused_record, card_html, records_as, result_card
from medge.edge.apps.serve.texts import TEXT
from medge.edge.inputs.image import write_image
from medge.edge.model import Model
from tests.conftest import xray_like


@pytest.fixture(scope="module")
def exported(bundle, tmp_path_factory):
    """The test bundle as a multi-label bundle whose section is the export's own (``export.findings``, numpy only):
    Effusion with enough validation cases for a threshold and figures, Nodule with 3 positives: unsupported."""
    from medge.export.findings import findings_section

    rng = np.random.default_rng(0)
    y = np.stack([rng.random(80) < 0.4, np.arange(80) < 3], axis=1).astype(float)
    z = np.where(y == 1, 1.5, -1.5) + rng.normal(0, 1.2, y.shape)
    section = findings_section(z, y, ["Effusion", "Nodule"], "youden", "val images of /data/site")
    dst = tmp_path_factory.mktemp("mlserve") / "b"
    shutil.copytree(bundle, dst)
    m = json.loads((dst / "model.json").read_text())
    m.update(task="multilabel", classes=["Effusion", "Nodule"], operating_point=section)
    (dst / "model.json").write_text(json.dumps(m))
    return Model.load(dst)


def test_the_model_description_lists_each_finding_without_cases_or_paths(exported):
    info = model_info(exported)
    text = json.dumps(info, allow_nan=False)
    assert info["task"] == "multilabel" and info["operating_point"] is None and "/data" not in text
    effusion, nodule = info["findings"]["findings"]
    assert effusion["name"] == "Effusion" and effusion["threshold"] == exported.findings.findings[0].threshold
    assert effusion["criterion"] == "youden" and effusion["validation"]["auc"]["auc"] > 0.5
    assert {"sensitivity", "specificity", "ppv", "npv"} <= set(effusion["validation"])
    assert not {"scores", "positives", "roc"} & set(effusion["validation"])
    assert nodule["threshold"] is None and "3 positives" in nodule["unsupported"] and nodule["supported"] is False
    assert info["findings"]["validation"]["macro_auc"]["auc"] is not None and info["findings"]["calibrated"] is True


@pytest.mark.parametrize("lang", ["en", "ko"])
def test_the_card_lists_each_finding_and_marks_the_unsupported_one(exported, lang):
    t, info = TEXT[lang], model_info(exported)
    html = card_html(info, lang)
    effusion = info["findings"]["findings"][0]
    assert 'data-finding="Effusion" data-state="decided"' in html and 'data-finding="Nodule" data-state="undecided"' in html
    rule = t["finding_rule"].format(threshold=f"{effusion['threshold']:.4f}", criterion="youden")
    assert rule.replace(">", "&gt;") in html
    assert t["finding_unsupported"].format(reason="3 positives and 77 negatives").split("(")[0] in html
    assert "3 positives and 77 negatives in the validation split" in html
    assert t["findings_card"] in html and t["macro_auc"] in html and t["micro_auc"] in html
    assert "medge-operating-point" not in html  # the single-label section is not shown


def test_a_bundle_without_an_operating_point_says_each_finding_is_decided_at_half(bundle, tmp_path):
    from tests.edge.multilabel import multilabel_copy

    info = model_info(Model.load(multilabel_copy(bundle, tmp_path / "b")))
    html = card_html(info, "en")
    assert info["findings"]["calibrated"] is False and TEXT["en"]["findings_uncalibrated"].replace(">", "&gt;") in html
    assert html.count('data-state="decided"') == 2


@pytest.fixture
def service(multilabel_bundle, tmp_path):
    s = InferenceService(Model.load(multilabel_bundle), threads=1, queue=1, upload_dir=tmp_path)
    yield s
    s.close()


@pytest.mark.parametrize("lang", ["en", "ko"])
def test_a_result_shows_each_finding_its_threshold_decision_and_the_flag(service, tmp_path, lang):
    t = TEXT[lang]
    path = tmp_path / "a.png"
    write_image(path, xray_like(64, 64, seed=3))
    rec = service.predict_file(path, "a.png")
    assert rec["task"] == "multilabel" and rec["thresholds"] == {"Effusion": 0.4, "Nodule": None}
    html = result_card(PageResult(rec), lang)
    effusion = "present" if rec["decisions"]["Effusion"] else "absent"
    assert f'data-finding="Effusion" data-decision="{effusion}"' in html
    assert 'data-finding="Nodule" data-decision="undecided"' in html and t["not_decided"] in html
    assert f'{rec["probabilities"]["Nodule"]:.4f}' in html and ">0.4<" in html
    positive = ", ".join(rec["positive_findings"]) or t["no_finding"]
    assert f'<b class="medge-label-value">{positive}</b>' in html
    assert f'data-any-positive="{int(rec["any_positive"])}"' in html and t["any_positive"] in html


def test_the_batch_table_and_downloads_have_the_findings_columns(service, tmp_path):
    recs = []
    for s in range(3):
        write_image(tmp_path / f"{s}.png", xray_like(64, 64, seed=s))
        recs.append(service.predict_file(tmp_path / f"{s}.png", f"{s}.png"))
    recs.append(_refused_record("x.png", service, "x.png: not an uploaded file"))
    rows = list(csv.DictReader(io.StringIO(records_as(recs, "csv", service.model.classes, multilabel=True))))
    assert [r["positive_Nodule"] for r in rows] == [""] * 4 and rows[3]["any_positive"] == "" and rows[3]["error"]
    assert [r["any_positive"] for r in rows[:3]] == [str(int(r["any_positive"])) for r in recs[:3]]
    html = _batch_html([PageResult(r) for r in recs], service.model.classes, "en", multilabel=True)
    assert TEXT["en"]["any_positive"] in html and html.count(TEXT["en"]["not_decided"]) == 3
    assert recs[3]["task"] == "multilabel" and recs[3]["thresholds"] == {"Effusion": 0.4, "Nodule": None}


def test_the_api_answers_with_the_records_findings_keys(service, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from medge.edge.apps.serve.api import create_api

    buf = io.BytesIO()
    path = tmp_path / "a.png"
    write_image(path, xray_like(64, 64, seed=1))
    buf.write(path.read_bytes())
    with TestClient(create_api(service, 10)) as client:
        rec = client.post("/api/v1/predict", files={"file": ("a.png", buf.getvalue(), "image/png")}).json()
        info = client.get("/api/v1/model").json()
    assert rec["task"] == "multilabel" and rec["decisions"]["Nodule"] is None
    assert rec["any_positive"] is bool(rec["positive_findings"]) and info["task"] == "multilabel"
    assert [f["name"] for f in info["findings"]["findings"]] == ["Effusion", "Nodule"]


def test_single_label_refused_records_are_unchanged(bundle, tmp_path):
    s = SimpleNamespace(model=SimpleNamespace(sha256="x"))
    assert _refused_record("a.png", s, "why") == {"path": "a.png", "label": None, "probabilities": None,
                                                  "model_sha256": "x", "timings_ms": {}, "error": "why"}
