"""Bounded HTTP load on a server on this machine (loopback only): mixed embed/add/search.

    .venv/bin/python -m bench.http_load --seconds 120 --clients 8

Starts its own server on a free loopback port with a fresh data directory, sends mixed
traffic for a fixed time from several client threads, then prints throughput, p50/p99 latency
per operation, errors, and the server's resident memory over time. With ``--compare-batching``
it runs twice, with dynamic batching on and off, and prints both.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import ROOT, free_port, start_server
from bench.keepalive import KeepAliveConnection, encode_request

CIFAR = ROOT.parent / "shared" / "data" / "cifar10" / "train"


@dataclass
class LoadResult:
    seconds: float
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    rss_mb: list[float] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return sum(len(v) for v in self.latencies.values())

    def report(self, title: str) -> str:
        lines = [
            f"\n{title}: {self.requests / self.seconds:.1f} requests/s over {self.seconds:.0f} s"
        ]
        lines.append("| operation | requests | p50 ms | p99 ms | errors |")
        lines.append("| --- | --- | --- | --- | --- |")
        for op, values in sorted(self.latencies.items()):
            ordered = sorted(values)
            p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
            lines.append(
                f"| {op} | {len(values)} | {statistics.median(values) * 1000:.1f} | "
                f"{p99 * 1000:.1f} | {self.errors.get(op, 0)} |"
            )
        if self.rss_mb:
            lines.append(
                f"server RSS MB: start {self.rss_mb[0]:.0f}, end {self.rss_mb[-1]:.0f}, "
                f"max {max(self.rss_mb):.0f}"
            )
        return "\n".join(lines)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def multipart_body(files: list[tuple[str, bytes]], fields: dict[str, str]) -> tuple[bytes, str]:
    """A ``multipart/form-data`` body of JPEG ``files`` (field name, bytes) and text
    ``fields``, and its content type."""
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        + value.encode()
        + b"\r\n"
        for name, value in fields.items()
    ]
    parts += [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="x.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n".encode()
        + data
        + b"\r\n"
        for name, data in files
    ]
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def run_load(
    base_url: str,
    pid: int,
    seconds: float,
    clients: int,
    mix: dict[str, float] | None = None,
    seed: int = 0,
    images_per_embed: int = 1,
    accept: str = "application/json",
) -> LoadResult:
    """``clients`` threads send ``mix``'s operations (one image each, but ``/embed`` sends
    ``images_per_embed``, asking for ``accept``) until ``seconds`` pass."""
    mix = mix or {"embed": 0.3, "add": 0.3, "search": 0.4}
    images = {
        label: [p.read_bytes() for p in sorted((CIFAR / label).iterdir())[:200]]
        for label in ("cat", "bird")
    }
    rng = random.Random(seed)
    # Bodies are encoded before the clock starts: the client shares the server's cores, and
    # its own encoding would otherwise be counted against the server.
    bodies = {
        (op, label): [
            multipart_body(
                [
                    ("files" if op != "search" else "file", rng.choice(images[label]))
                    for _ in range(images_per_embed if op == "embed" else 1)
                ],
                {"add": {"labels": label}, "search": {"k": "10"}}.get(op, {}),
            )
            for _ in range(16)
        ]
        for op in mix
        for label in images
    }
    paths = {"embed": "/embed", "add": "/items", "search": "/search"}
    requests = {
        key: [
            encode_request(
                "POST", base_url, paths[key[0]], {"content-type": kind, "accept": accept}, body
            )
            for body, kind in variants
        ]
        for key, variants in bodies.items()
    }
    result = LoadResult(seconds)
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def worker(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        ops, weights = list(mix), list(mix.values())
        with KeepAliveConnection(base_url, timeout=60) as connection:
            while time.monotonic() < deadline:
                op = rng.choices(ops, weights)[0]
                request = rng.choice(requests[op, rng.choice(["cat", "bird"])])
                start = time.perf_counter()
                try:
                    ok = connection.send(request)[0] < 300
                except OSError:
                    ok = False
                elapsed = time.perf_counter() - start
                with lock:
                    result.latencies[op].append(elapsed)
                    if not ok:
                        result.errors[op] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        result.rss_mb.append(rss_mb(pid))
        time.sleep(1.0)
    for thread in threads:
        thread.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--compare-batching", action="store_true")
    args = parser.parse_args()
    variants: dict[str, dict[str, str]] = {"batching on": {}}
    if args.compare_batching:
        variants["batching off"] = {"EMBED_BATCH_MAX_IMAGES": "1", "EMBED_BATCH_WAIT_MS": "0"}
    for title, env in variants.items():
        with tempfile.TemporaryDirectory() as tmp:
            port = free_port()
            process = start_server(Path(tmp), port, env=env, log_level="warning")
            try:
                result = run_load(
                    f"http://127.0.0.1:{port}", process.pid, args.seconds, args.clients
                )
            finally:
                process.terminate()
                process.wait(timeout=60)
        print(result.report(f"{title}, {args.clients} clients"))


if __name__ == "__main__":
    main()
