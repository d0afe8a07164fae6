"""Command-line subcommands of the ML core: ``train``, ``eval``, ``quantize``, ``report``,
``export``, ``embed``.

``app.cli`` adds ``serve`` and is the ``triplet-embed`` entry point; keeping these here lets
the ML core run without the web service.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, get_args

from tqdm import tqdm

from model.backends import BACKENDS, bf16_native
from model.config import ModelType, Stem
from model.data import discover, load, split
from model.embedding import Embedder
from model.mining import STRATEGIES
from model.preprocessing import ImageDecodeError, load_image_file
from model.report import evaluate_per_root, plot_projection, plot_training_curve
from model.training import TrainRecipe, evaluate, train


def _classes(value: str | None) -> list[str] | None:
    if value is None:
        return None
    names = [c.strip() for c in value.split(",") if c.strip()]
    if len(names) < 2:
        raise argparse.ArgumentTypeError("--classes needs at least two names")
    return names


def _add_backend(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        choices=["auto", *BACKENDS],
        default="auto",
        help="inference backend (default: the fastest this machine and model run safely)",
    )


def add_subcommands(sub: Any) -> None:
    """Registers the ML core's subcommands on an ``argparse`` subparsers object."""
    t = sub.add_parser("train", help="train an embedding model on folders of labelled images")
    t.add_argument(
        "--data",
        type=Path,
        action="append",
        required=True,
        help="folder of class folders (repeatable; classes merge by name)",
    )
    t.add_argument("--classes", type=_classes, help="comma-separated class names to use")
    t.add_argument("--max-per-class", type=int)
    t.add_argument("--val-fraction", type=float, default=0.2)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--model-type", choices=get_args(ModelType), default="triplet")
    t.add_argument("--mining", choices=STRATEGIES, default="all")
    t.add_argument("--margin", type=float, help="default 0.2, or 1.0 for siamese")
    t.add_argument("--embedding-dim", type=int, default=128)
    t.add_argument("--stem", choices=get_args(Stem), default="stride2")
    t.add_argument("--input-size", type=int, default=32)
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--classes-per-batch", type=int, default=16)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--weight-decay", type=float, default=5e-4)
    t.add_argument("--augmentation", choices=["strong", "light"], default="strong")
    t.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bf16 autocast (default: on where the CPU has native bf16)",
    )
    t.add_argument(
        "--pretrained",
        type=Path,
        help="local torchvision resnet18 state dict (ImageNet); never downloaded",
    )
    t.add_argument("--init-from", type=Path, help="model directory to fine-tune")
    t.add_argument("--out", type=Path, required=True, help="model directory to write")
    t.set_defaults(handler=run_train)

    e = sub.add_parser("eval", help="measure a model: precision@1, MAP@R, k-means purity/NMI/ARI")
    e.add_argument("--model", type=Path, required=True)
    e.add_argument(
        "--data",
        type=Path,
        action="append",
        help="folders split as in training: validation images query the training ones",
    )
    e.add_argument("--queries", type=Path, action="append", help="folders of query images")
    e.add_argument("--gallery", type=Path, action="append", help="folders of gallery images")
    e.add_argument("--classes", type=_classes)
    e.add_argument("--max-per-class", type=int)
    e.add_argument("--val-fraction", type=float, default=0.2)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument(
        "--per-root",
        action="store_true",
        help="with --data: split all roots together, report each root's held-out images",
    )
    _add_backend(e)
    e.set_defaults(handler=run_eval)

    q = sub.add_parser(
        "quantize",
        help="calibrate int8 on the model's training split, measure it on the held-out split",
    )
    q.add_argument("--model", type=Path, required=True, help="model directory (gets int8.json)")
    q.add_argument(
        "--data", type=Path, action="append", required=True, help="the roots it was trained on"
    )
    q.add_argument("--classes", type=_classes, help="default: the classes it was trained on")
    q.add_argument("--images", type=int, default=512, help="calibration images")
    q.set_defaults(handler=run_quantize)

    r = sub.add_parser("report", help="write model-card figures (training curve, projection)")
    r.add_argument("--model", type=Path, required=True)
    r.add_argument("--data", type=Path, action="append", required=True)
    r.add_argument("--classes", type=_classes)
    r.add_argument("--out", type=Path, required=True, help="folder for the PNG files")
    r.set_defaults(handler=run_report)

    x = sub.add_parser("export", help="export the embedding network to ONNX")
    x.add_argument("--model", type=Path, required=True)
    x.add_argument("--out", type=Path, required=True, help="the .onnx file to write")
    x.set_defaults(handler=run_export)

    m = sub.add_parser("embed", help="print the embedding of each image as JSON lines")
    m.add_argument("--model", type=Path, required=True)
    m.add_argument("images", type=Path, nargs="+")
    _add_backend(m)
    m.set_defaults(handler=run_embed)


