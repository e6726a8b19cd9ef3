"""``medge serve``: the model as a local web page and a JSON API (extra ``serve``).

Usage: medge serve --model bundles/xray [--host 127.0.0.1] [--port 7860]

Then open http://127.0.0.1:7860/ (the page), /docs (the API), or call the API:
    curl -F file=@chest.png http://127.0.0.1:7860/api/v1/predict

The bundle is loaded and verified once (SHA-256 and golden self-test, as ``Model.load``);
a bad bundle stops the command with exit status 2 before anything listens. The server
binds 127.0.0.1 unless told otherwise; any other address needs ``--token`` (a bearer
token for every request; browsers sign in once with a form) or an explicit
``--insecure``. Uploads are kept in a private temporary folder and deleted after the
answer; the log has counts, timings and error kinds, never file names. SIGINT and
SIGTERM finish the requests in flight and stop within 10 s.

FastAPI + uvicorn serve the API, Gradio the page, mounted in one app: one port, one
process, one model, one bounded pool of inference threads for both.

The package: this module is the command (options, ``run``, the server's life);
``api`` the JSON API and the bounded inference service, ``page`` the Gradio page,
``guard`` the token, host and offline checks around both, ``texts`` their words.
"""
from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from medge.edge.apps.options import add_bundle_arguments, load_model
from medge.edge.apps.serve.guard import check_token
from medge.edge.config import check_ranges, check_types
from medge.edge.errors import UsageError
from medge.edge.inputs.formats import DEFAULT_MAX_PIXELS

GRACEFUL_S = 6  # in-flight requests get this long after SIGTERM; cleanup fits in the 10 s the issue allows
LOOPBACK_NAMES = ("localhost",)


