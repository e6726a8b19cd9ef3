"""medge.edge.runtime.verify: a bundle is run only when its bytes and its outputs are the exported ones."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from medge.edge.errors import BundleError, ModelIntegrityError, SelfTestError
from medge.edge.runtime.verify import open_bundle, self_test


def _copy(bundle, tmp_path):
    return Path(shutil.copytree(bundle, tmp_path / "b"))


def test_open_verifies_the_hash_and_reads_what_the_edge_needs(bundle):
    b = open_bundle(bundle)
    manifest = json.loads((Path(bundle) / "model.json").read_text())
    assert b.sha256 == manifest["model"]["sha256"] and b.classes == manifest["classes"]
    assert b.chw == tuple(manifest["model"]["input_shape"][1:]) and b.backend == "cpu"
    assert b.golden_inputs().shape == (int(manifest["golden"]["count"]), *b.chw)


def test_a_modified_model_file_is_refused(bundle, tmp_path):
    d = _copy(bundle, tmp_path)
    data = bytearray((d / "model.onnx").read_bytes())
    data[-1] ^= 1
    (d / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match="does not match the manifest"):
        open_bundle(d)
    (d / "model.onnx").unlink()
    with pytest.raises(BundleError, match="model file missing"):
        open_bundle(d)


def test_the_golden_self_test_passes_here_and_fails_on_other_logits(bundle, tmp_path):
    b = open_bundle(bundle)
    net = b.load_net("classic")
    assert 0 <= self_test(b, net, 1, "classic") <= float(b.manifest["golden"]["tolerance"])
    d = _copy(bundle, tmp_path)
    manifest = json.loads((d / "model.json").read_text())
    manifest["golden"]["expected_logits"] = (np.asarray(manifest["golden"]["expected_logits"]) + 1.0).tolist()
    (d / "model.json").write_text(json.dumps(manifest))
    changed = open_bundle(d)
    with pytest.raises(SelfTestError, match="golden self-test failed"):
        self_test(changed, changed.load_net("classic"), 1, "classic")
