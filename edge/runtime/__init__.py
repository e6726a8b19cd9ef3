"""medge.edge.runtime: the model bundle and the engines that run it (cv2.dnn; onnxruntime and OpenVINO with extras).

The modules divide the work:

- ``bundle``: the bundle folder (model.onnx + the model.json manifest), read, validated and written atomically;
- ``engines``: the engines and backends this OpenCV (and onnxruntime) offers, detected, chosen by name;
- ``dnn``: cv2.dnn guarded: loading a model with an engine, checked forward passes, in batches;
- ``ort``: onnxruntime as one more engine, behind the same guards (imported only when a net is read);
- ``openvino``: OpenVINO as one more engine, its compute precision always pinned (imported only when a net is read);
- ``variants``: the bundle's fast variants (int8, bf16), each offered only on the engines where its export gate passed;
- ``verify``: a bundle verified by its hashes (``VerifiedBundle``) and the golden self-test of a net;
- ``choice``: which engine runs a bundle on this box, by self-test and measurement, and medge check's record.

Usage:
    from medge.edge.runtime import ENGINES, load_net, read_manifest
    manifest = read_manifest("bundles/xray")
    net = load_net("bundles/xray/model.onnx", engine="classic")

The names below are re-exported for users; modules of ``medge`` import from the defining module. ``verify``
and ``choice`` are not re-exported: they build on ``edge.explain``, which imports ``runtime.bundle``, so
importing them here would be an import cycle (import ``medge.edge.runtime.verify`` and ``.choice`` directly).
"""
from medge.edge.runtime.bundle import (
    LOGITS_OUTPUT,
    MANIFEST_FILE,
    MODEL_FILE,
    check_writable_parent,
    golden_inputs,
    read_manifest,
    sha256_bytes,
    write_bundle,
)
from medge.edge.runtime.dnn import check_opencv, forward, forward_batches, forward_outputs_batches, load_net, opencv_version
from medge.edge.runtime.engines import AUTO, BACKENDS, ENGINES, available_backends, check_choices, engine_choices, engines_for

__all__ = [
    "AUTO", "BACKENDS", "ENGINES", "LOGITS_OUTPUT", "MANIFEST_FILE", "MODEL_FILE", "available_backends", "check_choices",
    "check_opencv", "check_writable_parent", "engine_choices", "engines_for", "forward", "forward_batches",
    "forward_outputs_batches", "golden_inputs", "load_net", "opencv_version", "read_manifest", "sha256_bytes", "write_bundle",
]
