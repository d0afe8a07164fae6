"""Training images/s with 1 and with N processes (``torchrun``), interleaved in one run.

    .venv/bin/python -m bench.train_scaling [--procs 1 2] [--images 512] [--epochs 2]
        [--rounds 2] [--mining-scope global]

Each variant is one real ``triplet-embed train`` run under ``torchrun --standalone`` (so
start-up, data loading and the per-step collectives all count) on ``--images`` CIFAR-10
cat and bird images, fine-tuning the default model with its recipe at its batch size per
process. The rate is the training loop's images/s of all processes together (the epochs'
mean from the model card), so N processes step through N times as many images per step. On
one machine the processes share its cores (``OMP_NUM_THREADS`` = cores / N each).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import print_table
from model.checkpoint import read_card

DATA = Path("../shared/data/cifar10/train")


def train_rate(procs: int, args: argparse.Namespace, out: Path) -> float:
    threads = max(1, (os.cpu_count() or 1) // procs)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={procs}", "-m", "app.cli", "train",
        "--data", str(DATA), "--classes", "cat,bird",
        "--max-per-class", str(args.images // 2), "--epochs", str(args.epochs),
        "--init-from", "model/default", "--loss", "both", "--classes-per-batch", "2",
        "--batch-size", "32", "--mining-scope", args.mining_scope, "--val-fraction", "0",
        "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run(command, check=True, env=env, capture_output=True)
    history = read_card(out).history
    return statistics.mean(entry["images_per_second"] for entry in history)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--mining-scope", choices=["global", "local"], default="global")
    args = parser.parse_args()
    rates: dict[str, list[float]] = {f"{n} process(es)": [] for n in args.procs}
    with tempfile.TemporaryDirectory() as scratch:
        for round_number in range(args.rounds):
            for procs in args.procs:
                out = Path(scratch) / f"{procs}-{round_number}"
                rates[f"{procs} process(es)"].append(train_rate(procs, args, out))
    medians = {name: statistics.median(values) for name, values in rates.items()}
    print(
        f"{args.images} CIFAR-10 images, {args.epochs} epochs, {os.cpu_count()} cores, "
        f"mining {args.mining_scope}"
    )
    print_table("training images/s (all processes)", medians, f"{args.procs[0]} process(es)")


if __name__ == "__main__":
    main()
