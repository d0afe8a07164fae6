"""A real server process for end-to-end tests: ``python -m app`` on a free loopback port,
with its own data directory and log, on the shipped default model."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx2 as httpx

from app.client import EmbedClient
from app.services.models import BACKEND_SELECTION_FILE
from tests.conftest import DEFAULT_MODEL, ROOT

# What `auto` measured in this test process's first server with a fresh data folder. Later
# servers with fresh folders start from it, as a restarted service would: measuring again
# costs about 13 s a start on 2 cores and tests nothing new.
_first_measurement: dict[str, bytes] = {}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """Start, stop, kill and restart one server on a fixed port and data directory."""

    def __init__(
        self,
        data_dir: Path,
        log: Path,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
        measure_backends: bool = False,
    ) -> None:
        """``measure_backends``: let ``auto`` measure in a fresh data folder instead of
        remembering this process's first measurement."""
        self.data_dir = data_dir
        self.log = log
        self.env = {"EMBED_MODEL_DIR": str(DEFAULT_MODEL), **(env or {})}
        self.args = args or []
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.measure_backends = measure_backends

    @property
    def backend_selection(self) -> Path:
        return self.data_dir / "models" / BACKEND_SELECTION_FILE

    def start(self, timeout: float = 120) -> ServerProcess:
        """Starts the process and returns once ``/readyz`` answers 200."""
        remembered = _first_measurement.get("selection")
        if remembered and not self.measure_backends and not self.backend_selection.exists():
            self.backend_selection.parent.mkdir(parents=True, exist_ok=True)
            self.backend_selection.write_bytes(remembered)
        with self.log.open("ab") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app", "--port", str(self.port), *self.args],
                cwd=ROOT,
                env={**os.environ, "EMBED_DATA_DIR": str(self.data_dir), **self.env},
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        process = self.process

        def exited() -> str | None:
            if process.poll() is None:
                return None
            return f"server exited with {process.returncode}: {self.log.read_text()[-3000:]}"

        with EmbedClient(self.base_url, timeout=5) as client:
            try:
                client.wait_until_ready(timeout, exited)
            except TimeoutError:
                self.kill()
                raise
        if remembered is None and self.backend_selection.exists():
            _first_measurement["selection"] = self.backend_selection.read_bytes()
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def client(self, timeout: float = 60) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=timeout)

    def stop(self) -> None:
        """A graceful stop (SIGTERM), as an orchestrator would."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=60)

    def kill(self) -> None:
        """SIGKILL: the crash that durability must survive."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
