"""`ltrec serve`: a real server on a loopback port, real HTTP. Answers equal `ltrec predict`'s, the popularity
fallback, one 4xx per kind of bad request, 503 + Retry-After on a full queue, metrics, SIGTERM, no torch."""

from __future__ import annotations

import csv
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from test_export import ok, train_run, write_events
from typer.testing import CliRunner

import ltrec
from ltrec.cli import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


class Server:
    """`python -m ltrec serve BUNDLE --port 0 ...` in a subprocess; its stderr goes to a file (a pipe nobody
    reads could fill and stall it)."""

    def __init__(self, bundle: Path, log: Path, *args, env: dict | None = None):
        env = {
            **{k: v for k, v in os.environ.items() if k != "LTREC_API_KEY"},  # a key only where a test sets one
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            **(env or {}),
        }
        self.log = log
        with open(log, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ltrec", "serve", str(bundle), "--port", "0", *map(str, args)],
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=env,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = re.search(r"on http://127\.0\.0\.1:(\d+)", log.read_text())
            if found and "startup complete" in log.read_text():
                self.port = int(found.group(1))
                return
            assert self.proc.poll() is None, log.read_text()
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"the server did not start in 60 s: {log.read_text()}")

    def request(self, method: str, path: str, body=None, headers=None, timeout: float = 30):
        """(status, headers, parsed JSON or text) of one request on a new connection."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            data = (
                body
                if body is None or isinstance(body, bytes) or hasattr(body, "__next__")
                else json.dumps(body).encode()
            )
            conn.request(method, path, body=data, headers=headers or {}, encode_chunked=hasattr(data, "__next__"))
            r = conn.getresponse()
            text = r.read().decode()
            is_json = r.getheader("content-type", "").startswith("application/json")
            return r.status, dict(r.getheaders()), json.loads(text) if is_json else text
        finally:
            conn.close()

    def post(self, path: str, body, **kw):
        return self.request("POST", path, body, **kw)

    def metric(self, line: str) -> float:
        status, _, text = self.request("GET", "/metrics")
        assert status == 200
        found = [row for row in text.splitlines() if row.startswith(line + " ")]
        return float(found[0].split()[-1]) if found else 0.0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny GRU4Rec bundle (K = 10, exclude_seen true) and a server on it that waits 50 ms for a batch."""
    folder = tmp_path_factory.mktemp("serve")
    events = write_events(folder / "events.csv")
    run = train_run(folder, events, "gru4rec", epochs=1, dim=16)
    ok(["export", run, "--out", folder / "bundle", "--k", 10])
    server = Server(folder / "bundle", folder / "server.log", "--max-wait-ms", 50)
    yield {
        "bundle": folder / "bundle",
        "events": events,
        "server": server,
        "folder": folder,
        "meta": json.loads((folder / "bundle" / "bundle.json").read_text()),
    }
    server.stop()


def histories(events: Path) -> dict[str, list[tuple[str, int]]]:
    """user → [(item, time)] in file order."""
    out: dict[str, list[tuple[str, int]]] = {}
    with open(events, newline="") as f:
        for row in csv.DictReader(f):
            out.setdefault(row["user_id"], []).append((row["item_id"], int(row["timestamp"])))
    return out


def predicted(setup, users: dict[str, list[tuple[str, int]]], tmp_path: Path, *flags) -> dict[str, tuple]:
    """`ltrec predict` on these histories: user → (items, scores, source)."""
    rows = "".join(f"{u},{item},{t}\n" for u, events in users.items() for item, t in events)
    (tmp_path / "h.csv").write_text("user_id,item_id,timestamp\n" + rows)
    result = runner.invoke(
        app,
        [
            "predict",
            str(setup["bundle"]),
            "--input",
            str(tmp_path / "h.csv"),
            "--output",
            str(tmp_path / "p.csv"),
            *flags,
        ],
    )
    assert result.exit_code == 0, result.output
    out: dict[str, tuple] = {}
    with open(tmp_path / "p.csv", newline="") as f:
        for r in csv.DictReader(f):
            items, scores, _ = out.setdefault(r["user_id"], ([], [], r["source"]))
            items.append(r["item_id"])
            scores.append(float(r["score"]))
    return out


