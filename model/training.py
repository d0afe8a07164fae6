"""Training an embedding network: ``train_one_epoch``, ``evaluate`` and ``train``.

``train`` is resumable: after every epoch it writes the network, the optimiser state and the
history to ``<out>/training_state/`` (safetensors and JSON, no pickle), and a later call with
the same output folder continues from there. The finished model goes to ``<out>/`` as a model
directory (see :mod:`model.checkpoint`).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from model.checkpoint import ModelCard, atomic_write_bytes, load_model, save_model
from model.clustering import kmeans
from model.config import ModelConfig, ModelType, Stem
from model.data import ImageSet, discover, load, split
from model.embedding import Embedder
from model.losses import TupleLoss, build_loss
from model.metrics import clustering_metrics, retrieval_metrics
from model.mining import Strategy
from model.network import EmbeddingNet, build_network
from model.preprocessing import augment_batch, build_augmentation, normalize
from model.sampling import PKSampler

log = logging.getLogger(__name__)

STATE_DIR = "training_state"
Event = dict[str, Any]


class TrainingCancelled(Exception):
    """Raised when ``should_stop`` asks a run to stop; the last epoch's state is kept."""


@dataclass
class TrainRecipe:
    """Everything that determines a training run; stored in the model card."""

    data: list[str]
    classes: list[str] | None = None
    max_per_class: int | None = None
    val_fraction: float = 0.2
    seed: int = 0
    model_type: ModelType = "triplet"
    mining: Strategy = "all"
    margin: float = 0.2
    embedding_dim: int = 128
    stem: Stem = "stride2"
    input_size: int = 32
    epochs: int = 10
    batch_size: int = 128
    classes_per_batch: int = 16
    lr: float = 1e-3
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.5
    augmentation: str = "strong"
    bf16: bool = False
    pretrained: str | None = None
    init_from: str | None = None
    eval_gallery_limit: int = 10000

    def validate(self) -> None:
        if self.epochs < 1:
            raise ValueError("epochs must be at least 1")
        if self.batch_size < 4:
            raise ValueError("batch_size must be at least 4")
        if not 0 < self.lr < 1:
            raise ValueError("lr must be in (0, 1)")
        if self.margin <= 0:
            raise ValueError("margin must be positive")
        if self.augmentation not in ("strong", "light"):
            raise ValueError("augmentation must be 'strong' or 'light'")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EpochStats:
    loss: float
    active_fraction: float
    images_per_second: float
    steps: int


@dataclass
class Datasets:
    train: ImageSet
    val: ImageSet
    skipped: int = field(default=0)


