"""`ltrec serve`: a bundle behind HTTP, with onnxruntime only (torch is never imported).

Starlette + uvicorn: Starlette is a small, well-kept ASGI toolkit, and the server needs nothing bigger (the
bodies are checked by hand into one-line messages, so no pydantic-model routing); uvicorn is the standard
ASGI server, with graceful shutdown on SIGTERM (in-flight requests finish) and multi-process workers.

Endpoints: POST /recommend, POST /recommend/batch, GET /health, /ready, /info, /metrics. Concurrent
requests are micro-batched into one onnxruntime call (ltrec/deploy/serve/batcher.py) and answered exactly as
`ltrec predict` would answer for the same histories. Slow or idle clients are cut off and open connections
capped (connections.py); the API key and the cap on requests in progress are middleware (guard.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import socket
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ltrec.deploy.bundle import load_bundle
from ltrec.deploy.serve.security import check_key, exposure_warning
from ltrec.files.errors import UserError

if TYPE_CHECKING:
    from ltrec.deploy.serve.app import Settings

SPARE_FILES = 256  # descriptors besides client connections: the bundle, onnxruntime, logs, the listener


def serve(
    bundle_path: Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    threads: int = 0,
    settings: Settings | None = None,
) -> None:
    """Load the bundle and listen (both fail as a UserError before anything is served), then serve until
    SIGTERM / Ctrl-C."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from ltrec.deploy.serve.app import ENV, Settings, create_app
    from ltrec.deploy.serve.connections import GuardedH11Protocol

    settings = settings or Settings()
    api_key, notes = check_key(settings.api_key)
    if not threads and workers > 1:  # N sessions that each take every core would fight over them
        threads = max(1, len(os.sched_getaffinity(0)) // workers)
    bundle = load_bundle(bundle_path, threads)
    sock = _listen(host, port)
    address, port = sock.getsockname()[:2]  # --port 0: the one the system chose
    max_connections, note = _open_files(settings.max_connections)
    settings = replace(settings, max_connections=max_connections, api_key=api_key)
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    print(
        f"ltrec serve: {bundle_path} ({bundle.meta.backbone}, {bundle.meta.n_items:,} items, top {bundle.meta.k}) "
        f"on {url} with {workers} worker{'s' if workers > 1 else ''}"
        f"{', API key required' if api_key else ''}",
        file=sys.stderr,
        flush=True,
    )
    for line in (*notes, note, exposure_warning(address, api_key)):
        if line:
            print(line, file=sys.stderr, flush=True)
    # uvicorn's own connection limit stays off: it counts idle connections too and answers in plain text
    common = {
        "host": host,
        "port": port,
        "lifespan": "on",
        "access_log": False,
        "timeout_graceful_shutdown": 30,
        "http": GuardedH11Protocol,
        "ws": "none",
        "log_level": "info",
    }
    if workers == 1:
        uvicorn.Server(uvicorn.Config(create_app(bundle, settings), **common)).run(sockets=[sock])
        return
    del bundle  # each worker process loads its own
    os.environ[ENV] = json.dumps({"bundle": str(bundle_path), "threads": threads, **asdict(settings)})
    config = uvicorn.Config("ltrec.deploy.serve.app:from_env", factory=True, workers=workers, **common)
    Multiprocess(config, sockets=[sock]).run()


def _open_files(max_connections: int) -> tuple[int, str | None]:
    """(the connections this process can hold, a note if fewer than asked): the soft limit on open files is
    raised as far as the hard one allows, as servers do (1,024 is a common default)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = max_connections + SPARE_FILES
    if soft != resource.RLIM_INFINITY and soft < need:
        raised = need if hard == resource.RLIM_INFINITY else min(need, hard)
        with contextlib.suppress(ValueError, OSError):  # a sandbox may refuse: then the soft limit it is
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
    if soft == resource.RLIM_INFINITY or soft >= need:
        return max_connections, None
    if soft - SPARE_FILES < 1:
        raise UserError(
            f"--max-connections {max_connections}: this system allows {soft} open files per process "
            "(ulimit -Hn), too few to serve; raise the limit"
        )
    return soft - SPARE_FILES, (
        f"note: --max-connections {max_connections}: this system allows {soft} open files "
        f"per process (ulimit -Hn); serving at most {soft - SPARE_FILES:,} connections"
    )


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
