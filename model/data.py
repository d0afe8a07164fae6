"""Folder-per-class datasets: discovery, seeded splits, and decoding into in-memory tensors.

Images are decoded once into ``uint8`` tensors at a fixed size, so that an epoch costs only
augmentation and the forward pass; the small inputs this model uses make that cheap in memory
(10,000 images at 32 px take 30 MB).
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from model.preprocessing import ImageDecodeError, load_image_file, to_square_tensor

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}


@dataclass(frozen=True)
class Sample:
    path: Path
    label: str


@dataclass
class ImageSet:
    """Decoded images ``(N, 3, S, S)`` uint8, integer targets and the class names they index."""

    images: torch.Tensor
    targets: torch.Tensor
    classes: list[str]
    skipped: int = 0

    def __len__(self) -> int:
        return len(self.targets)

    def label_names(self) -> list[str]:
        return [self.classes[int(t)] for t in self.targets]


def discover(
    roots: Sequence[Path],
    classes: Sequence[str] | None = None,
    max_per_class: int | None = None,
    seed: int = 0,
) -> list[Sample]:
    """Lists ``root/<class>/<image>`` files of every root, merged by class name.

    ``classes`` selects class folders (all when None). ``max_per_class`` keeps a seeded
    random subset of each class, so a small run still sees every root.
    """
    by_class: dict[str, list[Path]] = defaultdict(list)
    for root in roots:
        if not root.is_dir():
            raise FileNotFoundError(f"dataset folder not found: {root}")
        for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            if classes is not None and class_dir.name not in classes:
                continue
            files = sorted(
                p for p in class_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
            by_class[class_dir.name].extend(files)
    if classes is not None:
        missing = [c for c in classes if not by_class.get(c)]
        if missing:
            raise ValueError(f"no images for classes {missing} under {[str(r) for r in roots]}")
    if len(by_class) < 2:
        raise ValueError("training needs at least two classes with images")
    rng = random.Random(seed)
    samples: list[Sample] = []
    for name in sorted(by_class):
        files = by_class[name]
        if max_per_class is not None and len(files) > max_per_class:
            files = sorted(rng.sample(files, max_per_class))
        samples.extend(Sample(path, name) for path in files)
    return samples


def split(
    samples: Sequence[Sample], val_fraction: float, seed: int = 0
) -> tuple[list[Sample], list[Sample]]:
    """A seeded split that keeps each class's share in both parts.

    Each image's side is decided by a hash of the seed and its last path parts, so an image
    stays on the same side when classes or folders are added: a model pre-trained on more
    classes never trains on the validation images of a later fine-tuning run.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError("val_fraction must be in [0, 1)")

    def key(sample: Sample) -> str:
        name = "/".join(sample.path.parts[-4:])
        return hashlib.sha256(f"{seed}:{sample.label}:{name}".encode()).hexdigest()

    by_class: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        by_class[sample.label].append(sample)
    train: list[Sample] = []
    val: list[Sample] = []
    for label in sorted(by_class):
        group = sorted(by_class[label], key=key)
        n_val = round(len(group) * val_fraction)
        if val_fraction > 0 and len(group) > 1:
            n_val = max(1, n_val)
        val.extend(group[:n_val])
        train.extend(group[n_val:])
    return train, val


def load(
    samples: Iterable[Sample], size: int, classes: Sequence[str], workers: int = 4
) -> ImageSet:
    """Decodes samples into an :class:`ImageSet`; unreadable images are skipped and counted."""
    samples = list(samples)
    index = {name: i for i, name in enumerate(classes)}

    def read(sample: Sample) -> torch.Tensor | None:
        try:
            return to_square_tensor(load_image_file(sample.path, target_size=size), size)
        except (ImageDecodeError, OSError) as exc:
            log.warning("skipping unreadable image %s: %s", sample.path, exc)
            return None

    with ThreadPoolExecutor(max_workers=workers) as pool:
        decoded = list(pool.map(read, samples))
    kept = [(t, s) for t, s in zip(decoded, samples, strict=True) if t is not None]
    skipped = len(samples) - len(kept)
    if skipped:
        log.warning("skipped %d unreadable images of %d", skipped, len(samples))
    if not kept:
        return ImageSet(
            torch.empty(0, 3, size, size, dtype=torch.uint8),
            torch.empty(0, dtype=torch.long),
            list(classes),
            skipped,
        )
    images = torch.stack([t for t, _ in kept])
    targets = torch.tensor([index[s.label] for _, s in kept], dtype=torch.long)
    return ImageSet(images, targets, list(classes), skipped)
