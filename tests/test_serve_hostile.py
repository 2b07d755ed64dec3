"""`ltrec serve` against hostile clients, on a real server on a loopback port with raw sockets: clients that
never finish their headers or body, or never read their answer, are cut off while fast requests and /health
keep their 200s; past the caps the answer is JSON 503 with Retry-After; the API key; what /info shows."""

from __future__ import annotations

import json
import socket
import time

import pytest
from test_export import ok, train_run, write_events
from test_serve import Server
from typer.testing import CliRunner

from ltrec.cli import app
from ltrec.deploy.serve import _open_files
from ltrec.deploy.serve.app import Settings
from ltrec.deploy.serve.security import check_key, exposure_warning
from ltrec.files.errors import UserError

KEY = "k3y-For-tests_0123456789abcdefXYZ"
PARTIAL_HEADERS = b"GET /info HTTP/1.1\r\nHost: t\r\nX-Slow: "
PARTIAL_BODY = (
    b'POST /recommend HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"history": ['
)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    run = train_run(folder, write_events(folder / "events.csv"), "gru4rec", epochs=1, dim=16)
    ok(["export", run, "--out", folder / "bundle", "--k", 10])
    return folder / "bundle"


@pytest.fixture(scope="module")
def slow(bundle):
    """Clients get 2 s for their headers and 2 s for their body."""
    server = Server(bundle, bundle.parent / "slow.log", "--header-timeout", 2, "--body-timeout", 2)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def keyed(bundle):
    """The key from LTREC_API_KEY; --max-queue 1, so at most 257 requests in progress."""
    server = Server(bundle, bundle.parent / "keyed.log", "--max-queue", 1, env={"LTREC_API_KEY": KEY})
    yield server
    server.stop()


