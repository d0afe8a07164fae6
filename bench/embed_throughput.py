"""Embedding throughput of the inference runtimes against eager fp32, in one run.

    .venv/bin/python -m bench.embed_throughput [--model model/default] [--rounds 5]

Batch 1 and 32, at the model's input size and at 224 px. Also prints the lowest cosine
similarity of each runtime's embeddings to fp32's.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import numpy as np
import torch

from bench.common import interleaved, print_table
from model.checkpoint import load_model
from model.config import ModelConfig
from model.embedding import Embedder
from model.network import EmbeddingNet


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, default=Path("model/default"))
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    net, card = load_model(args.model)
    print(f"model {card.version}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    for size in sorted({card.config.input_size, 224}):
        config = ModelConfig.from_dict({**card.config.to_dict(), "input_size": size})
        runtimes: dict[str, Embedder] = {}
        for name, precision in (("eager fp32", "fp32"), ("bf16 + channels_last", "bf16")):
            sized = EmbeddingNet(config)
            sized.load_state_dict(net.state_dict())
            runtimes[name] = Embedder(sized, precision=precision)  # type: ignore[arg-type]
        for batch in (1, 32):
            images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
            reference = runtimes["eager fp32"].embed_tensors(images)

            def run(embedder: Embedder, images: torch.Tensor = images) -> int:
                return len(embedder.embed_tensors(images))

            rates = interleaved(
                {name: partial(run, embedder) for name, embedder in runtimes.items()},
                rounds=args.rounds,
            )
            print_table(f"{size}x{size}, batch {batch}", rates, "eager fp32", "images/s")
            for name, embedder in runtimes.items():
                cosine = float(np.min(np.sum(embedder.embed_tensors(images) * reference, axis=1)))
                print(f"  {name}: min cosine to fp32 {cosine:.6f}")


if __name__ == "__main__":
    main()
