"""The training recipe: one pydantic model that says everything a training run does.

It is the single source of the recipe's fields, defaults and limits: ``triplet-embed train``
builds its options from it (:func:`model.cli.add_recipe_options`), the service's ``POST /train``
schema is derived from it and the training worker receives it as JSON. The finished model's
card stores it, so a model says exactly how it was made.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from model.config import ModelType, Stem
from model.mining import Strategy

LossKind = Literal["metric", "normsoftmax", "both"]
Optimizer = Literal["adamw", "sgd"]
Schedule = Literal["cosine", "linear"]
Augmentation = Literal["strong", "light", "crop", "cutout"]
Device = Literal["cpu", "cuda"]
MiningScope = Literal["global", "local"]

#: The fields a caller of a training service may choose; the others describe the machine that
#: trains (data folders, device, bf16) and the starting point (architecture, initial weights).
TUNABLE_FIELDS = (
    "model_type",
    "mining",
    "margin",
    "loss",
    "softmax_scale",
    "label_smoothing",
    "instance_weight",
    "instance_temperature",
    "epochs",
    "batch_size",
    "classes_per_batch",
    "optimizer",
    "lr",
    "weight_decay",
    "schedule",
    "warmup_epochs",
    "ema_decay",
    "augmentation",
    "val_fraction",
    "seed",
)

#: The fields a model's weights fix: a fine-tuning run (``init_from``) keeps its starting
#: model's values.
NETWORK_FIELDS = ("stem", "input_size", "embedding_dim")

DEFAULT_MARGINS: dict[str, float] = {"siamese": 1.0, "triplet": 0.2, "quartet": 0.2}


class TrainRecipe(BaseModel):
    """A training run's data, network, losses, optimiser and schedule.

    ``data`` and ``init_from``/``pretrained`` are paths on the machine that trains; the other
    fields are plain values. ``margin`` left unset takes the model type's default.
    """

    model_config = ConfigDict(extra="forbid")

    data: list[str] = Field(min_length=1, description="folders of class folders")
    classes: list[str] | None = Field(
        default=None, min_length=2, description="class folders to use (all when unset)"
    )
    max_per_class: int | None = Field(
        default=None, ge=2, description="a seeded random subset of each class"
    )
    val_fraction: float = Field(
        default=0.1,
        ge=0.0,
        lt=0.9,
        description="share of images held out, chosen by a hash of each image's content",
    )
    seed: int = Field(default=0, ge=0)
    model_type: ModelType = Field(
        default="triplet", description="siamese (pairs), triplet or quartet network"
    )
    mining: Strategy = Field(default="all", description="in-batch tuple selection")
    margin: float | None = Field(
        default=None, gt=0, le=4, description="default 0.2, or 1.0 for siamese"
    )
    loss: LossKind = Field(
        default="metric",
        description=(
            "metric: the model type's tuple loss; normsoftmax: a cosine classification head "
            "over the embedding (pre-training); both: their sum"
        ),
    )
    softmax_scale: float = Field(default=16.0, gt=0, le=128, description="cosine head's scale")
    label_smoothing: float = Field(default=0.1, ge=0, lt=1)
    instance_weight: float = Field(
        default=0.0,
        ge=0,
        le=10,
        description=(
            "weight of the instance-discrimination term over two augmented views of every "
            "image (0: off, one view); keeps near-duplicates apart within a class"
        ),
    )
    instance_temperature: float = Field(default=0.1, gt=0, le=1)
    embedding_dim: int = Field(default=128, ge=2, le=2048)
    stem: Stem = "stride2"
    input_size: int = Field(default=32, ge=16, le=512)
    epochs: int = Field(default=10, ge=1, le=1000)
    batch_size: int = Field(default=128, ge=8, le=4096, description="distinct images per step")
    classes_per_batch: int = Field(default=16, ge=2, le=1024)
    optimizer: Optimizer = "adamw"
    lr: float = Field(default=1e-3, gt=0, lt=1, description="peak learning rate")
    weight_decay: float = Field(
        default=5e-4, ge=0, lt=1, description="not applied to norms and biases"
    )
    schedule: Schedule = Field(
        default="cosine", description="after the linear warm-up: cosine or linear decay"
    )
    warmup_epochs: float = Field(default=0.5, ge=0)
    ema_decay: float | None = Field(
        default=None,
        ge=0.5,
        lt=1,
        description="evaluate and export an exponential moving average of the weights",
    )
    augmentation: Augmentation = Field(
        default="strong",
        description=(
            "strong: crops, flips, colour; light: mild crops, flips; crop: pad-crop, flips; "
            "cutout: crop, then a hidden square of half the side"
        ),
    )
    oversample: dict[str, float] = Field(
        default_factory=dict,
        description="data folder -> how many times more often its images are drawn",
    )
    bf16: bool = Field(default=False, description="bf16 autocast and channels-last")
    device: Device = Field(
        default="cpu",
        description=(
            "where the steps, the weight average and evaluation run: cpu, or cuda (one GPU, "
            "one process); images are decoded and augmented on the CPU either way"
        ),
    )
    pretrained: str | None = Field(
        default=None, description="local torchvision resnet18 weights (ImageNet)"
    )
    init_from: str | None = Field(default=None, description="model directory to fine-tune")
    eval_gallery_limit: int = Field(default=10000, ge=10)
    mining_scope: MiningScope = Field(
        default="global",
        description=(
            "with several training processes: tuples and the head see every process's batch "
            "(global) or each process's own (local: less communication)"
        ),
    )

    @model_validator(mode="after")
    def _check(self) -> TrainRecipe:
        if self.margin is None:
            self.margin = DEFAULT_MARGINS[self.model_type]
        unknown = set(self.oversample) - set(self.data)
        if unknown:
            raise ValueError(f"oversample names folders that are not in data: {sorted(unknown)}")
        if any(factor < 1 for factor in self.oversample.values()):
            raise ValueError("oversample factors must be at least 1")
        return self

    @property
    def tuple_margin(self) -> float:
        """The resolved margin (never None after validation)."""
        assert self.margin is not None
        return self.margin

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
