"""Micro-batching: histories from concurrent requests share one onnxruntime call, made on a worker thread so
the event loop keeps answering. What a history gets is `ltrec predict`'s answer for it (same helpers)."""

from __future__ import annotations

import asyncio
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ltrec.deploy.bundle import Bundle
from ltrec.deploy.predict import Histories, model_top_k, popular_items
from ltrec.deploy.serve.prometheus import Metrics
from ltrec.deploy.serve.queries import Query


class QueueFull(Exception):
    pass


class Recommender:
    """A bundle's answers: the model for histories with a known item, popularity for the rest."""

    def __init__(self, bundle: Bundle):
        self.bundle = bundle
        self.popular, self.share = popular_items(bundle.meta.popularity, bundle.meta.k)

    def fallback(self, q: Query) -> dict:
        return self._answer(q, self.popular, self.share, "popularity")

    def model(self, queries: list[Query]) -> list[dict]:
        """One onnxruntime call for all of `queries` (each with a known item)."""
        lengths = np.array([len(q.known) for q in queries])
        h = Histories(
            np.arange(len(queries)),
            np.concatenate([q.known for q in queries]),
            np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        )
        items, scores = model_top_k(
            self.bundle, h, np.arange(len(queries)), np.array([q.exclude_seen for q in queries])
        )
        return [self._answer(q, items[j], scores[j], "model") for j, q in enumerate(queries)]

    def _answer(self, q: Query, items: np.ndarray, scores: np.ndarray, source: str) -> dict:
        items, scores = items[: q.k], scores[: q.k]
        keep = np.isfinite(scores)  # -inf: fewer than k items were left after excluding the history
        return {
            "items": self.bundle.vocab[items[keep] - 1].tolist(),
            "scores": scores[keep].tolist(),
            "source": source,
            "unknown": q.unknown,
        }


class Batcher:
    """Collects up to `max_batch` histories, waiting at most `max_wait` seconds after the first, then runs
    them together. At most `max_queue` histories are admitted (waiting or running) at any time: beyond that
    `submit` raises QueueFull at once, so memory stays bounded however fast requests come."""

    def __init__(self, recommender: Recommender, metrics: Metrics, max_batch: int, max_wait: float, max_queue: int):
        self.recommender, self.metrics = recommender, metrics
        self.max_batch, self.max_wait, self.max_queue = max_batch, max_wait, max_queue
        self.pending = 0
        self.waiting: deque[tuple[Query, asyncio.Future]] = deque()
        # one thread: batches run one after another, which is what lets the next one fill meanwhile
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="ltrec-onnx")
        self.wake: asyncio.Event | None = None
        self.task: asyncio.Task | None = None

    async def start(self) -> None:
        self.wake = asyncio.Event()
        await asyncio.get_running_loop().run_in_executor(  # the first run is slow: not a client's
            self.executor, self.recommender.model, [Query(np.ones(1, np.int64), 0, 1, True)]
        )
        self.task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        self.executor.shutdown(wait=True)

    async def submit(self, queries: list[Query]) -> list[dict]:
        if self.pending + len(queries) > self.max_queue:
            self.metrics.rejected += 1
            raise QueueFull
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in queries]
        self.pending += len(queries)
        self.waiting.extend(zip(queries, futures))
        self.wake.set()
        return await asyncio.gather(*futures)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._fill(loop)
            batch = [self.waiting.popleft() for _ in range(min(self.max_batch, len(self.waiting)))]
            try:
                answers = await loop.run_in_executor(self.executor, self.recommender.model, [q for q, _ in batch])
            except Exception as exc:  # answered as a 500 to these requests; the loop goes on
                answers = [exc] * len(batch)
            finally:
                self.pending -= len(batch)
                self.metrics.batch_sizes.observe(len(batch))
            for (_, future), answer in zip(batch, answers):
                if future.done():  # its request was cancelled (the client went away)
                    continue
                if isinstance(answer, Exception):
                    future.set_exception(answer)
                else:
                    future.set_result(answer)

    async def _fill(self, loop: asyncio.AbstractEventLoop) -> None:
        """Until a history waits, then until `max_batch` wait or `max_wait` has passed since."""
        while not self.waiting:
            self.wake.clear()
            await self.wake.wait()
        deadline = loop.time() + self.max_wait
        while len(self.waiting) < self.max_batch and (left := deadline - loop.time()) > 0:
            self.wake.clear()
            try:
                await asyncio.wait_for(self.wake.wait(), left)
            except asyncio.TimeoutError:
                break
