"""How fast each backend multiplies on this CPU, and where OpenVINO int8 spends its time.

    .venv/bin/python -m bench.arithmetic_rate [--model model/default] [--rounds 5]

A ratio between backends says little about why it is what it is. This counts the network's
multiply-accumulates (MACs) per image, times each backend the service can run here at the
served batch size (through :func:`model.backends.build_forward`, the service's code) and
prints billions of MACs per second, beside a dense fp32 matrix product's. Then it profiles
the shipped int8 IR layer by layer and sums the time by OpenVINO's kernel ("exec type"),
which shows which layers really run in int8 and with which instructions (``jit_avx2_I8``,
``brgconv_avx512_core_vnni_I8``, ...).
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from functools import partial
from pathlib import Path

import torch

from bench.common import interleaved, print_table
from model.backends import (
    BackendUnavailable,
    Forward,
    build_forward,
    candidate_backends,
    openvino_config,
    openvino_model,
)
from model.checkpoint import load_model
from model.network import EmbeddingNet
from model.quantization import Int8Model


def macs_per_image(net: EmbeddingNet) -> int:
    """Multiply-accumulates of one forward pass: every convolution and linear layer."""
    total = 0

    def count(layer: torch.nn.Module, inputs: object, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(layer, torch.nn.Conv2d):
            kernel = layer.kernel_size[0] * layer.kernel_size[1]
            total += output.numel() * layer.in_channels // layer.groups * kernel
        elif isinstance(layer, torch.nn.Linear):
            total += output.numel() * layer.in_features

    layers = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    hooks = [layer.register_forward_hook(count) for layer in layers]
    size = net.config.input_size
    with torch.inference_mode():
        net(torch.zeros(1, 3, size, size))
    for hook in hooks:
        hook.remove()
    return total


def matmul_rate(size: int = 1024, runs: int = 10) -> float:
    """Billions of MACs per second of a dense fp32 matrix product in PyTorch: about the most
    this CPU's fp32 units do, a yardstick for the networks' rates."""
    a, b = torch.rand(size, size), torch.rand(size, size)
    torch.mm(a, b)
    start = time.perf_counter()
    for _ in range(runs):
        torch.mm(a, b)
    return size**3 * runs / (time.perf_counter() - start) / 1e9


def one_batch(forward: Forward, images: torch.Tensor) -> int:
    return len(forward(images))


def int8_kernel_times(
    net: EmbeddingNet, int8: Int8Model, images: torch.Tensor, runs: int = 10
) -> Counter[str]:
    """Microseconds per batch spent in each (layer type, kernel) of the int8 model the
    service compiles (uint8 input, its settings), with OpenVINO's per-layer counters on."""
    import openvino as ov

    model = openvino_model(net, "int8", int8, weights_hash=None)
    config = {**openvino_config("int8"), "PERF_COUNT": True}
    request = ov.Core().compile_model(model, "CPU", config).create_infer_request()
    times: Counter[str] = Counter()
    for run in range(runs + 2):
        request.infer({0: images.numpy()})
        if run >= 2:  # the first runs warm the caches up
            for layer in request.get_profiling_info():
                times[f"{layer.node_type} ({layer.exec_type})"] += (
                    layer.real_time.total_seconds() * 1e6 / runs
                )
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=Path("model/default"))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    net, _ = load_model(args.model)
    net.eval()
    int8 = Int8Model.load(args.model)
    size = net.config.input_size
    macs = macs_per_image(net)
    print(f"{macs / 1e6:.1f} million MACs per {size}x{size} image")

    images = torch.randint(0, 256, (args.batch, 3, size, size), dtype=torch.uint8)
    forwards: dict[str, Forward] = {}
    for backend in candidate_backends(int8):
        try:
            forwards[backend] = build_forward(net, backend, int8)
        except BackendUnavailable as exc:
            print(f"{backend}: left out ({exc})")

    rates = interleaved(
        {name: partial(one_batch, forward, images) for name, forward in forwards.items()},
        args.rounds,
        pause=0.2,
    )
    gmacs = {name: f"{rate * macs / 1e9:.1f}" for name, rate in rates.items()}
    print(f"dense fp32 matrix product (1024x1024): {matmul_rate():.1f} billion MACs/s")
    print_table(
        f"Batch {args.batch}, this CPU",
        rates,
        "torch-fp32",
        unit="images/s",
        extra=("billion MACs/s", gmacs),
    )

    if int8 is not None and int8.network is not None:
        times = int8_kernel_times(net, int8, images)
        total = sum(times.values())
        print(f"\nopenvino-int8, batch {args.batch}: {total / 1e3:.1f} ms in its layers")
        print("| layer type (kernel) | ms per batch | share |")
        print("| --- | --- | --- |")
        for kernel, microseconds in times.most_common():
            if microseconds >= 0.0005 * total:
                print(f"| {kernel} | {microseconds / 1e3:.2f} | {microseconds / total:.1%} |")


if __name__ == "__main__":
    main()
