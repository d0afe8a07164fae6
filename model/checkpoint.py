"""Model checkpoints: safetensors weights beside a JSON card; loading never unpickles.

A model directory holds ``model.safetensors`` and ``model.json``. The card records the
architecture and preprocessing (``config``), the training recipe, evaluation metrics, a
version id and the SHA-256 of the weights file, which loading verifies. Each file is written
to a temporary name, flushed to disk and renamed into place, weights first and card last, so a
crash never leaves a card that points at half-written weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from model.config import ModelConfig
from model.network import EmbeddingNet

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "model.json"


class CheckpointError(ValueError):
    """A model directory that is missing, incomplete or does not match its card."""


@dataclass
class ModelCard:
    config: ModelConfig
    version: str
    content_hash: str
    trained_at: str
    recipe: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "content_hash": self.content_hash,
            "trained_at": self.trained_at,
            "config": self.config.to_dict(),
            "recipe": self.recipe,
            "metrics": self.metrics,
            "history": self.history,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        try:
            return cls(
                config=ModelConfig.from_dict(data["config"]),
                version=str(data["version"]),
                content_hash=str(data["content_hash"]),
                trained_at=str(data["trained_at"]),
                recipe=dict(data.get("recipe", {})),
                metrics=dict(data.get("metrics", {})),
                history=list(data.get("history", [])),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"invalid model card: {exc}") from exc


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` via a flushed temporary file and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; other users (a container's) may read it
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_model(
    net: EmbeddingNet,
    out_dir: Path,
    *,
    recipe: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    history: list[dict[str, Any]] | None = None,
) -> ModelCard:
    """Writes the model directory and returns its card."""
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / WEIGHTS_FILE
    state = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{WEIGHTS_FILE}.")
    os.close(fd)
    try:
        save_file(state, tmp, metadata={"format": "pt"})
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, weights)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    content_hash = sha256_file(weights)
    now = datetime.now(UTC)
    card = ModelCard(
        config=net.config,
        version=f"{now:%Y%m%d-%H%M%S}-{content_hash[:8]}",
        content_hash=content_hash,
        trained_at=now.isoformat(timespec="seconds"),
        recipe=recipe or {},
        metrics=metrics or {},
        history=history or [],
    )
    write_card(card, out_dir)
    return card


def write_card(card: ModelCard, out_dir: Path) -> None:
    text = json.dumps(card.to_dict(), indent=2, sort_keys=True) + "\n"
    atomic_write_bytes(out_dir / CARD_FILE, text.encode())


def read_card(model_dir: Path) -> ModelCard:
    card_path = model_dir / CARD_FILE
    if not card_path.is_file():
        raise CheckpointError(f"no {CARD_FILE} in {model_dir}")
    try:
        data = json.loads(card_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"unreadable {card_path}: {exc}") from exc
    return ModelCard.from_dict(data)


def load_model(model_dir: Path, verify: bool = True) -> tuple[EmbeddingNet, ModelCard]:
    """Rebuilds the network from its card and loads its weights (no pickle involved)."""
    card = read_card(model_dir)
    weights = model_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"no {WEIGHTS_FILE} in {model_dir}")
    if verify and sha256_file(weights) != card.content_hash:
        raise CheckpointError(f"{weights} does not match the hash in its card")
    with torch.device("meta"):  # no random initialisation: the file supplies every tensor
        net = EmbeddingNet(card.config)
    try:
        net.load_state_dict(load_file(str(weights)), assign=True)
    except (RuntimeError, OSError) as exc:
        raise CheckpointError(f"weights do not fit the card's architecture: {exc}") from exc
    net.eval()
    return net, card
