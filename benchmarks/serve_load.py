"""Load on ``medge serve``'s API: requests/s, p50/p99 latency and errors for 1, 4 and 16 concurrent clients.

Usage: python -m medge.benchmarks.serve_load --model bundles/xray --make 16 --seconds 30 --out serve_load.json
       python -m medge.benchmarks.serve_load --from serve_load.json --readme benchmarks/results/README.md

Starts ``medge serve`` on a free port (its defaults: one inference thread per core, a
queue of 16) unless ``--url`` names a running server, then for each concurrency level
runs that many client threads for ``--seconds``, each posting the test files in turn
over its own keep-alive connection. A request's latency runs from its first byte sent
to the last byte of the answer: upload, queue, read, preprocessing, inference and the
answer. requests/s counts answers with status 200; every other status is counted by
code (503 = overloaded: the client moves on to its next request). Every 200 answer's
probabilities are compared with ``Model.predict`` on the same file here (a difference
is counted as an error). ``--make N`` writes N 2048x2048 radiograph-like PNGs (half
16-bit); ``--images DIR`` uses yours.
"""
from __future__ import annotations

import http.client
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from medge.benchmarks.common import add_out_arguments, check_outputs, emit, environment, research_parser
from medge.benchmarks.edge_throughput import make_images
from medge.edge.inputs.scanning import scan_inputs
from medge.edge.model import Model
from medge.edge.numeric import latency_summary

LEVELS = (1, 4, 16)
MARKERS = ("<!-- serve-load:start -->", "<!-- serve-load:end -->")


def start_server(bundle: str, extra_args: list[str]) -> tuple[subprocess.Popen, str]:
    """``medge serve --port 0`` in a subprocess; returns it and its URL once it listens."""
    proc = subprocess.Popen([sys.executable, "-m", "medge", "serve", "--model", bundle, "--port", "0", *extra_args],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True)
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if m := re.search(r"listening on (http://\S+?)/ ", line):
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()  # keep the pipe drained
            return proc, m.group(1)
    raise RuntimeError("medge serve did not start:\n" + "".join(lines))


