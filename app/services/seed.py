"""First-start seeding: index a folder of class folders so search predicts out of the box."""

from __future__ import annotations

from pathlib import Path

from app.services.catalog import Catalog, check_label
from app.services.runtime import Runtime
from model.data import discover

BATCH = 64


def seed_gallery(catalog: Catalog, runtime: Runtime, folder: Path) -> int:
    samples = discover([folder])
    added = 0
    for start in range(0, len(samples), BATCH):
        chunk = samples[start : start + BATCH]
        uploads = runtime.decode([(s.path.name, s.path.read_bytes()) for s in chunk])
        labels = [check_label(s.label) for s in chunk]
        catalog.add(uploads, labels, [{"seed": True}] * len(chunk))
        added += len(chunk)
    return added
