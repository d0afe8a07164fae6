"""Served ``/embed`` throughput: inference backends, dynamic batching, 1 and 16 clients.

    .venv/bin/python -m bench.http_throughput [--seconds 8] [--rounds 3]

Starts three servers on loopback, each with its own data directory: eager fp32 PyTorch
(``EMBED_BACKEND=torch-fp32``), the automatic backend, and the automatic backend with
dynamic batching off. Phases against them alternate (A B A B, median of ``--rounds``), and
print:

- ``/embed`` with 32 images per request, 1 and 4 clients: images/s, p50/p99, and the ratio
  to eager fp32;
- ``/embed`` with one image per request, 1 and 16 clients, batching on and off;
- the share of the batched throughput that 16 single-image clients get.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx2 as httpx

from bench.common import free_port, start_server
from bench.http_load import LoadResult, run_load

SERVERS = {
    "eager fp32": {"EMBED_BACKEND": "torch-fp32"},
    "auto": {},
    "auto, batching off": {"EMBED_BATCH_MAX_IMAGES": "1", "EMBED_BATCH_WAIT_MS": "0"},
}


@dataclass(frozen=True)
class Phase:
    server: str
    images_per_request: int
    clients: int

    @property
    def name(self) -> str:
        return f"{self.server}, {self.images_per_request} img/request, {self.clients} clients"


PHASES = [
    Phase("eager fp32", 32, 1),
    Phase("auto", 32, 1),
    Phase("eager fp32", 32, 4),
    Phase("auto", 32, 4),
    Phase("auto", 1, 1),
    Phase("auto, batching off", 1, 1),
    Phase("auto", 1, 16),
    Phase("auto, batching off", 1, 16),
]


@dataclass
class Measured:
    images_per_second: float
    p50_ms: float
    p99_ms: float


def measure(result: LoadResult, images_per_request: int) -> Measured:
    latencies = sorted(result.latencies["embed"])
    if result.errors or not latencies:
        raise RuntimeError(f"requests failed: {dict(result.errors)}")
    return Measured(
        images_per_second=len(latencies) * images_per_request / result.seconds,
        p50_ms=statistics.median(latencies) * 1000,
        p99_ms=latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
    )


def median(samples: list[Measured]) -> Measured:
    return Measured(
        statistics.median(s.images_per_second for s in samples),
        statistics.median(s.p50_ms for s in samples),
        statistics.median(s.p99_ms for s in samples),
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    processes = {}
    urls = {}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for name, env in SERVERS.items():
                port = free_port()
                data = Path(tmp) / name.replace(" ", "_").replace(",", "")
                processes[name] = start_server(data, port, env=env, log_level="warning")
                urls[name] = f"http://127.0.0.1:{port}"
            for name, url in urls.items():
                backend = httpx.get(f"{url}/model", timeout=10).json()["backend"]
                print(f"{name}: backend {backend}")
            samples: dict[Phase, list[Measured]] = {phase: [] for phase in PHASES}
            for _ in range(args.rounds):
                for phase in PHASES:
                    time.sleep(0.5)  # let the previous server's threads stop spinning
                    result = run_load(
                        urls[phase.server],
                        processes[phase.server].pid,
                        args.seconds,
                        phase.clients,
                        mix={"embed": 1.0},
                        images_per_embed=phase.images_per_request,
                    )
                    samples[phase].append(measure(result, phase.images_per_request))
        finally:
            for process in processes.values():
                process.terminate()
                process.wait(timeout=60)
    results = {phase: median(values) for phase, values in samples.items()}
    print("\n| server, request size, clients | images/s | p50 ms | p99 ms | ratio |")
    print("| --- | --- | --- | --- | --- |")
    for phase, value in results.items():
        baseline = Phase("eager fp32", phase.images_per_request, phase.clients)
        ratio = (
            f"{value.images_per_second / results[baseline].images_per_second:.2f}x eager fp32"
            if baseline in results
            else ""
        )
        print(
            f"| {phase.name} | {value.images_per_second:.0f} | {value.p50_ms:.1f} | "
            f"{value.p99_ms:.1f} | {ratio} |"
        )
    batched = max(
        results[Phase("auto", 32, 1)],
        results[Phase("auto", 32, 4)],
        key=lambda m: m.images_per_second,
    )
    single = results[Phase("auto", 1, 16)]
    single_off = results[Phase("auto, batching off", 1, 16)]
    print(
        f"\n16 single-image clients get {single.images_per_second / batched.images_per_second:.2f}"
        f" of the batched throughput with batching on, "
        f"{single_off.images_per_second / batched.images_per_second:.2f} with it off"
    )


if __name__ == "__main__":
    main()
