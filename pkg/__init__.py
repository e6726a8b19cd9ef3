"""medge: train grayscale medical image classifiers with PyTorch, run them on CPU edge boxes with OpenCV DNN.

One installed name, four layers (each a folder of the repository, mapped here by
setuptools' package-dir in pyproject.toml):

    medge.edge        the edge runtime, numpy + OpenCV only (base install);
                      medge.edge.apps holds its commands (check, predict, preview, watch, serve,
                      node, batch, validate, monitor)
    medge.train       data, models, training loop (extra: train)
    medge.export      ONNX export and verification (extra: train)
    medge.benchmarks  PyTorch vs cv2.dnn latency and parity, the demo (extra: train)

Imports point down that list, never up. Usage: ``medge --help`` or ``python -m medge --help``.
"""

__version__ = "0.4.0"
