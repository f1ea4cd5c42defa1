"""Load on the demo: N concurrent ``gradio_client`` clients, M ``/ask`` requests each, on loopback only.

    python -m bench.demo_load --setups 1:1 4:1 4:2 --requests 3     # quickstart exports
    python -m bench.demo_load --encoder EXPORT --bridge ADAPTER [--llm PATH] --out bench/results/demo_load.json
    python -m bench.demo_load --untrained-adapter       # no adapter export yet: one of the default shape

Starts ``sefar demo`` as a child process bound to 127.0.0.1 on a free port, waits until the page answers, then
runs the clients, each with its own ``gradio_client.Client``, asking about the bundled SynGym example clips in
turn. Reports errors (the goal is 0), request latency p50/p95/max, throughput and the peak resident memory of
the server process (sampled every 50 ms, children included). Counts and time are bounded: at most 32 clients
and 100 requests each, and requests not started before ``--time-limit`` are counted as not run. Prints a table
and writes JSON (atomically).
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


MAX_CLIENTS = 32
MAX_REQUESTS = 100
QUESTION = "Which element does the gymnast perform?"


@dataclass
class LoadResult:
    """What the clients saw: latencies of the answered requests (s) and the errors of the others."""

    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    not_run: int = 0
    wall_s: float = 0.0

    def summary(self) -> dict:
        lat = np.asarray(self.latencies) if self.latencies else np.asarray([np.nan])
        return {
            "answered": len(self.latencies),
            "errors": len(self.errors),
            "not_run": self.not_run,
            "p50_s": round(float(np.percentile(lat, 50)), 3),
            "p95_s": round(float(np.percentile(lat, 95)), 3),
            "max_s": round(float(np.max(lat)), 3),
            "requests_per_s": round(len(self.latencies) / self.wall_s, 3) if self.wall_s else 0.0,
            "wall_s": round(self.wall_s, 2),
            "error_samples": sorted(set(self.errors))[:5],
        }


def check_bounds(clients: int, requests: int) -> None:
    if not 1 <= clients <= MAX_CLIENTS or not 1 <= requests <= MAX_REQUESTS:
        raise SystemExit(f"error: --clients must be 1..{MAX_CLIENTS} and --requests 1..{MAX_REQUESTS}")


def check_loopback(url: str) -> None:
    host = urllib.parse.urlparse(url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"error: {url}: the load test only talks to loopback addresses")


def run_load(url: str, clips: list[Path], clients: int, requests: int, question: str = QUESTION,
             time_limit: float = 600.0) -> LoadResult:
    """``clients`` threads, each with its own client, ask ``requests`` questions in turn about ``clips``."""
    from gradio_client import Client, handle_file

    check_bounds(clients, requests)
    check_loopback(url)
    result, lock = LoadResult(), threading.Lock()
    deadline = time.monotonic() + time_limit

    def one_client(index: int) -> None:
        try:
            client = Client(url, verbose=False)
        except Exception as err:  # every request of this client fails the same way
            with lock:
                result.errors += [f"connect: {type(err).__name__}: {err}"] * requests
            return
        for r in range(requests):
            if time.monotonic() > deadline:
                with lock:
                    result.not_run += requests - r
                return
            clip = clips[(index + r) % len(clips)]
            start = time.perf_counter()
            try:
                answer = client.predict(handle_file(str(clip)), question, api_name="/ask")
                if not isinstance(answer, str):
                    raise TypeError(f"answer is {type(answer).__name__}, not str")
            except Exception as err:
                with lock:
                    result.errors.append(f"{type(err).__name__}: {' '.join(str(err).split())[:200]}")
                continue
            with lock:
                result.latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one_client, range(clients)))
    result.wall_s = time.perf_counter() - start
    return result


class PeakRSS:
    """Samples the resident memory of a process and its children every ``interval`` s in a thread."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        import psutil

        self.process, self.interval = psutil.Process(pid), interval
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> int:
        import psutil

        total = 0
        for p in [self.process, *self.process.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, server: subprocess.Popen, timeout: float) -> float:
    """Seconds until ``url`` answers HTTP 200; raises if the server exits or the time runs out."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if server.poll() is not None:
            raise SystemExit(f"error: the demo server exited with status {server.returncode} (see its output above)")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - start
        except OSError:
            pass
        time.sleep(0.25)
    raise SystemExit(f"error: the demo did not answer at {url} within {timeout:.0f} s")


def start_server(args: argparse.Namespace, port: int, examples_dir: Path, concurrency: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "sefar", "demo", "--host", "127.0.0.1", "--port", str(port),
               "--encoder", args.encoder, "--bridge", args.bridge, "--concurrency", str(concurrency),
               "--queue-size", "32", "--max-new-tokens", str(args.max_new_tokens),
               "--examples-dir", str(examples_dir)]
    if args.llm:
        command += ["--llm", args.llm]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL)


COLUMNS = ["clients", "requests", "concurrency", "answered", "errors", "not_run", "p50_s", "p95_s", "max_s",
           "requests_per_s", "peak_rss_mb", "ready_s"]


def parse_setup(text: str) -> tuple[int, int]:
    """``"4:2"`` -> 4 clients against a server with model concurrency 2."""
    try:
        clients, concurrency = (int(v) for v in text.split(":"))
    except ValueError:
        raise SystemExit(f"error: --setups {text!r}: write CLIENTS:CONCURRENCY, e.g. 4:2") from None
    if concurrency < 1:
        raise SystemExit(f"error: --setups {text!r}: concurrency must be at least 1")
    return clients, concurrency


def run_setup(args, clients: int, concurrency: int, clips: list[Path], examples: Path) -> dict:
    """One server start and one load run; the row of the table."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    server = start_server(args, port, examples, concurrency)
    try:
        with PeakRSS(server.pid) as rss:
            ready = wait_ready(url, server, args.ready_timeout)
            result = run_load(url, clips, clients, args.requests, args.question, args.time_limit)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return {"clients": clients, "requests": args.requests, "concurrency": concurrency, **result.summary(),
            "peak_rss_mb": round(rss.peak / 2**20, 1), "ready_s": round(ready, 1)}


