import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from model.checkpoint import save_model
from model.config import ModelConfig
from model.data import discover, load
from model.embedding import Embedder
from model.export import export_onnx
from model.network import EmbeddingNet
from model.preprocessing import normalize


def test_onnx_runtime_gives_the_same_vectors(tmp_path: Path, cifar: Path) -> None:
    torch.manual_seed(0)
    net = EmbeddingNet(ModelConfig(embedding_dim=32, labels=("bird", "cat")))
    card = save_model(net, tmp_path / "model")
    path = export_onnx(tmp_path / "model", tmp_path / "model.onnx")
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta["version"] == card.version and meta["input_size"] == "32"
    assert json.loads(meta["mean"]) == list(card.config.mean)

    images = load(discover([cifar], ["cat", "bird"], max_per_class=5), 32, ["bird", "cat"])
    expected = Embedder(net).embed_tensors(images.images)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 10):
        inputs = normalize(images.images[:batch], net.config).numpy()
        (vectors,) = session.run(["embeddings"], {"images": inputs})
        np.testing.assert_allclose(vectors, expected[:batch], atol=1e-4)
