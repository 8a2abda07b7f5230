"""A real HTTP server on 127.0.0.1 (a free port, a thread) that records every request.

Routes (any method):
- ``/ok`` -> 200
- ``/flaky/N`` -> 500 for the first N requests to that path, then 200
- ``/throttled`` -> 429 with ``Retry-After: 0`` the first time, then 200
- ``/status/CODE`` -> that status, body ``error body CODE``
- ``/redirect`` -> 302 to ``/ok``
- ``/hang`` -> holds the request until ``server.release`` is set, then 200

``server.wait_for(n)`` waits (bounded) until ``n`` requests arrived.
"""

from __future__ import annotations

import socket
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

#: The longest any test waits for something to happen (it normally takes milliseconds).
DEADLINE = 10.0


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes


class _Handler(BaseHTTPRequestHandler):
    server: RecordingServer

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def _reply(self, status: int, body: bytes = b"", **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        hits = self.server.record(
            Received(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        )
        kind, _, rest = self.path.strip("/").partition("/")
        if kind == "ok":
            self._reply(200, b"thanks")
        elif kind == "flaky" and hits <= int(rest):
            self._reply(500, b"not yet")
        elif kind == "throttled" and hits == 1:
            self._reply(429, b"slow down", Retry_After="0")
        elif kind in ("flaky", "throttled"):
            self._reply(200)
        elif kind == "status":
            self._reply(int(rest), f"error body {rest}".encode())
        elif kind == "redirect":
            self._reply(302, Location="/ok")
        elif kind == "hang":
            self.server.release.wait(DEADLINE * 3)
            self._reply(200)
        else:
            self._reply(404, b"no such route")

    do_POST = do_GET = do_PUT = _handle


class RecordingServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # a /hang handler may still be waiting at shutdown

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[Received] = []
        self.hits: Counter[str] = Counter()
        self.release = threading.Event()
        self._changed = threading.Condition()

    def record(self, request: Received) -> int:
        with self._changed:
            self.requests.append(request)
            self.hits[request.path] += 1
            self._changed.notify_all()
            return self.hits[request.path]

    def wait_for(self, count: int, timeout: float = DEADLINE) -> list[Received]:
        """The requests, once at least ``count`` arrived (fails the test after ``timeout``)."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.requests) >= count, timeout):
                got = len(self.requests)
                pytest.fail(f"{got} requests arrived within {timeout} s, not {count}")
            return list(self.requests)

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that gave up and hung up: not the server's problem

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


@pytest.fixture
def server() -> Iterator[RecordingServer]:
    srv = RecordingServer()
    thread = threading.Thread(target=srv.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.release.set()
        srv.shutdown()
        srv.server_close()
        thread.join()


@pytest.fixture
def refused_url() -> Iterator[str]:
    """A URL nobody answers: its port is bound but not listening, so connecting is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        host, port = sock.getsockname()
        yield f"http://{host}:{port}/events"
