"""The embedding network: a ResNet18 feature extractor followed by a linear embedding layer.

The siamese, triplet and quartet networks of the method share one set of weights, so they
are all this single module applied to every member of a tuple (see ``model.losses``).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18

from model.config import ModelConfig


class EmbeddingNet(nn.Module):
    """Maps a batch of normalised images ``(N, 3, H, W)`` to L2-normalised vectors ``(N, D)``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        backbone = resnet18(weights=None)
        if config.stem != "imagenet":
            stride = 1 if config.stem == "cifar" else 2
            backbone.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=stride, padding=1, bias=False)
            backbone.maxpool = nn.Identity()  # type: ignore[assignment]
        feature_dim = backbone.fc.in_features
        backbone.fc = nn.Identity()  # type: ignore[assignment]
        self.features = backbone
        self.embedding = nn.Linear(feature_dim, config.embedding_dim)

    @property
    def device(self) -> torch.device:
        """Where the weights lie: the CPU, or the GPU a run trains on."""
        return self.embedding.weight.device

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.embedding(self.features(images)).float(), dim=1)


def build_network(config: ModelConfig, pretrained: Path | None = None) -> EmbeddingNet:
    """Builds the network; ``pretrained`` is a local torchvision ``resnet18`` state dict.

    ImageNet weights are never downloaded: pass the file torchvision would fetch
    (``resnet18-f37072fd.pth``) or a safetensors copy of it. The stem's first convolution is
    kept only when its shape matches (the ``imagenet`` stem); the classifier is dropped.
    """
    net = EmbeddingNet(config)
    if pretrained is not None:
        load_backbone_weights(net, pretrained)
    return net


def load_backbone_weights(net: EmbeddingNet, path: Path) -> list[str]:
    """Loads torchvision ResNet18 weights into ``net.features``; returns the skipped keys."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    own = net.features.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(set(state) - set(usable))
    if not usable:
        raise ValueError(f"{path} holds no ResNet18 weights")
    net.features.load_state_dict(usable, strict=False)
    return skipped
