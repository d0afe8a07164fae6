"""The int8 model: post-training quantisation with NNCF, shipped as an OpenVINO IR file.

``triplet-embed quantize`` (and a training job that calibrates its new model) places int8
quantisers in the converted network with NNCF, sets their ranges from statistics of real
training images, measures the int8 model against fp32 on the held-out split, and writes:

- ``int8.xml`` / ``int8.bin``: the quantised network as OpenVINO IR (int8 weights, fp32
  where it stayed in float);
- ``int8.json``: the manifest binding them to the weights (the card's content hash) and to
  their own bytes (SHA-256 of both files), with the measured quality and the held-out
  image files used to check the model each time it is loaded (:func:`probe_images`), with
  the agreement with fp32 measured on them at calibration.

Loading reads the IR directly: neither NNCF nor the calibration images are needed at run
time (NNCF is the ``quantize`` extra). The embedding layer stays in float32 (0.3 % of the
int8 model's time). The first convolution, which sees the pixels, goes to int8 when the
held-out quality allows it (:func:`model.calibration.calibrate_model_dir` falls back to
float32 for it otherwise): on the 64 px default model it kept precision@1 and purity where
the float32 stem had them and made the int8 model 1.23x as fast at batch 32 (its 7x7
convolution over 64x64 images was a fifth of the time in float32, on an AVX2 CPU). On the
32 px model before it, quantising both layers had cost 0.007 of precision@1. NNCF halves
the first quantised layer's weight range, so that CPUs without VNNI, whose 8-bit
multiply-adds sum pairs in 16 bits, cannot overflow on it. Bias correction is off so that
the weights stay those of the card.

An int8 model is only used automatically when its precision@1 and k-means purity on the
validation split stayed within :data:`QUALITY_TOLERANCE` of fp32.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from model.checkpoint import atomic_write_bytes
from model.config import ModelConfig
from model.network import EmbeddingNet
from model.preprocessing import ImageDecodeError, decode_prepared, normalize

if TYPE_CHECKING:
    import openvino as ov

MANIFEST_FILE = "int8.json"
IR_FILES = ("int8.xml", "int8.bin")
QUALITY_TOLERANCE = 0.005
GUARDED_METRICS = ("precision_at_1", "purity")


class QuantizationError(RuntimeError):
    """The stored int8 model cannot be used: missing, damaged, or made for other weights."""


@dataclass(frozen=True)
class Int8Model:
    """The quantised network of one set of weights, and how it measured against fp32.

    ``network`` is the OpenVINO model itself (read from the IR, or just calibrated);
    ``ir_hash`` is empty until it has been saved."""

    model_hash: str
    images: int
    quality: dict[str, Any] = field(default_factory=dict)
    probe: list[str] = field(default_factory=list)
    probe_min_cosine: float | None = None  # int8 against fp32 on ``probe``, when calibrated
    kept_in_float: list[str] = field(default_factory=list)  # layers left in float32, by name
    ir_hash: str = ""
    network: ov.Model | None = field(default=None, compare=False, repr=False)

    @property
    def passes(self) -> bool:
        """Whether the measured int8 model kept fp32's quality (unmeasured never passes)."""
        deltas = self.quality.get("deltas")
        if not deltas:
            return False
        return all(abs(deltas[name]) <= QUALITY_TOLERANCE for name in GUARDED_METRICS)

    def summary(self) -> dict[str, Any]:
        """The measured quality in brief: the guarded metrics for fp32 and int8, and whether
        int8 passed."""
        quality = self.quality
        deltas = quality.get("deltas", {})
        return {
            "calibration_images": self.images,
            "queries": quality.get("queries"),
            "fp32": {name: quality["fp32"][name] for name in deltas},
            "int8": {name: quality["int8"][name] for name in deltas},
            "deltas": deltas,
            "tolerance": QUALITY_TOLERANCE,
            "passes": self.passes,
        }

    def manifest(self) -> dict[str, Any]:
        return {
            "model_hash": self.model_hash,
            "ir_files": list(IR_FILES),
            "ir_sha256": self.ir_hash,
            "images": self.images,
            "quality": self.quality,
            "probe": self.probe,
            "probe_min_cosine": self.probe_min_cosine,
            "kept_in_float": self.kept_in_float,
        }

    def save(self, model_dir: Path) -> Int8Model:
        """Writes the IR, then the manifest that names its hash (each file atomically; a
        crash in between leaves a manifest whose hash the files do not match, which loading
        refuses). Returns the saved model, with ``ir_hash`` set."""
        import openvino as ov

        if self.network is None:
            raise QuantizationError("nothing to save: the int8 network is not in memory")
        with tempfile.TemporaryDirectory(dir=model_dir, prefix=".int8-") as staging:
            xml = Path(staging) / IR_FILES[0]
            ov.save_model(self.network, xml, compress_to_fp16=False)
            ir_hash = _ir_hash(Path(staging))
            for name in IR_FILES:
                os.replace(Path(staging) / name, model_dir / name)
        saved = dataclasses.replace(self, ir_hash=ir_hash)
        atomic_write_bytes(
            model_dir / MANIFEST_FILE, json.dumps(saved.manifest(), indent=1).encode()
        )
        return saved

    @classmethod
    def load(cls, model_dir: Path) -> Int8Model | None:
        """The stored int8 model, or None if there is none; raises
        :class:`QuantizationError` if its files are damaged or do not belong together."""
        path = model_dir / MANIFEST_FILE
        if not path.exists():
            return None
        import openvino as ov

        try:
            data = json.loads(path.read_text())
            stored = cls(
                model_hash=str(data["model_hash"]),
                images=int(data["images"]),
                quality=dict(data.get("quality", {})),
                probe=[str(p) for p in data.get("probe", [])],
                probe_min_cosine=data.get("probe_min_cosine"),
                kept_in_float=[str(name) for name in data.get("kept_in_float", [])],
                ir_hash=str(data["ir_sha256"]),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise QuantizationError(f"{MANIFEST_FILE} is unreadable: {exc}") from exc
        try:
            actual = _ir_hash(model_dir)
        except OSError as exc:
            raise QuantizationError(f"the int8 IR files are missing: {exc}") from exc
        if actual != stored.ir_hash:
            raise QuantizationError("the int8 IR files do not match their manifest's hash")
        network = ov.Core().read_model(model_dir / IR_FILES[0])
        return dataclasses.replace(stored, network=network)


def _ir_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for name in IR_FILES:
        digest.update((folder / name).read_bytes())
    return digest.hexdigest()


def probe_images(paths: list[str], config: ModelConfig) -> torch.Tensor | None:
    """The readable ones of ``paths`` (held-out image files recorded at calibration) as a
    ``uint8`` batch at the model's input size, or None if fewer than half are readable
    (the data set is not on this machine)."""
    images = []
    for path in paths:
        try:
            data = Path(path).read_bytes()
            images.append(decode_prepared(data, config.input_size)[0])
        except (OSError, ImageDecodeError):
            continue
    if not images or len(images) < len(paths) / 2:
        return None
    return torch.stack(images)


class _Unnormalised(torch.nn.Module):
    """The network without its final L2 normalisation, which callers apply in float32:
    quantising the norm's computation, or the embedding itself, costs retrieval quality."""

    def __init__(self, net: EmbeddingNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.embedding(self.net.features(images))


def to_openvino(net: EmbeddingNet) -> ov.Model:
    """The network, without the final L2 normalisation, as an OpenVINO model taking
    normalised ``(N, 3, S, S)`` float32 images."""
    import openvino as ov

    size = net.config.input_size
    batch = torch.export.Dim("batch", min=1, max=4096)
    exported = torch.export.export(
        _Unnormalised(net.eval()).eval(),
        (torch.zeros(2, 3, size, size),),
        dynamic_shapes={"images": {0: batch}},
    )
    model = ov.convert_model(exported)
    model.reshape([-1, 3, size, size])
    return model


def layers_kept_in_float(model: ov.Model, float_stem: bool) -> list[str]:
    """Names of the embedding layer's matrix products and, with ``float_stem``, of the first
    convolution."""
    ops = model.get_ordered_ops()
    kept = [op for op in ops if op.get_type_name() == "MatMul"]
    if float_stem:
        kept.insert(0, next(op for op in ops if op.get_type_name() == "Convolution"))
    return [op.get_friendly_name() for op in kept]


def quantize(
    net: EmbeddingNet, images: torch.Tensor, batch_size: int = 64, *, float_stem: bool = False
) -> tuple[ov.Model, list[str]]:
    """The int8 OpenVINO model of ``net``, calibrated on ``uint8`` ``(N, 3, S, S)`` real
    images at the model's input size, and the names of the layers it keeps in float32 (the
    embedding layer; the first convolution too with ``float_stem``). Needs NNCF (the
    ``quantize`` extra): ImportError otherwise."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters

    config: ModelConfig = net.config
    batches = [
        normalize(images[start : start + batch_size], config).numpy()
        for start in range(0, len(images), batch_size)
    ]
    model = to_openvino(net)
    kept = layers_kept_in_float(model, float_stem)
    logging.getLogger("nncf").setLevel(logging.WARNING)  # its INFO lists every ignored node
    # NNCF draws progress bars on standard output, which carries the CLI's JSON and the
    # training worker's events
    with contextlib.redirect_stdout(sys.stderr):
        quantized = nncf.quantize(
            model,
            nncf.Dataset([np.asarray(b) for b in batches]),
            preset=nncf.QuantizationPreset.MIXED,
            subset_size=len(batches),  # dataset items: batches of images
            ignored_scope=nncf.IgnoredScope(names=kept),
            advanced_parameters=AdvancedQuantizationParameters(
                disable_bias_correction=True, batchwise_statistics=True
            ),
        )
    return quantized, kept
