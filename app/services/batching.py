"""Dynamic batching: concurrent requests' images go through the network in one forward pass.

One inference thread takes the first waiting request, then gathers whatever else arrives
within ``max_wait_s`` (up to ``max_batch`` images), runs one forward pass per model among
them, and hands each request its own rows. While a pass runs, new requests queue up and join
the next one, so under load batches form without any added waiting. When a merged pass fails,
each request in it is run alone, so that only the one at fault gets the error.

The wait only happens while traffic is concurrent (the previous pass merged requests): a
lone client's request goes straight through, which took its ``/embed`` p50 from 7.7 ms to
about 4 ms, while 16 clients keep the larger batches the wait gathers.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
import torch

from app.errors import NotReady
from model.embedding import Embedder


@dataclass
class _Request:
    embedder: Embedder
    images: torch.Tensor
    future: Future[np.ndarray] = field(default_factory=Future)


class InferenceBatcher:
    def __init__(
        self,
        max_batch: int = 64,
        max_wait_s: float = 0.002,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.on_batch = on_batch
        self._concurrent = False
        self._closed = False
        self._closing = threading.Lock()  # orders embed()'s check-and-put against close()
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="inference", daemon=True)
        self._thread.start()

    def embed(self, embedder: Embedder, images: torch.Tensor) -> np.ndarray:
        """Blocks until the request's rows are computed (call from a worker thread)."""
        request = _Request(embedder, images)
        with self._closing:
            if self._closed:
                raise NotReady("the service is shutting down")
            self._queue.put(request)
        return request.future.result()

    def close(self) -> None:
        """Finishes the requests already queued, then stops; later calls fail at once."""
        with self._closing:
            self._closed = True
            self._queue.put(None)
        self._thread.join(timeout=30)

    def _gather(self, first: _Request) -> tuple[list[_Request], bool]:
        pending, count = [first], len(first.images)
        deadline = time.monotonic() + (self.max_wait_s if self._concurrent else 0.0)
        while count < self.max_batch:
            try:
                timeout = deadline - time.monotonic()
                request = (
                    self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
                )
            except queue.Empty:
                break
            if request is None:
                return pending, True
            pending.append(request)
            count += len(request.images)
        return pending, False

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            pending, closing = self._gather(first)
            self._concurrent = len(pending) > 1
            by_model: dict[int, list[_Request]] = {}
            for request in pending:
                by_model.setdefault(id(request.embedder), []).append(request)
            for group in by_model.values():
                self._run(group)
            if closing:
                return

    def _run(self, group: list[_Request]) -> None:
        try:
            images = torch.cat([r.images for r in group])
            if self.on_batch is not None:
                self.on_batch(len(images))
            vectors = group[0].embedder.embed_tensors(images)
        except Exception as exc:
            if len(group) == 1:
                group[0].future.set_exception(exc)
            else:  # one bad request must not fail the others merged with it: run each alone
                for request in group:
                    self._run([request])
            return
        start = 0
        for request in group:
            request.future.set_result(vectors[start : start + len(request.images)])
            start += len(request.images)
