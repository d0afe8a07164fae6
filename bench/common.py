"""Interleaved timing: the machines are noisy, so variants alternate and ratios are reported."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from app.client import EmbedClient

ROOT = Path(__file__).resolve().parent.parent


def interleaved(
    variants: dict[str, Callable[[], int]], rounds: int = 5, warmup: int = 1, pause: float = 0.0
) -> dict[str, float]:
    """Runs each variant ``rounds`` times in A B A B order; returns the median items/s.

    Each callable does one unit of work and returns how many items it processed. ``pause``
    seconds pass (untimed) before each run, so that thread pools still spinning after the
    previous variant (OpenMP's, OpenVINO's) do not steal the cores from the next one."""
    for _ in range(warmup):
        for run in variants.values():
            run()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            time.sleep(pause)
            start = time.perf_counter()
            items = run()
            samples[name].append(items / (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in samples.items()}


def print_table(
    title: str,
    rates: dict[str, float],
    baseline: str,
    unit: str = "items/s",
    extra: tuple[str, dict[str, str]] | None = None,
) -> None:
    """A Markdown table of rates and their ratio to ``baseline``; ``extra`` adds a column
    (its header and a value per variant)."""
    header, values = extra if extra is not None else ("", {})
    print(f"\n{title}")
    print(f"| variant | {unit} | ratio to {baseline} |" + (f" {header} |" if extra else ""))
    print("| --- | --- | --- |" + (" --- |" if extra else ""))
    base = rates[baseline]
    for name, rate in rates.items():
        cell = f" {values.get(name, '')} |" if extra else ""
        print(f"| {name} | {rate:.1f} | {rate / base:.2f}x |{cell}")


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(
    data_dir: Path,
    port: int,
    *,
    log: Path | None = None,
    env: dict[str, str] | None = None,
    log_level: str = "info",
    timeout: float = 120,
    args: list[str] | None = None,
) -> subprocess.Popen[bytes]:
    """Starts ``python -m app`` (with ``args``) on a loopback port with its own data directory
    and returns once ``/readyz`` answers 200. Its output is appended to ``log`` (or
    discarded)."""
    output = log.open("ab") if log is not None else subprocess.DEVNULL
    process = subprocess.Popen(
        [sys.executable, "-m", "app", "--port", str(port), "--log-level", log_level, *(args or [])],
        cwd=ROOT,
        env={**os.environ, "EMBED_DATA_DIR": str(data_dir), **(env or {})},
        stdout=output,
        stderr=subprocess.STDOUT,
    )
    if log is not None:
        output.close()  # type: ignore[union-attr]

    def exited() -> str | None:
        if process.poll() is None:
            return None
        tail = log.read_text()[-3000:] if log is not None else ""
        return f"server exited with {process.returncode}: {tail}"

    with EmbedClient(f"http://127.0.0.1:{port}", timeout=5) as client:
        try:
            client.wait_until_ready(timeout, exited)
        except TimeoutError:
            process.kill()
            raise
    return process
