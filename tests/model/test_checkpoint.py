import json
from pathlib import Path

import pytest
import torch

from model.checkpoint import CheckpointError, load_model, save_model
from model.config import ModelConfig
from model.network import EmbeddingNet


def test_round_trip_gives_identical_embeddings(tmp_path: Path) -> None:
    net = EmbeddingNet(ModelConfig(embedding_dim=16, labels=("bird", "cat"))).eval()
    card = save_model(net, tmp_path, recipe={"epochs": 1}, metrics={"val_precision_at_1": 0.5})
    loaded, loaded_card = load_model(tmp_path)
    assert not any(t.is_meta for t in loaded.state_dict().values())  # built on meta, filled
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(net(images), loaded(images))
    assert loaded_card.version == card.version
    assert loaded_card.config == net.config
    assert loaded_card.metrics == {"val_precision_at_1": 0.5}
    assert len(card.content_hash) == 64 and card.content_hash[:8] in card.version


def test_tampered_weights_are_refused(tmp_path: Path) -> None:
    save_model(EmbeddingNet(ModelConfig(embedding_dim=8)), tmp_path)
    weights = tmp_path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="hash"):
        load_model(tmp_path)


def test_card_that_does_not_fit_the_weights_is_refused(tmp_path: Path) -> None:
    save_model(EmbeddingNet(ModelConfig(embedding_dim=8)), tmp_path)
    card = json.loads((tmp_path / "model.json").read_text())
    card["config"]["embedding_dim"] = 9
    (tmp_path / "model.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError):
        load_model(tmp_path)


def test_missing_files_are_reported(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError):
        load_model(tmp_path)
