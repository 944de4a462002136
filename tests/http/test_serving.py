"""`personaizer serve` against slow and greedy clients: a real server process, raw sockets.

The server runs with short limits (a 2 s read deadline, 3 s keep-alive, 4 connections) so that
each cut-off is seen within seconds. Timing bounds here are the behaviour under test, and
loose: cut off no earlier than the setting and well before a client trickling for ever would be.
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

BIN = Path(sys.executable).with_name("personaizer")
READ_TIMEOUT_S = 2.0
KEEP_ALIVE_S = 3
MAX_CONNECTIONS = 4
#: However loaded the machine, a cut-off comes within this long after it is due.
SLACK_S = 8.0


@dataclass
class Server:
    port: int
    log: Path

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONAIZER_")}
    env |= {
        "PERSONAIZER_REQUEST_READ_TIMEOUT_S": str(READ_TIMEOUT_S),
        "PERSONAIZER_KEEP_ALIVE_TIMEOUT_S": str(KEEP_ALIVE_S),
        "PERSONAIZER_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
    }
    data = tmp_path_factory.mktemp("serve")
    log = (data / "server.log").open("w")
    proc = subprocess.Popen(
        [str(BIN), "serve", "--port", str(port), "--data-dir", str(data)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                # /openapi.json answers before the model is loaded (/healthz does not).
                if httpx.get(f"http://127.0.0.1:{port}/openapi.json", timeout=2).is_success:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, (data / "server.log").read_text()
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
        yield Server(port, data / "server.log")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


class Answer:
    def __init__(self, response: http.client.HTTPResponse) -> None:
        self.status = response.status
        self.headers = response.headers
        self.body = response.read()


def request(sock: socket.socket, raw: bytes) -> Answer:
    sock.sendall(raw)
    response = http.client.HTTPResponse(sock)
    response.begin()
    return Answer(response)


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode()


def wait_closed(
    sock: socket.socket, *, trickle: bytes | None, within: float
) -> tuple[bytes, float]:
    """Send `trickle` every quarter second (or nothing) until the server closes the
    connection; returns what it sent back and how long that took."""
    started = time.monotonic()
    received = b""
    sock.settimeout(0.25)
    while time.monotonic() - started < within:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            if trickle is not None:
                try:
                    sock.sendall(trickle)
                except (BrokenPipeError, ConnectionResetError):
                    break
            continue
        except ConnectionResetError:
            break
        if not chunk:
            break
        received += chunk
    else:
        pytest.fail(f"still open after {within} s; received {received!r}")
    return received, time.monotonic() - started


def test_trickled_headers_are_cut_off_with_408(server: Server) -> None:
    with server.connect() as sock:
        sock.sendall(b"GET /openapi.json HTTP/1.1\r\nHost: t\r\n")
        received, took = wait_closed(
            sock, trickle=b"X-Slow: 1\r\n", within=READ_TIMEOUT_S + SLACK_S
        )
    assert took >= READ_TIMEOUT_S - 0.5
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), received
    assert b"application/problem+json" in head and b"Connection: close" in head
    problem = json.loads(body)
    assert problem["code"] == "request.timeout" and problem["status"] == 408
    assert problem["request_id"]


def test_a_trickled_body_is_cut_off(server: Server) -> None:
    with server.connect() as sock:
        sock.sendall(
            b"POST /login HTTP/1.1\r\nHost: t\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 10000\r\n\r\n"
        )
        received, took = wait_closed(sock, trickle=b"a", within=READ_TIMEOUT_S + SLACK_S)
    assert took >= READ_TIMEOUT_S - 0.5
    assert b"HTTP/1.1 2" not in received and b"HTTP/1.1 3" not in received
    # The app, left waiting for the body, sees the client go: logged as such, not as a crash.
    deadline = time.monotonic() + SLACK_S
    while "POST /login 499" not in server.log.read_text():
        assert time.monotonic() < deadline, server.log.read_text()
        time.sleep(0.1)
    assert "unhandled error" not in server.log.read_text()


def test_a_silent_connection_is_closed_after_the_keep_alive(server: Server) -> None:
    with server.connect() as sock:
        received, took = wait_closed(sock, trickle=None, within=KEEP_ALIVE_S + SLACK_S)
    assert received == b"" and took >= KEEP_ALIVE_S - 1


def test_requests_within_the_deadline_are_served(server: Server) -> None:
    with server.connect() as sock:
        # Headers in pieces, well within the deadline.
        for piece in (b"GET /openapi.json HTTP/1.1\r\n", b"Host: t\r\n", b"\r\n"):
            sock.sendall(piece)
            time.sleep(READ_TIMEOUT_S / 5)
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert response.status == 200 and json.loads(response.read())["openapi"]
        # The next request on the connection gets a deadline of its own; once it is read,
        # the idle connection ends at the keep-alive, quietly (no 408).
        assert request(sock, get("/problems/request.timeout")).status == 200
        received, took = wait_closed(sock, trickle=None, within=KEEP_ALIVE_S + SLACK_S)
    assert received == b"" and took >= KEEP_ALIVE_S - 1


def test_past_the_connection_limit_requests_get_503(server: Server) -> None:
    held = [server.connect() for _ in range(MAX_CONNECTIONS)]
    try:
        for sock in held:  # each one answered, so the server has them all
            assert request(sock, get("/problems")).status == 200
        with server.connect() as extra:
            answer = request(extra, get("/problems"))
            assert answer.status == 503
            assert answer.headers["content-type"] == "application/problem+json"
            assert answer.headers["retry-after"] == "1"
            assert answer.headers["connection"] == "close"
            assert json.loads(answer.body)["code"] == "server.unavailable"
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + SLACK_S
    while True:  # the server notices the closed connections
        with server.connect() as sock:
            if request(sock, get("/problems")).status == 200:
                break
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_malformed_or_oversized_requests_get_400_and_the_connection_closed(server: Server) -> None:
    """What the HTTP parser refuses never reaches the app and is answered 400 `request.malformed`
    as problem+json: a head over 16 KiB (in one header or many), an HTTP/1.1 request without
    Host, both Content-Length and Transfer-Encoding (request smuggling), folded header lines,
    bytes that are not HTTP. A head just under the bound is served."""
    refused = [
        b"GET /problems HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 17_000 + b"\r\n\r\n",
        b"GET /problems HTTP/1.1\r\nHost: t\r\n"
        + b"".join(b"X-%d: y\r\n" % i for i in range(3000))
        + b"\r\n",
        b"GET /problems HTTP/1.1\r\n\r\n",
        b"POST /api/knowledge/search HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET /problems HTTP/1.1\r\nHost: t\r\nX-A: y\r\n z\r\n\r\n",
    ]
    refused.append(b"\x00\x01 not http\r\n\r\n")
    for raw, served_before in itertools.product(refused, (False, True)):
        with server.connect() as sock:
            if served_before:  # the same on a connection that has served a request already
                assert request(sock, get("/problems")).status == 200
            answer = request(sock, raw)
            assert answer.status == 400, raw[:60]
            assert answer.headers["content-type"] == "application/problem+json"
            problem = json.loads(answer.body)
            assert problem["code"] == "request.malformed" and problem["status"] == 400
            received, _ = wait_closed(sock, trickle=None, within=SLACK_S)
            assert received == b""
    with server.connect() as sock:
        big = b"GET /problems HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 15_000 + b"\r\n\r\n"
        assert request(sock, big).status == 200


@pytest.mark.anyio
async def test_served_connections_send_without_waiting_for_acks() -> None:
    """The socket `serve` listens on yields connections with Nagle's algorithm off: with it on,
    each response after the first on a keep-alive connection waited for the client's delayed
    ACK (~40 ms a request)."""
    import asyncio

    from app.cli.serve import listen_socket

    nodelay: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    class Accept(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            conn = transport.get_extra_info("socket")
            nodelay.set_result(conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    sock = listen_socket("127.0.0.1", 0)
    server = await asyncio.get_running_loop().create_server(Accept, sock=sock)
    async with server:
        _, writer = await asyncio.open_connection(*sock.getsockname())
        assert await asyncio.wait_for(nodelay, 10) != 0
        writer.close()


def test_access_log_lines_cannot_be_forged(server: Server) -> None:
    """A path with an encoded line break (uvicorn decodes it into the path the access log
    writes) or a terminal escape stays inside its own, escaped, log line."""
    forged = "2000-01-01 00:00:00,000 INFO [-] personaizer.access: GET /forged 200 0.1ms"
    target = "/nowhere%0d%0a" + forged.replace(" ", "%20") + "%e2%80%a8x%1b[2Jy%c2%85z"
    with server.connect() as sock:
        assert request(sock, get(target)).status == 404
    deadline = time.monotonic() + SLACK_S
    while "/nowhere" not in server.log.read_text():
        assert time.monotonic() < deadline, server.log.read_text()
        time.sleep(0.1)
    text = server.log.read_text()
    (line,) = [line for line in text.splitlines() if "/nowhere" in line]
    assert "personaizer.access: GET /nowhere\\r\\n2000-01-01" in line
    assert line.endswith(" 404 " + line.rsplit(" ", 1)[1])  # the status ends the same line
    assert "\\u2028x\\x1b[2Jy\\x85z 404" in line
    assert not any(other.startswith("2000-01-01") for other in text.splitlines())


@pytest.mark.parametrize(
    "start",
    [
        b"GET /problems HTTP/1.1\r\nHost: t\r\nX-Endless: ",  # a header value
        b"GET /problems HTTP/1.1\r\nHost: t\r\nX-Endless",  # a header name
        b"GET /problems",  # the request line
    ],
    ids=["value", "name", "request-line"],
)
def test_a_head_that_never_ends_is_refused_as_it_passes_the_bound(
    server: Server, start: bytes
) -> None:
    """The 16 KiB bound holds while the head arrives, not only once a line ends: a header line
    that never ends is answered 400 and closed as soon as it passes the bound, long before the
    read deadline, instead of being buffered for as long as the client sends."""
    with server.connect() as sock:
        sock.sendall(start)
        started = time.monotonic()
        # 64 KiB in 4 KiB pieces, until the server answers: bytes still unread when it closes
        # would make the close a reset, which may discard its answer before it is read.
        received = b""
        sock.settimeout(0.05)
        for _ in range(16):
            try:
                sock.sendall(b"a" * 4096)
                received = sock.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                pass
            break
        rest, _ = wait_closed(sock, trickle=None, within=SLACK_S)
        received += rest
        took = time.monotonic() - started
    assert took < READ_TIMEOUT_S, took
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), received
    assert b"application/problem+json" in head and b"Connection: close" in head
    assert json.loads(body)["code"] == "request.malformed"


#: A large response any client may ask for: the GraphQL explorer's script (3.5 MB).
LARGE = "/static/graphiql/graphiql.min.js"


def test_a_client_that_never_reads_its_response_is_cut_off(server: Server) -> None:
    """A response the client does not take fills the socket's buffers, then the server's: past
    the write deadline (`PERSONAIZER_REQUEST_READ_TIMEOUT_S` with nothing taken) the connection
    is dropped, its buffer with it, rather than held for as long as the client likes. Others
    are served meanwhile."""
    size = len(httpx.get(f"http://127.0.0.1:{server.port}{LARGE}", timeout=10).content)
    assert size > 1_000_000
    sock = socket.socket()
    # A small receive window: the response backs up into the server at once.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", server.port))
    with sock:
        sock.sendall(get(LARGE) * 3)
        time.sleep(0.5)
        with server.connect() as other:  # the stalled connection holds no one else up
            assert request(other, get("/problems")).status == 200
        time.sleep(READ_TIMEOUT_S + 1.5)
        received = b""
        sock.settimeout(0.5)
        started = time.monotonic()
        while time.monotonic() - started < SLACK_S:
            try:
                chunk = sock.recv(1 << 20)
            except TimeoutError:
                pytest.fail(f"still open; {len(received)} bytes of {3 * size} taken")
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
    assert len(received) < size, len(received)
    deadline = time.monotonic() + SLACK_S
    while "took no part of its response" not in server.log.read_text():
        assert time.monotonic() < deadline, server.log.read_text()[-2000:]
        time.sleep(0.1)
