"""Memory of a running ``lmforge monitor run`` under a steady push load: is it flat?

    python benchmarks/monitor_memory.py demo --minutes 10 --rate 20 \\
        --out benchmarks/results/monitor_memory.json

Starts the service as a child process on a free port (the config's built models), pushes
``--rate`` documents a second in batches of 10 (short news sentences with new ids and
timestamps one second apart), and reads the server's resident memory (``/proc/PID/status``,
VmRSS) every 5 s. Reports the median RSS of the second minute and of the last minute, and the
least-squares slope after the first two minutes (MB per 10 minutes); the first minutes are
warm-up (models, allocator, SQLite page cache).
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
DEMO_STREAM = ROOT / "src/lmforge/apps/monitor/data/demo_stream.jsonl"


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, bytes)."""
    xs, ys = zip(*points, strict=True)
    mx, my = statistics.mean(xs), statistics.mean(ys)
    return sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x in xs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="a monitor config whose models are built (or 'demo')")
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--rate", type=float, default=20, help="documents per second")
    parser.add_argument("--out")
    args = parser.parse_args()

    texts = [json.loads(line)["text"] for line in DEMO_STREAM.read_text().splitlines()]
    port = free_port()
    log = Path(tempfile.mkdtemp(prefix="monitor-memory-")) / "server.log"
    server = subprocess.Popen(
        [sys.executable, "-m", "lmforge.cli", "monitor", "run", args.config, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
    )
    base = f"http://127.0.0.1:{port}"
    client = httpx.Client(timeout=60)
    try:
        while server.poll() is None:
            try:
                if client.get(f"{base}/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            raise SystemExit(f"the service stopped: {log.read_text()[-1000:]}")
        start_moment = datetime.now(timezone.utc)
        started = time.monotonic()
        samples: list[tuple[float, int]] = []
        sent = stored = 0
        next_sample = 0.0
        while (elapsed := time.monotonic() - started) < args.minutes * 60:
            batch = [
                {
                    "id": f"mem-{sent + k}",
                    "timestamp": (start_moment + timedelta(seconds=sent + k)).isoformat(),
                    "text": texts[(sent + k) % len(texts)],
                }
                for k in range(10)
            ]
            answer = client.post(f"{base}/v1/monitor/documents", json={"documents": batch})
            answer.raise_for_status()
            stored += answer.json()["stored"]
            sent += len(batch)
            if elapsed >= next_sample:
                samples.append((elapsed, rss_bytes(server.pid)))
                next_sample += 5
            time.sleep(max(0.0, sent / args.rate - (time.monotonic() - started)))
    finally:
        server.terminate()
        server.wait(timeout=60)

    second = [b for t, b in samples if 60 <= t < 120]
    last = [b for t, b in samples if t >= args.minutes * 60 - 60]
    steady = [(t, b) for t, b in samples if t >= 120]
    result = {
        "config": args.config,
        "minutes": args.minutes,
        "documents_sent": sent,
        "documents_stored": stored,
        "rss_second_minute_mb": statistics.median(second) / 1e6,
        "rss_last_minute_mb": statistics.median(last) / 1e6,
        "slope_mb_per_10_min": slope(steady) * 600 / 1e6 if len(steady) > 2 else None,
        "samples": [(round(t, 1), b) for t, b in samples],
    }
    print(
        f"{stored} documents in {args.minutes:g} min: RSS {result['rss_second_minute_mb']:.0f} MB "
        f"(2nd minute) -> {result['rss_last_minute_mb']:.0f} MB (last minute), slope "
        f"{result['slope_mb_per_10_min']:.1f} MB / 10 min"
    )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