def lr_at(step: int, total_steps: int, warmup_steps: int, base_lr: float) -> float:
    """Linear warm-up, then cosine decay to 1 % of ``base_lr``."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return base_lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def train_one_epoch(
    net: EmbeddingNet,
    loss_fn: TupleLoss,
    optimizer: torch.optim.Optimizer,
    images: ImageSet,
    sampler: PKSampler,
    augmentation: Any,
    *,
    bf16: bool,
    schedule: Callable[[int], float],
    first_step: int,
    on_step: Callable[[int, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> EpochStats:
    net.train()
    total_loss, total_active, total_tuples, seen = 0.0, 0, 0, 0
    start = time.perf_counter()
    step = first_step
    for step_in_epoch, batch_idx in enumerate(sampler):
        if should_stop is not None and should_stop():
            raise TrainingCancelled()
        for group in optimizer.param_groups:
            group["lr"] = schedule(step)
        batch = normalize(augment_batch(images.images[batch_idx], augmentation), net.config)
        labels = images.targets[batch_idx]
        if bf16:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            embeddings = net(batch)
        result = loss_fn(embeddings.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        result.loss.backward()
        optimizer.step()
        total_loss += float(result.loss.detach())
        total_active += result.active
        total_tuples += result.tuples
        seen += len(batch_idx)
        step += 1
        if on_step is not None:
            on_step(step_in_epoch + 1, float(result.loss.detach()))
    elapsed = time.perf_counter() - start
    steps = step - first_step
    return EpochStats(
        loss=total_loss / max(1, steps),
        active_fraction=total_active / max(1, total_tuples),
        images_per_second=seen / max(elapsed, 1e-9),
        steps=steps,
    )


def evaluate(
    embedder: Embedder,
    queries: ImageSet,
    gallery: ImageSet | None = None,
    *,
    clusters: bool = True,
    seed: int = 0,
) -> dict[str, float]:
    """Retrieval metrics of ``queries`` against ``gallery`` (leave-one-out without one) and,
    with ``clusters``, k-means metrics on the queries with k = number of their labels."""
    query_vectors = embedder.embed_tensors(queries.images)
    query_labels = queries.label_names()
    if gallery is not None:
        gallery_vectors = embedder.embed_tensors(gallery.images)
        metrics = retrieval_metrics(
            query_vectors, query_labels, gallery_vectors, gallery.label_names()
        )
    else:
        metrics = retrieval_metrics(query_vectors, query_labels)
    if clusters:
        k = len(set(query_labels))
        grouping = kmeans(query_vectors, k, seed=seed)
        metrics.update(
            clustering_metrics(query_labels, grouping.assignments.tolist(), query_vectors)
        )
    metrics["queries"] = float(len(queries))
    return metrics


def prepare_data(recipe: TrainRecipe, classes: list[str] | None = None) -> Datasets:
    """Discovers, splits and decodes the recipe's images; ``classes`` fixes the class order."""
    samples = discover(
        [Path(d) for d in recipe.data], recipe.classes, recipe.max_per_class, recipe.seed
    )
    train_samples, val_samples = split(samples, recipe.val_fraction, recipe.seed)
    names = classes or sorted({s.label for s in samples})
    train_set = load(train_samples, recipe.input_size, names)
    val_set = load(val_samples, recipe.input_size, names)
    return Datasets(train_set, val_set, train_set.skipped + val_set.skipped)


def subset(images: ImageSet, limit: int, seed: int) -> ImageSet:
    if len(images) <= limit:
        return images
    pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:limit]
    return ImageSet(images.images[pick], images.targets[pick], images.classes)


def _build(recipe: TrainRecipe, classes: list[str]) -> EmbeddingNet:
    if recipe.init_from:
        start, _ = load_model(Path(recipe.init_from))
        config = ModelConfig.from_dict(
            {**start.config.to_dict(), "labels": classes, "model_type": recipe.model_type}
        )
        net = EmbeddingNet(config)
        net.load_state_dict(start.state_dict())
        return net
    config = ModelConfig(
        stem=recipe.stem,
        input_size=recipe.input_size,
        embedding_dim=recipe.embedding_dim,
        model_type=recipe.model_type,
        labels=tuple(classes),
    )
    return build_network(config, Path(recipe.pretrained) if recipe.pretrained else None)


def _save_state(
    state_dir: Path,
    net: EmbeddingNet,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    step: int,
    history: list[dict[str, Any]],
    recipe: TrainRecipe,
) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, state_dir / "net.tmp")
    (state_dir / "net.tmp").replace(state_dir / "net.safetensors")
    opt_state = optimizer.state_dict()
    tensors = {
        f"{idx}.{name}": value.contiguous()
        for idx, entries in opt_state["state"].items()
        for name, value in entries.items()
    }
    save_file(tensors, state_dir / "optimizer.tmp")
    (state_dir / "optimizer.tmp").replace(state_dir / "optimizer.safetensors")
    meta = {
        "epoch": epoch,
        "step": step,
        "history": history,
        "recipe": recipe.to_dict(),
        "param_groups": opt_state["param_groups"],
    }
    atomic_write_bytes(state_dir / "state.json", json.dumps(meta).encode())


def _load_state(
    state_dir: Path, net: EmbeddingNet, optimizer: torch.optim.Optimizer, recipe: TrainRecipe
) -> tuple[int, int, list[dict[str, Any]]] | None:
    meta_path = state_dir / "state.json"
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    if meta["recipe"] != recipe.to_dict():
        log.warning("ignoring %s: it belongs to a different recipe", state_dir)
        return None
    net.load_state_dict(load_file(str(state_dir / "net.safetensors")))
    tensors = load_file(str(state_dir / "optimizer.safetensors"))
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return int(meta["epoch"]), int(meta["step"]), list(meta["history"])


