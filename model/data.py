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
from dataclasses import dataclass, field
from pathlib import Path

import torch

from model.preprocessing import ImageDecodeError, decode_prepared

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}


@dataclass(frozen=True)
class Sample:
    path: Path
    label: str


@dataclass
class ImageSet:
    """Decoded images ``(N, 3, S, S)`` uint8, integer targets and the class names they index;
    ``paths`` are the files they came from, where known."""

    images: torch.Tensor
    targets: torch.Tensor
    classes: list[str]
    skipped: int = 0
    paths: list[Path] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.targets)

    def label_names(self) -> list[str]:
        return [self.classes[int(t)] for t in self.targets]

    def samples(self) -> list[Sample]:
        """The files and labels these images were decoded from (needs ``paths``)."""
        return [Sample(p, name) for p, name in zip(self.paths, self.label_names(), strict=True)]


class DatasetError(ValueError):
    """Folders that hold no data set to work on: missing, without the classes asked for, or
    with fewer than two classes."""


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
            raise DatasetError(f"dataset folder not found: {root}")
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
            raise DatasetError(f"no images for classes {missing} under {[str(r) for r in roots]}")
    if len(by_class) < 2:
        raise DatasetError("training needs at least two classes with images")
    rng = random.Random(seed)
    samples: list[Sample] = []
    for name in sorted(by_class):
        files = by_class[name]
        if max_per_class is not None and len(files) > max_per_class:
            files = sorted(rng.sample(files, max_per_class))
        samples.extend(Sample(path, name) for path in files)
    return samples


def content_fraction(path: Path, seed: int = 0) -> float:
    """A number in [0, 1) fixed by the seed and the file's bytes: where the image falls in
    the split, whatever its name, folder or companions."""
    digest = hashlib.sha256(f"{seed}:".encode())
    digest.update(path.read_bytes())
    return int.from_bytes(digest.digest()[:8], "big") / 2**64


def split(
    samples: Sequence[Sample], val_fraction: float, seed: int = 0
) -> tuple[list[Sample], list[Sample]]:
    """Held-out membership by content: an image is validation when its
    :func:`content_fraction` is below ``val_fraction``.

    The decision depends on nothing but the image's bytes and the seed, so it is the same in
    training, evaluation, calibration, the report and the service's jobs (which copy stored
    images to new paths); adding classes or folders moves no image between the sides, a
    model pre-trained on more classes never trains on a later fine-tuning run's validation
    images, and a smaller ``val_fraction`` holds out a subset of a larger one's images.
    Each class keeps about ``val_fraction`` of its images; a class of two or more keeps at
    least one on each side.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError("val_fraction must be in [0, 1)")
    by_class: dict[str, list[tuple[float, Sample]]] = defaultdict(list)
    for sample in samples:
        by_class[sample.label].append((content_fraction(sample.path, seed), sample))
    train: list[Sample] = []
    val: list[Sample] = []
    for label in sorted(by_class):
        group = sorted(by_class[label], key=lambda pair: pair[0])
        n_val = sum(1 for fraction, _ in group if fraction < val_fraction)
        if val_fraction > 0 and len(group) > 1:
            n_val = min(max(1, n_val), len(group) - 1)
        val.extend(sample for _, sample in group[:n_val])
        train.extend(sample for _, sample in group[n_val:])
    return train, val


def load(
    samples: Iterable[Sample], size: int, classes: Sequence[str], workers: int = 4
) -> ImageSet:
    """Decodes samples into an :class:`ImageSet`; unreadable images are skipped and counted."""
    samples = list(samples)
    index = {name: i for i, name in enumerate(classes)}

    def read(sample: Sample) -> torch.Tensor | None:
        try:
            return decode_prepared(sample.path.read_bytes(), size)[0]
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
    return ImageSet(images, targets, list(classes), skipped, [s.path for _, s in kept])
