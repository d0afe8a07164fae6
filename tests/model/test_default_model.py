"""The shipped default model: loadable, as good as its card says, and above fixed floors on
images it never trained on (its own held-out split of the shared data)."""

from pathlib import Path
from typing import Any

import pytest

from model.checkpoint import load_model
from model.embedding import Embedder
from model.report import evaluate_per_root, near_duplicates_per_root
from tests.conftest import DEFAULT_MODEL

# Just under the card's figures: a model that falls below these is not shipped.
CLASS_FLOORS = {
    "cifar10_cat_bird": {"precision_at_1": 0.91, "purity": 0.915},  # card: 0.922, 0.926
    "photos_cat_bird": {"precision_at_1": 0.97, "purity": 0.98},  # card: 0.990, 1.000
}
# card: 0.939, 0.957, 1.000
NEAR_DUPLICATE_FLOORS = {"crop_85": 0.92, "jpeg_40": 0.94, "brightness_120": 0.99}


def test_card_and_weights_agree() -> None:
    _, card = load_model(DEFAULT_MODEL)
    assert card.config.labels == ("bird", "cat") and card.config.model_type == "triplet"
    assert card.recipe["model_type"] == "triplet" and card.recipe["loss"] == "both"
    assert card.metrics["init"]["recipe"]["loss"] == "normsoftmax"  # the pre-training stage
    assert card.content_hash[:8] in card.version
    assert (DEFAULT_MODEL / "model.safetensors").stat().st_size < 50 * 1024 * 1024
    assert set(card.metrics["per_dataset"]) == set(CLASS_FLOORS)
    assert set(card.metrics["near_duplicates"]) == set(NEAR_DUPLICATE_FLOORS)
    assert (DEFAULT_MODEL / "training_curve.png").exists()
    assert (DEFAULT_MODEL / "projection.png").exists()
    readme = (DEFAULT_MODEL / "README.md").read_text()
    assert card.version in readme


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder.from_dir(DEFAULT_MODEL)


@pytest.mark.slow
def test_held_out_quality_reproduces_the_card(
    embedder: Embedder, cifar: Path, photos: Path
) -> None:
    assert embedder.card is not None
    recorded: dict[str, Any] = embedder.card.metrics["per_dataset"]
    measured = evaluate_per_root(embedder, [cifar, photos], ["cat", "bird"])
    for root, name in ((cifar, "cifar10_cat_bird"), (photos, "photos_cat_bird")):
        figures = measured[str(root)]
        assert figures["queries"] == recorded[name]["queries"]
        for metric in ("precision_at_1", "map_at_r", "purity"):
            assert figures[metric] == pytest.approx(recorded[name][metric], abs=0.01), metric
        for metric, floor in CLASS_FLOORS[name].items():
            assert figures[metric] >= floor, (name, metric)


@pytest.mark.slow
def test_edited_copies_find_their_originals(embedder: Embedder, cifar: Path, photos: Path) -> None:
    assert embedder.card is not None
    recorded = embedder.card.metrics["near_duplicates"]
    measured = near_duplicates_per_root(embedder, [cifar, photos], ["cat", "bird"])
    for edit, floor in NEAR_DUPLICATE_FLOORS.items():
        assert measured[edit]["all"] == pytest.approx(recorded[edit]["all"], abs=0.01), edit
        assert measured[edit]["all"] >= floor, edit
