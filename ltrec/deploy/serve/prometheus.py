"""`GET /metrics` in the Prometheus text format (0.0.4), kept by hand: a few counters and histograms do not
need a client library. Everything is updated on the event loop's thread, so no locks. With --workers N each
process counts its own requests (a scrape sees one of them)."""

from __future__ import annotations

import bisect
from collections import defaultdict

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)  # seconds
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
CLOSE_REASONS = ("idle_timeout", "header_timeout", "body_timeout", "send_timeout", "evicted")


class Histogram:
    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one: above every bucket (+Inf only)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value

    def lines(self, name: str, labels: str = "") -> list[str]:
        sep = "," if labels else ""
        out, total = [], 0
        for bound, count in zip((*map(_number, self.buckets), "+Inf"), self.counts):
            total += count
            out.append(f'{name}_bucket{{{labels}{sep}le="{bound}"}} {total}')
        braces = f"{{{labels}}}" if labels else ""
        return [*out, f"{name}_sum{braces} {_number(self.sum)}", f"{name}_count{braces} {total}"]


class Metrics:
    def __init__(self):
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.latency: dict[str, Histogram] = defaultdict(lambda: Histogram(LATENCY_BUCKETS))
        self.batch_sizes = Histogram(BATCH_BUCKETS)
        self.rejected = 0

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests[endpoint, status] += 1
        self.latency[endpoint].observe(seconds)

    def render(self, queued: int, connections) -> str:
        out = _head("ltrec_requests_total", "counter", "HTTP requests answered, by endpoint and status.")
        out += [
            f'ltrec_requests_total{{endpoint="{endpoint}",status="{status}"}} {n}'
            for (endpoint, status), n in sorted(self.requests.items())
        ]
        out += _head("ltrec_request_duration_seconds", "histogram", "Time from request to response, by endpoint.")
        for endpoint, hist in sorted(self.latency.items()):
            out += hist.lines("ltrec_request_duration_seconds", f'endpoint="{endpoint}"')
        out += _head("ltrec_batch_size", "histogram", "Histories per onnxruntime call.")
        out += self.batch_sizes.lines("ltrec_batch_size")
        gauges = (  # (name, type, help, value): one sample each
            (
                "ltrec_queue_rejections_total",
                "counter",
                "Requests answered 503 because the queue was full.",
                self.rejected,
            ),
            ("ltrec_queue_histories", "gauge", "Histories admitted and not yet answered (waiting or running).", queued),
            (
                "ltrec_busy_rejections_total",
                "counter",
                "Requests answered 503 because too many requests were in progress, or every open connection had one.",
                connections.refused,
            ),
            (
                "ltrec_requests_in_progress",
                "gauge",
                "Requests received and not yet answered (/health and /metrics aside).",
                connections.busy,
            ),
            ("ltrec_connections_open", "gauge", "Open client connections.", connections.open),
        )
        for name, kind, text, value in gauges:
            out += [*_head(name, kind, text), f"{name} {value}"]
        out += _head(
            "ltrec_connections_closed_total",
            "counter",
            "Connections the server closed, by reason: a deadline passed, or room was made for a new one.",
        )
        out += [
            f'ltrec_connections_closed_total{{reason="{reason}"}} {connections.closed[reason]}'
            for reason in CLOSE_REASONS
        ]
        return "\n".join(out) + "\n"


def _head(name: str, kind: str, text: str) -> list[str]:
    return [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]


def _number(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)
