"""Inference backends: the ways one trained network can run a forward pass on the CPU.

Measured on the default model (``bench/embed_throughput.py``), OpenVINO's int8 model is the
fastest at batch 32 (the batches the service forms under load) and at 224 px, and it keeps
held-out quality (see :mod:`model.quantization`). ``torch.compile`` trails OpenVINO bf16;
ONNX Runtime's static int8 is close (ahead at batch 1 and 32 px in some runs) but behind at
batch 32, and a second int8 path would need its own calibration and quality proof. Both are
benchmark entries, not backends.

``auto`` picks by measurement, not by CPU flags: every candidate worth trying here is built,
checked against eager fp32 on a probe batch (the held-out images the int8 model's manifest
names, where they are on this machine; random noise otherwise), and timed on a batch of
``MEASURE_BATCH`` images (the batches the service forms under load), interleaved so that
noise hits all alike; the fastest wins. Flags only decide what is worth trying:
``openvino-int8`` when the model ships an int8 IR that passed the quality rule, the bf16
backends where the CPU computes bf16 natively, and always ``openvino-fp32`` and
``torch-fp32``. The outcome is remembered in a JSON file (the service keeps it in its data
folder) under the CPU's identity, the library versions and the weights' hashes, so a restart on the
same machine builds only the winner.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import statistics
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, get_args

import numpy as np
import torch

from model.checkpoint import atomic_write_bytes
from model.config import ModelConfig
from model.network import EmbeddingNet
from model.preprocessing import normalize
from model.quantization import Int8Model, to_openvino

if TYPE_CHECKING:
    import openvino as ov

log = logging.getLogger(__name__)
T = TypeVar("T")

Backend = Literal["torch-fp32", "torch-bf16", "openvino-fp32", "openvino-bf16", "openvino-int8"]
BACKENDS: tuple[Backend, ...] = get_args(Backend)
BackendChoice = Literal["auto", Backend]

# A forward pass: ``uint8`` ``(N, 3, S, S)`` images at the model's input size to float32
# ``(N, D)`` unit vectors. Normalisation is part of it, so OpenVINO can do it in its graph.
Forward = Callable[[torch.Tensor], np.ndarray]

PROBE_MIN_COSINE = 0.99
# An int8 model may fall this far below the agreement it measured at calibration on the same
# held-out images: more means the CPU computes it differently (say, saturating without VNNI).
INT8_PROBE_SLACK = 0.005
MEASURE_BATCH = 32  # images per timed forward pass: the batches the service forms under load
MEASURE_ROUNDS = 5


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run here (library missing, CPU, or no usable int8 model)."""


