"""Embedding throughput of every inference runtime we considered, against eager fp32, in one run,
and the choice the service's ``auto`` makes here.

    .venv/bin/python -m bench.embed_throughput [--model model/default] [--rounds 5]
        [--sizes 32 224] [--skip-compile]

For batch 1 and 32, at the model's input size and at 224 px: eager fp32 and channels-last,
bf16 autocast + channels-last, ``torch.compile`` (bf16, frozen weights), ONNX Runtime fp32
and static int8, and OpenVINO fp32, bf16 and int8. The service's backends run through
:class:`model.embedding.Embedder`, the code the service runs; the others are the runtimes we
measured and did not adopt. Images are real held-out images; the int8 models are calibrated
on real training images (at the model's input size: the shipped int8 IR). Each table also
gives the lowest cosine similarity of each runtime's embeddings to eager fp32's. First it
prints what ``auto`` measured and chose on this machine (:func:`model.backends.select_backend`,
nothing remembered).
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch

from bench.common import interleaved, print_table
from model.checkpoint import ModelCard, load_model
from model.config import ModelConfig
from model.data import load
from model.embedding import Embedder
from model.network import EmbeddingNet
from model.preprocessing import normalize
from model.quantization import Int8Model, quantize
from model.report import held_out_split

Run = Callable[[torch.Tensor], np.ndarray]  # uint8 images to unit vectors


def _copy(net: EmbeddingNet, size: int) -> EmbeddingNet:
    """The same weights, configured for ``size`` px inputs."""
    config = ModelConfig.from_dict({**net.config.to_dict(), "input_size": size})
    sized = EmbeddingNet(config)
    sized.load_state_dict(net.state_dict())
    return sized.eval()


def _eager_channels_last(net: EmbeddingNet) -> Run:
    net = net.to(memory_format=torch.channels_last)

    def run(images: torch.Tensor) -> np.ndarray:
        batch = normalize(images, net.config).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return net(batch).numpy()

    return run


def _compiled_bf16(net: EmbeddingNet) -> Run:
    import torch._inductor.config as inductor

    inductor.freezing = True  # constant-folds weights and prepacks them for oneDNN
    compiled = torch.compile(net.to(memory_format=torch.channels_last))

    def run(images: torch.Tensor) -> np.ndarray:
        batch = normalize(images, net.config).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return compiled(batch).float().numpy()

    return run


def _onnx_runtime(
    net: EmbeddingNet, calibration_images: torch.Tensor, workdir: Path
) -> dict[str, Run]:
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from model.export import write_onnx

    fp32_path = write_onnx(net, workdir / f"fp32-{net.config.input_size}.onnx", {})
    int8_path = workdir / f"int8-{net.config.input_size}.onnx"
    batches = [
        normalize(calibration_images[i : i + 64], net.config).numpy()
        for i in range(0, len(calibration_images), 64)
    ]

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.batches = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {"images": batch}

    quantize_static(
        str(fp32_path),
        str(int8_path),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        weight_type=QuantType.QInt8,
        activation_type=QuantType.QUInt8,
    )

    mean = 255.0 * np.asarray(net.config.mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std = 255.0 * np.asarray(net.config.std, dtype=np.float32).reshape(1, 3, 1, 1)

    def session_run(path: Path) -> Run:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

        def run(images: torch.Tensor) -> np.ndarray:
            # normalised in NumPy: a PyTorch operation's spinning OpenMP threads would slow
            # ONNX Runtime's own (the OpenVINO backends normalise inside their graph)
            batch = (images.numpy().astype(np.float32) - mean) / std
            vectors = session.run(None, {"images": batch})[0]
            return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

        return run

    return {
        "ONNX Runtime fp32": session_run(fp32_path),
        "ONNX Runtime int8": session_run(int8_path),
    }


def candidates(
    net: EmbeddingNet,
    card: ModelCard,
    size: int,
    calibration_images: torch.Tensor,
    shipped: Int8Model | None,
    workdir: Path,
    with_compile: bool,
) -> dict[str, Run]:
    def backend(name: str, int8: Int8Model | None = None) -> Run:
        return Embedder(_copy(net, size), card, name, int8).embed_tensors  # type: ignore[arg-type]

    if shipped is not None and size == card.config.input_size:
        int8 = shipped
    else:
        calibrated, _ = quantize(_copy(net, size), calibration_images)
        int8 = Int8Model(card.content_hash, len(calibration_images), network=calibrated)
    runs: dict[str, Run] = {
        "eager fp32": backend("torch-fp32"),
        "eager channels_last": _eager_channels_last(_copy(net, size)),
        "bf16 autocast + channels_last": backend("torch-bf16"),
    }
    if with_compile:
        runs["torch.compile bf16"] = _compiled_bf16(_copy(net, size))
    runs.update(_onnx_runtime(_copy(net, size), calibration_images, workdir))
    runs["OpenVINO fp32"] = backend("openvino-fp32")
    runs["OpenVINO bf16"] = backend("openvino-bf16")
    runs["OpenVINO int8 (NNCF)"] = backend("openvino-int8", int8)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, default=Path("model/default"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="+", help="default: the model's and 224")
    parser.add_argument("--skip-compile", action="store_true", help="torch.compile takes minutes")
    args = parser.parse_args()
    net, card = load_model(args.model)
    print(f"model {card.version}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    roots = [Path(p) for p in card.recipe.get("data", [])]
    train, held_out, names = held_out_split(
        roots,
        card.recipe.get("classes"),
        card.recipe.get("val_fraction", 0.1),
        card.recipe.get("seed", 0),
    )
    rng = np.random.default_rng(0)
    chosen = [train[i] for i in sorted(rng.choice(len(train), 256, replace=False))]
    shipped = Int8Model.load(args.model)
    selection = Embedder.from_dir(args.model, "auto").selection
    print(f"auto chose {selection.backend} ({selection.how}), checked on {selection.probe}")
    rates = selection.images_per_second
    print(f"\n| candidate | images/s at batch {selection.batch} | ratio to torch-fp32 |")
    print("| --- | --- | --- |")
    for name, rate in sorted(rates.items(), key=lambda item: -item[1]):
        print(f"| {name} | {rate:.0f} | {rate / rates['torch-fp32']:.2f}x |")
    for name, why in selection.unavailable.items():
        print(f"| {name} | unavailable: {why} | |")
    for size in args.sizes or sorted({card.config.input_size, 224}):
        calibration_images = load(chosen, size, names).images
        images = load(held_out[:32], size, names).images
        with tempfile.TemporaryDirectory() as tmp:
            runs = candidates(
                net, card, size, calibration_images, shipped, Path(tmp), not args.skip_compile
            )
            for batch in (1, 32):
                inputs = images[:batch]
                reference = runs["eager fp32"](inputs)
                cosines = {
                    name: f"{float(np.min(np.sum(run(inputs) * reference, axis=1))):.5f}"
                    for name, run in runs.items()
                }
                repeats = 32 // batch  # every unit of work embeds 32 images

                def unit(run: Run, inputs: torch.Tensor = inputs, repeats: int = repeats) -> int:
                    for _ in range(repeats):
                        run(inputs)
                    return repeats * len(inputs)

                rates = interleaved(
                    {name: partial(unit, run) for name, run in runs.items()},
                    rounds=args.rounds,
                    pause=0.5,
                )
                print_table(
                    f"{size}x{size}, batch {batch}",
                    rates,
                    "eager fp32",
                    "images/s",
                    extra=("min cosine to fp32", cosines),
                )


if __name__ == "__main__":
    main()
