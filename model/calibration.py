"""Calibrating a trained model for int8 on its own training split, and proving it on the
held-out split.

The split is the training run's (same roots, classes, validation fraction and seed, read
from the model card), so the calibration images are training images and the quality check
uses only images the model never saw. Both fp32 and int8 are measured in the same way as
the card's ``val_*`` metrics: held-out queries against the training gallery, then k-means
on the queries. A few held-out image files are recorded as the probe that checks the int8
model against fp32 each time it is loaded (:mod:`model.backends`), with the lowest cosine
similarity measured on them here: a CPU on which int8 computes differently shows up as a
drop from it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from model.backends import agrees_with_fp32, build_forward
from model.checkpoint import load_model
from model.data import load
from model.embedding import Embedder
from model.quantization import GUARDED_METRICS, Int8Model, probe_images, quantize
from model.report import held_out_split
from model.training import evaluate

CALIBRATION_IMAGES = 512
PROBE_IMAGES = 32


def calibrate_model_dir(
    model_dir: Path,
    roots: list[Path],
    classes: list[str] | None = None,
    images: int = CALIBRATION_IMAGES,
    seed: int | None = None,
    val_fraction: float | None = None,
    float_stem: bool | None = None,
) -> Int8Model:
    """Calibrates on ``images`` random training-split images and measures int8 against fp32
    on the validation split. The first convolution goes to int8 unless that loses more than
    :data:`~model.quantization.QUALITY_TOLERANCE` of fp32's quality, in which case it is
    calibrated again with that layer in float32 (``float_stem`` True or False forces one
    way). Does not write anything; ``Int8Model.save`` does. Needs NNCF (the ``quantize``
    extra): ImportError otherwise."""
    net, card = load_model(model_dir)
    recipe = card.recipe or {}
    seed = int(recipe.get("seed", 0)) if seed is None else seed
    val_fraction = float(recipe.get("val_fraction", 0.1)) if val_fraction is None else val_fraction
    classes = classes or recipe.get("classes")
    train_samples, val_samples, names = held_out_split(
        roots, classes, val_fraction, seed, recipe.get("max_per_class")
    )
    if not train_samples or not val_samples:
        raise ValueError("calibration needs both training and validation images")
    size = card.config.input_size
    queries = load(val_samples, size, names)
    gallery = load(train_samples, size, names)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(gallery), min(images, len(gallery)), replace=False)
    calibration_images = gallery.images[np.sort(chosen)]  # a random part of the training split
    probe = [
        str(val_samples[i].path) for i in sorted(rng.permutation(len(val_samples))[:PROBE_IMAGES])
    ]
    probe_batch = probe_images(probe, card.config)
    if probe_batch is None:
        raise ValueError("the held-out probe images could not be read")
    fp32 = evaluate(Embedder(net, card), queries, gallery, seed=seed)
    quality: dict[str, Any] = {
        "roots": [str(r) for r in roots],
        "classes": names,
        "seed": seed,
        "val_fraction": val_fraction,
        "queries": len(queries),
        "gallery": len(gallery),
        "fp32": fp32,
    }

    def measured(stem_in_float: bool) -> Int8Model:
        network, kept = quantize(net, calibration_images, float_stem=stem_in_float)
        unmeasured = Int8Model(card.content_hash, len(calibration_images), network=network)
        probe_cosine = agrees_with_fp32(
            net, build_forward(net, "openvino-int8", unmeasured), probe_batch
        )
        draft = dataclasses.replace(
            unmeasured, probe=probe, probe_min_cosine=round(probe_cosine, 5), kept_in_float=kept
        )
        int8 = evaluate(Embedder(net, card, "openvino-int8", draft), queries, gallery, seed=seed)
        deltas = {name: int8[name] - fp32[name] for name in (*GUARDED_METRICS, "map_at_r")}
        return dataclasses.replace(draft, quality={**quality, "int8": int8, "deltas": deltas})

    if float_stem is not None:
        return measured(float_stem)
    int8_stem = measured(stem_in_float=False)
    return int8_stem if int8_stem.passes else measured(stem_in_float=True)