@functools.cache
def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_flags() -> frozenset[str]:
    for line in _cpuinfo().splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def bf16_native() -> bool:
    """bf16 pays off only where the CPU computes it natively (AVX-512 BF16 or AMX)."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def candidate_backends(int8: Int8Model | None) -> list[Backend]:
    """``auto``'s candidates on this machine, given the model's int8 model (which must
    belong to the model's weights: see ``Embedder.from_dir``). Measurement orders them."""
    order: list[Backend] = []
    if openvino_available():
        if int8 is not None and int8.passes:
            order.append("openvino-int8")
        if bf16_native():
            order.append("openvino-bf16")
        order.append("openvino-fp32")
    if bf16_native():
        order.append("torch-bf16")
    order.append("torch-fp32")
    return order


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


def _torch_forward(net: EmbeddingNet, bf16: bool) -> Forward:
    """Eager PyTorch where ``net`` lies: the CPU when serving, the training device when a run
    evaluates its own network (``TrainRecipe.device``)."""
    device = net.device
    if not bf16:

        def fp32(images: torch.Tensor) -> np.ndarray:
            with torch.inference_mode():
                return net(normalize(images.to(device), net.config)).cpu().numpy()

        return fp32
    channels_last = net.to(memory_format=torch.channels_last)

    def bf16_autocast(images: torch.Tensor) -> np.ndarray:
        batch = normalize(images.to(device), net.config)
        batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
            return channels_last(batch).float().cpu().numpy()

    return bf16_autocast


def _with_uint8_input(model: ov.Model, config: ModelConfig) -> ov.Model:
    """Folds :func:`model.preprocessing.normalize` into the graph: the model then takes the
    ``uint8`` images themselves, and no PyTorch operation (whose OpenMP threads would keep
    spinning on the cores OpenVINO is about to use) runs before it."""
    import openvino as ov
    from openvino.preprocess import PrePostProcessor

    steps = PrePostProcessor(model)
    steps.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NCHW"))
    steps.input().model().set_layout(ov.Layout("NCHW"))
    steps.input().preprocess().convert_element_type(ov.Type.f32).mean(
        [255.0 * m for m in config.mean]
    ).scale([255.0 * s for s in config.std])
    return steps.build()


class _Cache(Generic[T]):
    """The last few values built, by key: what a process builds again whenever an app
    restarts in it or a model is re-activated (the same weights each time)."""

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self._values: OrderedDict[tuple[str, ...], T] = OrderedDict()
        self._lock = threading.Lock()

    def get_or_build(self, key: tuple[str, ...] | None, build: Callable[[], T]) -> T:
        if key is None:
            return build()
        with self._lock:
            if key in self._values:
                self._values.move_to_end(key)
                return self._values[key]
        value = build()
        with self._lock:
            self._values[key] = value
            while len(self._values) > self.size:
                self._values.popitem(last=False)
        return value


# OpenVINO models converted, by weights hash and input size. Converting (``torch.export``)
# takes about 3 s on 2 cores; compiling a cached model takes 0.1 s.
_MODELS: _Cache[ov.Model] = _Cache()
# Eager fp32's embeddings of a probe, by weights hash and probe digest: the reference each
# backend is checked against (0.17 s for 32 images on 2 cores).
_REFERENCES: _Cache[np.ndarray] = _Cache()


def openvino_model(
    net: EmbeddingNet, precision: str, int8: Int8Model | None, weights_hash: str | None
) -> ov.Model:
    """The network the service compiles for ``precision`` (``f32``, ``bf16`` or ``int8``),
    taking ``uint8`` images: the stored int8 IR, or the weights converted (the same float
    model serves fp32 and bf16; :func:`openvino_config`'s hint picks the precision)."""
    if precision == "int8":
        if int8 is None or int8.network is None:
            raise BackendUnavailable("openvino-int8 needs the model's int8 IR (int8.json)")
        return _with_uint8_input(int8.network.clone(), net.config)
    key = None if weights_hash is None else (weights_hash, str(net.config.input_size))
    return _MODELS.get_or_build(key, lambda: _with_uint8_input(to_openvino(net), net.config))


def openvino_config(precision: str) -> dict[str, str]:
    """The settings the service compiles an OpenVINO model of ``precision`` with."""
    # int8: the layers left unquantised stay exact, so quality matches the measured one
    hint = "f32" if precision == "int8" else precision
    return {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"}


def _openvino_forward(
    net: EmbeddingNet, precision: str, int8: Int8Model | None, weights_hash: str | None
) -> Forward:
    import openvino as ov

    model = openvino_model(net, precision, int8, weights_hash)
    compiled = ov.Core().compile_model(model, "CPU", openvino_config(precision))
    request = compiled.create_infer_request()
    lock = threading.Lock()  # one infer request: its output buffer is reused by the next call

    def forward(images: torch.Tensor) -> np.ndarray:
        with lock:
            output = request.infer({0: images.numpy()})[0]
            return _unit(output)  # a new array: the request's buffer is not handed out

    return forward


def build_forward(
    net: EmbeddingNet,
    backend: Backend,
    int8: Int8Model | None = None,
    weights_hash: str | None = None,
) -> Forward:
    """A forward pass of ``net`` on ``backend``; raises :class:`BackendUnavailable`.
    ``weights_hash`` (the model card's content hash) lets OpenVINO models be reused."""
    net = net.eval()
    if backend == "torch-fp32":
        return _torch_forward(net, bf16=False)
    if backend == "torch-bf16":
        return _torch_forward(net, bf16=True)
    if not openvino_available():
        raise BackendUnavailable(f"{backend} needs the openvino package")
    precision = backend.removeprefix("openvino-")
    precision = {"fp32": "f32"}.get(precision, precision)
    return _openvino_forward(net, precision, int8, weights_hash)


def required_agreement(backend: Backend, int8: Int8Model | None, real_probe: bool) -> float:
    """The lowest cosine similarity to fp32 that ``backend`` may show on the probe: 0.99, or
    for the int8 model on its own held-out probe, what it measured at calibration less
    :data:`INT8_PROBE_SLACK` if that is lower (int8's quality was proven on the whole
    held-out split; the probe checks that this CPU computes it as the calibrating one did)."""
    measured = int8.probe_min_cosine if int8 is not None else None
    if backend == "openvino-int8" and real_probe and measured is not None:
        return min(PROBE_MIN_COSINE, measured - INT8_PROBE_SLACK)
    return PROBE_MIN_COSINE


def random_probe(size: int) -> torch.Tensor:
    """The probe when no real images are at hand: four fixed random-noise images."""
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (4, 3, size, size), dtype=torch.uint8, generator=generator)


def agrees_with_fp32(
    net: EmbeddingNet, forward: Forward, probe: torch.Tensor, weights_hash: str | None = None
) -> float:
    """Lowest cosine similarity between ``forward`` and eager fp32 on ``probe``; with
    ``weights_hash``, eager fp32's embeddings are computed once per process."""

    def reference() -> np.ndarray:
        with torch.inference_mode():
            return _torch_forward(net, bf16=False)(probe)

    key = None
    if weights_hash is not None:
        key = (weights_hash, hashlib.sha256(probe.numpy().tobytes()).hexdigest())
    return float(np.min(np.sum(forward(probe) * _REFERENCES.get_or_build(key, reference), axis=1)))


@dataclass(frozen=True)
class Selection:
    """How a backend was chosen: set explicitly, or measured (images/s per candidate at
    ``batch``; the candidates that could not run, and why), or remembered from a measurement
    on this machine."""

    backend: Backend
    how: Literal["explicit", "measured", "remembered"]
    batch: int = MEASURE_BATCH
    images_per_second: dict[str, float] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    probe: str = ""
    agreement: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def images_per_second(
    forward: Forward, size: int, batch: int = MEASURE_BATCH
) -> Callable[[], float]:
    """A timer for ``forward``: each call runs one batch of ``batch`` random images and
    returns the images per second it took."""
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=generator)
    forward(images)  # warm-up: first-call allocations and lazy compilation

    def timed() -> float:
        start = time.perf_counter()
        forward(images)
        return batch / (time.perf_counter() - start)

    return timed


