"""medge.edge.prediction: the one record format of medge predict, watch and serve."""
import json

from medge.edge import Prediction
from medge.edge.model import Prediction as FromModel

RECORD_KEYS = ["path", "label", "probabilities", "threshold", "calibrated", "logits", "model_sha256", "runtime", "timings_ms",
               "error", "warnings", "input"]


def test_a_labelled_prediction_becomes_a_json_ready_record():
    p = Prediction("a.png", label="disease", probabilities={"disease": 0.75, "normal": 0.25}, logits=[1.0, -0.1],
                   threshold=0.4, calibrated=True, timings_ms={"read": 1.5}, warnings=["small"], input={"format": "png"})
    r = p.to_record("ab" * 32)
    assert list(r) == RECORD_KEYS and p.ok
    assert (r["label"], r["threshold"], r["calibrated"], r["model_sha256"]) == ("disease", 0.4, True, "ab" * 32)
    assert json.loads(json.dumps(r)) == r
    r["warnings"].append("changed")  # the record holds a copy: changing it leaves the prediction alone
    assert p.warnings == ["small"]


def test_a_failed_prediction_has_an_error_and_no_label():
    p = Prediction("bad.png", error="bad.png: not an image")
    r = p.to_record("00" * 32)
    assert not p.ok and r["error"] == "bad.png: not an image"
    assert (r["label"], r["probabilities"], r["logits"], r["warnings"]) == (None, None, None, [])
    assert FromModel is Prediction