def main(argv: list[str] | None = None) -> int:
    from sefar.demo_cmd import DEFAULT_ADAPTER_EXPORT, DEFAULT_ENCODER_EXPORT

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default=DEFAULT_ENCODER_EXPORT)
    parser.add_argument("--bridge", default=DEFAULT_ADAPTER_EXPORT)
    parser.add_argument("--llm", default=None)
    parser.add_argument("--untrained-adapter", action="store_true",
                        help="instead of --bridge: an untrained adapter of the default shape (same cost per request)")
    parser.add_argument("--setups", nargs="+", default=["1:1", "4:1", "4:2"], metavar="CLIENTS:CONCURRENCY",
                        help="one server run each: that many clients against that model concurrency limit")
    parser.add_argument("--requests", type=int, default=3, help="requests per client")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--question", default=QUESTION)
    parser.add_argument("--time-limit", type=float, default=600.0, help="seconds after which no request starts")
    parser.add_argument("--ready-timeout", type=float, default=300.0, help="seconds to wait for the server")
    parser.add_argument("--out", type=Path, default=Path("bench/results/demo_load.json"))
    args = parser.parse_args(argv)
    setups = [parse_setup(s) for s in args.setups]
    for clients, _ in setups:
        check_bounds(clients, args.requests)

    from common.results import Table, provenance, write_result
    from demo.examples import ensure_examples
    from demo.serve import untrained_adapter_export

    started = provenance()
    rows = []
    with tempfile.TemporaryDirectory(prefix="demo_load_") as tmp:
        clips = [path for _, path in ensure_examples(Path(tmp) / "examples")]
        if args.untrained_adapter:
            args.bridge = str(untrained_adapter_export(Path(tmp) / "adapter", args.encoder, args.llm))
        for clients, concurrency in setups:
            rows.append(run_setup(args, clients, concurrency, clips, Path(tmp) / "examples"))
            print({k: rows[-1][k] for k in COLUMNS}, flush=True)
    if args.untrained_adapter:
        args.bridge = "untrained (default shape)"
    table = Table("", COLUMNS, [[r[k] for k in COLUMNS] for r in rows])
    table.notes = (f"`sefar demo` in a child process on 127.0.0.1; each request is one `gradio_client` `/ask` call "
                   f"(upload an example clip, encode it, answer with at most {args.max_new_tokens} new tokens). "
                   f"Encoder {args.encoder}, adapter {args.bridge}. Peak RSS is the server's, children included; "
                   "ready_s is the time from start to the first page served.")
    report = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "rows": rows}
    write_result(args.out, "Demo under load", [table], report, started=started)
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
