"""Training throughput (images/s) with and without bf16 autocast, interleaved in one run.

.venv/bin/python -m bench.train_throughput [--batch 128] [--rounds 5] [--augmentation crop]
"""

from __future__ import annotations

import argparse

import torch

from bench.common import interleaved, print_table
from model.config import ModelConfig
from model.losses import build_loss
from model.network import EmbeddingNet
from model.preprocessing import build_augmentation, normalize


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--stem", default="stride2")
    parser.add_argument("--input-size", type=int, default=32)
    parser.add_argument("--augmentation", choices=["strong", "light", "crop"], default="strong")
    args = parser.parse_args()
    config = ModelConfig(stem=args.stem, input_size=args.input_size)
    images = torch.randint(0, 256, (args.batch, 3, config.input_size, config.input_size))
    images = images.to(torch.uint8)
    labels = torch.arange(args.batch) % 2
    augmentation = build_augmentation(config.input_size, args.augmentation)
    loss_fn = build_loss("triplet", 0.2, "all")

    def step_fn(bf16: bool):  # type: ignore[no-untyped-def]
        net = EmbeddingNet(config)
        if bf16:
            net = net.to(memory_format=torch.channels_last)
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)

        def step() -> int:
            batch = normalize(augmentation(images), config)
            if bf16:
                batch = batch.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                embeddings = net(batch)
            loss = loss_fn(embeddings.float(), labels).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            return args.batch

        return step

    rates = interleaved(
        {"fp32": step_fn(False), "bf16 autocast + channels_last": step_fn(True)}, rounds=args.rounds
    )
    print_table(
        f"training step, batch {args.batch}, {config.input_size} px, {args.stem} stem",
        rates,
        "fp32",
        "images/s",
    )


if __name__ == "__main__":
    main()
