"""The benchmarks' lean HTTP client against a real HTTP/1.1 server on loopback."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bench.keepalive import KeepAliveConnection, ProtocolError, encode_request


class Handler(BaseHTTPRequestHandler):
    """Echoes the request body, reversed; ``/close`` also closes, ``/unframed`` sends no
    ``Content-Length``; every answer carries the connection's number of requests so far."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        self.served = getattr(self, "served", 0) + 1
        answer = body[::-1] + b" #%d" % self.served
        self.send_response(201)
        if self.path != "/unframed":
            self.send_header("Content-Length", str(len(answer)))
        if self.path in ("/close", "/unframed"):
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def base_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_requests_share_one_connection(base_url: str) -> None:
    with KeepAliveConnection(base_url, timeout=5) as connection:
        first = connection.send(encode_request("POST", base_url, "/", {}, b"abc"))
        second = connection.send(encode_request("POST", base_url, "/", {}, b"xy"))
    assert first == (201, b"cba #1")
    assert second == (201, b"yx #2")  # the second request came on the same connection


def test_a_closed_connection_is_reopened(base_url: str) -> None:
    with KeepAliveConnection(base_url, timeout=5) as connection:
        assert connection.send(encode_request("POST", base_url, "/close", {}, b"ab")) == (
            201,
            b"ba #1",
        )
        assert connection.send(encode_request("POST", base_url, "/", {}, b"cd")) == (201, b"dc #1")


def test_an_answer_without_length_is_refused(base_url: str) -> None:
    with (
        KeepAliveConnection(base_url, timeout=5) as connection,
        pytest.raises(ProtocolError, match="Content-Length"),
    ):
        connection.send(encode_request("POST", base_url, "/unframed", {}, b"ab"))


def test_encoded_request_carries_host_headers_and_length() -> None:
    request = encode_request("POST", "http://127.0.0.1:8000", "/embed", {"accept": "x/y"}, b"hi")
    assert request == (
        b"POST /embed HTTP/1.1\r\nhost: 127.0.0.1:8000\r\naccept: x/y\r\n"
        b"content-length: 2\r\n\r\nhi"
    )
