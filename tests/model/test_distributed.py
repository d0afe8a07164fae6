"""Training as several processes under torchrun (gloo on CPU): the sampler's shares, one
model from two processes and from two "machines", and a run that loses a rank."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from model.checkpoint import read_card
from model.embedding import Embedder
from model.sampling import PKSampler
from tests.conftest import CIFAR, DEFAULT_MODEL

# a small recipe on a few hundred real images, fine-tuning the shipped model
RECIPE = [
    "--data", str(CIFAR), "--classes", "cat,bird", "--max-per-class", "64",
    "--val-fraction", "0.3", "--batch-size", "16", "--classes-per-batch", "2",
    "--loss", "both", "--lr", "2e-4",
    "--init-from", str(DEFAULT_MODEL), "--no-bf16",
]  # fmt: skip


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_share_each_epoch_without_overlap(world_size: int) -> None:
    targets = torch.arange(300) % 6
    alone = PKSampler(targets, 3, 4, seed=5)
    ranks = [
        PKSampler(targets, 3, 4, seed=5, rank=r, world_size=world_size) for r in range(world_size)
    ]
    for epoch in (0, 1):
        for sampler in (alone, *ranks):
            sampler.set_epoch(epoch)
        shares = [list(sampler) for sampler in ranks]
        assert len({len(share) for share in shares}) == 1  # every rank steps as often
        assert all(len(share) == len(ranks[0]) for share in shares)
        # the ranks' batches, interleaved, are the single process's epoch: disjoint, and
        # together covering it (rounded down to whole rounds of world_size batches)
        interleaved = [
            shares[i % world_size][i // world_size] for i in range(sum(map(len, shares)))
        ]
        expected = list(alone)[: len(interleaved)]
        assert all(torch.equal(a, b) for a, b in zip(interleaved, expected, strict=True))
        assert len(expected) >= len(alone) - world_size + 1
        # as much of the data as one process's epoch (a class whose queue runs out is
        # reshuffled, so an epoch sees most images once and a few twice)
        covered = torch.unique(torch.cat(interleaved))
        assert len(covered) >= 0.85 * len(targets)
    with pytest.raises(ValueError):
        PKSampler(targets, 3, 4, rank=2, world_size=2)


def torchrun(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *arguments]


def train_command(out: Path, epochs: int = 2) -> list[str]:
    return ["-m", "app.cli", "train", *RECIPE, "--epochs", str(epochs), "--out", str(out)]


def run(command: list[str], log: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with log.open("w") as out:
        return subprocess.run(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            timeout=timeout,
            check=False,
        )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.slow
def test_two_processes_train_one_model_like_one_process(tmp_path: Path) -> None:
    """torchrun --standalone with two processes: one loadable model, written once (the run
    fails unless both ranks end with the same weights), whose held-out metrics are those of
    one process training with the same global batch."""
    two = run(
        torchrun("--standalone", "--nproc_per_node=2", *train_command(tmp_path / "two")),
        tmp_path / "two.log",
    )
    assert two.returncode == 0, (tmp_path / "two.log").read_text()[-3000:]
    card = read_card(tmp_path / "two")
    assert card.metrics["processes"] == 2
    size = card.config.input_size  # the starting model's
    vectors = Embedder.from_dir(tmp_path / "two").embed_tensors(torch.rand(2, 3, size, size))
    assert vectors.shape == (2, 128)
    one_command = [sys.executable, *train_command(tmp_path / "one")]
    one_command[one_command.index("--batch-size") + 1] = "32"  # the global batch of two
    one = run(one_command, tmp_path / "one.log")
    assert one.returncode == 0, (tmp_path / "one.log").read_text()[-3000:]
    alone = read_card(tmp_path / "one").metrics
    assert alone["processes"] == 1
    for metric in ("val_precision_at_1", "val_map_at_r"):
        assert abs(card.metrics[metric] - alone[metric]) <= 0.1, (metric, card.metrics, alone)
    # one step of two processes sees as many images as one step of one with twice the batch
    assert len(card.history) == len(read_card(tmp_path / "one").history) == 2


@pytest.mark.slow
def test_two_machines_joined_by_rendezvous_train_one_model(tmp_path: Path) -> None:
    """Two torchrun launches (one process each) meet at a c10d rendezvous on 127.0.0.1, as
    two machines would, and train one model."""
    endpoint = f"127.0.0.1:{free_port()}"
    launches = []
    for node in (0, 1):
        command = torchrun(
            "--nnodes=2",
            "--nproc_per_node=1",
            "--rdzv_backend=c10d",
            f"--rdzv_endpoint={endpoint}",
            "--rdzv_id=two-machines",
            *train_command(tmp_path / "model", epochs=1),
        )
        log = (tmp_path / f"node{node}.log").open("w")
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        launches.append(
            subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
        )
    codes = [launch.wait(timeout=600) for launch in launches]
    logs = "".join((tmp_path / f"node{n}.log").read_text()[-2000:] for n in (0, 1))
    assert codes == [0, 0], logs
    assert read_card(tmp_path / "model").metrics["processes"] == 2


@pytest.mark.slow
def test_a_lost_rank_ends_the_run_and_the_next_run_resumes(tmp_path: Path) -> None:
    out = tmp_path / "model"
    command = torchrun("--standalone", "--nproc_per_node=2", *train_command(out, epochs=2))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with (tmp_path / "first.log").open("w") as log:
        launcher = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 400
        state = out / "training_state" / "state.json"
        while not state.exists():  # the first epoch's checkpoint
            assert launcher.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.2)
        time.sleep(0.5)  # into the second (last) epoch
        workers = subprocess.run(
            ["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True, check=False
        ).stdout.split()
        assert len(workers) == 2, workers
        os.kill(int(workers[-1]), signal.SIGKILL)
        code = launcher.wait(timeout=300)
    first = (tmp_path / "first.log").read_text()
    assert code != 0 and "ChildFailedError" in first  # torchrun names the lost rank
    assert not (out / "model.json").exists()
    assert json.loads(state.read_text())["epoch"] >= 1
    second = run(command, tmp_path / "second.log")
    log = (tmp_path / "second.log").read_text()
    assert second.returncode == 0, log[-3000:]
    assert "resuming at epoch" in log
    card = read_card(out)
    assert [h["epoch"] for h in card.history] == [1, 2]
