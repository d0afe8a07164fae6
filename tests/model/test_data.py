from pathlib import Path

import pytest
import torch

from model.data import content_fraction, discover, load, split
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


def test_split_is_by_content_stable_and_disjoint(cifar: Path, tmp_path: Path) -> None:
    samples = discover([cifar], ["cat", "bird"], max_per_class=200)
    train, val = split(samples, 0.2, seed=0)
    assert 50 <= len(val) <= 110 and 15 <= sum(s.label == "cat" for s in val) <= 60
    assert not {s.path for s in train} & {s.path for s in val}
    assert len(train) + len(val) == 400
    # adding a class or lowering the share moves no image into training
    wider = discover([cifar], ["cat", "bird", "dog"], max_per_class=200)
    _, val_wider = split(wider, 0.2, seed=0)
    assert {s.path for s in val} <= {s.path for s in val_wider}
    _, val_smaller = split(samples, 0.1, seed=0)
    assert {s.path for s in val_smaller} < {s.path for s in val}
    # the same image under another name and folder (a service job's copy) stays on its side
    copies = []
    chosen: list = []
    for label in ("cat", "bird"):
        chosen += [s for s in train if s.label == label][:10]
        chosen += [s for s in val if s.label == label][:10]
    for sample in chosen:
        target = tmp_path / "job" / sample.label / f"copy-{sample.path.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(sample.path.read_bytes())
        copies.append((sample in val, target))
    _, val_copies = split(discover([tmp_path / "job"]), 0.2, seed=0)
    held_out = {s.path for s in val_copies}
    assert [target in held_out for _, target in copies] == [was_val for was_val, _ in copies]


def test_content_fraction_depends_on_bytes_and_seed(cifar: Path, tmp_path: Path) -> None:
    original = sorted((cifar / "cat").iterdir())[0]
    copy = tmp_path / "elsewhere.jpg"
    copy.write_bytes(original.read_bytes())
    assert content_fraction(copy) == content_fraction(original)
    assert content_fraction(copy, seed=1) != content_fraction(original)
    assert 0.0 <= content_fraction(original) < 1.0


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


def test_pk_epoch_covers_every_image_once() -> None:
    targets = torch.tensor([0] * 40 + [1] * 40)
    sampler = PKSampler(targets, p=2, k=10, seed=0)
    seen = torch.cat(list(sampler))
    assert sorted(seen.tolist()) == list(range(80))


def test_pk_order_is_fixed_by_seed_and_epoch() -> None:
    targets = torch.tensor([0] * 30 + [1] * 30 + [2] * 30)
    first = PKSampler(targets, p=2, k=5, seed=3)
    again = PKSampler(targets, p=2, k=5, seed=3)
    again.set_epoch(1)
    epoch_1 = [b.tolist() for b in again]
    first.set_epoch(0)
    list(first)  # a resumed run starts at epoch 1 without drawing epoch 0's batches
    first.set_epoch(1)
    assert [b.tolist() for b in first] == epoch_1
    again.set_epoch(0)
    assert [b.tolist() for b in again] != epoch_1


def test_pk_repeats_oversample_images() -> None:
    targets = torch.tensor([0] * 20 + [1] * 20)
    repeats = torch.ones(40, dtype=torch.long)
    repeats[:5] = 4  # five class-0 images go into its queue four times
    sampler = PKSampler(targets, p=1, k=5, seed=0, repeats=repeats)
    assert len(sampler) == (35 + 20) // 5
    counts = torch.zeros(40)
    for epoch in range(40):
        sampler.set_epoch(epoch)
        counts += torch.bincount(torch.cat(list(sampler)), minlength=40)
    ratio = counts[:5].mean() / counts[5:20].mean()
    assert 3.0 < ratio < 5.0
