"""Training an embedding network: ``train_one_epoch``, ``evaluate`` and ``train``.

One step embeds a class-balanced batch with the one shared network (one or two augmented
views of every image) and adds up the recipe's losses: the model type's tuple loss, the
cosine classification head (pre-training) and the instance-discrimination term over the two
views. Evaluation and export use an exponential moving average of the weights when the
recipe asks for one, with BatchNorm statistics recomputed on clean training images.

``train`` is resumable: after every epoch it writes the network, the head, the average, the
optimiser state and the history to ``<out>/training_state/`` (safetensors and JSON, no
pickle), and a later call with the same output folder and recipe continues from there with
the batches an uninterrupted run would have drawn. The finished model goes to ``<out>/`` as a
model directory (see :mod:`model.checkpoint`).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from model.checkpoint import ModelCard, atomic_write_bytes, load_model, read_card, save_model
from model.clustering import kmeans
from model.config import ModelConfig
from model.data import ImageSet, discover, load, split
from model.distributed import Processes
from model.embedding import Embedder
from model.losses import InstanceLoss, NormSoftmaxLoss, TupleLoss, build_loss
from model.metrics import clustering_metrics, retrieval_metrics
from model.network import EmbeddingNet, build_network
from model.preprocessing import BatchAugmentation, build_augmentation, normalize
from model.recipe import NETWORK_FIELDS, TrainRecipe
from model.sampling import PKSampler

log = logging.getLogger(__name__)

STATE_DIR = "training_state"
BN_IMAGES = 4096
Event = dict[str, Any]


class TrainingCancelled(Exception):
    """Raised when ``should_stop`` asks a run to stop; the last epoch's state is kept."""


@dataclass
class Objective:
    """The losses one step adds up; ``None`` parts are off."""

    tuples: TupleLoss | None
    head: NormSoftmaxLoss | None
    instance: InstanceLoss | None
    instance_weight: float = 0.0

    @property
    def views(self) -> int:
        return 2 if self.instance is not None else 1


@dataclass
class EpochStats:
    loss: float
    images_per_second: float
    steps: int
    active_fraction: float | None = None  # tuples with a non-zero tuple loss
    head_accuracy: float | None = None  # cosine head on the augmented training views
    instance_accuracy: float | None = None  # views that picked their twin


@dataclass
class Datasets:
    train: ImageSet
    val: ImageSet
    skipped: int = field(default=0)


