"""``medge node``: a DICOM node that PACS and modalities send to, with results back into PACS as DICOM (extra ``node``).

Usage: medge node --model bundles/xray --out node/ [--ae-title MEDGE] [--port 11112] [--forward PACS@10.0.0.5:4242]
                  [--forward-stow https://pacs/dicom-web --stow-user medge --stow-password-file /etc/medge/stow.pw]

A Storage SCP (pynetdicom) that answers C-ECHO and takes C-STORE of single-frame
grayscale images (CR, DX, mammography, Secondary Capture; and the modalities the
bundle names), in every transfer syntax ``edge.inputs.dicom`` decodes. Each instance is
written to ``DIR/spool/`` (fsync, rename) before the sender hears success, classified
off the association threads by the same ``Model.predict`` as ``medge predict``, and
gets exactly one result, even across ``kill -9``:

  DIR/results.jsonl        medge predict's record + status (classified/skipped/error), UIDs
  DIR/reports/<h>.sr.dcm   a Comprehensive 3D SR (TID 1500) per classified instance
  DIR/reports/<h>.sc.dcm   with --heatmap-sc, the heatmap overlay as a Secondary Capture
  DIR/studies/<h>.json     per study, once quiet for --study-timeout s: instances and study label
  DIR/outbox/              with --forward, the SR/SC waiting for the PACS (C-STORE, retried)
  DIR/outbox-stow/         with --forward-stow, the SR/SC waiting for the DICOMweb server (STOW-RS, retried)

Binds 127.0.0.1 unless --host says otherwise; --allow limits callers; --tls-cert/--tls-key
(and --tls-ca for mutual TLS) speak DICOM over TLS. --forward and --forward-stow may be given
together: each result then reaches both, each once, through an outbox of its own. The STOW-RS
password or token comes from a file or $MEDGE_STOW_PASSWORD, never the command line. Logs hold
counts, timings, status codes and hashed UIDs, never patient data or secrets. SIGINT/SIGTERM: no
new associations, in-flight ones and the queue finished, exit within 10 s (what is left stays
spooled for the next start).
"""
from __future__ import annotations

import argparse
import datetime
import os
import signal
import sys
import threading

from medge.edge.apps.node.config import (
    STOW_PASSWORD_ENV,
    STOW_TIMEOUT_S,
    NodeConfig,
    Stow,
    check_ae_title,
    parse_allow,
    parse_class_codes,
    parse_forward,
)
from medge.edge.apps.options import add_bundle_arguments, add_strict_argument, at_least, load_model
from medge.edge.errors import MissingExtraError, UsageError
from medge.edge.outputs import check_output_dir