def run_train(args: argparse.Namespace) -> int:
    margin = (
        args.margin if args.margin is not None else (1.0 if args.model_type == "siamese" else 0.2)
    )
    bf16 = bf16_native() if args.bf16 is None else args.bf16
    recipe = TrainRecipe(
        data=[str(d) for d in args.data],
        classes=args.classes,
        max_per_class=args.max_per_class,
        val_fraction=args.val_fraction,
        seed=args.seed,
        model_type=args.model_type,
        mining=args.mining,
        margin=margin,
        embedding_dim=args.embedding_dim,
        stem=args.stem,
        input_size=args.input_size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        classes_per_batch=args.classes_per_batch,
        lr=args.lr,
        weight_decay=args.weight_decay,
        augmentation=args.augmentation,
        bf16=bf16,
        pretrained=str(args.pretrained) if args.pretrained else None,
        init_from=str(args.init_from) if args.init_from else None,
    )

    bar: tqdm | None = None

    def report(event: dict[str, Any]) -> None:
        nonlocal bar
        if event["event"] == "step":
            if bar is None:
                bar = tqdm(total=event["steps"], desc=f"epoch {event['epoch']}", unit="step")
            bar.update(event["step"] - bar.n)
            bar.set_postfix(loss=f"{event['loss']:.4f}")
        elif event["event"] in ("epoch", "data"):
            if bar is not None:
                bar.close()
                bar = None
            summary = {k: v for k, v in event.items() if k != "event"}
            tqdm.write(json.dumps(summary), file=sys.stderr)

    card = train(recipe, args.out, on_event=report)
    print(json.dumps({"version": card.version, "out": str(args.out), "metrics": card.metrics}))
    return 0


def run_eval(args: argparse.Namespace) -> int:
    embedder = Embedder.from_dir(args.model, args.backend)
    print(f"backend: {embedder.backend}", file=sys.stderr)
    config = embedder.config
    if args.data and args.per_root:
        per_root = evaluate_per_root(
            embedder, args.data, args.classes, args.val_fraction, args.seed
        )
        version = embedder.card.version if embedder.card else None
        print(json.dumps({"model": version, "per_root": per_root}, indent=2))
        return 0
    if args.data:
        samples = discover(args.data, args.classes, args.max_per_class, args.seed)
        gallery_samples, query_samples = split(samples, args.val_fraction, args.seed)
    elif args.queries and args.gallery:
        query_samples = discover(args.queries, args.classes, args.max_per_class, args.seed)
        gallery_samples = discover(args.gallery, args.classes, args.max_per_class, args.seed)
    elif args.queries:
        query_samples = discover(args.queries, args.classes, args.max_per_class, args.seed)
        gallery_samples = []
    else:
        print("eval needs --data, or --queries (with or without --gallery)", file=sys.stderr)
        return 2
    classes = sorted({s.label for s in [*query_samples, *gallery_samples]})
    queries = load(query_samples, config.input_size, classes)
    gallery = load(gallery_samples, config.input_size, classes) if gallery_samples else None
    metrics = evaluate(embedder, queries, gallery, seed=args.seed)
    result = {
        "model": embedder.card.version if embedder.card else None,
        "gallery": len(gallery) if gallery is not None else 0,
        **metrics,
        "queries": len(queries),
    }
    print(json.dumps(result, indent=2))
    return 0


def run_quantize(args: argparse.Namespace) -> int:
    from model.calibration import calibrate_model_dir

    calibration = calibrate_model_dir(args.model, args.data, args.classes, args.images)
    path = calibration.save(args.model)
    print(json.dumps({"wrote": str(path), **calibration.summary()}, indent=2))
    return 0 if calibration.passes else 1


def run_report(args: argparse.Namespace) -> int:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("report needs matplotlib: pip install -e '.[dev]'", file=sys.stderr)
        return 2
    embedder = Embedder.from_dir(args.model)
    args.out.mkdir(parents=True, exist_ok=True)
    if embedder.card and embedder.card.history:
        plot_training_curve(embedder.card.history, args.out / "training_curve.png")
    plot_projection(embedder, args.data, args.classes, args.out / "projection.png")
    print(f"wrote figures to {args.out}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    try:
        from model.export import export_onnx

        path = export_onnx(args.model, args.out)
    except ImportError as exc:
        print(f"export needs onnx and onnxscript: pip install -e '.[dev]' ({exc})", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


def run_embed(args: argparse.Namespace) -> int:
    embedder = Embedder.from_dir(args.model, args.backend)
    status = 0
    for path in args.images:
        try:
            image = load_image_file(path, target_size=embedder.config.input_size)
        except (ImageDecodeError, OSError) as exc:
            print(f"{path}: {exc}", file=sys.stderr)
            status = 1
            continue
        vector = embedder.embed_images([image])[0]
        print(json.dumps({"file": str(path), "vector": [round(float(x), 6) for x in vector]}))
    return status


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
