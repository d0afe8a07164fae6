"""A bounded load test on loopback: mixed embed/add/search traffic, no errors, flat memory.

The default run is short so that CI stays quick; LOAD_SECONDS raises it. (``bench/http_load.py``
measures the same traffic's throughput and latency for longer runs.)"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx2 as httpx
import pytest

from tests.conftest import CIFAR
from tests.server import ServerProcess

pytestmark = pytest.mark.slow


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS line")


def test_mixed_load_has_no_errors_and_flat_memory(
    server_process: Callable[..., ServerProcess],
) -> None:
    server = server_process()
    deadline = time.monotonic() + float(os.environ.get("LOAD_SECONDS", "30"))
    images = {
        label: [p.read_bytes() for p in sorted((CIFAR / label).iterdir())[:200]]
        for label in ("cat", "bird")
    }
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()

    def client_loop(seed: int) -> None:
        rng = random.Random(seed)
        with server.client() as client:
            while time.monotonic() < deadline:
                label = rng.choice(["cat", "bird"])
                image = ("x.jpg", rng.choice(images[label]), "image/jpeg")
                op = rng.choices(["embed", "add", "search"], [0.3, 0.3, 0.4])[0]
                try:
                    if op == "embed":
                        response = client.post("/embed", files={"files": image})
                    elif op == "add":
                        response = client.post(
                            "/items", files={"files": image}, data={"labels": label}
                        )
                    else:
                        response = client.post("/search", files={"file": image}, data={"k": "10"})
                    outcome = "ok" if response.status_code < 300 else f"{op} {response.status_code}"
                except httpx.TransportError as exc:
                    outcome = f"{op} {type(exc).__name__}"
                with lock:
                    outcomes[outcome] += 1

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    memory = []
    while any(thread.is_alive() for thread in threads):
        memory.append(rss_mb(server.pid))
        time.sleep(1.0)
    print(f"outcomes {dict(outcomes)}, server RSS MB {memory}")
    assert outcomes["ok"] > 50
    assert set(outcomes) == {"ok"}, outcomes
    settled = memory[len(memory) // 3]
    assert memory[-1] < settled * 1.25 + 50, memory
