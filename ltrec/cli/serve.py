"""`ltrec serve`: a bundle behind HTTP (the logic is in ltrec/deploy/serve/)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from ltrec.cli.app import app, fail
from ltrec.files.errors import UserError


@app.command()
def serve(
    bundle: Annotated[Path, typer.Argument(help="bundle directory written by `ltrec export`")],
    host: Annotated[
        str, typer.Option(help="address to listen on (0.0.0.0: every interface; the API has no TLS, see --api-key)")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="port (0: any free one)")] = 8000,
    workers: Annotated[int, typer.Option(min=1, max=256, help="processes, each with its own model")] = 1,
    max_batch: Annotated[int, typer.Option(min=1, max=4096, help="histories per onnxruntime call")] = 64,
    max_wait_ms: Annotated[
        float, typer.Option(min=0, max=10_000, help="how long a batch waits for more histories after its first")
    ] = 2.0,
    max_queue: Annotated[
        int,
        typer.Option(
            min=1, max=1_000_000, help="histories waiting or running, per worker; beyond it: 503 + Retry-After"
        ),
    ] = 1024,
    threads: Annotated[
        int, typer.Option(min=0, help="onnxruntime threads per worker (0: all cores, shared out among --workers)")
    ] = 0,
    header_timeout: Annotated[
        float,
        typer.Option(
            min=0.1,
            max=3600,
            help="seconds a client has to send a request's headers (from connecting, or from its "
            "previous answer); then the connection is closed, with 408 if a request was begun",
        ),
    ] = 10.0,
    body_timeout: Annotated[
        float,
        typer.Option(
            min=0.1,
            max=3600,
            help="seconds a client has to send a request's body after its headers, and at most "
            "to stall in reading its answer; then 408 if still possible, and the connection is closed",
        ),
    ] = 10.0,
    max_connections: Annotated[
        int,
        typer.Option(
            min=1,
            max=1_000_000,
            help="open connections per worker; a new one closes the one waiting longest for "
            "its request, or gets 503 + Retry-After if all are busy",
        ),
    ] = 4096,
    api_key: Annotated[
        str | None,
        typer.Option(
            show_default=False,
            help="require this key on every route but /health (Authorization: Bearer KEY or "
            "X-API-Key: KEY); default: $LTREC_API_KEY, which, unlike a flag, other users cannot see in the process "
            "list",
        ),
    ] = None,
) -> None:
    """Serve a bundle over HTTP: POST /recommend {"history": [...]}, with onnxruntime on CPU (no torch)."""
    try:
        from ltrec.deploy.serve import serve as run_server
        from ltrec.deploy.serve.app import Settings
        from ltrec.deploy.serve.security import KEY_ENV

        if api_key is None:  # read here, not by click, which takes an empty variable for an unset one
            api_key = os.environ.get(KEY_ENV)
        limits = Settings(max_batch, max_wait_ms, max_queue, header_timeout, body_timeout, max_connections, api_key)
        run_server(bundle, host, port, workers, threads, limits)
    except UserError as exc:
        fail(exc)