def opened(server: Server, data: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    if data:
        sock.sendall(data)
    return sock


def ending(sock: socket.socket, deadline: float) -> tuple[bytes, bool]:
    """(what the server sent, whether it closed the connection) by `deadline` (time.monotonic)."""
    data = b""
    try:
        while True:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = sock.recv(65536)
            if not chunk:
                return data, True
            data += chunk
    except TimeoutError:
        return data, False
    except ConnectionResetError:
        return data, True


def error_answer(data: bytes, status: int) -> dict:
    """The headers of a raw answer (lower-cased) with its JSON error; checks the status line and the JSON."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0].startswith(f"HTTP/1.1 {status} "), data[:200]
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    assert headers["content-type"] == "application/json"
    error = json.loads(body)["error"]
    assert isinstance(error, str) and "\n" not in error
    return {**headers, "error": error}


def until(check, seconds: float, step: float = 0.05):
    """check()'s first true answer within `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        got = check()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(step)


def test_slow_clients_are_cut_off_while_fast_ones_are_served(slow):
    t0 = time.monotonic()
    headers = [opened(slow, PARTIAL_HEADERS) for _ in range(150)]
    silent = [opened(slow) for _ in range(50)]
    bodies = [opened(slow, PARTIAL_BODY) for _ in range(100)]
    try:
        assert until(lambda: slow.metric("ltrec_connections_open") >= 301, 2)  # all 300 held, and the probe
        statuses = []
        while time.monotonic() - t0 < 1.2 and len(statuses) < 400:
            statuses += [
                slow.request("GET", "/health", timeout=5)[0],
                slow.post("/recommend", {"history": ["i1", "i2"], "k": 3}, timeout=5)[0],
            ]
        assert statuses and set(statuses) == {200}
        first, closed = ending(headers[0], time.monotonic() + 5)
        assert closed and time.monotonic() >= t0 + 2 - 0.05  # not before its time
        answer = error_answer(first, 408)
        assert answer["connection"] == "close" and "headers did not arrive within 2 s" in answer["error"]
        deadline = time.monotonic() + 4
        for sock in headers[1:]:
            data, closed = ending(sock, deadline)
            assert closed and "within 2 s" in error_answer(data, 408)["error"]
        assert all(ending(sock, deadline) == (b"", True) for sock in silent)  # nothing asked, nothing answered
        for sock in bodies:
            data, closed = ending(sock, deadline)
            assert closed and "body did not arrive within 2 s" in error_answer(data, 408)["error"]
    finally:
        [sock.close() for sock in headers + silent + bodies]
    for reason, n in (("header_timeout", 150), ("idle_timeout", 50), ("body_timeout", 100)):
        assert slow.metric(f'ltrec_connections_closed_total{{reason="{reason}"}}') >= n
    assert slow.request("GET", "/health")[0] == 200


def test_a_client_that_does_not_read_its_answer_is_cut_off(slow):
    before = slow.metric('ltrec_connections_closed_total{reason="send_timeout"}')
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window, never read: writes stall
    sock.connect(("127.0.0.1", slow.port))
    body = json.dumps({"users": [{"history": ["i1", "i2"], "exclude_seen": False}] * 1000}).encode()
    request = b"POST /recommend/batch HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    try:
        sock.settimeout(5)
        try:
            sock.sendall(request * 20)  # pipelined: 6 MB of answers, more than the kernel buffers
        except TimeoutError:  # the server stopped reading: it is writing answers nobody takes
            pass
        assert until(lambda: slow.metric('ltrec_connections_closed_total{reason="send_timeout"}') > before, 10)
        assert slow.request("GET", "/health")[0] == 200
    finally:
        sock.close()


NOT_HTTP = [b"\x00\x01 not http\r\n\r\n", b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n"]


@pytest.mark.parametrize("data", NOT_HTTP, ids=["garbage", "20KB-header"])
def test_what_is_not_http_gets_a_json_400(slow, data):
    sock = opened(slow, data)
    try:
        got, closed = ending(sock, time.monotonic() + 5)
        assert closed and "invalid HTTP request" in error_answer(got, 400)["error"]
    finally:
        sock.close()


def test_past_the_connection_cap(bundle):
    """--max-connections 20: the connection waiting longest for its request makes room for a new one; when
    all 20 have a request in progress, a new one gets JSON 503 + Retry-After, and /health still answers."""
    server = Server(bundle, bundle.parent / "cap.log", "--max-connections", 20, "--body-timeout", 2)
    waiting = []
    try:
        waiting = [opened(server, PARTIAL_HEADERS) for _ in range(40)]
        assert server.request("GET", "/health")[0] == 200
        deadline = time.monotonic() + 5
        evicted = [ending(sock, deadline) for sock in waiting[:21]]  # the 40 sockets and /health: 21 too many
        for data, closed in evicted:  # 408 if the server had read part of the request, else nothing to answer
            assert closed and (not data or "closed to make room" in error_answer(data, 408)["error"])
        assert ending(waiting[-1], time.monotonic() + 0.2) == (b"", False)  # the newest waits on
        [sock.close() for sock in waiting]
        assert until(lambda: server.metric("ltrec_connections_open") == 1, 5)  # the probe alone
        assert server.metric('ltrec_connections_closed_total{reason="evicted"}') >= 21

        waiting = [opened(server, PARTIAL_BODY) for _ in range(20)]

        def probe():
            # a probe accepted before the server has read a body's headers closes that connection as the one
            # waiting longest: open another in its place, and probe again
            waiting[:] = [sock if not ending(sock, 0)[1] else opened(server, PARTIAL_BODY) for sock in waiting]
            time.sleep(0.1)
            answer = server.request("GET", "/info")
            return answer[0] == 503 and answer

        refused = until(probe, 3)
        assert refused, "20 requests in progress, yet a 21st connection was served"
        _, headers, got = refused
        assert headers["retry-after"] == "1" and headers["connection"] == "close"
        assert "server busy (20 connections open" in got["error"]
        assert server.request("GET", "/health")[0] == 200
        deadline = time.monotonic() + 5
        assert all(ending(sock, deadline)[1] for sock in waiting)  # their 2 s ran out
        assert server.request("GET", "/info")[0] == 200
    finally:
        [sock.close() for sock in waiting]
        server.stop()
    assert "Traceback" not in server.log.read_text()


ROUTES = [
    ("GET", "/info", None),
    ("GET", "/metrics", None),
    ("GET", "/ready", None),
    ("POST", "/recommend", {"history": ["i1"]}),
    ("POST", "/recommend/batch", {"users": [{"history": []}]}),
]


def test_api_key(keyed):
    assert keyed.request("GET", "/health")[0] == 200  # no key needed
    for method, path, body in ROUTES:
        for headers, message in (
            ({}, "no API key"),
            ({"Authorization": "Bearer nope"}, "wrong API key"),
            ({"X-API-Key": KEY[:-1]}, "wrong API key"),
            ({"Authorization": KEY}, "wrong API key"),
            ({"Authorization": f"Bearer {KEY}x"}, "wrong API key"),
        ):
            status, got_headers, got = keyed.request(method, path, body, headers=headers)
            assert status == 401 and message in got["error"] and got_headers["www-authenticate"] == "Bearer"
        for headers in ({"Authorization": f"Bearer {KEY}"}, {"authorization": f"bearer {KEY}"}, {"X-API-Key": KEY}):
            assert keyed.request(method, path, body, headers=headers)[0] == 200, (path, headers)
    assert keyed.request("GET", "/nope")[0] == 401  # no key: not even which paths exist
    log = keyed.log.read_text()
    assert "API key required" in log and KEY not in log and "warning:" not in log


def test_past_the_cap_on_requests_in_progress(keyed):
    """--max-queue 1: 257 requests in progress (bodies on their way), then JSON 503 + Retry-After."""
    auth = f"Authorization: Bearer {KEY}\r\n".encode()
    waiting = [opened(keyed, PARTIAL_BODY.replace(b"Host: t\r\n", b"Host: t\r\n" + auth)) for _ in range(257)]
    try:
        refused = until(lambda: (r := keyed.request("GET", "/info", headers={"X-API-Key": KEY}))[0] == 503 and r, 5)
        assert refused, "257 requests in progress, yet another was served"
        _, headers, got = refused
        assert headers["retry-after"] == "1" and "server busy (257 requests in progress)" in got["error"]
        assert keyed.request("GET", "/health")[0] == 200
    finally:
        [sock.close() for sock in waiting]  # they leave mid-body: nobody to answer, nothing to log

    def left() -> bool:
        _, _, text = keyed.request("GET", "/metrics", headers={"X-API-Key": KEY})
        return 'ltrec_requests_total{endpoint="/recommend",status="499"} 257' in text

    assert until(left, 5), "257 clients left mid-body, counted as 499 (nginx's 'client closed request')"
    assert keyed.request("GET", "/info", headers={"X-API-Key": KEY})[0] == 200
    assert "Traceback" not in keyed.log.read_text()


def test_info_shows_no_server_paths(slow, bundle):
    status, _, info = slow.request("GET", "/info")
    assert status == 200 and sorted(info) == ["backbone", "columns", "exclude_seen", "k", "ltrec", "max_len", "n_items"]
    text = json.dumps(info)
    assert str(bundle) not in text and str(bundle.parent) not in text and "/" not in text


def test_warnings_and_key_checks():
    for address in ("0.0.0.0", "::", "192.168.1.7", "fe80::1%eth0"):
        line = exposure_warning(address, None)
        assert "no authentication and no TLS" in line and "--api-key" in line and "\n" not in line
        assert "without TLS" in exposure_warning(address, KEY) and KEY not in exposure_warning(address, KEY)
    for address in ("127.0.0.1", "127.0.0.9", "::1"):
        assert exposure_warning(address, None) is None
    assert check_key(None) == (None, []) and check_key(KEY) == (KEY, [])
    key, notes = check_key("short")
    assert key == "short" and "only 5 characters" in notes[0] and "short" not in notes[0]
    for bad in ("", "has space", "line\nbreak", "ключ" * 8):
        with pytest.raises(UserError) as caught:
            check_key(bad)
        assert (not bad or bad not in str(caught.value)) and "\n" not in str(caught.value)


def test_serve_prints_the_warning_on_a_reachable_address(bundle, monkeypatch, capsys):
    """Everything `ltrec serve` does up to serving, with 127.0.0.1 taken for an address others can reach."""
    import uvicorn

    import ltrec.deploy.serve
    import ltrec.deploy.serve.security

    monkeypatch.setattr(ltrec.deploy.serve.security, "is_loopback", lambda address: False)
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets: sockets[0].close())
    ltrec.deploy.serve.serve(bundle, port=0)
    err = capsys.readouterr().err
    assert "warning: listening on 127.0.0.1" in err and "no authentication and no TLS" in err
    ltrec.deploy.serve.serve(bundle, port=0, settings=Settings(api_key=KEY))
    err = capsys.readouterr().err
    assert "API key required" in err and "without TLS" in err and KEY not in err


def test_a_bad_key_exits_2_before_anything_starts(tmp_path):
    runner = CliRunner()
    for args, env in (([], {"LTREC_API_KEY": ""}), (["--api-key", "two words here"], {})):
        r = runner.invoke(app, ["serve", str(tmp_path / "missing"), *args], env=env)
        assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1 and "API_KEY" in r.output
        assert "two words" not in r.output


def test_open_files_are_raised_or_the_cap_lowered(monkeypatch):
    import resource

    limits = {"now": (1024, 2048)}
    monkeypatch.setattr(resource, "getrlimit", lambda kind: limits["now"])
    monkeypatch.setattr(resource, "setrlimit", lambda kind, value: limits.__setitem__("now", value))
    assert _open_files(512) == (512, None) and limits["now"] == (1024, 2048)  # enough already
    assert _open_files(1500) == (1500, None) and limits["now"] == (1756, 2048)  # raised
    got, note = _open_files(4096)
    assert limits["now"] == (2048, 2048) and got == 2048 - 256 and "serving at most 1,792 connections" in note
