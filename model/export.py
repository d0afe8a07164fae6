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


def export_onnx(model_dir: Path, out: Path, opset: int = 18) -> Path:
    import onnx

    net, card = load_model(model_dir)
    size = card.config.input_size
    example = torch.randn(2, 3, size, size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    fd, tmp = tempfile.mkstemp(dir=out.parent if out.parent.exists() else None, suffix=".onnx")
    os.close(fd)
    try:
        torch.onnx.export(
            net,
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
        metadata = {
            "version": card.version,
            "input_size": str(size),
            "mean": json.dumps(list(card.config.mean)),
            "std": json.dumps(list(card.config.std)),
            "labels": json.dumps(list(card.config.labels)),
        }
        for key, value in metadata.items():
            entry = graph.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(graph, tmp)
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return out
