"""Server start-up to ready, against a plain PyTorch load of the same model.

    .venv/bin/python -m bench.startup [--rounds 3]

Each round times, as separate processes on loopback:

- a plain PyTorch load: start Python, import torch, load the default model's weights and
  run one forward pass (what any PyTorch service does before it can answer);
- the server's first start on a fresh data folder (``auto`` measures every backend);
- its restart on the same folder (``auto`` remembers the measurement);
- a start with ``EMBED_BACKEND=openvino-int8`` (no measurement at all).

Each is the time from starting the process to its first answer (``/readyz`` 200 for the
server). The median over the rounds is printed, with each time's ratio to the plain load.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from bench.common import ROOT, free_port, start_server

PLAIN_LOAD = (
    "import torch; from pathlib import Path; from model.checkpoint import load_model; "
    "net, _ = load_model(Path('model/default')); net.eval(); "
    "torch.inference_mode().__enter__(); net(torch.zeros(1, 3, 32, 32))"
)


def plain_load() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", PLAIN_LOAD], cwd=ROOT, check=True)
    return time.perf_counter() - start


def server_start(data_dir: Path, env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    process = start_server(data_dir, free_port(), env=env, log_level="warning")
    elapsed = time.perf_counter() - start
    process.terminate()
    process.wait(timeout=60)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    times: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp)
            runs: dict[str, Callable[[], float]] = {
                "plain PyTorch load + one forward pass": plain_load,
                "server, first start (auto measures)": partial(server_start, data / "a"),
                "server, restart (auto remembers)": partial(server_start, data / "a"),
                "server, EMBED_BACKEND=openvino-int8": partial(
                    server_start, data / "b", {"EMBED_BACKEND": "openvino-int8"}
                ),
            }
            for name, run in runs.items():
                times.setdefault(name, []).append(run())
    medians = {name: statistics.median(values) for name, values in times.items()}
    base = next(iter(medians.values()))
    print("\n| start | seconds to ready | ratio to the plain load |")
    print("| --- | --- | --- |")
    for name, seconds in medians.items():
        print(f"| {name} | {seconds:.1f} | {seconds / base:.2f}x |")


if __name__ == "__main__":
    main()