def lr_at(
    step: int, total_steps: int, warmup_steps: int, base_lr: float, shape: str = "cosine"
) -> float:
    """Linear warm-up, then cosine decay to 1 % of ``base_lr`` or linear decay to zero
    (with a short warm-up, the one-cycle schedule of fast CIFAR training)."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if shape == "linear":
        return base_lr * (1.0 - progress)
    return base_lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_one_epoch(
    net: nn.Module,
    objective: Objective,
    optimizer: torch.optim.Optimizer,
    images: ImageSet,
    sampler: PKSampler,
    augmentation: BatchAugmentation,
    *,
    bf16: bool,
    schedule: Callable[[int], float],
    first_step: int,
    ema: AveragedModel | None = None,
    on_step: Callable[[int, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    processes: Processes | None = None,
    mine_globally: bool = True,
) -> EpochStats:
    """One epoch of steps. ``net`` is the network, or its DistributedDataParallel wrapper
    when several ``processes`` train: then, with ``mine_globally``, the losses see every
    process's embeddings (gathered with their gradients), else each process's own."""
    processes = processes or Processes()
    gather = processes.distributed and mine_globally
    network = net.module if isinstance(net, DistributedDataParallel) else net
    assert isinstance(network, EmbeddingNet)
    config = network.config
    device = network.device
    net.train()
    sums = {"loss": 0.0, "active": 0, "tuples": 0, "head_wrong": 0, "instance_wrong": 0}
    seen, views_seen = 0, 0
    start = time.perf_counter()
    step = first_step
    for step_in_epoch, batch_idx in enumerate(sampler):
        if processes.any(should_stop is not None and should_stop()):
            raise TrainingCancelled()  # on every rank at the same step
        for group in optimizer.param_groups:
            group["lr"] = schedule(step)
        originals = images.images[batch_idx]
        views = torch.cat([augmentation(originals) for _ in range(objective.views)])
        batch = normalize(views.to(device, non_blocking=True), config)
        labels = images.targets[batch_idx].repeat(objective.views).to(device)
        if bf16:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            embeddings = net(batch).float()
        if gather:  # view by view, so that the views of one image stay paired
            embeddings = torch.cat(
                [processes.gather(view) for view in embeddings.chunk(objective.views)]
            )
            labels = torch.cat([processes.gather(view) for view in labels.chunk(objective.views)])
        loss = embeddings.sum() * 0.0
        if objective.tuples is not None:
            result = objective.tuples(embeddings, labels)
            loss = loss + result.loss
            sums["active"] += result.active
            sums["tuples"] += result.tuples
        if objective.head is not None:
            result = objective.head(embeddings, labels)
            loss = loss + result.loss
            sums["head_wrong"] += result.active
        if objective.instance is not None:
            result = objective.instance(embeddings)
            loss = loss + objective.instance_weight * result.loss
            sums["instance_wrong"] += result.active
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if objective.head is not None and not gather:  # DDP averages only the network's
            processes.average_gradients(objective.head)
        optimizer.step()
        if ema is not None:
            ema.update_parameters(net)
        sums["loss"] += float(loss.detach())
        seen += len(batch_idx) * processes.world_size  # the ranks step together
        views_seen += len(labels)
        step += 1
        if on_step is not None:
            on_step(step_in_epoch + 1, float(loss.detach()))
    elapsed = time.perf_counter() - start
    steps = step - first_step
    return EpochStats(
        loss=sums["loss"] / max(1, steps),
        images_per_second=seen / max(elapsed, 1e-9),
        steps=steps,
        active_fraction=(
            sums["active"] / max(1, sums["tuples"]) if objective.tuples is not None else None
        ),
        head_accuracy=(
            1 - sums["head_wrong"] / max(1, views_seen) if objective.head is not None else None
        ),
        instance_accuracy=(
            1 - sums["instance_wrong"] / max(1, views_seen)
            if objective.instance is not None
            else None
        ),
    )


def evaluate(
    embedder: Embedder,
    queries: ImageSet,
    gallery: ImageSet | None = None,
    *,
    clusters: bool = True,
    seed: int = 0,
    head: NormSoftmaxLoss | None = None,
) -> dict[str, float]:
    """Retrieval metrics of ``queries`` against ``gallery`` (leave-one-out without one) and,
    with ``clusters``, k-means metrics on the queries with k = number of their labels; with
    ``head``, the cosine head's classification accuracy on the queries."""
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
    if head is not None:
        with torch.no_grad():
            logits = head.logits(torch.from_numpy(query_vectors).to(head.weight.device))
        predicted = logits.argmax(dim=1).cpu().numpy()
        metrics["head_accuracy"] = float(np.mean(predicted == queries.targets.numpy()))
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
    """A seeded random ``limit`` of the images (all of them when there are fewer)."""
    if len(images) <= limit:
        return images
    pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:limit]
    return subset_of(images, pick.tolist())


def subset_of(images: ImageSet, indices: list[int]) -> ImageSet:
    paths = [images.paths[i] for i in indices] if images.paths else []
    pick = torch.tensor(indices, dtype=torch.long)
    return ImageSet(images.images[pick], images.targets[pick], images.classes, 0, paths)


def repeats_for(images: ImageSet, recipe: TrainRecipe) -> torch.Tensor:
    """How often each training image enters its class's queue (``recipe.oversample``)."""
    repeats = torch.ones(len(images), dtype=torch.long)
    for root, factor in recipe.oversample.items():
        resolved = Path(root).resolve()
        for i, path in enumerate(images.paths):
            if path.resolve().is_relative_to(resolved):
                repeats[i] = max(1, round(factor))
    return repeats


def mix_sample(images: ImageSet, repeats: torch.Tensor, limit: int, seed: int) -> ImageSet:
    """A seeded sample of at most ``limit`` distinct images drawn as training draws them
    (oversampled images more often): the mix whose statistics BatchNorm should hold."""
    count = min(limit, len(images))
    generator = torch.Generator().manual_seed(seed)
    pick = torch.multinomial(repeats.float(), count, replacement=False, generator=generator)
    return subset_of(images, sorted(pick.tolist()))


