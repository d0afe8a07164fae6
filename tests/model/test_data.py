from pathlib import Path

import pytest
import torch

from model.data import discover, load, split
from model.sampling import PKSampler


def test_discover_merges_roots_by_class(cifar: Path, photos: Path) -> None:
    samples = discover([cifar, photos], ["cat", "bird"], max_per_class=30, seed=1)
    labels = [s.label for s in samples]
    assert labels.count("cat") == 30 and labels.count("bird") == 30
    assert discover([cifar, photos], ["cat", "bird"], max_per_class=30, seed=1) == samples
    all_cats = discover([cifar, photos], ["cat", "bird"])
    assert sum(s.label == "cat" for s in all_cats) == 5000 + 404


def test_discover_refuses_unknown_classes(cifar: Path) -> None:
    with pytest.raises(ValueError):
        discover([cifar], ["cat", "unicorn"])


def test_split_is_stratified_stable_and_disjoint(cifar: Path) -> None:
    samples = discover([cifar], ["cat", "bird"], max_per_class=100)
    train, val = split(samples, 0.2, seed=0)
    assert len(val) == 40 and sum(s.label == "cat" for s in val) == 20
    assert not {s.path for s in train} & {s.path for s in val}
    wider = discover([cifar], ["cat", "bird", "dog"], max_per_class=100)
    _, val_wider = split(wider, 0.2, seed=0)
    assert {s.path for s in val} <= {s.path for s in val_wider}


def test_load_skips_and_counts_unreadable_images(tmp_path: Path, cifar: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i, path in enumerate(sorted((cifar / "cat").iterdir())[:3]):
            (tmp_path / name / f"{i}.jpg").write_bytes(path.read_bytes())
    (tmp_path / "a" / "broken.jpg").write_bytes(b"not a jpeg")
    samples = discover([tmp_path])
    images = load(samples, 32, ["a", "b"])
    assert len(images) == 6 and images.skipped == 1
    assert images.images.shape == (6, 3, 32, 32)


def test_pk_batches_are_class_balanced() -> None:
    targets = torch.tensor([0] * 10 + [1] * 10 + [2] * 3)
    sampler = PKSampler(targets, p=2, k=4, seed=0)
    for batch in sampler:
        counts = torch.bincount(targets[batch], minlength=3)
        assert sorted(counts.tolist()) == [0, 4, 4]
    assert len(sampler) == 23 // 8
