"""The serving runtime: the active model and its index, swapped together as one snapshot.

A request takes ``runtime.snapshot`` once and uses that snapshot's embedder and index for
its whole life, so a search never mixes vectors of two models even while a new model is
being activated. Inference runs on one dedicated thread (the backend parallelises inside
it); each request decodes its own uploads on the worker thread that serves it, except
thumbnails, which ``/embed`` has decoded on the inference thread
(:meth:`Runtime.embed_thumbnails`). Concurrent requests share forward passes (see
:mod:`app.services.batching`). Neither ever runs on the event loop.

Decoding is not spread over a thread pool: most of a small image's decoding is Python
(Pillow parses headers in Python) and holds the GIL, so a pool only added hand-offs and
contention. Measured with 4 clients sending 32 CIFAR images per request (``bench/``), the
server spent 6.2 core-ms per request outside the forward pass and the event loop with a
pool of two decoding threads and 4.0 without it, and served 2,448 against 2,909 images/s.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from app.errors import BadRequest, NotReady, PayloadTooLarge, UnsupportedMedia
from app.services.batching import InferenceBatcher
from app.store.index import Index, IndexPolicy
from model.checkpoint import ModelCard
from model.embedding import Embedder
from model.preprocessing import ImageDecodeError, decode_prepared, decode_thumbnail

THUMBNAIL_MAX_BYTES = 32 * 1024
"""Uploads up to this size are tried as thumbnails on the inference thread; it bounds the
header scan there, as the model's input size bounds the decoding."""
THUMBNAIL_MAX_IMAGES = 4
"""Requests of more images decode on their worker thread, overlapping other passes: a
thumbnail takes up to about 0.17 ms to decode, so four add under 1 ms to a pass."""


@dataclass(frozen=True)
class Snapshot:
    version: str
    card: ModelCard
    embedder: Embedder
    index: Index


@dataclass(frozen=True)
class DecodedUpload:
    """An upload decoded straight into the active model's input (``pixels``: ``uint8``
    ``(3, S, S)``); a model of another input size (one activated meanwhile) decodes ``data``
    again."""

    filename: str
    data: bytes
    format: str
    pixels: torch.Tensor


class Runtime:
    def __init__(
        self,
        max_pixels: int,
        batcher: InferenceBatcher,
        index_policy: IndexPolicy,
    ) -> None:
        self.max_pixels = max_pixels
        self.index_policy = index_policy
        self._snapshot: Snapshot | None = None
        self._swap_lock = threading.Lock()
        self._batcher = batcher

    @property
    def snapshot(self) -> Snapshot:
        snapshot = self._snapshot
        if snapshot is None:
            raise NotReady("the model is not loaded yet")
        return snapshot

    @property
    def ready(self) -> bool:
        return self._snapshot is not None

    def swap(self, snapshot: Snapshot) -> None:
        with self._swap_lock:
            self._snapshot = snapshot

    def shutdown(self) -> None:
        self._batcher.close()

    def decode(self, files: Sequence[tuple[str, bytes]]) -> list[DecodedUpload]:
        """Decodes every upload or raises the error of the first bad one.

        Each image becomes the active model's input in the same task
        (:func:`model.preprocessing.decode_prepared`)."""
        input_size = self.snapshot.embedder.config.input_size

        def one(item: tuple[str, bytes]) -> DecodedUpload:
            name, data = item
            try:
                pixels, fmt = decode_prepared(data, input_size, max_pixels=self.max_pixels)
            except ImageDecodeError as exc:
                message = f"{name or 'upload'}: {exc}"
                if exc.reason == "unsupported":
                    raise UnsupportedMedia(message) from exc
                if exc.reason == "too_large":
                    raise PayloadTooLarge(message) from exc
                raise BadRequest(message) from exc
            return DecodedUpload(name, data, fmt, pixels)

        return [one(item) for item in files]

    def embed_uploads(self, embedder: Embedder, uploads: Sequence[DecodedUpload]) -> np.ndarray:
        """The uploads' vectors, from the pixels prepared while decoding (or, for a model of
        another input size, decoded again at that size)."""
        if not uploads:
            return np.zeros((0, embedder.dim), dtype=np.float32)
        size = embedder.config.input_size
        pixels = [
            upload.pixels
            if upload.pixels.shape[-1] == size
            else decode_prepared(upload.data, size, max_pixels=self.max_pixels)[0]
            for upload in uploads
        ]
        return self.embed_tensors(embedder, torch.stack(pixels))

    async def embed_thumbnails(
        self, embedder: Embedder, files: Sequence[tuple[str, bytes]]
    ) -> np.ndarray | None:
        """The vectors of uploads that are all thumbnails (plain square JPEGs no larger than
        the model's input, like CIFAR-10's), decoded on the inference thread just before their
        forward pass; None for any other request, which then goes through :meth:`decode` on
        its worker thread.

        This spares a thumbnail request the worker thread and its two hand-offs, and lets
        concurrent single images gather into larger passes. With 16 clients sending one
        CIFAR-10 image each (family-25 CPU, old and new code side by side), ``/embed`` served
        458 → 686 images/s and its passes averaged 16 images instead of 8. Larger uploads,
        and requests of more than :data:`THUMBNAIL_MAX_IMAGES`, keep decoding on their worker
        thread, where their decoding overlaps other requests' passes instead of delaying them
        (4 clients sending 32 thumbnails: 1,336 images/s that way against 1,264 on the
        inference thread)."""
        if not 0 < len(files) <= THUMBNAIL_MAX_IMAGES or any(
            len(data) > THUMBNAIL_MAX_BYTES for _, data in files
        ):
            return None
        size, max_pixels = embedder.config.input_size, self.max_pixels

        def prepare() -> torch.Tensor | None:
            pixels = []
            for _, data in files:
                image = decode_thumbnail(data, size, max_pixels=max_pixels)
                if image is None:
                    return None
                pixels.append(image)
            return torch.stack(pixels)

        return await asyncio.wrap_future(self._batcher.submit(embedder, prepare, len(files)))

    def embed_tensors(self, embedder: Embedder, batch: torch.Tensor) -> np.ndarray:
        return self._batcher.embed(embedder, batch)
