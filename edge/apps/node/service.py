"""The node as one object: spool, Storage SCP, classifier, studies and forwarder, started and stopped together.

Usage (what ``medge node`` does):
    node = Node(model, NodeConfig(port=11112), "out/")
    node.start()            # listening; earlier spooled instances are queued first
    ...
    node.stop()             # no new associations, in-flight ones finished, the queue drained; within ~10 s
"""
from __future__ import annotations

import gc
import threading
import time
from pathlib import Path

from medge.edge.apps.node.config import NodeConfig
from medge.edge.apps.node.outbox import Outboxes
from medge.edge.apps.node.scp import StorageSCP
from medge.edge.apps.node.spool import Spool
from medge.edge.apps.node.studies import Studies
from medge.edge.apps.node.worker import Classifier, bundle_modalities
from medge.edge.model import Model

STOP_ASSOCIATIONS_S = 4.0  # in-flight associations get this long after SIGTERM
STOP_QUEUE_S = 4.0  # then the queue this long; what is left stays spooled for the next start


class Node:
    def __init__(self, model: Model, cfg: NodeConfig, out_dir: str | Path, log=print):
        self.model, self.cfg, self.out_dir, self.log = model, cfg, Path(out_dir), log
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.spool = Spool(self.out_dir, cfg.queue, cfg.keep_images)
        self.studies = Studies(self.out_dir, model.classes, cfg.study_timeout_s, log)
        self.studies.load(self.spool.done.values())
        self.outboxes = Outboxes(self.out_dir, cfg, log)  # a forwarder per channel: --forward, --forward-stow
        self.classifier = Classifier(model, self.spool, cfg, self.studies, self.outboxes, log)
        self.scp = StorageSCP(cfg, self.spool, bundle_modalities(model), log)
        self._stop, self._drain, self._stop_forward = threading.Event(), threading.Event(), threading.Event()
        self._threads: list[threading.Thread] = []
        self.address: tuple[str, int] | None = None

    def start(self) -> "Node":
        # The extra's modules are imported here, once, before any thread: two threads importing pydicom at the same
        # time can see it half initialised (a circular ImportError).
        import highdicom  # noqa: F401
        import pydicom  # noqa: F401
        import pynetdicom  # noqa: F401

        # What is loaded by now (the model, the libraries) lives as long as the node: out of the collector's way,
        # whose full collections would otherwise walk it again and again as datasets come and go.
        gc.freeze()
        if self.cfg.heatmap_sc:
            self.model.require_heatmaps()
        self._spawn("medge-node-classify", self.classifier.run, self._stop, self._drain)
        for forwarder in self.outboxes.channels:
            self._spawn(f"medge-node-{forwarder.sender.option}", forwarder.run, self._stop_forward)
        server = self.scp.start()
        self.address = server.server_address[:2]
        return self

    def _spawn(self, name: str, target, *args) -> None:
        t = threading.Thread(target=target, args=args, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self) -> dict:
        """Stop listening, let in-flight associations finish (then abort them), drain the queue, flush the studies."""
        t0 = time.monotonic()
        self.scp.accepting = False
        server = self.scp.server
        if server is not None:
            server.shutdown()  # no new connections: the listening socket is closed
            deadline = t0 + STOP_ASSOCIATIONS_S
            while server.active_associations and time.monotonic() < deadline:
                time.sleep(0.05)
            for assoc in server.active_associations:
                assoc.abort()
        self._drain.set()
        classify = self._threads[0] if self._threads else None
        if classify is not None:
            classify.join(max(0.1, t0 + STOP_ASSOCIATIONS_S + STOP_QUEUE_S - time.monotonic()))
        self._stop.set()
        self._stop_forward.set()
        for t in self._threads:
            t.join(max(0.1, t0 + STOP_ASSOCIATIONS_S + STOP_QUEUE_S + 1.0 - time.monotonic()))
        self.studies.flush(everything=True)
        return self.summary()

    def summary(self) -> dict:
        return {**self.scp.counts, **self.classifier.counts, "still_spooled": self.spool.pending(),
                "studies_written": self.studies.written, **self.outboxes.counts()}