def train(
    recipe: TrainRecipe,
    out_dir: Path,
    *,
    on_event: Callable[[Event], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    datasets: Datasets | None = None,
) -> ModelCard:
    """Trains per ``recipe`` and writes the model directory ``out_dir``; returns its card.

    ``on_event`` receives ``{"event": "data" | "step" | "epoch" | "done", ...}`` dictionaries
    (progress for the service's job view); ``should_stop`` is polled every step.
    """
    recipe.validate()
    emit = on_event or (lambda event: None)
    torch.manual_seed(recipe.seed)
    data = datasets or prepare_data(recipe)
    if len(data.train) < 4:
        raise ValueError("too few readable training images")
    classes = data.train.classes
    emit(
        {
            "event": "data",
            "train": len(data.train),
            "val": len(data.val),
            "skipped": data.skipped,
            "classes": classes,
        }
    )
    net = _build(recipe, classes)
    if recipe.bf16:
        net = net.to(memory_format=torch.channels_last)
    loss_fn = build_loss(recipe.model_type, recipe.margin, recipe.mining, recipe.seed)
    optimizer = torch.optim.AdamW(net.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    k = max(2, recipe.batch_size // min(recipe.classes_per_batch, len(classes)))
    sampler = PKSampler(data.train.targets, recipe.classes_per_batch, k, seed=recipe.seed)
    steps_per_epoch = len(sampler)
    total_steps = steps_per_epoch * recipe.epochs
    warmup = max(1, round(recipe.warmup_epochs * steps_per_epoch))

    def schedule(step: int) -> float:
        return lr_at(step, total_steps, warmup, recipe.lr)

    augmentation = build_augmentation(recipe.input_size, recipe.augmentation)
    state_dir = out_dir / STATE_DIR
    first_epoch, step = 0, 0
    history: list[dict[str, Any]] = []
    resumed = _load_state(state_dir, net, optimizer, recipe)
    if resumed is not None:
        first_epoch, step, history = resumed
        sampler.generator.manual_seed(recipe.seed + first_epoch)
        log.info("resuming at epoch %d", first_epoch + 1)
    gallery = subset(data.train, recipe.eval_gallery_limit, recipe.seed)
    started = time.perf_counter()
    for epoch in range(first_epoch, recipe.epochs):

        def on_step(step_in_epoch: int, loss: float, epoch: int = epoch) -> None:
            emit(
                {
                    "event": "step",
                    "epoch": epoch + 1,
                    "step": step_in_epoch,
                    "steps": steps_per_epoch,
                    "loss": loss,
                }
            )

        stats = train_one_epoch(
            net,
            loss_fn,
            optimizer,
            data.train,
            sampler,
            augmentation,
            bf16=recipe.bf16,
            schedule=schedule,
            first_step=step,
            on_step=on_step,
            should_stop=should_stop,
        )
        step += stats.steps
        entry: dict[str, Any] = {
            "epoch": epoch + 1,
            "loss": stats.loss,
            "active_fraction": stats.active_fraction,
            "images_per_second": stats.images_per_second,
            "lr": schedule(step - 1),
        }
        if len(data.val):
            embedder = Embedder(net, backend="torch-bf16" if recipe.bf16 else "torch-fp32")
            quick = evaluate(embedder, data.val, gallery, clusters=False)
            entry["val_precision_at_1"] = quick["precision_at_1"]
            entry["val_map_at_r"] = quick["map_at_r"]
        history.append(entry)
        log.info("epoch %d: %s", epoch + 1, entry)
        emit({"event": "epoch", **entry})
        _save_state(state_dir, net, optimizer, epoch + 1, step, history, recipe)
    elapsed = time.perf_counter() - started
    net = net.to(memory_format=torch.contiguous_format).eval()
    metrics: dict[str, Any] = {"train_images": len(data.train), "skipped_images": data.skipped}
    if len(data.val):
        final = evaluate(Embedder(net), data.val, gallery, seed=recipe.seed)
        metrics.update({f"val_{name}": value for name, value in final.items()})
    metrics["train_seconds"] = round(elapsed, 1)
    card = save_model(net, out_dir, recipe=recipe.to_dict(), metrics=metrics, history=history)
    shutil.rmtree(state_dir, ignore_errors=True)
    emit({"event": "done", "version": card.version, "metrics": metrics})
    return card