def concurrently(fn, args: list) -> list:
    """[fn(arg) for arg in args], all at once on threads."""
    out: list = [None] * len(args)
    threads = [threading.Thread(target=lambda j=j: out.__setitem__(j, fn(args[j]))) for j in range(len(args))]
    [t.start() for t in threads]
    [t.join(30) for t in threads]
    assert all(not t.is_alive() for t in threads)
    return out


def same(answer: dict, expected: tuple) -> None:
    items, scores, source = expected
    assert answer["items"] == items and answer["source"] == source
    np.testing.assert_allclose(answer["scores"], scores, rtol=1e-5)  # predict writes 6 significant digits


def test_answers_equal_predict(setup, tmp_path):
    users = dict(list(histories(setup["events"]).items())[:60])
    rng = np.random.default_rng(0)
    users["long"] = [(f"i{j}", t) for t, j in enumerate(rng.integers(1, 101, 300))]  # beyond max_len (50)
    users["mixed"] = [("i5", 1), ("nope", 2), ("i6", 3), ("nope2", 4)]
    users["ghost"] = [("nope", 1), ("nope3", 2)]
    server, vocab = setup["server"], set(setup["meta"]["vocab"])
    for flags, options in (((), {}), (("--include-seen", "--k", "5"), {"k": 5, "exclude_seen": False})):
        expected = predicted(setup, users, tmp_path, *flags)
        body = {"users": [{"history": [item for item, _ in events], **options} for events in users.values()]}
        status, _, got = server.post("/recommend/batch", body)
        assert status == 200, got
        for (user, events), answer in zip(users.items(), got["results"]):
            same(answer, expected[user])
            assert answer["unknown"] == sum(item not in vocab for item, _ in events)
        # one request each, concurrently (so micro-batched together), events shuffled but carrying their times
        bodies = {
            u: {
                "history": [{"item": users[u][j][0], "time": users[u][j][1]} for j in rng.permutation(len(users[u]))],
                **options,
            }
            for u in list(users)[-12:]
        }
        batches = server.metric("ltrec_batch_size_count")
        answers = concurrently(lambda body: server.post("/recommend", body)[2], list(bodies.values()))
        assert server.metric("ltrec_batch_size_count") - batches < len(bodies)
        for user, answer in zip(bodies, answers):
            same(answer, expected[user])


def test_popularity_fallback(setup):
    pop = np.asarray(setup["meta"]["popularity"])
    order = np.argsort(-pop, kind="stable")
    for history, unknown in (([], 0), (["nope", 17, 2.5], 3)):
        status, _, got = setup["server"].post("/recommend", {"history": history, "k": 4})
        assert status == 200 and got["source"] == "popularity" and got["unknown"] == unknown
        assert got["items"] == [setup["meta"]["vocab"][i] for i in order[:4]]
        np.testing.assert_allclose(got["scores"], pop[order[:4]] / pop.sum(), rtol=1e-6)


