"""Limits that only a real server shows: authentication before the body, body-size limits for
every way of sending a body, and slow clients (slowloris) that must not hold the server."""

from __future__ import annotations

import itertools
import select
import socket
import time
from collections.abc import Iterator

import pytest

from tests.server import ServerProcess

pytestmark = pytest.mark.slow

KEY = "s3cret"
LIMITS = {
    "EMBED_API_KEY": KEY,
    "EMBED_HEADER_TIMEOUT_S": "2",
    "EMBED_BODY_TIMEOUT_S": "4",
    "EMBED_BODY_IDLE_TIMEOUT_S": "2",
    "EMBED_MAX_CONCURRENT_UPLOADS": "2",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("limits")
    (tmp / "spool").mkdir()
    env = {**LIMITS, "TMPDIR": str(tmp / "spool")}  # where the server spools uploads
    process = ServerProcess(tmp / "data", tmp / "server.log", env).start()
    try:
        yield process
    finally:
        process.stop()


def connect(server: ServerProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def request_head(path: str, headers: dict[str, str], key: str | None = KEY) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    if key is not None:
        lines.append(f"X-API-Key: {key}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer.split(b" ", 2)[1])


def answer_within(sock: socket.socket, seconds: float) -> bytes:
    readable, _, _ = select.select([sock], [], [], seconds)
    assert readable, f"no answer within {seconds} s"
    return sock.recv(65536)


def trickle(sock: socket.socket, data: bytes, limit: float) -> bytes:
    """Sends ``data`` (repeated) one byte a second until the server answers or hangs up;
    fails if it is still waiting after ``limit`` seconds."""
    deadline = time.monotonic() + limit
    for byte in itertools.cycle(data):
        readable, _, _ = select.select([sock], [], [], 1.0)
        if readable:
            return sock.recv(65536)
        assert time.monotonic() < deadline, "the server is still waiting for the slow client"
        try:
            sock.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            return b""
    raise AssertionError("unreachable")


MULTIPART = "multipart/form-data; boundary=b"
LIMIT = 32 * 1024 * 1024  # the default EMBED_MAX_UPLOAD_MB
PART_HEAD = (
    b'--b\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n'
    b"Content-Type: image/png\r\n\r\n"
)


def test_unauthenticated_30mb_upload_gets_401_before_the_body(server: ServerProcess) -> None:
    size = 30 * 1024 * 1024
    with connect(server) as sock:
        head = {"Content-Type": MULTIPART, "Content-Length": str(size)}
        sock.sendall(request_head("/items", head, key=None) + b"\0" * 65536)
        answer = answer_within(sock, 5)
    assert status_of(answer) == 401
    assert list((server.data_dir.parent / "spool").iterdir()) == []


def test_bodies_over_the_limit_get_413_however_they_are_sent(server: ServerProcess) -> None:
    with connect(server) as sock:  # Content-Length over the limit: refused before reading
        sock.sendall(
            request_head("/embed", {"Content-Type": MULTIPART, "Content-Length": str(LIMIT + 1)})
        )
        assert status_of(answer_within(sock, 5)) == 413
    with connect(server) as sock:  # chunked, no length given: refused once past the limit
        head = {"Content-Type": MULTIPART, "Transfer-Encoding": "chunked"}
        sock.sendall(request_head("/embed", head))
        chunks = itertools.chain([PART_HEAD], itertools.repeat(b"x" * 65536))
        try:
            for chunk in itertools.islice(chunks, LIMIT // 65536 + 10):
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except OSError:
            pass  # the server answered and hung up before the end: as it should
        answer = answer_within(sock, 5)
    assert status_of(answer) == 413, answer[:300]


def test_a_content_length_that_lies_gets_408_not_a_hang(server: ServerProcess) -> None:
    with connect(server) as sock:  # promises 500 kB, sends 1 kB, then nothing
        sock.sendall(
            request_head("/embed", {"Content-Type": MULTIPART, "Content-Length": "500000"})
        )
        sock.sendall(PART_HEAD + b"x" * 1000)
        answer = answer_within(sock, 5)
    assert status_of(answer) == 408


def test_headers_sent_one_byte_a_second_are_cut_off(server: ServerProcess) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        answer = trickle(sock, b"X-Slow: abcdefghijklmnopqrstuvwxyz", limit=8)
    assert answer == b"" or status_of(answer) == 408


def test_a_body_sent_one_byte_a_second_is_cut_off(server: ServerProcess) -> None:
    with connect(server) as sock:
        sock.sendall(request_head("/embed", {"Content-Type": MULTIPART, "Content-Length": "100"}))
        sock.sendall(PART_HEAD[:40])
        answer = trickle(sock, PART_HEAD[40:], limit=10)
    assert status_of(answer) == 408


def test_slow_uploads_cannot_take_every_slot(server: ServerProcess) -> None:
    slow = [connect(server) for _ in range(2)]
    try:
        for sock in slow:  # two uploads that have begun and then stall
            head = {"Content-Type": MULTIPART, "Content-Length": "100000"}
            sock.sendall(request_head("/items", head) + PART_HEAD)
        time.sleep(0.5)
        with server.client(timeout=5) as client:
            busy = client.post(
                "/embed", files={"files": ("a.png", b"x")}, headers={"X-API-Key": KEY}
            )
            assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
            assert client.get("/healthz").status_code == 200  # requests without a body pass
            assert client.get("/items", headers={"X-API-Key": KEY}).status_code == 200
    finally:
        for sock in slow:
            sock.close()
    time.sleep(0.5)
    with server.client(timeout=5) as client:  # the slots are free again
        response = client.post(
            "/embed", files={"files": ("a.png", b"x")}, headers={"X-API-Key": KEY}
        )
        assert response.status_code == 415
