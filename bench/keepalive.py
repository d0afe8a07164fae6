"""A lean HTTP/1.1 load client: pre-encoded requests over one keep-alive connection.

The benchmarks run their clients on the cores the server uses, so every core-millisecond a
client spends is taken from the server being measured. A general client library spends
about 0.6 core-ms per request here (measured with 16 threads sending single-image
``/embed`` requests); this one sends bytes encoded before the clock starts and reads the
answer by its ``Content-Length``, which leaves the cores to the server. It understands
only what the service sends to these requests: answers framed by ``Content-Length``, and
``Connection: close`` (after which it reconnects).
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit


class ProtocolError(OSError):
    """An answer this client cannot frame (no ``Content-Length``), or a connection closed
    mid-answer."""


def encode_request(
    method: str, base_url: str, path: str, headers: dict[str, str], body: bytes = b""
) -> bytes:
    """The bytes of one HTTP/1.1 request, with ``Host`` and ``Content-Length`` added."""
    lines = [f"{method} {path} HTTP/1.1", f"host: {urlsplit(base_url).netloc}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class KeepAliveConnection:
    """One connection to ``base_url`` (``http://host:port``), opened on first use and
    reopened after the server closes it. Use as a context manager; not thread-safe."""

    def __init__(self, base_url: str, timeout: float = 60.0) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or parts.hostname is None or parts.port is None:
            raise ValueError(f"need http://host:port, not {base_url!r}")
        self.address = (parts.hostname, parts.port)
        self.timeout = timeout
        self._socket: socket.socket | None = None
        self._buffer = b""

    def __enter__(self) -> KeepAliveConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        self._buffer = b""

    def send(self, request: bytes) -> tuple[int, bytes]:
        """Sends one request (from :func:`encode_request`) and returns the answer's status
        and body."""
        if self._socket is None:
            self._socket = socket.create_connection(self.address, timeout=self.timeout)
            self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self._socket.sendall(request)
            head = self._read_until(b"\r\n\r\n")
            status, length, closing = _parse_head(head)
            body = self._read_exactly(length)
        except OSError:
            self.close()
            raise
        if closing:
            self.close()
        return status, body

    def _receive(self) -> None:
        assert self._socket is not None
        chunk = self._socket.recv(65536)
        if not chunk:
            raise ProtocolError("the server closed the connection mid-answer")
        self._buffer += chunk

    def _read_until(self, marker: bytes) -> bytes:
        while (end := self._buffer.find(marker)) < 0:
            self._receive()
        head, self._buffer = self._buffer[:end], self._buffer[end + len(marker) :]
        return head

    def _read_exactly(self, length: int) -> bytes:
        while len(self._buffer) < length:
            self._receive()
        body, self._buffer = self._buffer[:length], self._buffer[length:]
        return body


def _parse_head(head: bytes) -> tuple[int, int, bool]:
    """Status, ``Content-Length`` and whether the server closes the connection."""
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split(" ", 2)[1])
    length: int | None = None
    closing = False
    for line in header_lines:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "connection":
            closing = value.strip().lower() == "close"
    if length is None:
        raise ProtocolError("the answer has no Content-Length")
    return status, length, closing