BIG = json.dumps({"history": ["i1"] * 300_000}).encode()  # 1.8 MB
BAD = [  # (path, body, status, part of the message)
    ("/recommend", b'{"history": [', 400, "not valid JSON"),
    ("/recommend", b"\xff\xff", 400, "not valid JSON"),
    ("/recommend", b"[" * 100_000, 400, "nested too deeply"),
    ("/recommend", [1, 2], 400, "expected a JSON object"),
    ("/recommend", {"history": "i1"}, 400, "history: expected a list"),
    ("/recommend", {}, 400, "history: expected a list"),
    ("/recommend", {"history": [["i1"]]}, 400, "history[0]: expected an item id"),
    ("/recommend", {"history": ["i1", {"item": "i2", "time": 1}]}, 400, "history[0]: expected an event"),
    ("/recommend", {"history": [{"item": "i2", "time": 1}, {"item": "i3", "time": "x"}]}, 400, "every time"),
    ("/recommend", {"history": [{"item": "i2"}]}, 400, "without time"),
    ("/recommend", {"history": ["i1"], "k": 0}, 400, "k: expected an integer 1..10"),
    ("/recommend", {"history": ["i1"], "k": 11}, 400, "got 11"),
    ("/recommend", {"history": ["i1"], "k": "5"}, 400, "got a string"),
    ("/recommend", {"history": ["i1"], "k": True}, 400, "got a boolean"),
    ("/recommend", {"history": ["i1"], "exclude_seen": "no"}, 400, "exclude_seen: expected true or false"),
    ("/recommend", {"history": ["i1"], "user": "u1"}, 400, '"user": unknown key'),
    ("/recommend", {"history": ["i1"] * 10_001}, 413, "over the limit of 10,000"),
    ("/recommend", BIG, 413, "over the limit of 1,048,576"),
    ("/recommend", iter([BIG[j : j + 65536] for j in range(0, 1_200_000, 65536)]), 413, "body over the limit"),
    ("/recommend/batch", {"history": []}, 400, '"history": unknown key (expected users)'),
    ("/recommend/batch", {"users": [{"history": []}] * 1001}, 413, "over this server's limit of 1,000"),
    ("/recommend/batch", {"users": [{"history": []}, 3]}, 400, "users[1]: expected an object"),
    ("/recommend/batch", {"users": [{"history": [], "k": 99}]}, 400, "users[0].k: expected"),
]


@pytest.mark.parametrize("path, body, status, message", BAD, ids=[f"{b[2]}-{b[3][:24]}" for b in BAD])
def test_bad_requests(setup, path, body, status, message):
    got_status, _, got = setup["server"].post(path, body)
    assert got_status == status and message in got["error"] and "\n" not in got["error"], got
    assert setup["server"].request("GET", "/health")[0] == 200  # still up


def test_other_endpoints(setup):
    server = setup["server"]
    assert server.request("GET", "/recommend")[0] == 405
    status, _, got = server.request("GET", "/nope")
    assert status == 404 and got == {"error": "Not Found"}
    assert server.request("GET", "/ready")[2] == {"status": "ready"}
    status, _, info = server.request("GET", "/info")
    assert status == 200 and info == {  # what docs/serving.md lists, and nothing else
        "backbone": "gru4rec",
        "n_items": setup["meta"]["n_items"],
        "max_len": 50,
        "k": 10,
        "columns": {"user": "user_id", "item": "item_id", "time": "timestamp"},
        "exclude_seen": True,
        "ltrec": ltrec.__version__,
    }


def test_keep_alive_answers_without_delay(setup):
    """With Nagle's algorithm on, each answer on a kept-alive connection waits ~40 ms for a delayed ACK."""
    conn = http.client.HTTPConnection("127.0.0.1", setup["server"].port, timeout=10)
    try:
        start = time.perf_counter()
        for _ in range(10):
            conn.request("GET", "/health")
            assert conn.getresponse().read() == b'{"status":"ok"}'
        assert time.perf_counter() - start < 0.3
    finally:
        conn.close()


def test_metrics_count_requests(setup):
    server = setup["server"]
    ok_line, bad_line = (f'ltrec_requests_total{{endpoint="/recommend",status="{s}"}}' for s in (200, 400))
    before_ok, before_bad = server.metric(ok_line), server.metric(bad_line)
    for _ in range(3):
        assert server.post("/recommend", {"history": ["i1"]})[0] == 200
    assert server.post("/recommend", {"history": 1})[0] == 400
    assert (server.metric(ok_line), server.metric(bad_line)) == (before_ok + 3, before_bad + 1)
    _, headers, text = server.request("GET", "/metrics")
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    for name in (
        'ltrec_request_duration_seconds_bucket{endpoint="/recommend",le="+Inf"}',
        'ltrec_batch_size_bucket{le="64"}',
        "ltrec_queue_rejections_total",
        "ltrec_queue_histories",
    ):
        assert name in text


