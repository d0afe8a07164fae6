"""Schemathesis against the service's own OpenAPI document, on a real server process: every
check (``--checks all``), every phase (examples, coverage, fuzzing and the stateful phase that
follows the document's links), and no failure allowed.

The server holds a few items and a finished training job, so that operations taking an id
reach their logic. ``FUZZ_EXAMPLES`` (default 50) sets the examples per operation."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import CIFAR, ROOT
from tests.server import ServerProcess

pytestmark = pytest.mark.slow


def stock(server: ServerProcess) -> None:
    """Twelve cats and twelve birds, and one finished training job (a second model)."""
    with server.client() as client:
        for label in ("cat", "bird"):
            paths = sorted((CIFAR / label).iterdir())[:12]
            files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]
            assert client.post("/items", files=files, data={"labels": label}).status_code == 201
        job = client.post("/train", json={"epochs": 1, "batch_size": 8, "activate": "never"})
        assert job.status_code == 202, job.text
        deadline = time.monotonic() + 300
        while (status := client.get(f"/train/{job.json()['job_id']}").json())["status"] in (
            "queued",
            "running",
        ):
            assert time.monotonic() < deadline
            time.sleep(0.5)
        assert status["status"] == "succeeded", status["error"]


def test_schemathesis_finds_nothing(
    server_process: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server = server_process()
    stock(server)
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        f"{server.base_url}/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        os.environ.get("FUZZ_EXAMPLES", "50"),
        "--workers",
        "1",
        "--request-timeout",  # activation with wait=true re-embeds every stored item
        "60",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path / "report"),
    ]
    # from the repository root, so that schemathesis.toml (the documented rejections) is read
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    print(run.stdout)  # every failure, with the curl command that reproduces it
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "Stateful" in run.stdout and "0 covered" not in run.stdout  # links were followed
