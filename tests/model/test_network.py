from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torchvision.models import resnet18

from model.config import ModelConfig
from model.network import EmbeddingNet, build_network


@pytest.mark.parametrize(("stem", "size"), [("stride2", 32), ("cifar", 32), ("imagenet", 64)])
def test_shapes_and_unit_norms(stem: str, size: int) -> None:
    net = EmbeddingNet(ModelConfig(stem=stem, input_size=size, embedding_dim=64)).eval()  # type: ignore[arg-type]
    with torch.no_grad():
        out = net(torch.randn(3, 3, size, size))
    assert out.shape == (3, 64)
    assert torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-5)


def test_small_stems_keep_spatial_detail() -> None:
    image = torch.randn(1, 3, 32, 32)

    def stem_output(stem: str) -> torch.Size:
        f = EmbeddingNet(ModelConfig(stem=stem)).features  # type: ignore[arg-type]
        return f.maxpool(f.relu(f.bn1(f.conv1(image)))).shape

    assert stem_output("cifar")[-1] == 32
    assert stem_output("stride2")[-1] == 16
    assert stem_output("imagenet")[-1] == 8


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_pretrained_weights_load_from_a_local_file(tmp_path: Path, suffix: str) -> None:
    reference = resnet18(weights=None)
    state = reference.state_dict()
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".pth":
        torch.save(state, path)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    net = build_network(ModelConfig(stem="imagenet", input_size=64), pretrained=path)
    assert torch.equal(net.features.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    assert torch.equal(net.features.conv1.weight, reference.conv1.weight)
    small = build_network(ModelConfig(stem="stride2"), pretrained=path)
    assert torch.equal(small.features.layer1[0].conv1.weight, reference.layer1[0].conv1.weight)
    assert small.features.conv1.weight.shape == (64, 3, 3, 3)  # its own stem, not ImageNet's


def test_config_round_trip_and_validation() -> None:
    config = ModelConfig(stem="cifar", input_size=48, embedding_dim=32, labels=("bird", "cat"))
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError):
        ModelConfig.from_dict({**config.to_dict(), "stem": "huge"})
    with pytest.raises(ValueError):
        ModelConfig.from_dict({**config.to_dict(), "surprise": 1})
