import threading

import numpy as np
import torch

from app.services.batching import InferenceBatcher
from model.config import ModelConfig
from model.embedding import Embedder
from model.network import EmbeddingNet


def test_concurrent_requests_share_forward_passes_and_get_their_own_rows() -> None:
    torch.manual_seed(0)
    embedder = Embedder(EmbeddingNet(ModelConfig(embedding_dim=16)))
    sizes: list[int] = []
    batcher = InferenceBatcher(max_batch=64, max_wait_s=0.05, on_batch=sizes.append)
    inputs = [torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8) for n in (1, 2, 3, 1, 4)]
    results: dict[int, np.ndarray] = {}

    def call(i: int) -> None:
        results[i] = batcher.embed(embedder, inputs[i])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(inputs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    batcher.close()
    assert sum(sizes) == 11 and len(sizes) < len(inputs)
    for i, images in enumerate(inputs):
        np.testing.assert_allclose(results[i], embedder.embed_tensors(images), atol=1e-5)


def test_an_error_reaches_every_waiting_request() -> None:
    embedder = Embedder(EmbeddingNet(ModelConfig(embedding_dim=16)))
    batcher = InferenceBatcher()
    wrong = torch.zeros(2, 2, 32, 32, dtype=torch.uint8)  # two channels: always fails
    right = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    errors: list[torch.Tensor] = []

    def call(images: torch.Tensor) -> None:
        try:
            batcher.embed(embedder, images)
        except RuntimeError:
            errors.append(images)

    threads = [threading.Thread(target=call, args=(x,)) for x in (wrong, right, wrong)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    batcher.close()
    assert all(not t.is_alive() for t in threads)  # nobody hangs
    assert sum(images.shape[1] == 2 for images in errors) == 2


def test_a_lone_request_does_not_wait_for_company() -> None:
    """The gathering wait applies only while traffic is concurrent: with a 30 s wait, a lone
    request still comes straight back."""
    embedder = Embedder(EmbeddingNet(ModelConfig(embedding_dim=16)))
    sizes: list[int] = []
    batcher = InferenceBatcher(max_batch=64, max_wait_s=30.0, on_batch=sizes.append)
    images = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    done = threading.Event()

    def call() -> None:
        for _ in range(3):
            batcher.embed(embedder, images)
        done.set()

    threading.Thread(target=call, daemon=True).start()
    assert done.wait(timeout=20), "a lone request waited for others"
    batcher.close()
    assert sizes == [1, 1, 1]
