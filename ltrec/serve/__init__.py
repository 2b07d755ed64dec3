"""`ltrec serve`: a bundle behind HTTP, with onnxruntime only (torch is never imported).

Starlette + uvicorn: Starlette is a small, well-kept ASGI toolkit, and the server needs nothing bigger (the
bodies are checked by hand into one-line messages, so no pydantic-model routing); uvicorn is the standard
ASGI server, with graceful shutdown on SIGTERM (in-flight requests finish) and multi-process workers.

Endpoints: POST /recommend, POST /recommend/batch, GET /health, /ready, /info, /metrics. Concurrent
requests are micro-batched into one onnxruntime call (ltrec/serve/batcher.py) and answered exactly as
`ltrec predict` would answer for the same histories.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

from ..bundle import load_bundle
from ..errors import UserError


def serve(bundle_path: Path, host: str = "127.0.0.1", port: int = 8000, workers: int = 1, max_batch: int = 64,
          max_wait_ms: float = 2.0, max_queue: int = 1024, threads: int = 0) -> None:
    """Load the bundle and listen (both fail as a UserError before anything is served), then serve until
    SIGTERM / Ctrl-C."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from .app import ENV, create_app

    if not threads and workers > 1:  # N sessions that each take every core would fight over them
        threads = max(1, len(os.sched_getaffinity(0)) // workers)
    bundle = load_bundle(bundle_path, threads)
    sock = _listen(host, port)
    port = sock.getsockname()[1]  # --port 0: the one the system chose
    settings = {"max_batch": max_batch, "max_wait_ms": max_wait_ms, "max_queue": max_queue}
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    print(f"ltrec serve: {bundle_path} ({bundle.meta.backbone}, {bundle.meta.n_items:,} items, top {bundle.meta.k}) "
          f"on {url} with {workers} worker{'s' if workers > 1 else ''}", file=sys.stderr, flush=True)
    # connections beyond the queue's worth answer 503 at once: each holds up to a body's worth of memory
    common = {"host": host, "port": port, "lifespan": "on", "access_log": False, "timeout_graceful_shutdown": 30,
              "limit_concurrency": max_queue + 256, "log_level": "info"}
    if workers == 1:
        uvicorn.Server(uvicorn.Config(create_app(bundle, **settings), **common)).run(sockets=[sock])
        return
    del bundle  # each worker process loads its own
    os.environ[ENV] = json.dumps({"bundle": str(bundle_path), "threads": threads, **settings})
    config = uvicorn.Config("ltrec.serve.app:from_env", factory=True, workers=workers, **common)
    Multiprocess(config, sockets=[sock]).run()


def _listen(host: str, port: int) -> socket.socket:
    try:
        # proto given explicitly: asyncio turns Nagle off (TCP_NODELAY) only on sockets that say IPPROTO_TCP,
        # and with Nagle on, a keep-alive client waits ~40 ms (delayed ACK) for every response's body
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:  # port taken, host not an address of this machine, no permission
        raise UserError(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc})") from None
    return sock