def recompute_batchnorm(net: EmbeddingNet, images: ImageSet) -> None:
    """Replaces BatchNorm running statistics with exact averages over clean (un-augmented)
    images, the inputs the network sees when serving."""
    batches = [
        normalize(images.images[start : start + 256].to(net.device), net.config)
        for start in range(0, len(images), 256)
    ]
    torch.optim.swa_utils.update_bn(batches, net)
    net.eval()


def build_optimizer(params: list[nn.Parameter], recipe: TrainRecipe) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum or AdamW; no weight decay on norms, biases and the head."""
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": recipe.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=recipe.lr, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(groups, lr=recipe.lr)


def build_objective(recipe: TrainRecipe, classes: list[str]) -> Objective:
    tuples = None
    if recipe.loss in ("metric", "both"):
        tuples = build_loss(recipe.model_type, recipe.tuple_margin, recipe.mining, recipe.seed)
    head = None
    if recipe.loss in ("normsoftmax", "both"):
        head = NormSoftmaxLoss(
            len(classes), recipe.embedding_dim, recipe.softmax_scale, recipe.label_smoothing
        )
    instance = InstanceLoss(recipe.instance_temperature) if recipe.instance_weight > 0 else None
    return Objective(tuples, head, instance, recipe.instance_weight)


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


def _modules(
    net: EmbeddingNet, objective: Objective, ema: AveragedModel | None
) -> dict[str, nn.Module]:
    """The modules whose state a resumed run needs, by file name."""
    modules: dict[str, nn.Module] = {"net": net}
    if objective.head is not None:
        modules["head"] = objective.head
    if ema is not None:
        modules["ema"] = ema
    return modules


def _save_state(
    state_dir: Path,
    modules: dict[str, nn.Module],
    optimizer: torch.optim.Optimizer,
    epoch: int,
    step: int,
    history: list[dict[str, Any]],
    recipe: TrainRecipe,
) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    for name, module in modules.items():
        tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
        save_file(tensors, state_dir / f"{name}.tmp")
        (state_dir / f"{name}.tmp").replace(state_dir / f"{name}.safetensors")
    opt_state = optimizer.state_dict()
    tensors = {
        f"{idx}.{name}": value.cpu().contiguous()
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
    state_dir: Path,
    modules: dict[str, nn.Module],
    optimizer: torch.optim.Optimizer,
    recipe: TrainRecipe,
) -> tuple[int, int, list[dict[str, Any]]] | None:
    meta_path = state_dir / "state.json"
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    if meta["recipe"] != recipe.to_dict():
        log.warning("ignoring %s: it belongs to a different recipe", state_dir)
        return None
    for name, module in modules.items():
        module.load_state_dict(load_file(str(state_dir / f"{name}.safetensors")))
    tensors = load_file(str(state_dir / "optimizer.safetensors"))
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return int(meta["epoch"]), int(meta["step"]), list(meta["history"])


def _export_net(net: EmbeddingNet, ema: AveragedModel | None, bn_images: ImageSet) -> EmbeddingNet:
    """The network to evaluate and save: the average when there is one, else a copy of the
    live network; BatchNorm statistics recomputed on clean training images either way."""
    source = ema.module if ema is not None else net
    export = EmbeddingNet(net.config).to(net.device)
    export.load_state_dict(
        {k: v.detach().clone() for k, v in source.state_dict().items()}, strict=True
    )
    recompute_batchnorm(export, bn_images)
    return export


def check_device(recipe: TrainRecipe, processes: Processes | None = None) -> None:
    """Raises ``ValueError`` when ``recipe.device`` cannot train here, before any data is read.

    A GPU run is one process: the processes of a distributed run join over gloo, which moves
    the CPU tensors that CPU training gathers."""
    if recipe.device != "cuda":
        return
    if not torch.cuda.is_available():
        raise ValueError("device cuda: torch sees no CUDA device on this machine")
    if processes is not None and processes.distributed:
        raise ValueError("device cuda trains in one process, not under torchrun")


def start_record(start: ModelCard) -> dict[str, Any]:
    """What a model trained from ``start`` records of it: its version, recipe, metrics and
    curve (the model card plots a pre-training stage from these). The start's own starting
    model is named by version only, or each retraining of a retrained model would carry the
    whole chain of its ancestors' records."""
    start_metrics = dict(start.metrics)
    if "init" in start_metrics:
        start_metrics["init"] = {"version": start_metrics["init"].get("version")}
    return {
        "version": start.version,
        "recipe": start.recipe,
        "metrics": start_metrics,
        "history": start.history,
    }


