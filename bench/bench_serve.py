"""Serving load: throughput and p50 / p95 / p99 latency of `ltrec serve` under concurrent clients.

    .venv/bin/python bench/bench_serve.py [--requests 20000] [--seconds 120] [--bundle PATH ... | --out DIR]

SASRec and GRU4Rec bundles of Amazon Music (without --bundle: a 1-epoch run of recipes/sasrec-music.yaml and
recipes/gru4rec-music.yaml, trained and exported into --out, a temp folder by default; bundles already in
--out are reused, so a second measurement needs no training), each served with batching on
(--max-batch 64) and off (--max-batch 1), at 1, 8 and 64 concurrent keep-alive connections. Each request is
one real user's history from the data file. A cell stops after --requests requests or --seconds seconds,
whichever comes first, after a short warm-up. The server listens on 127.0.0.1 only and the client (asyncio,
one process) runs on the same machine, so they share its cores. Prints a Markdown table, the machine and
the command.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from machine import cpu_model  # bench/ is on sys.path when a script runs

ROOT = Path(__file__).resolve().parents[1]
MUSIC = ROOT.parent / "shared" / "data" / "amazon-music" / "interactions.csv"
CONCURRENCY = (1, 8, 64)
BATCHING = (("on", 64), ("off", 1))
TIMEOUT = 30.0  # seconds for one request before it counts as failed


def ltrec(*args, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "ltrec", *map(str, args)], env=env, check=True, **kw)


def train_bundles(data: Path, folder: Path, kinds: list[str]) -> list[Path]:
    out = []
    for kind in kinds:
        run, bundle = folder / kind, folder / f"{kind}-bundle"
        out.append(bundle)
        if (bundle / "bundle.json").is_file():
            continue
        print(f"training 1 epoch of recipes/{kind}-music.yaml → {run}", file=sys.stderr, flush=True)
        ltrec(
            "train",
            ROOT / "recipes" / f"{kind}-music.yaml",
            "--out",
            run,
            "--set",
            "train.epochs=1",
            "--set",
            f"data.source={data}",
            "--overwrite",
            stdout=subprocess.DEVNULL,
        )
        ltrec("export", run, "--out", bundle, stdout=subprocess.DEVNULL)
    return out


def request_bodies(data: Path, users: int = 5000) -> list[bytes]:
    """POST /recommend requests of real users: their items, oldest first (the server keeps the last max_len)."""
    events: dict[str, list[tuple[str, str]]] = {}
    with open(data, newline="") as f:
        for row in csv.DictReader(f):
            events.setdefault(row["user_id"], []).append((row["timestamp"], row["item_id"]))
    chosen = np.random.default_rng(0).permutation(sorted(events))[:users]
    return [
        json.dumps({"history": [item for _, item in sorted(events[u], key=lambda e: float(e[0]))]}).encode()
        for u in chosen
    ]


class Server:
    def __init__(self, bundle: Path, max_batch: int, log: Path):
        self.log = log
        with open(log, "wb") as err:  # a file, not a pipe: nobody reads uvicorn's log while it runs
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "ltrec",
                    "serve",
                    str(bundle),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "0",
                    "--max-batch",
                    str(max_batch),
                    "--max-wait-ms",
                    "2",
                ],
                stdout=subprocess.DEVNULL,
                stderr=err,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
        deadline = time.monotonic() + 120
        while "startup complete" not in log.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"ltrec serve did not start:\n{log.read_text()}")
            time.sleep(0.2)
        self.port = int(re.search(r"127\.0\.0\.1:(\d+)", log.read_text()).group(1))

    def stop(self) -> None:
        for end in (self.proc.terminate, self.proc.kill):  # SIGTERM first: it lets in-flight requests finish
            end()
            try:
                self.proc.wait(timeout=30)
                return
            except subprocess.TimeoutExpired:
                continue


async def _exchange(reader, writer, request: bytes) -> tuple[int, bytes]:
    writer.write(request)
    status = int((await reader.readline()).split()[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length)


async def load(
    port: int, method: str, path: str, bodies: list[bytes], concurrency: int, n: int, seconds: float
) -> tuple[list[float], int, float]:
    """(latencies in s, failures, wall s): `concurrency` connections send requests back to back until `n`
    have been sent or `seconds` have passed."""
    latencies: list[float] = []
    failures, sent = 0, 0
    start = time.perf_counter()

    async def client() -> None:
        nonlocal failures, sent
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            failures += 1
            return
        try:
            while sent < n and time.perf_counter() - start < seconds:
                body = bodies[sent % len(bodies)]
                sent += 1
                request = (
                    f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n"
                ).encode() + body
                t = time.perf_counter()
                status, _ = await asyncio.wait_for(_exchange(reader, writer, request), TIMEOUT)
                latencies.append(time.perf_counter() - t)
                failures += status != 200
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError, IndexError):
            failures += 1  # the connection is unusable now: this client stops
        finally:
            writer.close()

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies, failures, time.perf_counter() - start


def batch_stats(port: int) -> tuple[float, float]:
    """(histories, onnxruntime calls) so far, from /metrics."""
    _, text = asyncio.run(_once(port, b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"))
    found = dict(re.findall(r"^ltrec_batch_size_(sum|count) (\S+)$", text.decode(), re.MULTILINE))
    return float(found.get("sum", 0)), float(found.get("count", 0))


async def _once(port: int, request: bytes) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        return await asyncio.wait_for(_exchange(reader, writer, request), TIMEOUT)
    finally:
        writer.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=20_000, help="requests per cell (at most)")
    p.add_argument("--seconds", type=float, default=120.0, help="seconds per cell (at most)")
    p.add_argument("--bundle", type=Path, action="append", help="a bundle to serve (default: train two)")
    p.add_argument("--out", type=Path, help="where to train bundles, or find those trained before (default: temp)")
    p.add_argument("--models", default="sasrec,gru4rec", help="recipes to train (recipes/<model>-music.yaml)")
    p.add_argument("--data", type=Path, default=MUSIC, help="events the histories (and trained bundles) come from")
    args = p.parse_args()
    if args.requests < 1 or args.seconds <= 0:
        p.error("--requests and --seconds must be positive")
    bodies = request_bodies(args.data)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        bundles = args.bundle or train_bundles(args.data.resolve(), args.out or Path(tmp), args.models.split(","))
        for bundle in bundles:
            backbone = json.loads((bundle / "bundle.json").read_text())["backbone"]
            for batching, max_batch in BATCHING:
                server = Server(bundle, max_batch, Path(tmp) / "server.log")
                try:
                    asyncio.run(load(server.port, "POST", "/recommend", bodies, 8, min(200, args.requests), 30))
                    for concurrency in CONCURRENCY:
                        before = batch_stats(server.port)
                        lat, failed, wall = asyncio.run(
                            load(server.port, "POST", "/recommend", bodies, concurrency, args.requests, args.seconds)
                        )
                        histories, calls = np.subtract(batch_stats(server.port), before)
                        ms = np.percentile(np.asarray(lat) * 1e3, (50, 95, 99)) if lat else (np.nan,) * 3
                        rows.append(
                            (
                                backbone,
                                batching,
                                concurrency,
                                len(lat),
                                failed,
                                len(lat) / wall,
                                *ms,
                                histories / max(calls, 1),
                            )
                        )
                        print(
                            f"{backbone} batching {batching} concurrency {concurrency}: {rows[-1][5]:,.0f} req/s, "
                            f"p50 {ms[0]:.2f} ms",
                            file=sys.stderr,
                            flush=True,
                        )
                finally:
                    server.stop()

    import onnxruntime
    import starlette
    import uvicorn

    print(
        f"\n**Machine**: {cpu_model()}, os.cpu_count() = {os.cpu_count()} ({len(os.sched_getaffinity(0))} usable), "
        f"{platform.platform()}; Python {platform.python_version()}, onnxruntime {onnxruntime.__version__}, "
        f"starlette {starlette.__version__}, uvicorn {uvicorn.__version__}; load average at the end "
        f"{os.getloadavg()[0]:.1f}\n\n**Command**: `python {' '.join(sys.argv)}` (one server process, "
        "--max-wait-ms 2; the client runs on the same machine)\n"
    )
    print(
        "| model | batching | concurrency | requests | failed | req/s | p50 ms | p95 ms | p99 ms | histories per call |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for model, batching, conc, n, failed, rps, p50, p95, p99, per_call in rows:
        print(
            f"| {model} | {batching} | {conc} | {n:,} | {failed} | {rps:,.0f} | {p50:.2f} | {p95:.2f} | {p99:.2f} "
            f"| {per_call:.1f} |"
        )


if __name__ == "__main__":
    main()
