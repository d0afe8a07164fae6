"""Served ``/embed`` throughput: inference backends, dynamic batching, 1 and 16 clients.

    .venv/bin/python -m bench.http_throughput [--seconds 8] [--rounds 3]

Starts three servers on loopback, each with its own data directory: eager fp32 PyTorch
(``EMBED_BACKEND=torch-fp32``), the automatic backend, and the automatic backend with
dynamic batching off. Phases against them alternate (A B A B, median of ``--rounds``), and
print:

- ``/embed`` with 32 images per request, 1 and 4 clients: images/s, p50/p99, and the ratio
  to eager fp32;
- the raw forward pass of the backend ``auto`` chose, in this process on batches of the same
  32 real images (no HTTP, no decoding): the ceiling the served figure is compared with;
- ``/embed`` with one image per request, 1 and 16 clients, batching on and off;
- the same 32-image requests with 4 clients asking for ``.npy`` vectors;
- the share of the batched throughput that 16 single-image clients get.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx2 as httpx

from bench.common import ROOT, free_port, start_server
from bench.http_load import CIFAR, LoadResult, run_load
from model.data import Sample, load
from model.embedding import Embedder

DEFAULT_MODEL = ROOT / "model" / "default"

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
    npy: bool = False  # vectors asked for as .npy instead of JSON

    @property
    def name(self) -> str:
        answer = ", .npy" if self.npy else ""
        return (
            f"{self.server}, {self.images_per_request} img/request, {self.clients} clients{answer}"
        )


RAW = "raw forward pass"

PHASES = [
    Phase(RAW, 32, 1),
    Phase("eager fp32", 32, 1),
    Phase("auto", 32, 1),
    Phase("eager fp32", 32, 4),
    Phase("auto", 32, 4),
    Phase("auto", 32, 4, npy=True),
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


def raw_forward(backend: str) -> Callable[[float], Measured]:
    """A timer of the shipped model's forward pass on ``backend`` in this process, on batches
    of 32 real images as the served phases send them."""
    embedder = Embedder.from_dir(DEFAULT_MODEL, backend)  # type: ignore[arg-type]
    files = {label: sorted((CIFAR / label).iterdir())[:16] for label in ("cat", "bird")}
    samples = [Sample(path, label) for label, paths in files.items() for path in paths]
    batch = load(samples, embedder.config.input_size, ["bird", "cat"]).images

    def timed(seconds: float) -> Measured:
        latencies = []
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            begun = time.perf_counter()
            embedder.embed_tensors(batch)
            latencies.append(time.perf_counter() - begun)
        elapsed = time.perf_counter() - start
        latencies.sort()
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        return Measured(
            len(latencies) * len(batch) / elapsed, latencies[len(latencies) // 2] * 1000, p99 * 1000
        )

    return timed


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
            backends = {}
            for name, url in urls.items():
                backends[name] = httpx.get(f"{url}/model", timeout=10).json()["backend"]
                print(f"{name}: backend {backends[name]}")
            raw_timer = raw_forward(backends["auto"])
            samples: dict[Phase, list[Measured]] = {phase: [] for phase in PHASES}
            for _ in range(args.rounds):
                for phase in PHASES:
                    time.sleep(0.5)  # let the previous server's threads stop spinning
                    if phase.server == RAW:
                        samples[phase].append(raw_timer(args.seconds))
                        continue
                    result = run_load(
                        urls[phase.server],
                        processes[phase.server].pid,
                        args.seconds,
                        phase.clients,
                        mix={"embed": 1.0},
                        images_per_embed=phase.images_per_request,
                        accept="application/x-npy" if phase.npy else "application/json",
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
        results[Phase("auto", 32, 4, npy=True)],
        key=lambda m: m.images_per_second,
    )
    raw = results[Phase(RAW, 32, 1)]
    eager = results[Phase("eager fp32", 32, 4)]
    print(
        f"\nserved /embed, 32 images per request: {batched.images_per_second:.0f} images/s, "
        f"{batched.images_per_second / eager.images_per_second:.2f}x eager fp32 served, "
        f"{batched.images_per_second / raw.images_per_second:.2f} of the raw forward pass"
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