def fastest(
    timers: dict[Backend, Callable[[], float]], rounds: int = MEASURE_ROUNDS
) -> dict[str, float]:
    """The median images/s of each timer, over ``rounds`` rounds that run every timer once
    in turn (A B C A B C ...), so that a noisy moment does not favour one candidate."""
    samples: dict[str, list[float]] = {backend: [] for backend in timers}
    for _ in range(rounds):
        for backend, timed in timers.items():
            samples[backend].append(timed())
    return {backend: round(statistics.median(values), 1) for backend, values in samples.items()}


def _machine_key(weights_hash: str | None, candidates: list[Backend], int8_hash: str) -> str:
    """What a measurement depends on: the CPU, the libraries, the weights (float and int8),
    the candidates."""
    cpu = next(
        (line.split(":", 1)[1].strip() for line in _cpuinfo().splitlines() if "model name" in line),
        "unknown CPU",
    )
    identity = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "openvino": _openvino_version(),
        "weights": weights_hash,
        "int8": int8_hash,
        "candidates": candidates,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]


def _openvino_version() -> str | None:
    try:
        import openvino
    except ImportError:
        return None
    return str(openvino.__version__)


# Measurements made in this process, by machine key: a process that builds the same model
# again (an activation back to it, the test suite) does not measure again.
_measured: dict[str, dict[str, Any]] = {}


