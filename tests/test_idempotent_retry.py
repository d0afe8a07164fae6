"""A retried write after a crash: the server is SIGKILLed after it stored the items but
before the caller read the answer; the retry with the same ``Idempotency-Key`` gets the
first answer and the store holds the items once."""

from __future__ import annotations

import socket
import sqlite3
import time
import uuid
from collections.abc import Callable

import pytest

from tests.conftest import CIFAR
from tests.server import ServerProcess

pytestmark = pytest.mark.slow


def multipart(files: list[tuple[str, bytes]], labels: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    field = f'--{boundary}\r\nContent-Disposition: form-data; name="labels"\r\n\r\n'
    parts = [f"{field}{labels}\r\n".encode()]
    for name, data in files:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
            "Content-Type: image/jpeg\r\n\r\n".encode()
            + data
            + b"\r\n"
        )
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), boundary


def stored_items(server: ServerProcess) -> int:
    with sqlite3.connect(f"file:{server.data_dir / 'store.sqlite3'}?mode=ro", uri=True) as db:
        return int(db.execute("SELECT count(*) FROM items").fetchone()[0])


def test_a_retry_after_a_crash_between_write_and_answer_writes_once(
    server_process: Callable[..., ServerProcess],
) -> None:
    server = server_process()
    files = [(p.name, p.read_bytes()) for p in sorted((CIFAR / "cat").iterdir())[:3]]
    body, boundary = multipart(files, "cat")
    key = "import-2026-11-29/batch-1"
    request = (
        f"POST /items HTTP/1.1\r\nHost: 127.0.0.1\r\nIdempotency-Key: {key}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    with socket.create_connection(("127.0.0.1", server.port)) as connection:
        connection.sendall(request)  # the answer is never read: as if the network lost it
        deadline = time.monotonic() + 60
        while stored_items(server) < 3:  # the write is committed...
            assert time.monotonic() < deadline, "the items were never stored"
            time.sleep(0.005)
        server.kill()  # ...and the server dies before the caller has its answer
    assert stored_items(server) == 3

    server.start()
    with server.client() as client:
        retry = client.post(
            "/items",
            files=[("files", (name, data, "image/jpeg")) for name, data in files],
            data={"labels": "cat"},
            headers={"Idempotency-Key": key},
        )
        assert retry.status_code == 201, retry.text
        assert [item["filename"] for item in retry.json()["items"]] == [n for n, _ in files]
        ids = [item["id"] for item in retry.json()["items"]]
        listed = client.get("/items").json()
        assert listed["total"] == 3 and [item["id"] for item in listed["items"]] == ids
