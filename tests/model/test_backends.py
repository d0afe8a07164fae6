"""Inference backends: each agrees with eager fp32 on real images, and ``auto`` picks and
falls back as documented."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from model import backends
from model.backends import BACKENDS, BackendUnavailable, preferred_backends, select_backend
from model.checkpoint import load_model
from model.data import discover, load
from model.embedding import Embedder
from model.quantization import CALIBRATION_FILE, Int8Calibration
from tests.conftest import DEFAULT_MODEL


@pytest.fixture(scope="module")
def real_images(cifar: Path, photos: Path) -> torch.Tensor:
    samples = discover([cifar, photos], ["cat", "bird"], max_per_class=24, seed=3)
    return load(samples, 32, ["bird", "cat"]).images


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
    assert cosine.min() > (0.99 if backend == "openvino-int8" else 0.999)
    # batches of any size give the same vectors as one big batch
    np.testing.assert_allclose(embedder.embed_tensors(real_images[:1]), vectors[:1], atol=2e-3)


def test_auto_picks_int8_for_the_shipped_model_where_the_cpu_has_vnni(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(backends, "cpu_flags", lambda: frozenset({"avx512_vnni", "avx512_bf16"}))
    assert Embedder.from_dir(DEFAULT_MODEL, "auto").backend == "openvino-int8"


def test_preferred_order_follows_the_cpu_and_the_calibration(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    passed = Int8Calibration.load(DEFAULT_MODEL)
    assert passed is not None and passed.passes
    failed = Int8Calibration(
        passed.model_hash,
        passed.ranges,
        passed.images,
        {"deltas": {"precision_at_1": -0.02, "purity": 0.0}},
    )
    assert not failed.passes

    monkeypatch.setattr(backends, "cpu_flags", lambda: frozenset({"avx512_vnni", "amx_bf16"}))
    assert preferred_backends(passed) == [
        "openvino-int8",
        "openvino-bf16",
        "openvino-fp32",
        "torch-bf16",
        "torch-fp32",
    ]
    assert preferred_backends(failed)[0] == "openvino-bf16"
    assert preferred_backends(None)[0] == "openvino-bf16"

    monkeypatch.setattr(backends, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert preferred_backends(passed) == ["openvino-fp32", "torch-fp32"]

    monkeypatch.setattr(backends, "openvino_available", lambda: False)
    assert preferred_backends(passed) == ["torch-fp32"]


@pytest.mark.slow
def test_auto_falls_back_when_the_calibration_does_not_fit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(backends, "cpu_flags", lambda: frozenset({"avx512_vnni"}))
    net, _ = load_model(DEFAULT_MODEL)
    shipped = Int8Calibration.load(DEFAULT_MODEL)
    assert shipped is not None
    broken = Int8Calibration(shipped.model_hash, shipped.ranges[:-1], 1, shipped.quality)
    chosen, _ = select_backend(net, "auto", broken)
    assert chosen == "openvino-fp32"
    with pytest.raises(BackendUnavailable, match="quantisers"):
        select_backend(net, "openvino-int8", broken)
    with pytest.raises(BackendUnavailable, match="calibration"):
        select_backend(net, "openvino-int8", None)


def test_a_calibration_for_other_weights_is_ignored(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL, model_dir)
    calibration = Int8Calibration.load(model_dir)
    assert calibration is not None
    Int8Calibration("0" * 64, calibration.ranges, calibration.images, calibration.quality).save(
        model_dir
    )
    embedder = Embedder.from_dir(model_dir, "auto")
    assert embedder.calibration is None and embedder.backend != "openvino-int8"
    (model_dir / CALIBRATION_FILE).unlink()
    assert Embedder.from_dir(model_dir, "auto").backend != "openvino-int8"


def test_images_of_the_wrong_size_are_refused() -> None:
    embedder = Embedder.from_dir(DEFAULT_MODEL, "torch-fp32")
    with pytest.raises(ValueError, match="64x64 px, the model takes 32x32"):
        embedder.embed_tensors(torch.zeros(2, 3, 64, 64, dtype=torch.uint8))
