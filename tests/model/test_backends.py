"""Inference backends: each agrees with eager fp32 on real images, and ``auto`` measures,
picks the fastest, remembers it and falls back as documented."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from model import backends
from model.backends import (
    BACKENDS,
    BackendUnavailable,
    Forward,
    candidate_backends,
    select_backend,
)
from model.checkpoint import load_model, read_card
from model.config import ModelConfig
from model.data import discover, load
from model.embedding import Embedder
from model.network import EmbeddingNet
from model.quantization import MANIFEST_FILE, Int8Model, to_openvino
from tests.conftest import DEFAULT_MODEL


@pytest.fixture(scope="module")
def real_images(cifar: Path, photos: Path) -> torch.Tensor:
    samples = discover([cifar, photos], ["cat", "bird"], max_per_class=24, seed=3)
    return load(samples, read_card(DEFAULT_MODEL).config.input_size, ["bird", "cat"]).images


@pytest.fixture(scope="module")
def fp32_vectors(real_images: torch.Tensor) -> np.ndarray:
    return Embedder.from_dir(DEFAULT_MODEL, "torch-fp32").embed_tensors(real_images)


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend_agrees_with_fp32_on_real_images(
    backend: str, real_images: torch.Tensor, fp32_vectors: np.ndarray
) -> None:
    embedder = Embedder.from_dir(DEFAULT_MODEL, backend)  # type: ignore[arg-type]
    assert embedder.backend == backend
    vectors = embedder.embed_tensors(real_images)
    assert vectors.dtype == np.float32 and vectors.shape == fp32_vectors.shape
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cosine = np.sum(vectors * fp32_vectors, axis=1)
    if backend == "openvino-int8":
        # int8 is held to fp32's retrieval quality (tests/model/test_quantization.py); image
        # by image it strays a little (on an AVX2 CPU without VNNI: mean 0.9982, lowest 0.986)
        assert cosine.mean() > 0.997 and cosine.min() > 0.98
    else:
        assert cosine.min() > 0.999
    # batches of any size give the same vectors as one big batch
    np.testing.assert_allclose(embedder.embed_tensors(real_images[:1]), vectors[:1], atol=2e-3)


def test_auto_takes_the_fastest_measured_candidate(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the CPU flags suggest, the measurement decides (here a fake timer makes eager
    fp32 the fastest: on a real CPU it never is)."""
    monkeypatch.setattr(backends, "_measured", {})
    monkeypatch.setattr(backends, "cpu_flags", lambda: frozenset({"avx512_vnni", "avx512_bf16"}))
    net, card = load_model(DEFAULT_MODEL)
    int8 = Int8Model.load(DEFAULT_MODEL)
    speeds = {"torch-fp32": 900.0}

    def fake_timer(forward: Forward, size: int) -> Callable[[], float]:
        name = next(b for b, f in built.items() if f is forward)
        return lambda: speeds.get(name, 100.0)

    built: dict[str, Forward] = {}
    build = backends.build_forward

    def recording_build(net_: object, backend: str, *args: object) -> Forward:
        built[backend] = build(net_, backend, *args)  # type: ignore[arg-type]
        return built[backend]

    monkeypatch.setattr(backends, "build_forward", recording_build)
    _, selection = select_backend(net, "auto", int8, card.content_hash, timer=fake_timer)
    assert selection.backend == "torch-fp32" and selection.how == "measured"
    assert set(selection.images_per_second) == set(candidate_backends(int8))
    assert selection.images_per_second["torch-fp32"] == 900.0


@pytest.mark.slow
def test_auto_remembers_its_measurement_per_cpu_and_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backends, "_measured", {})  # nothing measured in this process yet
    net, card = load_model(DEFAULT_MODEL)
    int8 = Int8Model.load(DEFAULT_MODEL)
    cache = tmp_path / "backend-selection.json"
    timed: list[int] = []

    def counting_timer(forward: Forward, size: int) -> Callable[[], float]:
        timed.append(size)
        return lambda: float(len(timed))  # the last candidate built is "fastest"

    _, first = select_backend(net, "auto", int8, card.content_hash, cache, counting_timer)
    assert first.how == "measured" and len(timed) == len(first.images_per_second) >= 2
    assert first.backend == max(first.images_per_second, key=first.images_per_second.get)  # type: ignore[arg-type]
    timed.clear()
    _, again = select_backend(net, "auto", int8, card.content_hash, cache, counting_timer)
    assert again.how == "remembered" and again.backend == first.backend and timed == []
    monkeypatch.setattr(backends, "_measured", {})  # a new process: the file remembers
    _, restarted = select_backend(net, "auto", int8, card.content_hash, cache, counting_timer)
    assert restarted.how == "remembered" and restarted.backend == first.backend and timed == []
    _, other = select_backend(net, "auto", int8, "f" * 64, cache, counting_timer)
    assert other.how == "measured" and timed  # other weights: measured again


