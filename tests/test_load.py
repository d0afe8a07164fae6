"""A bounded load test on loopback: mixed embed/add/search traffic, no errors, flat memory.

The default run is short so that CI stays quick; LOAD_SECONDS raises it
(``bench/http_load.py`` prints the same figures for longer runs)."""

import os
from pathlib import Path

import pytest

from bench.common import free_port
from bench.http_load import run_load
from tests.conftest import start_test_server

pytestmark = pytest.mark.slow


def test_mixed_load_has_no_errors_and_flat_memory(tmp_path: Path) -> None:
    seconds = float(os.environ.get("LOAD_SECONDS", "30"))
    port = free_port()
    process = start_test_server(tmp_path / "data", port, tmp_path / "server.log")
    try:
        result = run_load(f"http://127.0.0.1:{port}", process.pid, seconds, clients=6)
    finally:
        process.terminate()
        process.wait(timeout=60)
    print(result.report("load test"))
    assert result.requests > 50
    assert sum(result.errors.values()) == 0
    settled = result.rss_mb[len(result.rss_mb) // 3]
    assert result.rss_mb[-1] < settled * 1.25 + 50, result.rss_mb
