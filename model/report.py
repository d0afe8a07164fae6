"""Model-card figures and per-data-set metrics for a trained model.

``evaluate_per_root`` repeats the training run's seeded split over all the given roots
together (so the held-out images are exactly those training never saw) and measures each
root's held-out images against that root's training images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from model.clustering import project_2d
from model.data import Sample, discover, load, split
from model.embedding import Embedder
from model.near_duplicates import near_duplicate_recall
from model.training import evaluate


def _under(samples: list[Sample], root: Path) -> list[Sample]:
    resolved = root.resolve()
    return [s for s in samples if s.path.resolve().is_relative_to(resolved)]


def held_out_split(
    roots: list[Path],
    classes: list[str] | None,
    val_fraction: float,
    seed: int,
    max_per_class: int | None = None,
) -> tuple[list[Sample], list[Sample], list[str]]:
    """The training run's split over all roots: ``(train, validation, class names)``."""
    samples = discover(roots, classes, max_per_class, seed)
    train_samples, val_samples = split(samples, val_fraction, seed)
    return train_samples, val_samples, sorted({s.label for s in samples})


def evaluate_per_root(
    embedder: Embedder,
    roots: list[Path],
    classes: list[str] | None,
    val_fraction: float = 0.1,
    seed: int = 0,
    measure: list[Path] | None = None,
    max_per_class: int | None = None,
) -> dict[str, dict[str, Any]]:
    """``measure`` limits which roots are measured (all by default); the split always
    covers every root. Proportions come with the half-width of their 95 % interval
    (normal approximation), ``*_ci95``."""
    train_samples, val_samples, names = held_out_split(
        roots, classes, val_fraction, seed, max_per_class
    )
    size = embedder.config.input_size
    results: dict[str, dict[str, Any]] = {}
    for root in measure or roots:
        queries = load(_under(val_samples, root), size, names)
        gallery = load(_under(train_samples, root), size, names)
        metrics = evaluate(embedder, queries, gallery, seed=seed)
        n = max(1, len(queries))
        for name in ("precision_at_1", "purity"):
            share = metrics[name]
            metrics[f"{name}_ci95"] = 1.96 * float(np.sqrt(share * (1 - share) / n))
        results[str(root)] = {**metrics, "gallery": float(len(gallery))}
    return results


def near_duplicates_per_root(
    embedder: Embedder,
    roots: list[Path],
    classes: list[str] | None,
    val_fraction: float = 0.1,
    seed: int = 0,
    max_per_class: int | None = None,
) -> dict[str, dict[str, float]]:
    """Near-duplicate recall@1 with every held-out image of ``roots`` stored, reported for
    all of them and for each root's own."""
    _, val_samples, _ = held_out_split(roots, classes, val_fraction, seed, max_per_class)
    paths = [s.path for s in val_samples]
    groups: dict[str, list[int]] = {}
    for root in roots:
        inside = set(_under(val_samples, root))
        groups[str(root)] = [i for i, sample in enumerate(val_samples) if sample in inside]
    return near_duplicate_recall(embedder, paths, groups)


def plot_training_curve(history: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, left = plt.subplots(figsize=(6, 3.5), dpi=110)
    left.plot(epochs, [h["loss"] for h in history], color="tab:blue", label="training loss")
    left.set_xlabel("epoch")
    left.set_ylabel("loss", color="tab:blue")
    right = left.twinx()
    right.plot(
        epochs,
        [h.get("val_precision_at_1", np.nan) for h in history],
        color="tab:orange",
        label="validation precision@1",
    )
    if any("val_head_accuracy" in h for h in history):
        right.plot(
            epochs,
            [h.get("val_head_accuracy", np.nan) for h in history],
            color="tab:green",
            label="validation accuracy of the cosine head",
        )
        right.legend(loc="lower right")
    right.set_ylabel("validation precision@1", color="tab:orange")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def plot_projection(
    embedder: Embedder,
    roots: list[Path],
    classes: list[str] | None,
    out: Path,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> None:
    """PCA of held-out embeddings, one panel per root, coloured by label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, val_samples, names = held_out_split(roots, classes, val_fraction, seed)
    fig, axes = plt.subplots(1, len(roots), figsize=(5 * len(roots), 4.5), dpi=110, squeeze=False)
    for axis, root in zip(axes[0], roots, strict=True):
        images = load(_under(val_samples, root), embedder.config.input_size, names)
        points = project_2d(embedder.embed_tensors(images.images))
        labels = np.array(images.label_names())
        for name in names:
            mask = labels == name
            axis.scatter(points[mask, 0], points[mask, 1], s=6, alpha=0.6, label=name)
        axis.set_title(f"{root.parent.name}/{root.name}: {len(labels)} held-out images")
        axis.legend()
        axis.set_xticks([])
        axis.set_yticks([])
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
