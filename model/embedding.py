"""Turning images into vectors with a trained network, the way serving and evaluation do it."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from model.backends import BackendChoice, select_backend
from model.checkpoint import ModelCard, load_model
from model.config import ModelConfig
from model.network import EmbeddingNet
from model.quantization import MANIFEST_FILE, Int8Model, QuantizationError, probe_images

log = logging.getLogger(__name__)


class Embedder:
    """Embeds ``uint8`` image tensors or PIL images in batches, without gradients.

    ``backend`` chooses how the forward pass runs (:mod:`model.backends`); the output is
    float32 and L2-normalised whichever runs it. ``net`` stays eager PyTorch either way.
    ``flip_tta`` (default: the model configuration's) averages the embeddings of each image
    and its mirror image.
    """

    def __init__(
        self,
        net: EmbeddingNet,
        card: ModelCard | None = None,
        backend: BackendChoice = "torch-fp32",
        int8: Int8Model | None = None,
        batch_size: int = 64,
        flip_tta: bool | None = None,
        selection_cache: Path | None = None,
    ) -> None:
        self.net = net.eval()
        self.flip_tta = net.config.flip_tta if flip_tta is None else flip_tta
        self.card = card
        self.config: ModelConfig = net.config
        self.batch_size = batch_size
        self.int8 = int8
        weights_hash = card.content_hash if card is not None else None
        probe = probe_images(int8.probe, self.config) if int8 is not None else None
        self._forward, self.selection = select_backend(
            self.net, backend, int8, weights_hash, selection_cache, probe=probe
        )
        self.backend = self.selection.backend

    @classmethod
    def from_dir(
        cls,
        model_dir: Path,
        backend: BackendChoice = "torch-fp32",
        flip_tta: bool | None = None,
        selection_cache: Path | None = None,
    ) -> Embedder:
        """Loads weights, card and (if present, intact and made for these weights) the int8
        model, and builds ``backend`` (``auto``: the fastest measured here, remembered in
        ``selection_cache`` if given)."""
        net, card = load_model(model_dir)
        try:
            int8 = Int8Model.load(model_dir)
        except QuantizationError as exc:
            log.warning("ignoring the int8 model: %s", exc)
            int8 = None
        if int8 is not None and int8.model_hash != card.content_hash:
            log.warning("ignoring %s: it was made for other weights", MANIFEST_FILE)
            int8 = None
        return cls(net, card, backend, int8, flip_tta=flip_tta, selection_cache=selection_cache)

    @property
    def dim(self) -> int:
        return self.config.embedding_dim

    def embed_tensors(self, images: torch.Tensor) -> np.ndarray:
        """``uint8`` ``(N, 3, S, S)`` to float32 ``(N, D)`` unit vectors."""
        if len(images) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        size = self.config.input_size
        if images.shape[-2:] != (size, size):
            shape = "x".join(str(n) for n in images.shape[-2:])
            raise ValueError(f"images are {shape} px, the model takes {size}x{size} px")
        outputs = [
            self._embed_batch(images[start : start + self.batch_size])
            for start in range(0, len(images), self.batch_size)
        ]
        return np.concatenate(outputs)

    def _embed_batch(self, batch: torch.Tensor) -> np.ndarray:
        vectors = self._forward(batch)
        if not self.flip_tta:
            return vectors
        vectors = vectors + self._forward(batch.flip(-1))
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