def _remembered(cache: Path | None, key: str) -> dict[str, Any] | None:
    if key in _measured:
        return _measured[key]
    if cache is None:
        return None
    try:
        entry = json.loads(cache.read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return None
    return entry if isinstance(entry, dict) and entry.get("backend") in BACKENDS else None


def _remember(cache: Path | None, key: str, selection: Selection) -> None:
    _measured[key] = selection.to_dict()
    if cache is None:
        return
    try:
        entries = json.loads(cache.read_text())
    except (OSError, ValueError):
        entries = {}
    entries[key] = selection.to_dict()
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(cache, json.dumps(entries, indent=1).encode())
    except OSError as exc:  # a cache: the next start measures again
        log.warning("could not remember the backend measurement in %s: %s", cache, exc)


def select_backend(
    net: EmbeddingNet,
    choice: BackendChoice,
    int8: Int8Model | None = None,
    weights_hash: str | None = None,
    cache: Path | None = None,
    timer: Callable[[Forward, int], Callable[[], float]] = images_per_second,
    probe: torch.Tensor | None = None,
) -> tuple[Forward, Selection]:
    """The requested backend, or with ``auto`` the fastest candidate that builds and agrees
    with fp32 on ``probe`` (real images; four random ones if None), measured with ``timer``
    or remembered in ``cache``. An explicitly requested backend that fails raises."""
    probe_text = "random noise" if probe is None else f"{len(probe)} held-out images"
    real_probe = probe is not None
    if probe is None:
        probe = random_probe(net.config.input_size)
    agreement: dict[str, float] = {}

    def checked(backend: Backend) -> Forward:
        forward = build_forward(net, backend, int8, weights_hash)
        if backend != "torch-fp32":  # eager fp32 is the reference itself
            cosine = agrees_with_fp32(net, forward, probe, weights_hash)
            agreement[backend] = round(cosine, 5)
            if cosine < required_agreement(backend, int8, real_probe):
                raise BackendUnavailable(
                    f"{backend} disagrees with fp32 on {probe_text} (cosine {cosine:.4f})"
                )
        return forward

    if choice != "auto":
        forward = checked(choice)
        return forward, Selection(choice, "explicit", probe=probe_text, agreement=agreement)
    candidates = candidate_backends(int8)
    key = _machine_key(weights_hash, candidates, int8.ir_hash if int8 is not None else "")
    remembered = _remembered(cache, key)
    if remembered is not None:
        try:
            forward = checked(remembered["backend"])
        except Exception as exc:  # the machine changed under us: measure again
            log.warning("remembered backend %s fails now: %s", remembered["backend"], exc)
        else:
            selection = Selection(
                **{**remembered, "how": "remembered", "probe": probe_text, "agreement": agreement}
            )
            log.info("backend %s, as measured before: %s", selection.backend, remembered)
            return forward, selection
    forwards: dict[Backend, Forward] = {}
    unavailable: dict[str, str] = {}
    for backend in candidates:
        try:
            forwards[backend] = checked(backend)
        except Exception as exc:  # any failure of an optional fast path: not a candidate
            unavailable[backend] = f"{type(exc).__name__}: {exc}"
    if not forwards:
        raise BackendUnavailable(f"no backend could run this network: {unavailable}")
    size = net.config.input_size
    rates = fastest({backend: timer(forward, size) for backend, forward in forwards.items()})
    winner = max(forwards, key=lambda backend: rates[backend])
    selection = Selection(
        winner, "measured", MEASURE_BATCH, rates, unavailable, probe_text, agreement
    )
    log.info(
        "backend %s: fastest of %s images/s at batch %d%s",
        winner,
        rates,
        MEASURE_BATCH,
        f" ({len(unavailable)} unavailable: {unavailable})" if unavailable else "",
    )
    _remember(cache, key, selection)
    return forwards[winner], selection