NODE_MODULES = {"pynetdicom": "pynetdicom", "highdicom": "highdicom", "pydicom": "pydicom"}


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("node", help="a DICOM node: receive by C-STORE, classify, send SR back (extra: node)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_bundle_arguments(p)
    add_strict_argument(p)
    d = NodeConfig()
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the spool, results, reports and studies")
    p.add_argument("--ae-title", default=d.ae_title, help="this node's AE title (default: %(default)s)")
    p.add_argument("--host", default=d.host, help="address to listen on (default: %(default)s, this machine only)")
    p.add_argument("--port", type=int, default=d.port, help="port (default: %(default)s; 0 = any free port)")
    p.add_argument("--allow", action="append", default=[], metavar="AE[@HOST]",
                   help="accept associations only from this calling AE title (and host); repeat for several")
    p.add_argument("--forward", metavar="AE@HOST:PORT", help="send SR (and SC) objects to this PACS by C-STORE")
    add_stow_arguments(p)
    p.add_argument("--heatmap-sc", action="store_true",
                   help="also a Secondary Capture of the heatmap overlay per classified instance (bundles with heatmaps)")
    p.add_argument("--class-code", action="append", default=[], metavar="NAME=SCHEME:VALUE[:MEANING]",
                   help="the code of class NAME in the SR (e.g. ptx=SCT:36118008:Pneumothorax; MEANING: the name when "
                        "left out); repeat for several. Others: SNOMED CT by name from medge's table, else private "
                        "(99MEDGE, which dicom3tools' dciodvfy warns of; said at start)")
    p.add_argument("--study-timeout", type=float, default=d.study_timeout_s,
                   help="seconds without a new instance after which a study's record is written (default: %(default)s)")
    p.add_argument("--keep-images", action="store_true",
                   help="keep received images in DIR/images/ (default: deleted once their results are safe)")
    p.add_argument("--queue", type=at_least(1), default=d.queue,
                   help="instances received and not yet classified, at most; more are answered out of resources "
                        "(0xA700) (default: %(default)s)")
    p.add_argument("--max-instance-mb", type=float, default=d.max_instance_mb,
                   help="refuse larger instances (0xA700); received to disk, not memory (default: %(default)s)")
    p.add_argument("--max-associations", type=at_least(1), default=d.max_associations,
                   help="associations at once (default: %(default)s)")
    p.add_argument("--batch-size", type=at_least(1), default=1,
                   help="instances per forward pass (default: 1: each instance's probabilities are those of "
                        "`medge predict FILE`, whatever arrived with it)")
    p.add_argument("--workers", type=at_least(0), help="pipeline threads (default: one per core; see medge predict)")
    p.add_argument("--tls-cert", metavar="PEM", help="this node's certificate: speak DICOM over TLS")
    p.add_argument("--tls-key", metavar="PEM", help="the certificate's private key")
    p.add_argument("--tls-ca", metavar="PEM", help="require callers' certificates signed by this CA (mutual TLS)")
    return p


def add_stow_arguments(p: argparse.ArgumentParser) -> None:
    """--forward-stow and how to log in to that server (docs/node.md, "Results by DICOMweb")."""
    p.add_argument("--forward-stow", metavar="URL",
                   help="send SR (and SC) objects by DICOMweb STOW-RS to this base URL (POST URL/studies), "
                        "e.g. https://pacs:8042/dicom-web; with --forward too, each goes to both")
    p.add_argument("--stow-user", metavar="USER",
                   help=f"HTTP basic authentication as USER; the password from --stow-password-file or ${STOW_PASSWORD_ENV}")
    p.add_argument("--stow-password-file", metavar="FILE", help="the --stow-user password (one line; re-read at each try)")
    p.add_argument("--stow-token-file", metavar="FILE",
                   help="a bearer token (one line; re-read at each try), instead of --stow-user")
    p.add_argument("--stow-ca", metavar="PEM", help="trust only this CA for the https server's certificate "
                                                     "(default: the system's CAs)")
    p.add_argument("--stow-timeout", type=float, default=STOW_TIMEOUT_S, metavar="S",
                   help="seconds to connect, and for each read or write, before a try counts as failed "
                        "(default: %(default)s)")


def stow_from_args(args: argparse.Namespace) -> Stow | None:
    """The --forward-stow settings; a --stow-* option without --forward-stow is a UsageError (it would do nothing)."""
    if not args.forward_stow:
        given = [f"--{k.replace('_', '-')}" for k in ("stow_user", "stow_password_file", "stow_token_file", "stow_ca")
                 if getattr(args, k)]
        if given:
            raise UsageError(f"{', '.join(given)} without --forward-stow: give the DICOMweb URL to send to")
        return None
    return Stow(args.forward_stow.strip(), user=args.stow_user, password_file=args.stow_password_file,
                token_file=args.stow_token_file, ca=args.stow_ca, timeout_s=args.stow_timeout)


def config_from_args(args: argparse.Namespace) -> NodeConfig:
    return NodeConfig(ae_title=check_ae_title(args.ae_title, "--ae-title"), host=args.host, port=args.port,
                      allow=tuple(parse_allow(a) for a in args.allow),
                      forward=parse_forward(args.forward) if args.forward else None, stow=stow_from_args(args),
                      heatmap_sc=args.heatmap_sc, class_codes=parse_class_codes(args.class_code),
                      study_timeout_s=args.study_timeout, queue=args.queue, max_instance_mb=args.max_instance_mb,
                      max_associations=args.max_associations, keep_images=args.keep_images, strict=args.strict,
                      batch_size=args.batch_size, workers=args.workers, max_pixels=args.max_pixels,
                      tls_cert=args.tls_cert, tls_key=args.tls_key, tls_ca=args.tls_ca)


def require_extra() -> None:
    """MissingExtraError (exit 2, naming the ``node`` extra) unless pynetdicom, highdicom and pydicom import."""
    import importlib.util

    for module in NODE_MODULES:
        if importlib.util.find_spec(module) is None:
            raise MissingExtraError("node", module, "medge node")


def coding_notes(classes, cfg: NodeConfig) -> list[str]:
    """The start-up lines on the classes the SR codes privately (99MEDGE): none when each has a standard code.
    UsageError for a --class-code of no class of the bundle, or two classes with the same code."""
    from medge.edge.apps.node.report import class_codes, private_classes

    private = private_classes(classes, class_codes(classes, cfg.class_codes))
    if not private:
        return []
    return [f"note: the SR codes {', '.join(private)} in medge's private scheme 99MEDGE (no code given, none in medge's "
            f"table), which dicom3tools' dciodvfy warns of at each use; give a standard one with --class-code "
            f"NAME=SCHEME:VALUE[:MEANING], e.g. --class-code \"{private[0]}=SCT:<its SNOMED CT code>\""]


def _log(msg: str) -> None:
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    print(f"{stamp} {msg}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    files = [("--tls-cert", cfg.tls_cert), ("--tls-key", cfg.tls_key), ("--tls-ca", cfg.tls_ca)]
    if cfg.stow:
        files += [("--stow-ca", cfg.stow.ca), ("--stow-password-file", cfg.stow.password_file),
                  ("--stow-token-file", cfg.stow.token_file)]
    for what, path in files:
        if path and not os.path.isfile(path):
            raise UsageError(f"{what} {path}: file not found")
    stow_warnings = cfg.stow.check_files() if cfg.stow else []  # before the model loads
    require_extra()
    check_output_dir(args.out, "node output")
    model = load_model(args)
    coding = coding_notes(model.classes, cfg)  # refuses a --class-code of no class of the bundle, before listening
    from medge.edge.apps.node.service import Node

    node = Node(model, cfg, args.out, log=_log)
    try:
        node.start()
    except OSError as e:
        raise UsageError(f"cannot listen on {cfg.host}:{cfg.port}: {e.strerror or e}") from None
    stop = threading.Event()

    def on_signal(signum, _frame):
        _log(f"{signal.Signals(signum).name}: no new associations; finishing those in flight and the queue")
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    host, port = node.address
    _log(f"medge node {cfg.ae_title} listening on {host}:{port}{' (TLS)' if cfg.tls_cert else ''}, model "
         f"{model.sha256[:12]}, {node.spool.recovered} instance(s) from the spool to classify, "
         f"{len(node.spool.done)} done before" + (f", forwarding to {cfg.forward}" if cfg.forward else "")
         + (f", STOW-RS to {cfg.stow}" if cfg.stow else ""))
    if cfg.stow and cfg.stow.cleartext_secret:
        _log(f"warning: --forward-stow {cfg.stow} is http://: the password or token crosses the network unencrypted")
    for warning in stow_warnings:
        _log(f"warning: {warning}")
    for note in [*node.outboxes.notes(), *coding]:
        _log(note)
    try:
        stop.wait()
    finally:
        summary = node.stop()
        for s, h in previous.items():
            signal.signal(s, h)
    _log("stopped: " + ", ".join(f"{k} {v}" for k, v in summary.items() if v is not None))
    return 0
