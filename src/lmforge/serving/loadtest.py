"""Load test a classification server: ``lmforge bench serve`` (lmforge's server next to a naive
one).

Each server runs as its own process on a free 127.0.0.1 port, started the way a user starts it
(``python -m lmforge serve ...``, ``python -m lmforge.serving.naive ...``). Once ``/readyz``
answers, N asyncio clients (one keep-alive connection each) loop for a warm-up and then for a
bounded duration: take the next sentence, ``POST /v1/classify {"text": ...}``, record latency
and outcome. A request counts when it completes inside the measured window. The server's RSS is
sampled every second of that window; the slope of a least-squares line through the samples
makes "flat memory" a number (MB per minute).

The clients share the machine with the server, as they would in any single-box test: on a small
machine they take CPU from it, so absolute numbers are lower bounds; both servers pay the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

from lmforge.errors import LmforgeError

READY_TIMEOUT_S = 180.0  # loading torch + a model on a busy 2-core box takes ~10 s; leave room
REQUEST_TIMEOUT_S = 60.0  # a request slower than this is an error, not a latency sample


@dataclass
class LoadResult:
    """What one server did under load (the fields of the table and of ``--json``)."""

    server: str
    clients: int
    duration_s: float
    requests: int
    throughput_rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    errors: dict[str, int] = field(
        default_factory=dict
    )  # kind ("HTTP 503", "ReadTimeout") -> count
    rss_start_mb: float = 0.0
    rss_end_mb: float = 0.0
    rss_peak_mb: float = 0.0
    rss_slope_mb_per_min: float = 0.0
    server_cpu_percent: float = 0.0  # of one core, over the window: shows what other load left it
    client_cpu_percent: float = 0.0  # the load-test clients' own share of the same CPUs

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "error_count": self.error_count}


@dataclass
class ServerSpec:
    """How to start one server: a name, the command for a port, and the headers its clients send."""

    name: str
    command: Callable[[int], list[str]]
    headers: dict[str, str] = field(default_factory=dict)


def lmforge_server(
    model: str, max_batch_size: int = 32, max_wait_ms: float = 5.0, precision: str = "auto"
) -> ServerSpec:
    """``lmforge serve`` with a fresh API key (as it runs in production: keys on)."""
    key = secrets.token_urlsafe(24)

    def command(port: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "lmforge",
            "serve",
            model,
            "--port",
            str(port),
            f"--api-key={key}",  # one argument: a key may start with '-'
            "--max-batch-size",
            str(max_batch_size),
            "--max-wait-ms",
            str(max_wait_ms),
            "--precision",
            precision,
        ]

    return ServerSpec("lmforge", command, {"Authorization": f"Bearer {key}"})


def naive_server(model: str) -> ServerSpec:
    """The baseline of :mod:`lmforge.serving.naive` (a pipeline call per request)."""
    return ServerSpec(
        "naive",
        lambda port: [sys.executable, "-m", "lmforge.serving.naive", model, "--port", str(port)],
    )


def free_port() -> int:
    """A port nothing listens on now (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ServerProcess:
    """A started server: its process, base URL and captured output."""

    spec: ServerSpec
    process: subprocess.Popen
    url: str
    output: Any  # a temporary file


@contextlib.contextmanager
def started_server(spec: ServerSpec) -> Iterator[ServerProcess]:
    """Start the server on a free port (not waiting for it); SIGTERM it on the way out.

    Its output goes to a temporary file rather than a pipe: an unread pipe fills up and
    blocks a server that logs every request.
    """
    port = free_port()
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(
            spec.command(port),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=os.environ.copy(),
        )
        try:
            yield ServerProcess(spec, process, f"http://127.0.0.1:{port}", output)
        finally:
            stop_server(process)


def wait_until_ready(server: ServerProcess, timeout: float = READY_TIMEOUT_S) -> None:
    """Poll ``/readyz``; a server that exits or stays unready is a one-line error with its last
    words."""
    name, process = server.spec.name, server.process
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2.0) as http:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise LmforgeError(
                    f"the {name} server exited (code {process.returncode}) before it was ready: "
                    f"{output_tail(server.output)}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if http.get(f"{server.url}/readyz").status_code == 200:
                    return
            time.sleep(0.25)
    raise LmforgeError(
        f"the {name} server was not ready after {timeout:.0f} s: {output_tail(server.output)}"
    )


def output_tail(output: Any, lines: int = 3) -> str:
    """The server's own error line if it printed one, else its last few lines, on one line."""
    output.flush()
    output.seek(0)
    text = output.read().decode("utf-8", errors="replace")
    rows = [row.strip() for row in text.splitlines() if row.strip()]
    errors = [row for row in rows if row.startswith("lmforge: error:")]
    tail = errors[-1:] or rows[-lines:]
    return " | ".join(tail)[-600:] or "(no output)"


def stop_server(process: subprocess.Popen, grace: float = 30.0) -> None:
    """SIGTERM (graceful: in-flight requests finish), then SIGKILL if it does not exit in time."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class _Record:
    ended: float
    seconds: float
    error: str | None


async def _client(
    http: httpx.AsyncClient,
    url: str,
    next_text: Callable[[], str],
    stop_at: float,
    records: list[_Record],
) -> None:
    """One user: a request at a time, the next as soon as the last is answered."""
    while time.perf_counter() < stop_at:
        started = time.perf_counter()
        try:
            response = await http.post(url, json={"text": next_text()})
            error = None if response.status_code == 200 else f"HTTP {response.status_code}"
        except httpx.HTTPError as err:
            error = type(err).__name__
        ended = time.perf_counter()
        records.append(_Record(ended, ended - started, error))


async def _sample_rss(
    pid: int, start_at: float, stop_at: float, samples: list[tuple[float, float]]
) -> None:
    """(time, RSS in MB) about every second from ``start_at`` to ``stop_at``, both ends included."""
    process = psutil.Process(pid)
    await asyncio.sleep(max(0.0, start_at - time.perf_counter()))
    while True:
        now = time.perf_counter()
        try:
            samples.append((now, process.memory_info().rss / 2**20))
        except psutil.NoSuchProcess:  # the server died: its clients record the errors
            return
        if now >= stop_at:
            return
        await asyncio.sleep(min(1.0, max(0.0, stop_at - now)))


async def drive(
    url: str,
    pid: int,
    texts: Sequence[str],
    clients: int,
    duration: float,
    warmup: float,
    headers: dict[str, str] | None = None,
    name: str = "server",
) -> LoadResult:
    """Run ``clients`` concurrent clients against ``url`` for ``warmup`` + ``duration`` seconds."""
    cycle = itertools.cycle(texts)  # one event loop: next() needs no lock
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    records: list[_Record] = []
    samples: list[tuple[float, float]] = []
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=REQUEST_TIMEOUT_S) as http:
        measure_from = time.perf_counter() + warmup
        stop_at = measure_from + duration
        sampler = asyncio.create_task(_sample_rss(pid, measure_from, stop_at, samples))
        cpu = asyncio.create_task(_cpu_percent(pid, measure_from, stop_at))
        progress = asyncio.create_task(
            _progress(name, measure_from - warmup, measure_from, stop_at, records)
        )
        await asyncio.gather(
            *(
                _client(http, f"{url}/v1/classify", cycle.__next__, stop_at, records)
                for _ in range(clients)
            )
        )
        await progress
        await sampler
        server_cpu, client_cpu = await cpu
    window = [r for r in records if measure_from <= r.ended <= stop_at]
    result = summarize(name, clients, duration, window, samples)
    result.server_cpu_percent, result.client_cpu_percent = server_cpu, client_cpu
    return result


async def _progress(
    name: str, began: float, measure_from: float, stop_at: float, records: list[_Record]
) -> None:
    """A bar of the seconds under load (warm-up included), with the requests answered so far."""
    from tqdm import tqdm

    with tqdm(
        total=round(stop_at - began), desc=f"{name} under load", unit="s", leave=False
    ) as bar:
        while (now := time.perf_counter()) < stop_at:
            await asyncio.sleep(min(1.0, stop_at - now))
            bar.n = min(bar.total, round(time.perf_counter() - began))
            bar.set_postfix_str(
                f"{len(records)} requests"
                + ("" if time.perf_counter() >= measure_from else ", warming up")
            )


async def _cpu_percent(pid: int, start_at: float, stop_at: float) -> tuple[float, float]:
    """CPU time of the server and of this process between the two moments, in % of one core."""
    server, me = psutil.Process(pid), psutil.Process()

    def seconds(process: psutil.Process) -> float:
        times = process.cpu_times()
        return times.user + times.system

    await asyncio.sleep(max(0.0, start_at - time.perf_counter()))
    began, server_0, me_0 = time.perf_counter(), seconds(server), seconds(me)
    await asyncio.sleep(max(0.0, stop_at - time.perf_counter()))
    elapsed = time.perf_counter() - began
    try:
        server_used = seconds(server) - server_0
    except psutil.NoSuchProcess:
        server_used = float("nan")
    return 100 * server_used / elapsed, 100 * (seconds(me) - me_0) / elapsed


def summarize(
    name: str,
    clients: int,
    duration: float,
    records: Sequence[_Record],
    samples: Sequence[tuple[float, float]],
) -> LoadResult:
    """Throughput and latency percentiles of the successful requests, errors by kind, memory."""
    ok_ms = np.array([1000 * r.seconds for r in records if r.error is None])
    p50, p95, p99 = np.percentile(ok_ms, [50, 95, 99]) if ok_ms.size else (float("nan"),) * 3
    errors = dict(Counter(r.error for r in records if r.error is not None))
    rss = [mb for _, mb in samples]
    slope = 0.0
    if len(samples) >= 2:  # MB per minute: the slope of the least-squares line through the samples
        minutes = np.array([t for t, _ in samples]) / 60.0
        slope = float(np.polyfit(minutes - minutes[0], np.array(rss), 1)[0])
    return LoadResult(
        server=name,
        clients=clients,
        duration_s=duration,
        requests=int(ok_ms.size),
        throughput_rps=ok_ms.size / duration,
        p50_ms=float(p50),
        p95_ms=float(p95),
        p99_ms=float(p99),
        errors=errors,
        rss_start_mb=rss[0] if rss else 0.0,
        rss_end_mb=rss[-1] if rss else 0.0,
        rss_peak_mb=max(rss, default=0.0),
        rss_slope_mb_per_min=slope,
    )


def bench_serve(
    model: str,
    texts: Sequence[str],
    clients: int = 32,
    duration: float = 60.0,
    warmup: float = 5.0,
    naive: bool = True,
    max_batch_size: int = 32,
    max_wait_ms: float = 5.0,
    precision: str = "auto",
) -> list[LoadResult]:
    """lmforge's server, then (unless ``naive`` is False) the naive baseline.

    Both load their models side by side (start-up is most of a short run's time), but they are
    measured one after the other, and each is stopped once measured: an idle server takes no
    CPU from the one under load.
    """
    if not texts:
        raise LmforgeError("no texts to send; give --texts a file with at least one text")
    if clients < 1 or duration <= 0 or warmup < 0:
        raise LmforgeError(
            f"--clients must be at least 1 and --duration above 0, --warmup 0 or more "
            f"(got {clients}, {duration}, {warmup})"
        )
    specs = [lmforge_server(model, max_batch_size, max_wait_ms, precision)]
    if naive:
        specs.append(naive_server(model))
    results = []
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(started_server(spec)) for spec in specs]
        for server in servers:
            wait_until_ready(server)
        for server in servers:
            results.append(
                asyncio.run(
                    drive(
                        server.url,
                        server.process.pid,
                        texts,
                        clients,
                        duration,
                        warmup,
                        server.spec.headers,
                        server.spec.name,
                    )
                )
            )
            stop_server(server.process)
    return results


def format_table(results: Sequence[LoadResult]) -> str:
    """A markdown table, a row per server, plus the lmforge/naive ratios when both ran."""
    lines = [
        "| server | clients | s | requests | req/s | p50 ms | p95 ms | p99 ms | errors | "
        "RSS start/end/peak MB | MB/min | CPU % server/clients |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        errors = ", ".join(f"{kind}: {n}" for kind, n in sorted(r.errors.items())) or "0"
        lines.append(
            f"| {r.server} | {r.clients} | {r.duration_s:g} | {r.requests} | "
            f"{r.throughput_rps:.1f} | "
            f"{r.p50_ms:.1f} | {r.p95_ms:.1f} | {r.p99_ms:.1f} | {errors} | "
            f"{r.rss_start_mb:.0f}/{r.rss_end_mb:.0f}/{r.rss_peak_mb:.0f} | "
            f"{r.rss_slope_mb_per_min:+.2f} | "
            f"{r.server_cpu_percent:.0f}/{r.client_cpu_percent:.0f} |"
        )
    ratios = comparison(results)
    if ratios:
        lines.append(
            f"\nlmforge / naive: throughput {ratios['throughput_ratio']:.2f}x, "
            f"p99 {ratios['p99_ratio']:.2f}x (below 1 is better)"
        )
    return "\n".join(lines) + "\n"


def comparison(results: Sequence[LoadResult]) -> dict[str, float]:
    """lmforge over naive, for throughput and p99 ({} unless both ran and answered)."""
    by_name = {r.server: r for r in results}
    ours, base = by_name.get("lmforge"), by_name.get("naive")
    if ours is None or base is None or not base.requests or not base.p99_ms:
        return {}
    return {
        "throughput_ratio": ours.throughput_rps / base.throughput_rps,
        "p99_ratio": ours.p99_ms / base.p99_ms,
    }


def write_json(results: Sequence[LoadResult], path: str | Path) -> Path:
    """The metrics of every server and the ratios, as JSON."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"servers": [r.as_dict() for r in results], **comparison(results)}
    out.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    return out
