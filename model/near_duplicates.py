"""Near-duplicate recall: does an edited copy of a stored image find that image first?

A similarity service must keep what tells two images of one class apart, not only the class.
The check stores a set of images (the gallery, as the service would: decoded and prepared
the same way), then searches with an edited copy of each and counts how often the original
ranks first. The edits are what users do to photos: a central crop, a low-quality JPEG
re-encode and a brightness change. Each edit is made on the full-size original and saved as a
file (PNG, so that only the edit differs; JPEG for the JPEG edit), which is then decoded with
the serving rules.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance

from model.embedding import Embedder
from model.preprocessing import decode_prepared, load_image_file

Edit = Callable[[Image.Image], bytes]


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def central_crop(image: Image.Image, fraction: float = 0.85) -> bytes:
    """The central ``fraction`` of each side."""
    width, height = image.size
    w, h = max(1, round(width * fraction)), max(1, round(height * fraction))
    left, top = (width - w) // 2, (height - h) // 2
    return _png(image.crop((left, top, left + w, top + h)))


def jpeg(image: Image.Image, quality: int = 40) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def brightness(image: Image.Image, factor: float = 1.2) -> bytes:
    return _png(ImageEnhance.Brightness(image).enhance(factor))


EDITS: dict[str, Edit] = {"crop_85": central_crop, "jpeg_40": jpeg, "brightness_120": brightness}


def edited_tensors(images: Sequence[Image.Image], size: int, edit: Edit) -> torch.Tensor:
    """Edited copies of full-size ``images`` as the model's ``uint8`` input."""
    return torch.stack([decode_prepared(edit(image), size)[0] for image in images])


def near_duplicate_recall(
    embedder: Embedder,
    paths: Sequence[Path],
    groups: Mapping[str, Sequence[int]] | None = None,
    edits: dict[str, Edit] | None = None,
) -> dict[str, dict[str, float]]:
    """Recall@1 of each edit: the share of edited copies whose nearest stored image (of all
    ``paths``) is their own original. ``groups`` (name -> indices into ``paths``) also reports
    each group's share; ``"all"`` covers every path. Duplicate files count as found when the
    copy's nearest neighbour has the same bytes-identical content as its original."""
    size = embedder.config.input_size
    originals = torch.stack([decode_prepared(p.read_bytes(), size)[0] for p in paths])
    gallery = embedder.embed_tensors(originals)
    same_content = _identical(paths)
    full_size = [load_image_file(p) for p in paths]  # decoded once, edited once per edit
    results: dict[str, dict[str, float]] = {}
    for name, edit in (edits or EDITS).items():
        queries = embedder.embed_tensors(edited_tensors(full_size, size, edit))
        nearest = np.argmax(queries @ gallery.T, axis=1)
        found = np.array([nearest[i] in same_content[i] for i in range(len(paths))])
        results[name] = {"all": float(found.mean())}
        for group, indices in (groups or {}).items():
            if len(indices):
                results[name][group] = float(found[list(indices)].mean())
    return results


def _identical(paths: Sequence[Path]) -> list[set[int]]:
    contents = [path.read_bytes() for path in paths]
    by_bytes: dict[bytes, set[int]] = {}
    for i, content in enumerate(contents):
        by_bytes.setdefault(content, set()).add(i)
    return [by_bytes[content] for content in contents]