@dataclass(frozen=True)
class ServeConfig:
    """How ``medge serve`` listens and how much it takes on at once."""

    host: str = "127.0.0.1"  # loopback unless a token (or --insecure) says otherwise
    port: int = 7860  # 0: any free port (printed at start)
    token: str = ""  # bearer token required on every request; "" = none
    insecure: bool = False  # allow a non-loopback address without a token
    max_upload_mb: float = 32.0  # larger uploads are answered 413
    inference_threads: int = 2  # inputs classified at once, each thread with its own cv2.dnn net
    queue: int = 16  # requests that may wait for an inference thread; more are answered 503
    max_pixels: int = DEFAULT_MAX_PIXELS  # larger images are refused (422)

    def __post_init__(self):
        check_types(self)
        check_ranges("serve", [
            (0 <= self.port <= 65535, f"--port must be in 0..65535, got {self.port}"),
            (0 < self.max_upload_mb <= 4096, f"--max-upload-mb must be in (0, 4096], got {self.max_upload_mb}"),
            (1 <= self.inference_threads <= 64, f"--inference-threads must be in 1..64, got {self.inference_threads}"),
            (0 <= self.queue <= 4096, f"--queue must be in 0..4096, got {self.queue}"),
            (self.max_pixels >= 1, f"--max-pixels must be >= 1, got {self.max_pixels}"),
        ])
        if self.token and (why := check_token(self.token)):
            raise UsageError(f"--token: {why} (make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))')")
        if not self.loopback and not self.token and not self.insecure:
            raise UsageError(f"--host {self.host} lets other machines reach the server: give --token (or --token-file) "
                             "so that every request must carry it, or --insecure to serve without one")

    @property
    def loopback(self) -> bool:
        if self.host.lower() in LOOPBACK_NAMES:
            return True
        try:
            return ipaddress.ip_address(self.host.strip("[]")).is_loopback
        except ValueError:
            return False


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("serve", help="serve a bundle as a web page and a JSON API (extra: serve)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_bundle_arguments(p)
    d = ServeConfig()
    p.add_argument("--host", default=d.host, help="address to listen on (default: %(default)s, this machine only)")
    p.add_argument("--port", type=int, default=d.port, help="port (default: %(default)s; 0 = any free port)")
    p.add_argument("--token", help="bearer token every request must carry (at least 16 letters, digits, - . _ ~); "
                                   "visible to other local users in the process list: prefer --token-file")
    p.add_argument("--token-file", help="read the token from the first line of this file")
    p.add_argument("--insecure", action="store_true", help="allow a non-loopback --host without a token")
    p.add_argument("--max-upload-mb", type=float, default=d.max_upload_mb, help="largest upload (default: %(default)s)")
    p.add_argument("--inference-threads", type=int, default=min(8, os.cpu_count() or 1),
                   help="inputs classified at once (default: one per core, at most 8: %(default)s)")
    p.add_argument("--queue", type=int, default=d.queue,
                   help="requests that may wait for an inference thread before the server answers 503 (default: %(default)s)")
    return p


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    """ServeConfig from the command line; the token from --token or --token-file (not both)."""
    token = args.token or ""
    if args.token_file:
        if args.token:
            raise UsageError("give --token or --token-file, not both")
        try:
            token = Path(args.token_file).read_text(encoding="utf-8").splitlines()[0].strip()
        except (OSError, UnicodeDecodeError, IndexError) as e:
            raise UsageError(f"--token-file {args.token_file}: cannot read a token from it ({e})") from None
    return ServeConfig(host=args.host, port=args.port, token=token, insecure=args.insecure,
                       max_upload_mb=float(args.max_upload_mb), inference_threads=args.inference_threads,
                       queue=args.queue, max_pixels=args.max_pixels)


def bind(host: str, port: int) -> socket.socket:
    """Bind the listening socket now, so that a taken port or an unknown host is a usage error (exit 2)."""
    try:
        family, _, _, _, addr = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise UsageError(f"--host {host}: cannot resolve it ({e.strerror})") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock


def private_workdir() -> Path:
    """A folder only this user can read, for uploads; Gradio is pointed at it before it is imported."""
    root = Path(tempfile.mkdtemp(prefix="medge-serve-"))  # mode 0700
    (root / "uploads").mkdir(mode=0o700)
    (root / "gradio").mkdir(mode=0o700)
    os.environ["GRADIO_TEMP_DIR"] = str(root / "gradio")
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # no telemetry, no version check
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    return root


def build_app(service, cfg: ServeConfig, gradio_dir: Path):
    """The API with the page mounted at / and the guard around both."""
    import gradio as gr

    from medge.edge.apps.serve.api import create_api
    from medge.edge.apps.serve.guard import Guard
    from medge.edge.apps.serve.page import build_page

    app = create_api(service, cfg.max_upload_mb)
    blocks, page_kwargs = build_page(service, gradio_dir, cfg.queue)
    app = gr.mount_gradio_app(app, blocks, path="/", max_file_size=int(cfg.max_upload_mb * 2**20), allowed_paths=[],
                              **page_kwargs)
    # Gradio checks that a file named in an event's payload was uploaded by a user only once
    # ``has_launched`` is set, which ``launch()`` does and ``mount_gradio_app`` does not: without
    # this, a crafted call could make the page read any file on the server (tested).
    blocks.has_launched = True
    app.add_middleware(Guard, token=cfg.token or None, loopback_only=cfg.loopback)
    return app


def quiet_gradio_tracebacks() -> None:
    """Gradio prints the traceback of a failed page event to stderr, and its text can name the
    uploaded file (a patient's name, often): log the exception's type instead."""
    import traceback
    import types

    import gradio.queueing
    import gradio.route_utils
    import gradio.routes
    import gradio.utils

    def print_exc(*_args, **_kwargs):
        kind = sys.exc_info()[0]
        logging.getLogger("medge.serve").warning("page event failed: %s", kind.__name__ if kind else "unknown error")

    quiet = types.ModuleType("traceback")
    quiet.__dict__.update(traceback.__dict__)
    quiet.print_exc = print_exc
    for module in (gradio.queueing, gradio.route_utils, gradio.routes, gradio.utils):
        if getattr(module, "traceback", None) is traceback:
            module.traceback = quiet


def _log_to_stderr() -> None:
    log = logging.getLogger("medge.serve")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    logging.getLogger("python_multipart").setLevel(logging.ERROR)  # its parse warnings repeat our 400 answers


def serve(app, sock: socket.socket, cfg: ServeConfig, banner: str) -> None:
    """Run uvicorn on ``sock`` until SIGINT/SIGTERM; in-flight requests get GRACEFUL_S seconds."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets)
            if self.started:
                host, port = sock.getsockname()[:2]
                shown = f"[{host}]" if ":" in host else host
                print(f"{banner}\nlistening on http://{shown}:{port}/ (page), /docs (API); Ctrl-C to stop",
                      file=sys.stderr, flush=True)

    config = uvicorn.Config(app, log_config=None, log_level="warning", access_log=False, server_header=False,
                            timeout_graceful_shutdown=GRACEFUL_S, lifespan="on",
                            limit_concurrency=max(64, 4 * (cfg.inference_threads + cfg.queue)))
    # uvicorn re-raises the signal that stopped it once it is done; this no-op handler takes it,
    # so that the command can clean up and return 0 instead of dying of its own SIGTERM.
    previous = {s: signal.signal(s, lambda *_: None) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        Server(config).run(sockets=[sock])
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    sock = bind(cfg.host, cfg.port)
    service = workdir = None
    try:
        model = load_model(args)  # a bad bundle stops here, exit 2, before anything is imported or listens
        workdir = private_workdir()  # before Gradio is imported: it reads GRADIO_TEMP_DIR
        import fastapi_offline  # noqa: F401  (a missing extra fails here, naming the extra: exit 2)
        import gradio  # noqa: F401
        import python_multipart  # noqa: F401
        import uvicorn  # noqa: F401

        from medge.edge.apps.serve.api import InferenceService

        service = InferenceService(model, cfg.inference_threads, cfg.queue, workdir / "uploads", cfg.max_pixels)
        service.warm_up()
        app = build_app(service, cfg, workdir / "gradio")
        _log_to_stderr()
        quiet_gradio_tracebacks()
        access = "bearer token required" if cfg.token else "no token" + (" (--insecure)" if cfg.insecure else "")
        banner = (f"medge serve: model {model.sha256[:12]} ({', '.join(model.classes)}), self-test max |diff| "
                  f"{model.self_test_max_abs:.2g}; {cfg.inference_threads} inference thread(s), queue {cfg.queue}, "
                  f"uploads up to {cfg.max_upload_mb:g} MB; {access}")
        serve(app, sock, cfg, banner)
    finally:
        sock.close()
        if service is not None:
            service.close()
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
    print("medge serve: stopped", file=sys.stderr, flush=True)
    return 0
