"""A real HTTP server on 127.0.0.1 (a free port, a thread) that the tests send requests to.

Routes:
- ``/json/NAME`` -> 200 JSON ``{"name", "method", "headers", "body"}`` (the request echoed)
- ``/text/NAME`` -> 200 ``text/plain`` ``hello NAME``
- ``/status/CODE`` -> that status, body ``error body CODE`` (``Retry-After: 7`` on 429/503)
- ``/flaky/KEY?fail=N`` -> 503 for the first N requests per KEY, then 200 JSON ``{"key", "hits"}``
- ``/slow`` -> 200 after 2 s
Every request is counted per path in ``server.hits``.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest


class _Handler(BaseHTTPRequestHandler):
    server: TestServer

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes, content_type: str, **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, value: object) -> None:
        self._send(status, json.dumps(value).encode(), "application/json")

    def _handle(self) -> None:
        parts = urlsplit(self.path)
        with self.server.lock:
            self.server.hits[parts.path] += 1
            hits = self.server.hits[parts.path]
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        kind, _, rest = parts.path.strip("/").partition("/")
        if kind == "json":
            self._json(
                200,
                {
                    "name": rest,
                    "method": self.command,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "body": json.loads(raw) if raw else None,
                },
            )
        elif kind == "text":
            self._send(200, f"hello {rest}".encode(), "text/plain; charset=utf-8")
        elif kind == "status":
            code = int(rest)
            extra = {"Retry_After": "7"} if code in (429, 503) else {}
            self._send(code, f"error body {code}".encode(), "text/plain", **extra)
        elif kind == "flaky":
            fail = int(parse_qs(parts.query).get("fail", ["1"])[0])
            if hits <= fail:
                self._send(503, b"busy, try later", "text/plain")
            else:
                self._json(200, {"key": rest, "hits": hits})
        elif kind == "throttle":
            # /throttle/KEY?after=N&wait=S: 429 with Retry-After: S for the first N hits.
            query = parse_qs(parts.query)
            if hits <= int(query.get("after", ["1"])[0]):
                wait = query.get("wait", ["3"])[0]
                self._send(429, b"slow down", "text/plain", Retry_After=wait)
            else:
                self._json(200, {"key": rest, "hits": hits})
        elif kind == "slow":
            time.sleep(2)
            self._json(200, {"slow": True})
        else:
            self._send(404, b"no such route", "text/plain")

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle


class TestServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # a /slow handler may still be sleeping at shutdown
    __test__ = False  # not a test class, despite the name

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hits: Counter[str] = Counter()
        self.lock = threading.Lock()

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that timed out and hung up: not the server's problem

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


@pytest.fixture
def server() -> Iterator[TestServer]:
    srv = TestServer()
    thread = threading.Thread(target=srv.serve_forever, args=(0.02,), name="test-http", daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join()
