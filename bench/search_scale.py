"""Search at scale: exact (flat) against approximate (IVF) FAISS search, in one run.

    .venv/bin/python -m bench.search_scale [--sizes 100000 1000000] [--real 20000]

Vectors are real: the shipped model's embeddings of CIFAR-10 training images (``--real`` of
them, all ten classes). To reach a size beyond that, each real vector is repeated with a
small random perturbation (then re-normalised), which keeps the neighbourhood structure of
real data. Queries are embeddings of other CIFAR-10 images. Prints queries/s (one query at a
time) and recall@10 against exact search.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from app.store.index import IndexPolicy, VectorIndex
from model.data import discover, load
from model.embedding import Embedder

ROOT = Path(__file__).resolve().parent.parent
CIFAR = ROOT.parent / "shared" / "data" / "cifar10" / "train"


def real_embeddings(model: Path, count: int, seed: int) -> np.ndarray:
    classes = sorted(p.name for p in CIFAR.iterdir())
    samples = discover([CIFAR], max_per_class=count // len(classes), seed=seed)
    embedder = Embedder.from_dir(model, "auto")
    return embedder.embed_tensors(load(samples, embedder.config.input_size, classes).images)


def grow(vectors: np.ndarray, size: int, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(vectors), size)
    grown = vectors[picks] + rng.normal(0, noise, (size, vectors.shape[1])).astype(np.float32)
    grown[: len(vectors)] = vectors[: min(size, len(vectors))]
    return grown / np.linalg.norm(grown, axis=1, keepdims=True)


def queries_per_second(index: VectorIndex, queries: np.ndarray) -> float:
    start = time.perf_counter()
    for query in queries:
        index.search(query[None, :], 10)
    return len(queries) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, default=ROOT / "model" / "default")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--real", type=int, default=20_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--noise", type=float, default=0.02)
    parser.add_argument("--nprobe", type=int, nargs="+", default=[16, 32, 64])
    args = parser.parse_args()
    base = real_embeddings(args.model, args.real, seed=1)
    queries = real_embeddings(args.model, args.queries * 10, seed=99)[: args.queries]
    print("| vectors | index | build s | queries/s | ratio to flat | recall@10 |")
    print("| --- | --- | --- | --- | --- | --- |")
    for size in args.sizes:
        vectors = grow(base, size, args.noise, seed=size)
        ids = np.arange(1, size + 1)
        start = time.perf_counter()
        flat = VectorIndex.build("bench", ids, vectors, IndexPolicy(kind="flat"))
        flat_build = time.perf_counter() - start
        _, truth = flat.search(queries, 10)
        flat_qps = queries_per_second(flat, queries)
        print(f"| {size:,} | flat | {flat_build:.1f} | {flat_qps:.1f} | 1.00x | 1.000 |")
        start = time.perf_counter()
        ivf = VectorIndex.build("bench", ids, vectors, IndexPolicy(kind="ivf"))
        ivf_build = time.perf_counter() - start
        for nprobe in args.nprobe:
            ivf.nprobe = nprobe
            _, found = ivf.search(queries, 10)
            recall = np.mean([len(set(t) & set(f)) / 10 for t, f in zip(truth, found, strict=True)])
            qps = queries_per_second(ivf, queries)
            print(
                f"| {size:,} | IVF nprobe={nprobe} | {ivf_build:.1f} | {qps:.1f} | "
                f"{qps / flat_qps:.1f}x | {recall:.3f} |"
            )
        del flat, ivf, vectors


if __name__ == "__main__":
    main()
