"""The int8 model: the shipped IR keeps the default model's held-out quality, loads without
NNCF, is bound to its weights and its own bytes, and calibration round-trips through it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from model import quantization
from model.backends import INT8_PROBE_SLACK, PROBE_MIN_COSINE, required_agreement
from model.calibration import PROBE_IMAGES, calibrate_model_dir
from model.checkpoint import load_model, read_card
from model.data import load
from model.embedding import Embedder
from model.quantization import (
    GUARDED_METRICS,
    IR_FILES,
    MANIFEST_FILE,
    QUALITY_TOLERANCE,
    Int8Model,
    QuantizationError,
    layers_kept_in_float,
    to_openvino,
)
from model.report import held_out_split
from model.training import evaluate
from tests.conftest import DEFAULT_MODEL, ROOT


@pytest.mark.slow
def test_shipped_int8_model_keeps_fp32_quality_on_the_validation_split(
    cifar: Path, photos: Path
) -> None:
    """Precision@1 and k-means purity on the default model's whole held-out split (both data
    sets, about a tenth of the images against the rest) stay within 0.005 of fp32."""
    card = read_card(DEFAULT_MODEL)
    int8 = Int8Model.load(DEFAULT_MODEL)
    assert int8 is not None and int8.model_hash == card.content_hash
    assert int8.passes

    train, val, names = held_out_split([cifar, photos], ["cat", "bird"], 0.1, 0)
    size = card.config.input_size
    queries, gallery = load(val, size, names), load(train, size, names)
    assert len(queries) == int8.quality["queries"] == card.metrics["val_queries"]
    fp32 = evaluate(Embedder.from_dir(DEFAULT_MODEL, "torch-fp32"), queries, gallery)
    int8_metrics = evaluate(Embedder.from_dir(DEFAULT_MODEL, "openvino-int8"), queries, gallery)
    for name in ("precision_at_1", "purity"):
        assert abs(int8_metrics[name] - fp32[name]) <= QUALITY_TOLERANCE, name
    recorded = int8.quality["fp32"]["precision_at_1"]
    assert fp32["precision_at_1"] == pytest.approx(recorded, abs=1e-6)
    # the probe that checks it at every load is held-out images, none of them trained on
    held_out = {sample.path.resolve() for sample in val}
    probe = {(ROOT / path).resolve() for path in int8.probe}  # relative to the repository
    assert len(probe) == PROBE_IMAGES and probe <= held_out


def test_the_shipped_int8_model_loads_without_nncf() -> None:
    """Serving reads the IR: NNCF (the 'quantize' extra) is never imported."""
    script = (
        "import sys; from pathlib import Path; from model.embedding import Embedder; "
        f"e = Embedder.from_dir(Path({str(DEFAULT_MODEL)!r}), 'openvino-int8'); "
        "assert e.backend == 'openvino-int8', e.backend; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('nncf', 'scipy')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def test_the_int8_model_is_checked_on_held_out_images_when_it_loads() -> None:
    """On the machine that calibrated it, the int8 model agrees with fp32 on its probe as
    it did then (the same computation on the same images)."""
    embedder = Embedder.from_dir(DEFAULT_MODEL, "openvino-int8")
    int8 = embedder.int8
    assert int8 is not None and int8.probe_min_cosine is not None
    assert embedder.selection.probe == f"{PROBE_IMAGES} held-out images"
    measured = embedder.selection.agreement["openvino-int8"]
    assert measured == pytest.approx(int8.probe_min_cosine, abs=2e-4)
    assert measured >= required_agreement("openvino-int8", int8, real_probe=True)


def test_the_agreement_int8_must_show() -> None:
    """0.99 to fp32, or on the int8 model's own probe what it measured at calibration less
    0.005 when that is lower; random noise and other backends always need 0.99."""
    assert INT8_PROBE_SLACK == 0.005 and PROBE_MIN_COSINE == 0.99
    low = Int8Model("h", 1, probe_min_cosine=0.9905)
    high = Int8Model("h", 1, probe_min_cosine=0.9999)
    assert required_agreement("openvino-int8", low, real_probe=True) == pytest.approx(0.9855)
    assert required_agreement("openvino-int8", high, real_probe=True) == 0.99
    assert required_agreement("openvino-int8", low, real_probe=False) == 0.99
    assert required_agreement("openvino-int8", Int8Model("h", 1), real_probe=True) == 0.99
    assert required_agreement("openvino-bf16", low, real_probe=True) == 0.99


def test_damaged_or_mismatched_ir_files_are_refused(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL, model_dir)
    weights = model_dir / IR_FILES[1]
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(QuantizationError, match="hash"):
        Int8Model.load(model_dir)
    embedder = Embedder.from_dir(model_dir, "auto")  # served, without int8
    assert embedder.int8 is None and embedder.backend != "openvino-int8"

    weights.unlink()
    with pytest.raises(QuantizationError, match="missing"):
        Int8Model.load(model_dir)
    (model_dir / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(QuantizationError, match="unreadable"):
        Int8Model.load(model_dir)


@pytest.mark.slow
def test_calibration_measures_and_round_trips(photos: Path, tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL, model_dir)
    for name in (MANIFEST_FILE, *IR_FILES):
        (model_dir / name).unlink()
    draft = calibrate_model_dir(model_dir, [photos], images=64)
    _, val, _ = held_out_split([photos], ["bird", "cat"], 0.1, 0)
    assert draft.images == 64 and draft.quality["queries"] == len(val) > 50
    assert set(draft.quality["deltas"]) == {"precision_at_1", "purity", "map_at_r"}
    assert draft.ir_hash == "" and draft.network is not None
    saved = draft.save(model_dir)
    assert len(saved.ir_hash) == 64 and not list(model_dir.glob(".int8-*"))  # no staging left
    again = Int8Model.load(model_dir)
    assert again == saved and again is not None and again.network is not None
    stored = json.loads((model_dir / MANIFEST_FILE).read_text())
    assert stored["model_hash"] == read_card(model_dir).content_hash
    assert stored["ir_sha256"] == saved.ir_hash and stored["probe"] == draft.probe
    assert 0.9 < stored["probe_min_cosine"] <= 1.0
    summary = saved.summary()
    assert summary["calibration_images"] == 64 and summary["queries"] == len(val)
    for name, delta in summary["deltas"].items():  # the summary reports what was measured
        assert delta == pytest.approx(summary["int8"][name] - summary["fp32"][name], abs=1e-9)
    within = all(abs(summary["deltas"][n]) <= QUALITY_TOLERANCE for n in GUARDED_METRICS)
    assert summary["passes"] is within
    if within:  # the saved model is served as it was measured
        assert Embedder.from_dir(model_dir, "openvino-int8").backend == "openvino-int8"


def test_the_first_convolution_is_kept_in_float_only_when_asked() -> None:
    """The embedding layer always stays in float32; the first convolution too with
    ``float_stem``. The shipped model has its first convolution in int8."""
    net, _ = load_model(DEFAULT_MODEL)
    converted = to_openvino(net)
    ops = {op.get_friendly_name(): op for op in converted.get_ordered_ops()}
    products = layers_kept_in_float(converted, float_stem=False)
    assert [ops[name].get_type_name() for name in products] == ["MatMul"]
    assert ops[products[0]].get_output_partial_shape(0)[1] == net.config.embedding_dim
    stem, *rest = layers_kept_in_float(converted, float_stem=True)
    assert rest == products
    assert ops[stem].get_type_name() == "Convolution"  # the 7x7 one over the three channels
    assert list(ops[stem].get_input_partial_shape(1).to_shape()) == [64, 3, 7, 7]
    shipped = Int8Model.load(DEFAULT_MODEL)
    assert shipped is not None and shipped.kept_in_float == products


@pytest.mark.slow
def test_calibration_keeps_the_first_convolution_in_float_when_int8_loses_quality(
    photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a tolerance nothing can meet, the int8 first convolution fails the quality
    check, so calibration measures again with it in float32 and returns that (which fails
    too, and says so); a forced choice calibrates once, as asked."""
    model_dir = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL, model_dir)
    forced = calibrate_model_dir(model_dir, [photos], images=64, float_stem=False)
    assert len(forced.kept_in_float) == 1  # the embedding layer
    monkeypatch.setattr(quantization, "QUALITY_TOLERANCE", -1.0)
    fallback = calibrate_model_dir(model_dir, [photos], images=64)
    assert not fallback.passes
    assert fallback.kept_in_float[1:] == forced.kept_in_float
    assert len(fallback.kept_in_float) == 2  # the first convolution, then the embedding layer


def test_unmeasured_int8_model_never_passes() -> None:
    assert not Int8Model("h", 0).passes
