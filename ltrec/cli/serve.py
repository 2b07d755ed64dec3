"""`ltrec serve`: a bundle behind HTTP (the logic is in ltrec/serve/)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import UserError
from .app import app, fail


@app.command()
def serve(
    bundle: Annotated[Path, typer.Argument(help="bundle directory written by `ltrec export`")],
    host: Annotated[str, typer.Option(help="address to listen on (0.0.0.0: every interface)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="port (0: any free one)")] = 8000,
    workers: Annotated[int, typer.Option(min=1, max=256, help="processes, each with its own model")] = 1,
    max_batch: Annotated[int, typer.Option(min=1, max=4096, help="histories per onnxruntime call")] = 64,
    max_wait_ms: Annotated[float, typer.Option(
        min=0, max=10_000, help="how long a batch waits for more histories after its first")] = 2.0,
    max_queue: Annotated[int, typer.Option(
        min=1, max=1_000_000, help="histories waiting or running, per worker; beyond it: 503 + Retry-After")] = 1024,
    threads: Annotated[int, typer.Option(
        min=0, help="onnxruntime threads per worker (0: all cores, shared out among --workers)")] = 0,
) -> None:
    """Serve a bundle over HTTP: POST /recommend {"history": [...]}, with onnxruntime on CPU (no torch)."""
    try:
        from ..serve import serve as run_server

        run_server(bundle, host, port, workers, max_batch, max_wait_ms, max_queue, threads)
    except UserError as exc:
        fail(exc)
