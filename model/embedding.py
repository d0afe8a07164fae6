"""Turning images into vectors with a trained network, the way serving and evaluation do it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from model.checkpoint import ModelCard, load_model
from model.config import ModelConfig
from model.network import EmbeddingNet
from model.preprocessing import normalize, prepare

Precision = Literal["fp32", "bf16"]


def bf16_supported() -> bool:
    """bf16 pays off only where the CPU computes it natively (AVX-512 BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@contextlib.contextmanager
def precision_context(precision: Precision) -> Iterator[None]:
    if precision == "bf16":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            yield
    else:
        yield


class Embedder:
    """Embeds ``uint8`` image tensors or PIL images in batches, without gradients.

    ``precision`` ``bf16`` runs the network under bf16 autocast in channels-last layout;
    the output is float32 and L2-normalised either way.
    """

    def __init__(
        self,
        net: EmbeddingNet,
        card: ModelCard | None = None,
        precision: Precision = "fp32",
        batch_size: int = 64,
    ) -> None:
        self.net = net.eval()
        self.card = card
        self.config: ModelConfig = net.config
        self.precision = precision
        self.batch_size = batch_size
        if precision == "bf16":
            self.net = self.net.to(memory_format=torch.channels_last)

    @classmethod
    def from_dir(cls, model_dir: Path, precision: Precision = "fp32") -> Embedder:
        net, card = load_model(model_dir)
        return cls(net, card, precision)

    @property
    def dim(self) -> int:
        return self.config.embedding_dim

    @torch.inference_mode()
    def embed_tensors(self, images: torch.Tensor) -> np.ndarray:
        """``uint8`` ``(N, 3, S, S)`` to float32 ``(N, D)`` unit vectors."""
        if len(images) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        outputs = []
        for start in range(0, len(images), self.batch_size):
            batch = normalize(images[start : start + self.batch_size], self.config)
            if self.precision == "bf16":
                batch = batch.contiguous(memory_format=torch.channels_last)
            with precision_context(self.precision):
                outputs.append(self.net(batch).float())
        return torch.cat(outputs).numpy()

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.embed_tensors(torch.stack([prepare(im, self.config) for im in images]))
