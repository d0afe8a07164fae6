"""The model's configuration: everything needed to rebuild the network and preprocess an image."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Stem = Literal["imagenet", "stride2", "cifar"]
ModelType = Literal["siamese", "triplet", "quartet"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and preprocessing of an embedding network.

    ``stem`` selects the first layers of the ResNet18:
    - ``imagenet``: 7x7 stride-2 convolution and max-pool (for 160 px and larger inputs);
    - ``stride2``: 3x3 stride-2 convolution, no max-pool (a 32-64 px input keeps detail);
    - ``cifar``: 3x3 stride-1 convolution, no max-pool (most detail, slowest).
    """

    backbone: str = "resnet18"
    stem: Stem = "stride2"
    input_size: int = 32
    embedding_dim: int = 128
    model_type: ModelType = "triplet"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    labels: tuple[str, ...] = field(default_factory=tuple)
    flip_tta: bool = False  # embed each image and its mirror and average (twice the cost)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["mean"] = list(self.mean)
        data["std"] = list(self.std)
        data["labels"] = list(self.labels)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model configuration keys: {sorted(unknown)}")
        values = dict(data)
        for key in ("mean", "std", "labels"):
            if key in values:
                values[key] = tuple(values[key])
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        if self.backbone != "resnet18":
            raise ValueError(f"unsupported backbone {self.backbone!r}")
        if self.stem not in ("imagenet", "stride2", "cifar"):
            raise ValueError(f"unknown stem {self.stem!r}")
        if self.model_type not in ("siamese", "triplet", "quartet"):
            raise ValueError(f"unknown model type {self.model_type!r}")
        if not 16 <= self.input_size <= 512:
            raise ValueError("input_size must be between 16 and 512")
        if not 2 <= self.embedding_dim <= 2048:
            raise ValueError("embedding_dim must be between 2 and 2048")
