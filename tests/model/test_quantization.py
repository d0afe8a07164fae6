"""int8 quantisation: the shipped calibration keeps the default model's held-out quality,
and calibration round-trips through its JSON file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from model.calibration import calibrate_model_dir
from model.checkpoint import read_card
from model.data import load
from model.embedding import Embedder
from model.quantization import (
    CALIBRATION_FILE,
    GUARDED_METRICS,
    QUALITY_TOLERANCE,
    Int8Calibration,
)
from model.report import held_out_split
from model.training import evaluate
from tests.conftest import DEFAULT_MODEL


@pytest.mark.slow
def test_shipped_int8_model_keeps_fp32_quality_on_the_validation_split(
    cifar: Path, photos: Path
) -> None:
    """Precision@1 and k-means purity on the default model's whole held-out split (both data
    sets, about a tenth of the images against the rest) stay within 0.005 of fp32."""
    card = read_card(DEFAULT_MODEL)
    calibration = Int8Calibration.load(DEFAULT_MODEL)
    assert calibration is not None and calibration.model_hash == card.content_hash
    assert calibration.passes

    train, val, names = held_out_split([cifar, photos], ["cat", "bird"], 0.1, 0)
    queries, gallery = load(val, 32, names), load(train, 32, names)
    assert len(queries) == calibration.quality["queries"] == card.metrics["val_queries"]
    fp32 = evaluate(Embedder.from_dir(DEFAULT_MODEL, "torch-fp32"), queries, gallery)
    int8 = evaluate(Embedder.from_dir(DEFAULT_MODEL, "openvino-int8"), queries, gallery)
    for name in ("precision_at_1", "purity"):
        assert abs(int8[name] - fp32[name]) <= QUALITY_TOLERANCE, (name, fp32[name], int8[name])
    recorded = calibration.quality["fp32"]["precision_at_1"]
    assert fp32["precision_at_1"] == pytest.approx(recorded, abs=1e-6)


@pytest.mark.slow
def test_calibration_measures_and_round_trips(photos: Path, tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL, model_dir)
    (model_dir / CALIBRATION_FILE).unlink()
    calibration = calibrate_model_dir(model_dir, [photos], images=64)
    _, val, _ = held_out_split([photos], ["bird", "cat"], 0.1, 0)
    assert calibration.images == 64 and calibration.quality["queries"] == len(val) > 50
    assert set(calibration.quality["deltas"]) == {"precision_at_1", "purity", "map_at_r"}
    calibration.save(model_dir)
    again = Int8Calibration.load(model_dir)
    assert again == calibration
    stored = json.loads((model_dir / CALIBRATION_FILE).read_text())
    assert stored["model_hash"] == read_card(model_dir).content_hash
    summary = calibration.summary()
    assert summary["calibration_images"] == 64 and summary["queries"] == len(val)
    for name, delta in summary["deltas"].items():  # the summary reports what was measured
        assert delta == pytest.approx(summary["int8"][name] - summary["fp32"][name], abs=1e-9)
    within = all(abs(summary["deltas"][n]) <= QUALITY_TOLERANCE for n in GUARDED_METRICS)
    assert summary["passes"] is within


def test_unmeasured_calibration_never_passes() -> None:
    assert not Int8Calibration("h", [], 0).passes
