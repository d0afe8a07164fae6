import threading
import time
from concurrent.futures import Future
from typing import Any

import numpy as np
import pytest
import torch

from app.errors import NotReady
from app.services.batching import InferenceBatcher
from model.config import ModelConfig
from model.embedding import Embedder
from model.network import EmbeddingNet

ONE_IMAGE = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)


def hold_first_pass(
    embedder: Embedder, **options: Any
) -> tuple[InferenceBatcher, list[int], threading.Event, Future[np.ndarray | None]]:
    """A batcher whose first pass (one image) holds the inference thread until ``release`` is
    set, so that the requests sent meanwhile queue up behind it; ``sizes`` records the images
    of every pass. Returns the batcher, ``sizes``, ``release`` and the first request."""
    release = threading.Event()
    sizes: list[int] = []

    def on_batch(size: int) -> None:
        sizes.append(size)
        release.wait(30)

    batcher = InferenceBatcher(on_batch=on_batch, **options)
    first = batcher.submit(embedder, lambda: ONE_IMAGE, 1)
    while not sizes:
        time.sleep(0.01)
    return batcher, sizes, release, first


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


def test_a_bad_request_fails_alone_when_merged_with_good_ones() -> None:
    embedder = Embedder(EmbeddingNet(ModelConfig(embedding_dim=16)))
    batcher, sizes, release, _ = hold_first_pass(embedder)
    wrong = torch.zeros(2, 2, 32, 32, dtype=torch.uint8)  # two channels: always fails
    right = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    outcomes: dict[str, object] = {}

    def call(name: str, images: torch.Tensor) -> None:
        try:
            outcomes[name] = batcher.embed(embedder, images)
        except RuntimeError as exc:
            outcomes[name] = exc

    threads = [
        threading.Thread(target=call, args=(name, images))
        for name, images in (("wrong1", wrong), ("right", right), ("wrong2", wrong))
    ]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    release.set()
    for thread in threads:
        thread.join(timeout=30)
    batcher.close()
    assert sizes[1:] == [2, 1, 2]  # the merged pass failed; each request then ran alone
    assert isinstance(outcomes["wrong1"], RuntimeError)
    assert isinstance(outcomes["wrong2"], RuntimeError)
    np.testing.assert_allclose(outcomes["right"], embedder.embed_tensors(right), atol=1e-5)  # type: ignore[arg-type]


def test_embed_after_close_fails_at_once() -> None:
    embedder = Embedder(EmbeddingNet(ModelConfig(embedding_dim=16)))
    batcher = InferenceBatcher()
    batcher.close()
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            batcher.embed(embedder, torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
        except NotReady as exc:
            outcome.append(exc)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(timeout=5)
    assert not thread.is_alive(), "embed() after close() hangs"
    assert outcome and "shutting down" in str(outcome[0])


def test_a_lone_request_does_not_wait_for_company() -> None:
    """A lone client does not wait (the previous pass held one request, its own): with a 30 s
    wait, its requests still come straight back."""
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


def batcher_after_a_pass_of_three(
    embedder: Embedder, max_wait_s: float
) -> tuple[InferenceBatcher, list[int]]:
    """A batcher whose last pass merged three requests, and its pass sizes so far."""
    batcher, sizes, release, first = hold_first_pass(embedder, max_wait_s=max_wait_s)
    futures = [first] + [batcher.submit(embedder, lambda: ONE_IMAGE, 1) for _ in range(3)]
    release.set()
    for future in futures:
        future.result(30)
    assert sizes == [1, 3]
    return batcher, sizes


def test_the_wait_ends_once_as_many_requests_as_last_time_have_come() -> None:
    """After a pass of three requests, the next pass waits for three, and no longer: three
    requests arriving 0.2 s apart share one pass although ``max_wait_s`` is 30 s."""
    embedder = Embedder(EmbeddingNet(ModelConfig(embedding_dim=16)))
    batcher, sizes = batcher_after_a_pass_of_three(embedder, max_wait_s=30.0)
    futures = []
    for _ in range(3):
        futures.append(batcher.submit(embedder, lambda: ONE_IMAGE, 1))
        time.sleep(0.2)
    for future in futures:
        future.result(20)  # a wait run to max_wait_s would time out here
    batcher.close()
    assert sizes == [1, 3, 3]


def test_fewer_requests_than_last_time_wait_out_max_wait() -> None:
    embedder = Embedder(EmbeddingNet(ModelConfig(embedding_dim=16)))
    batcher, sizes = batcher_after_a_pass_of_three(embedder, max_wait_s=0.3)
    start = time.monotonic()
    batcher.submit(embedder, lambda: ONE_IMAGE, 1).result(20)
    waited = time.monotonic() - start
    batcher.close()
    assert waited >= 0.3 and sizes == [1, 3, 1]


def test_requests_prepared_on_the_inference_thread_merge_refuse_or_fail_alone() -> None:
    """``submit``'s functions run on the inference thread just before the pass: one that
    returns None answers None, one that raises fails its own request, and the rest share one
    pass with their own rows."""
    embedder = Embedder(EmbeddingNet(ModelConfig(embedding_dim=16)))
    batcher, sizes, release, first = hold_first_pass(embedder, max_wait_s=0.05)
    threads: set[str] = set()
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)

    def prepared() -> torch.Tensor:
        threads.add(threading.current_thread().name)
        return images

    def broken() -> torch.Tensor:
        raise ValueError("cannot decode")

    good = batcher.submit(embedder, prepared, 2)
    refused = batcher.submit(embedder, lambda: None, 1)
    failed = batcher.submit(embedder, broken, 1)
    release.set()
    np.testing.assert_allclose(good.result(30), embedder.embed_tensors(images), atol=1e-5)  # type: ignore[arg-type]
    assert refused.result(30) is None
    with pytest.raises(ValueError, match="cannot decode"):
        failed.result(30)
    assert first.result(30) is not None
    batcher.close()
    assert sizes == [1, 2] and threads == {"inference"}


def test_a_request_cancelled_before_its_pass_is_dropped() -> None:
    """A client that gives up (its request timed out, say) cancels its future; the inference
    thread skips it instead of failing on the cancelled future, and goes on serving."""
    embedder = Embedder(EmbeddingNet(ModelConfig(embedding_dim=16)))
    batcher, sizes, release, first = hold_first_pass(embedder)
    calls: list[int] = []

    def prepare() -> torch.Tensor:
        calls.append(1)
        return ONE_IMAGE

    cancelled = batcher.submit(embedder, prepare, 1)
    assert cancelled.cancel()
    release.set()
    assert first.result(30) is not None
    assert batcher.embed(embedder, ONE_IMAGE).shape == (1, 16)
    batcher.close()
    assert calls == [] and sizes == [1, 1]
