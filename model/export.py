"""Export one branch of the network (the shared embedding network) to ONNX.

The graph takes ``images``: float32 ``(N, 3, S, S)`` already normalised with the card's mean
and std, and returns ``embeddings``: ``(N, D)`` unit vectors. The preprocessing the caller must
apply is written into the ONNX file's metadata (``input_size``, ``mean``, ``std``), beside the
model version.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from model.checkpoint import load_model
from model.network import EmbeddingNet


def write_onnx(net: EmbeddingNet, out: Path, metadata: dict[str, str], opset: int = 18) -> Path:
    """Exports ``net`` (any batch size, its own input size) to ``out`` atomically, with
    ``metadata`` written into the file."""
    import onnx

    size = net.config.input_size
    example = torch.randn(2, 3, size, size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    fd, tmp = tempfile.mkstemp(dir=out.parent if out.parent.exists() else None, suffix=".onnx")
    os.close(fd)
    try:
        torch.onnx.export(
            net.eval(),
            (example,),
            tmp,
            input_names=["images"],
            output_names=["embeddings"],
            dynamic_shapes={"images": {0: batch}},
            opset_version=opset,
            dynamo=True,
            verbose=False,
        )
        graph = onnx.load(tmp)
        for key, value in metadata.items():
            entry = graph.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(graph, tmp)
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return out


def export_onnx(model_dir: Path, out: Path, opset: int = 18) -> Path:
    """Exports a model directory, with its version and preprocessing as metadata."""
    net, card = load_model(model_dir)
    metadata = {
        "version": card.version,
        "input_size": str(card.config.input_size),
        "mean": json.dumps(list(card.config.mean)),
        "std": json.dumps(list(card.config.std)),
        "labels": json.dumps(list(card.config.labels)),
    }
    return write_onnx(net, out, metadata, opset)