def check_init_from(recipe: TrainRecipe) -> None:
    """Raises ``ValueError`` when a fine-tuning recipe names another network shape than the
    model it starts from. The weights fix the stem and the embedding size, and the images
    must be prepared at the size the model will serve at; a recipe that disagreed would train
    on images of one size a model whose card says another."""
    if not recipe.init_from:
        return
    start = read_card(Path(recipe.init_from)).config
    for name in NETWORK_FIELDS:
        wanted, actual = getattr(recipe, name), getattr(start, name)
        if wanted != actual:
            raise ValueError(
                f"{name} is {wanted!r}, but the model in init_from has {actual!r}: "
                "a fine-tuning recipe keeps its starting model's network"
            )


@dataclass
class TrainingSetup:
    """The parts a run's steps use, built from its recipe. :func:`train` and
    ``bench/train_throughput.py`` both build them here, so the benchmark times the steps a
    training run takes."""

    net: EmbeddingNet
    stepped: nn.Module  # what the steps run: ``net``, or its DistributedDataParallel wrapper
    objective: Objective
    optimizer: torch.optim.Optimizer
    ema: AveragedModel | None
    sampler: PKSampler
    augmentation: BatchAugmentation
    schedule: Callable[[int], float]
    repeats: torch.Tensor


def build_training(
    recipe: TrainRecipe, images: ImageSet, processes: Processes | None = None
) -> TrainingSetup:
    """Network (channels-last for bf16), losses, optimiser, weight average, P-K sampler,
    augmentation and learning-rate schedule for training on ``images``; with several
    ``processes``, the network that steps is a DistributedDataParallel of it (which starts
    every rank from rank 0's weights), and the sampler gives each rank its share."""
    processes = processes or Processes()
    check_device(recipe, processes)
    if recipe.device == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed batch shapes: pick the fastest kernels
    classes = images.classes
    net = _build(recipe, classes).to(recipe.device)
    if recipe.bf16:
        net = net.to(memory_format=torch.channels_last)
    objective = build_objective(recipe, classes)
    if objective.head is not None:
        objective.head.to(recipe.device)
        processes.broadcast(objective.head)
    stepped: nn.Module = DistributedDataParallel(net) if processes.distributed else net
    params = list(net.parameters())
    if objective.head is not None:
        params += list(objective.head.parameters())
    optimizer = build_optimizer(params, recipe)
    ema = (
        AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(recipe.ema_decay))
        if recipe.ema_decay is not None
        else None
    )
    k = max(2, recipe.batch_size // min(recipe.classes_per_batch, len(classes)))
    repeats = repeats_for(images, recipe)
    sampler = PKSampler(
        images.targets,
        recipe.classes_per_batch,
        k,
        seed=recipe.seed,
        repeats=repeats,
        rank=processes.rank,
        world_size=processes.world_size,
    )
    total_steps = len(sampler) * recipe.epochs
    warmup = max(1, round(recipe.warmup_epochs * len(sampler)))

    def schedule(step: int) -> float:
        return lr_at(step, total_steps, warmup, recipe.lr, recipe.schedule)

    augmentation = build_augmentation(recipe.input_size, recipe.augmentation)
    return TrainingSetup(
        net, stepped, objective, optimizer, ema, sampler, augmentation, schedule, repeats
    )


def train(
    recipe: TrainRecipe,
    out_dir: Path,
    *,
    on_event: Callable[[Event], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    datasets: Datasets | None = None,
    processes: Processes | None = None,
) -> ModelCard:
    """Trains per ``recipe`` and writes the model directory ``out_dir``; returns its card.

    ``on_event`` receives ``{"event": "data" | "step" | "epoch" | "done", ...}`` dictionaries
    (progress for the service's job view); ``should_stop`` is polled every step.

    With several ``processes`` (``torchrun``), every rank calls this with the same recipe:
    rank 0 alone reports, evaluates, checkpoints and writes the model, every rank resumes
    from the same checkpoint, and the run fails unless all ranks end with the same weights.
    """
    processes = processes or Processes()
    check_device(recipe, processes)
    check_init_from(recipe)
    emit = (on_event or (lambda event: None)) if processes.main else (lambda event: None)
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
    setup = build_training(recipe, data.train, processes)
    net, objective, optimizer, ema = setup.net, setup.objective, setup.optimizer, setup.ema
    sampler, schedule, repeats = setup.sampler, setup.schedule, setup.repeats
    steps_per_epoch = len(sampler)
    state_dir = out_dir / STATE_DIR
    modules = _modules(net, objective, ema)
    first_epoch, step = 0, 0
    history: list[dict[str, Any]] = []
    resumed = _load_state(state_dir, modules, optimizer, recipe)
    if resumed is not None:
        first_epoch, step, history = resumed
        log.info("resuming at epoch %d", first_epoch + 1)
    gallery = subset(data.train, recipe.eval_gallery_limit, recipe.seed)
    bn_images = mix_sample(data.train, repeats, BN_IMAGES, recipe.seed + 1)
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

        epoch_started = time.perf_counter()
        sampler.set_epoch(epoch)
        torch.manual_seed(recipe.seed * 1_000_003 + epoch + 7919 * processes.rank)  # augmentation
        stats = train_one_epoch(
            setup.stepped,
            objective,
            optimizer,
            data.train,
            sampler,
            setup.augmentation,
            bf16=recipe.bf16,
            schedule=schedule,
            first_step=step,
            ema=ema,
            on_step=on_step,
            should_stop=should_stop,
            processes=processes,
            mine_globally=recipe.mining_scope == "global",
        )
        step += stats.steps
        entry: dict[str, Any] = {
            "epoch": epoch + 1,
            "loss": stats.loss,
            "images_per_second": stats.images_per_second,
            "lr": schedule(step - 1),
        }
        for name in ("active_fraction", "head_accuracy", "instance_accuracy"):
            value = getattr(stats, name)
            if value is not None:
                entry[f"train_{name}" if name != "active_fraction" else name] = value
        if len(data.val) and processes.main:
            export = _export_net(net, ema, bn_images)
            embedder = Embedder(export, backend="torch-bf16" if recipe.bf16 else "torch-fp32")
            quick = evaluate(embedder, data.val, gallery, clusters=False, head=objective.head)
            entry["val_precision_at_1"] = quick["precision_at_1"]
            entry["val_map_at_r"] = quick["map_at_r"]
            if "head_accuracy" in quick:
                entry["val_head_accuracy"] = quick["head_accuracy"]
        entry["seconds"] = round(time.perf_counter() - epoch_started, 1)
        history.append(entry)
        log.info("epoch %d: %s", epoch + 1, entry)
        emit({"event": "epoch", **entry})
        if processes.main:
            _save_state(state_dir, modules, optimizer, epoch + 1, step, history, recipe)
        processes.barrier()  # no rank runs ahead of the checkpoint it would resume from
    checksums = processes.checksums(net)
    if len(set(checksums)) != 1:
        raise RuntimeError(f"the training processes ended with different weights: {checksums}")
    if not processes.main:
        processes.barrier()  # rank 0 writes the model
        return read_card(out_dir)
    final_net = _export_net(net, ema, bn_images)
    metrics: dict[str, Any] = {
        "train_images": len(data.train),
        "skipped_images": data.skipped,
        "processes": processes.world_size,
    }
    if len(data.val):
        final = evaluate(
            Embedder(final_net), data.val, gallery, seed=recipe.seed, head=objective.head
        )
        metrics.update({f"val_{name}": value for name, value in final.items()})
    metrics["train_seconds"] = round(sum(h.get("seconds", 0.0) for h in history), 1)
    if recipe.init_from:
        metrics["init"] = start_record(read_card(Path(recipe.init_from)))
    card = save_model(
        final_net.cpu(), out_dir, recipe=recipe.to_dict(), metrics=metrics, history=history
    )
    shutil.rmtree(state_dir, ignore_errors=True)
    processes.barrier()
    emit({"event": "done", "version": card.version, "metrics": metrics})
    return card