def multipart(name: str, data: bytes) -> tuple[bytes, str]:
    boundary = secrets.token_hex(16)
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def client(url: str, token: str | None, bodies, expected, stop_at: float, out: list) -> None:
    """Post bodies in turn until ``stop_at``; append (latency_ms, status, ok) per request."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=120)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    i = 0
    while time.perf_counter() < stop_at:
        name, body, ctype = bodies[i % len(bodies)]
        i += 1
        t0 = time.perf_counter()
        try:
            conn.request("POST", "/api/v1/predict", body=body, headers={**headers, "Content-Type": ctype})
            resp = conn.getresponse()
            payload = resp.read()
            status = resp.status
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=120)
            out.append(((time.perf_counter() - t0) * 1000, "connection", False))
            continue
        ms = (time.perf_counter() - t0) * 1000
        ok = status == 200 and json.loads(payload)["probabilities"] == expected[name]
        out.append((ms, status if ok or status != 200 else "mismatch", ok))
    conn.close()


def run_level(url, token, bodies, expected, clients: int, seconds: float) -> dict:
    results: list[list] = [[] for _ in range(clients)]
    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(url, token, bodies, expected, t0 + seconds, results[i]))
               for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    done = [r for rs in results for r in rs]
    ok_ms = [ms for ms, _, ok in done if ok]
    errors: dict[str, int] = {}
    for _, status, ok in done:
        if not ok:
            errors[str(status)] = errors.get(str(status), 0) + 1
    return {"clients": clients, "seconds": wall, "requests": len(done), "ok": len(ok_ms), "errors": errors,
            "requests_per_s": len(ok_ms) / wall, "latency_ms": latency_summary(ok_ms)}


def measure(bundle: str, paths: list[str], seconds: float, levels=LEVELS, url: str | None = None,
            token: str | None = None, server_args: list[str] | None = None) -> dict:
    model = Model.load(bundle)
    expected = {Path(p).name: pred.probabilities for p, pred in zip(paths, model.predict(paths), strict=True)}
    bodies = []
    for p in paths:
        body, ctype = multipart(Path(p).name, Path(p).read_bytes())
        bodies.append((Path(p).name, body, ctype))
    proc = None
    if url is None:
        proc, url = start_server(bundle, server_args or [])
    try:
        run_level(url, token, bodies, expected, 1, min(2.0, seconds))  # warm-up
        rows = [run_level(url, token, bodies, expected, n, seconds) for n in levels]
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    sizes = [os.path.getsize(p) for p in paths]
    return {"benchmark": "serve_load", "environment": environment(), "model_sha256": model.sha256,
            "input_size": list(model.chw), "server_args": server_args or [], "external_server": proc is None,
            "files": len(paths), "mean_file_mb": sum(sizes) / len(sizes) / 2**20, "seconds_per_level": seconds,
            "levels": rows}


def table(record: dict) -> str:
    """The README table, generated from a record."""
    env = record["environment"]
    lines = [f"`medge serve` on {env['cpu']}, {env['cores']} cores, OpenCV {env['opencv']}; {record['files']} files of "
             f"{record['mean_file_mb']:.1f} MB on average, model input {'x'.join(map(str, record['input_size']))}, "
             f"{record['seconds_per_level']:g} s per level; git {env['git_revision']}.",
             "", "| clients | requests/s | p50 ms | p99 ms | answers | errors |", "| ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in record["levels"]:
        errors = ", ".join(f"{k}: {v}" for k, v in sorted(r["errors"].items())) or "none"
        lat = r["latency_ms"]
        lines.append(f"| {r['clients']} | {r['requests_per_s']:.1f} | {lat['p50_ms']:.1f} | {lat['p99_ms']:.1f} | "
                     f"{r['requests']} | {errors} |")
    return "\n".join(lines)


def write_readme(readme: str, record: dict, command: str) -> None:
    """Replace the README's serve-load section with the table (``report.replace_section``)."""
    from medge.benchmarks.report import replace_section

    replace_section(Path(readme), "serve-load", table(record), command)


def main(argv=None) -> int:
    p = research_parser(__doc__)
    p.add_argument("--model", help="bundle folder")
    p.add_argument("--make", type=int, default=16, help="write this many 2048x2048 test PNGs (default: %(default)s)")
    p.add_argument("--size", type=int, default=2048, help="side of the --make images (default: %(default)s)")
    p.add_argument("--images", help="use the image files in this folder instead")
    p.add_argument("--seconds", type=float, default=30.0, help="duration of each level (default: %(default)s)")
    p.add_argument("--levels", default=",".join(map(str, LEVELS)), help="client counts (default: %(default)s)")
    p.add_argument("--url", help="an already running medge serve (default: start one)")
    p.add_argument("--token-file", help="bearer token for --url")
    p.add_argument("--server-args", default="", help="extra medge serve options, e.g. '--inference-threads 2'")
    add_out_arguments(p)
    p.add_argument("--from", dest="from_record", help="read a record instead of measuring")
    p.add_argument("--readme", help="replace the serve-load section of this README with the table")
    a = p.parse_args(argv)
    status = check_outputs("serve_load", a.overwrite, {"record": a.out})
    if status:
        return status
    if a.from_record:
        record = json.loads(Path(a.from_record).read_text(encoding="utf-8"))
    else:
        if not a.model:
            p.error("--model is required (or --from)")
        token = Path(a.token_file).read_text().splitlines()[0].strip() if a.token_file else None
        with tempfile.TemporaryDirectory() as tmp:
            paths = scan_inputs([a.images]).paths if a.images else make_images(tmp, a.make, a.size)
            record = measure(a.model, paths, a.seconds, [int(x) for x in a.levels.split(",")], a.url, token,
                             a.server_args.split())
        emit(record, a.out)
    print(table(record))
    if a.readme:
        source = a.out or a.from_record or "a record"
        write_readme(a.readme, record, f"python -m medge.benchmarks.serve_load --from {source} --readme {a.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
