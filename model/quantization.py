"""Post-training int8 quantisation for OpenVINO, calibrated on real training images.

NNCF places int8 quantisers (FakeQuantize operations) in the converted network and sets
each activation quantiser's range from statistics of real images. Those ranges are all the
calibration produces, so they are what we keep: a small JSON file beside the model
(``int8.json``) holding the ranges, the weights' content hash they belong to, and the
measured quality of the int8 model against fp32 on the model's held-out split.

Loading needs no images: the network is converted and quantised again on one blank input
(quantiser placement depends only on the graph; weight ranges only on the weights), and the
calibrated ranges then replace the blank input's, matched by position in the graph's
topological order. Bias correction is switched off because it would adjust weights from the
data, which the ranges alone could not reproduce.

The first convolution (which sees raw pixels) and the embedding layer stay in float32: on
the default model, quantising them cost 0.007 of held-out precision@1; keeping them costs
none measurable.

An int8 model is only used automatically when its precision@1 and k-means purity on the
validation split stay within :data:`QUALITY_TOLERANCE` of fp32.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from model.checkpoint import atomic_write_bytes
from model.config import ModelConfig
from model.network import EmbeddingNet
from model.preprocessing import normalize

if TYPE_CHECKING:
    import openvino as ov

CALIBRATION_FILE = "int8.json"
QUALITY_TOLERANCE = 0.005
GUARDED_METRICS = ("precision_at_1", "purity")


class QuantizationError(RuntimeError):
    """The stored calibration does not fit this network."""


@dataclass(frozen=True)
class Int8Calibration:
    """Activation ranges for one set of weights, and how the int8 model measured."""

    model_hash: str
    ranges: list[dict[str, Any]]
    images: int
    quality: dict[str, Any] = field(default_factory=dict)

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

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_hash": self.model_hash,
            "images": self.images,
            "quality": self.quality,
            "ranges": self.ranges,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Int8Calibration:
        return cls(
            model_hash=str(data["model_hash"]),
            ranges=list(data["ranges"]),
            images=int(data["images"]),
            quality=dict(data.get("quality", {})),
        )

    def save(self, model_dir: Path) -> Path:
        path = model_dir / CALIBRATION_FILE
        atomic_write_bytes(path, json.dumps(self.to_dict(), indent=1).encode())
        return path

    @classmethod
    def load(cls, model_dir: Path) -> Int8Calibration | None:
        path = model_dir / CALIBRATION_FILE
        if not path.exists():
            return None
        return cls.from_dict(json.loads(path.read_text()))


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


def _kept_in_float(model: ov.Model) -> list[str]:
    """Names of the first convolution and the embedding layer's matrix product."""
    ops = model.get_ordered_ops()
    first_conv = next(op for op in ops if op.get_type_name() == "Convolution")
    products = [op for op in ops if op.get_type_name() == "MatMul"]
    return [op.get_friendly_name() for op in (first_conv, *products)]


def _quantize(model: ov.Model, batches: list[np.ndarray]) -> ov.Model:
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters

    logging.getLogger("nncf").setLevel(logging.WARNING)  # its INFO lists every ignored node
    # NNCF draws progress bars on standard output, which carries the CLI's JSON and the
    # training worker's events
    with contextlib.redirect_stdout(sys.stderr):
        return nncf.quantize(
            model,
            nncf.Dataset(batches),
            preset=nncf.QuantizationPreset.MIXED,
            subset_size=len(batches),
            ignored_scope=nncf.IgnoredScope(names=_kept_in_float(model)),
            advanced_parameters=AdvancedQuantizationParameters(
                disable_bias_correction=True, batchwise_statistics=True
            ),
        )


def _activation_quantizers(model: ov.Model) -> list[Any]:
    """FakeQuantize operations on activations, in topological order (weights are already
    compressed to int8 constants by then and have no quantiser left)."""
    return [
        op
        for op in model.get_ordered_ops()
        if op.get_type_name() == "FakeQuantize"
        and op.input_value(0).get_node().get_type_name() != "Constant"
    ]


def _range_inputs(op: Any) -> list[np.ndarray]:
    """input_low, input_high, output_low, output_high of one FakeQuantize."""
    return [np.asarray(op.input_value(i).get_node().get_data()) for i in range(1, 5)]


def calibrate(
    net: EmbeddingNet, images: torch.Tensor, batch_size: int = 64
) -> list[dict[str, Any]]:
    """Activation ranges from ``uint8`` ``(N, 3, S, S)`` real images at the model's input size."""
    config: ModelConfig = net.config
    batches = [
        normalize(images[start : start + batch_size], config).numpy()
        for start in range(0, len(images), batch_size)
    ]
    quantized = _quantize(to_openvino(net), batches)
    return [
        {"name": op.get_friendly_name(), "ranges": [r.tolist() for r in _range_inputs(op)]}
        for op in _activation_quantizers(quantized)
    ]


def quantized_model(net: EmbeddingNet, ranges: list[dict[str, Any]]) -> ov.Model:
    """The int8 OpenVINO model of ``net`` with calibrated ``ranges`` applied."""
    import openvino.opset13 as ops

    size = net.config.input_size
    blank = np.zeros((1, 3, size, size), dtype=np.float32)
    model = _quantize(to_openvino(net), [blank])
    quantizers = _activation_quantizers(model)
    if len(quantizers) != len(ranges):
        raise QuantizationError(
            f"calibration has {len(ranges)} quantisers, the network {len(quantizers)}"
        )
    for op, stored in zip(quantizers, ranges, strict=True):
        for position, (current, values) in enumerate(
            zip(_range_inputs(op), stored["ranges"], strict=True), start=1
        ):
            value = np.asarray(values, dtype=np.float32)
            if value.size != current.size:
                raise QuantizationError(f"range shapes differ at {stored['name']}")
            op.input(position).replace_source_output(
                ops.constant(value.reshape(current.shape)).output(0)
            )
    model.validate_nodes_and_infer_types()
    return model