def fire(server: Server, body: dict, results: list) -> threading.Thread:
    thread = threading.Thread(target=lambda: results.append(server.post("/recommend", body)))
    thread.start()
    return thread


def wait_queued(server: Server, n: int) -> None:
    deadline = time.monotonic() + 20
    while server.metric("ltrec_queue_histories") < n:
        assert time.monotonic() < deadline, "requests never reached the queue"
        time.sleep(0.05)


def test_queue_full_answers_503(setup):
    """A queue of 2 and batches that wait 2.5 s for company: a third history finds it full."""
    server = Server(setup["bundle"], setup["folder"] / "queue.log", "--max-queue", 2, "--max-wait-ms", 2500)
    try:
        results: list = []
        threads = [fire(server, {"history": ["i1", "i2"]}, results) for _ in range(2)]
        wait_queued(server, 2)
        status, headers, got = server.post("/recommend", {"history": ["i3"]})
        assert status == 503 and headers["retry-after"] == "1" and "queue full" in got["error"]
        assert server.post("/recommend", {"history": []})[0] == 200  # popularity needs no queue
        assert server.post("/recommend/batch", {"users": [{"history": []}] * 3})[0] == 413  # could never fit
        [t.join(30) for t in threads]
        assert [r[0] for r in results] == [200, 200] and results[0][2] == results[1][2]
        assert server.metric("ltrec_queue_rejections_total") == 1
        assert (server.metric("ltrec_batch_size_count"), server.metric("ltrec_batch_size_sum")) == (1, 2)
    finally:
        server.stop()


def test_sigterm_finishes_in_flight_requests(setup):
    server = Server(setup["bundle"], setup["folder"] / "term.log", "--max-wait-ms", 1000)
    try:
        results: list = []
        thread = fire(server, {"history": ["i1", "i2"], "k": 3}, results)
        wait_queued(server, 1)
        server.proc.send_signal(signal.SIGTERM)
        thread.join(30)
        assert results and results[0][0] == 200 and len(results[0][2]["items"]) == 3
        server.proc.wait(timeout=20)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", server.port), timeout=2).close()
    finally:
        server.stop()


def test_workers(setup):
    """--workers 2: each process loads the bundle (its settings come through the environment), same answers."""
    body = {"history": ["i1", "i2", "i3"], "k": 5}
    expected = setup["server"].post("/recommend", body)
    server = Server(setup["bundle"], setup["folder"] / "workers.log", "--workers", 2, "--max-queue", 8)
    try:
        assert [server.post("/recommend", body)[::2] for _ in range(4)] == [expected[::2]] * 4
        status, _, got = server.post("/recommend/batch", {"users": [{"history": []}] * 9})
        assert status == 413 and "limit of 8 per request" in got["error"]  # --max-queue reached each worker
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(timeout=30)
    finally:
        server.stop()


def test_bad_bundle_or_port_exit_2(setup, tmp_path):
    r = runner.invoke(app, ["serve", str(tmp_path / "missing")])
    assert r.exit_code == 2 and "no bundle.json" in r.output and len(r.output.strip().splitlines()) == 1
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        r = runner.invoke(app, ["serve", str(setup["bundle"]), "--port", str(taken.getsockname()[1])])
    assert r.exit_code == 2 and "cannot listen there" in r.output, r.output


def test_serve_never_imports_torch(setup):
    code = (
        "import sys\nfrom pathlib import Path\nimport ltrec.cli\nfrom ltrec.deploy.bundle import load_bundle\n"
        "from ltrec.deploy.serve.app import create_app\n"
        f"create_app(load_bundle(Path({str(setup['bundle'])!r})))\nprint('torch' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.splitlines()[-1] == "False"
