"""Interleaved timing: the machines are noisy, so variants alternate and ratios are reported."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved(
    variants: dict[str, Callable[[], int]], rounds: int = 5, warmup: int = 1
) -> dict[str, float]:
    """Runs each variant ``rounds`` times in A B A B order; returns the median items/s.

    Each callable does one unit of work and returns how many items it processed."""
    for _ in range(warmup):
        for run in variants.values():
            run()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            start = time.perf_counter()
            items = run()
            samples[name].append(items / (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in samples.items()}


def print_table(title: str, rates: dict[str, float], baseline: str, unit: str = "items/s") -> None:
    print(f"\n{title}")
    print(f"| variant | {unit} | ratio to {baseline} |")
    print("| --- | --- | --- |")
    base = rates[baseline]
    for name, rate in rates.items():
        print(f"| {name} | {rate:.1f} | {rate / base:.2f}x |")


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