def test_the_measured_choice_is_the_fastest_here() -> None:
    embedder = Embedder.from_dir(DEFAULT_MODEL, "auto")
    rates = embedder.selection.images_per_second
    assert embedder.backend == max(rates, key=rates.get)  # type: ignore[arg-type]
    assert "openvino-int8" in rates  # the shipped int8 model passed: it is a candidate


def test_candidates_follow_the_int8_model_and_what_the_cpu_computes_natively(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    passed = Int8Model.load(DEFAULT_MODEL)
    assert passed is not None and passed.passes
    failed = Int8Model(
        passed.model_hash, passed.images, {"deltas": {"precision_at_1": -0.02, "purity": 0.0}}
    )
    assert not failed.passes

    monkeypatch.setattr(backends, "cpu_flags", lambda: frozenset({"avx512_vnni", "amx_bf16"}))
    assert candidate_backends(passed) == [
        "openvino-int8",
        "openvino-bf16",
        "openvino-fp32",
        "torch-bf16",
        "torch-fp32",
    ]
    assert candidate_backends(failed)[0] == "openvino-bf16"
    assert candidate_backends(None)[0] == "openvino-bf16"

    # without VNNI int8 is still tried: measurement, not a flag, decides whether it pays
    monkeypatch.setattr(backends, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert candidate_backends(passed) == ["openvino-int8", "openvino-fp32", "torch-fp32"]

    monkeypatch.setattr(backends, "openvino_available", lambda: False)
    assert candidate_backends(passed) == ["torch-fp32"]


def test_an_int8_model_that_disagrees_on_held_out_images_is_not_served(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The load check catches an int8 model that computes something else (here the IR of
    an untrained network under the shipped manifest), as it would one that saturates on a
    CPU without VNNI: ``auto`` falls back, an explicit request fails."""
    monkeypatch.setattr(backends, "_measured", {})
    net, card = load_model(DEFAULT_MODEL)
    shipped = Int8Model.load(DEFAULT_MODEL)
    assert shipped is not None
    wrong = dataclasses.replace(shipped, network=to_openvino(EmbeddingNet(net.config)))
    embedder = Embedder(net, card, "auto", wrong)
    assert embedder.backend != "openvino-int8"
    assert (
        "disagrees with fp32 on 32 held-out images"
        in (embedder.selection.unavailable["openvino-int8"])
    )
    with pytest.raises(BackendUnavailable, match="disagrees"):
        Embedder(net, card, "openvino-int8", wrong)
    with pytest.raises(BackendUnavailable, match="int8 IR"):
        select_backend(net, "openvino-int8", None)


def test_an_int8_model_for_other_weights_is_ignored(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL, model_dir)
    manifest = json.loads((model_dir / MANIFEST_FILE).read_text())
    (model_dir / MANIFEST_FILE).write_text(json.dumps({**manifest, "model_hash": "0" * 64}))
    embedder = Embedder.from_dir(model_dir, "auto")
    assert embedder.int8 is None and embedder.backend != "openvino-int8"
    (model_dir / MANIFEST_FILE).unlink()
    assert Embedder.from_dir(model_dir, "auto").backend != "openvino-int8"


def test_images_of_the_wrong_size_are_refused() -> None:
    embedder = Embedder.from_dir(DEFAULT_MODEL, "torch-fp32")
    with pytest.raises(ValueError, match="32x32 px, the model takes 64x64"):
        embedder.embed_tensors(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))


def test_the_fp32_reference_is_computed_once_per_weights_and_probe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(backends, "_REFERENCES", backends._Cache())  # none from other tests
    net = EmbeddingNet(ModelConfig(embedding_dim=8, labels=("bird", "cat"))).eval()
    calls: list[int] = []
    net.register_forward_hook(lambda *_: calls.append(1))

    def unit_vectors(images: torch.Tensor) -> np.ndarray:
        return np.full((len(images), 8), 8**-0.5, dtype=np.float32)

    probe, other_probe = backends.random_probe(32), backends.random_probe(32)[:2]
    first = backends.agrees_with_fp32(net, unit_vectors, probe, "weights-a")
    assert backends.agrees_with_fp32(net, unit_vectors, probe, "weights-a") == first
    assert len(calls) == 1
    backends.agrees_with_fp32(net, unit_vectors, other_probe, "weights-a")
    backends.agrees_with_fp32(net, unit_vectors, probe, "weights-b")
    backends.agrees_with_fp32(net, unit_vectors, probe)  # no hash: nothing remembered
    backends.agrees_with_fp32(net, unit_vectors, probe)
    assert len(calls) == 5
