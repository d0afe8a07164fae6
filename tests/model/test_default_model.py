"""The shipped default model: loadable, and as good as its card says on held-out photos."""

import json
from pathlib import Path

import pytest

from model.checkpoint import load_model
from model.embedding import Embedder
from model.report import evaluate_per_root
from tests.conftest import DEFAULT_MODEL


def test_card_and_weights_agree() -> None:
    _, card = load_model(DEFAULT_MODEL)
    assert card.config.labels == ("bird", "cat") and card.config.model_type == "triplet"
    assert card.content_hash[:8] in card.version
    assert (DEFAULT_MODEL / "model.safetensors").stat().st_size < 50 * 1024 * 1024
    assert set(card.metrics["per_dataset"]) == {"cifar10_cat_bird", "photos_cat_bird"}
    assert (DEFAULT_MODEL / "training_curve.png").exists()
    assert (DEFAULT_MODEL / "projection.png").exists()
    readme = (DEFAULT_MODEL / "README.md").read_text()
    assert card.version in readme


def test_held_out_photos_reproduce_the_card(cifar: Path, photos: Path) -> None:
    card = json.loads((DEFAULT_MODEL / "model.json").read_text())
    expected = card["metrics"]["per_dataset"]["photos_cat_bird"]
    measured = evaluate_per_root(
        Embedder.from_dir(DEFAULT_MODEL), [cifar, photos], ["cat", "bird"], measure=[photos]
    )[str(photos)]
    assert measured["queries"] == expected["queries"] == 150
    for name in ("precision_at_1", "map_at_r", "purity"):
        assert measured[name] == pytest.approx(expected[name], abs=0.01), name
