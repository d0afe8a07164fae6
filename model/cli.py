"""Command-line subcommands of the ML core: ``train``, ``eval``, ``quantize``, ``report``,
``export``, ``embed``.

``app.cli`` adds ``serve`` and is the ``triplet-embed`` entry point; keeping these here lets
the ML core run without the web service.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, get_args

from tqdm import tqdm

from model import distributed
from model.backends import BACKENDS, bf16_native
from model.checkpoint import read_card, write_card
from model.data import discover, load, split
from model.embedding import Embedder
from model.preprocessing import ImageDecodeError, decode_prepared
from model.quantization import IR_FILES, MANIFEST_FILE
from model.recipe import NETWORK_FIELDS, TrainRecipe
from model.report import (
    evaluate_per_root,
    near_duplicates_per_root,
    plot_projection,
    plot_training_curve,
)
from model.training import check_device, check_init_from, evaluate, train


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
        help="inference backend (default: the fastest this machine and model run safely, "
        "measured once and remembered in ~/.cache/triplet-embed)",
    )


def selection_cache() -> Path | None:
    """Where ``auto`` remembers its measurement for the commands, as the service does in its
    data folder (by CPU, library versions and model): the user's cache folder, so that
    embedding one image does not time five backends first. None (measure every time) for a
    user without a home folder."""
    base = os.environ.get("XDG_CACHE_HOME")
    if not base:
        try:
            base = str(Path.home() / ".cache")
        except RuntimeError:  # no HOME and no entry in the user database
            return None
    return Path(base) / "triplet-embed" / "backend-selection.json"


def add_subcommands(sub: Any) -> None:
    """Registers the ML core's subcommands on an ``argparse`` subparsers object."""
    t = sub.add_parser("train", help="train an embedding model on folders of labelled images")
    add_recipe_options(t)
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
    e.add_argument("--val-fraction", type=float, help="default: the model's own training recipe's")
    e.add_argument("--seed", type=int, help="default: the model's own training recipe's")
    e.add_argument(
        "--per-root",
        action="store_true",
        help="with --data: split all roots together, report each root's held-out images",
    )
    e.add_argument(
        "--record",
        action="store_true",
        help="with --per-root/--near-duplicates: store the figures in the model's card",
    )
    e.add_argument(
        "--flip-tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="average each image's embedding with its mirror's (default: the model's setting)",
    )
    e.add_argument(
        "--near-duplicates",
        action="store_true",
        help="with --data: recall@1 of edited copies of the held-out images among them all",
    )
    _add_backend(e)
    e.set_defaults(handler=run_eval)

    q = sub.add_parser(
        "quantize",
        help="calibrate int8 on the model's training split, measure it on the held-out split "
        "(needs the 'quantize' extra)",
    )
    q.add_argument(
        "--model",
        type=Path,
        required=True,
        help="model directory (gets int8.json, int8.xml, int8.bin)",
    )
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


def _oversample(value: str) -> tuple[str, float]:
    root, _, factor = value.rpartition("=")
    try:
        return root, float(factor)
    except ValueError:
        raise argparse.ArgumentTypeError("--oversample takes FOLDER=FACTOR") from None


def add_recipe_options(parser: argparse.ArgumentParser) -> None:
    """One option per :class:`TrainRecipe` field, with its default, choices and help."""
    special: dict[str, dict[str, Any]] = {
        "data": {"type": Path, "action": "append", "required": True},
        "classes": {"type": _classes},
        "oversample": {"type": _oversample, "action": "append", "metavar": "FOLDER=FACTOR"},
        "pretrained": {"type": Path},
        "init_from": {"type": Path},
        "bf16": {
            "action": argparse.BooleanOptionalAction,
            "default": None,
            "help": "bf16 autocast and channels-last (default: on where the CPU has native bf16)",
        },
    }
    for name, info in TrainRecipe.model_fields.items():
        flag = "--" + name.replace("_", "-")
        options: dict[str, Any] = {"help": info.description}
        if name in special:
            options.update(special[name])
        else:
            choices = get_args(info.annotation)
            literal = [c for c in choices if isinstance(c, str)]
            if literal and all(isinstance(c, str) for c in choices):
                options["choices"] = literal
            else:
                number = [c for c in (choices or (info.annotation,)) if c in (int, float)]
                options["type"] = number[0] if number else str
            options["default"] = info.get_default(call_default_factory=True)
        if name in NETWORK_FIELDS:
            options["help"] = f"default: the --init-from model's, else {options['default']}"
            options["default"] = None
        parser.add_argument(flag, **options)


def recipe_from_args(args: argparse.Namespace) -> TrainRecipe:
    """The recipe the options describe. A fine-tuning run takes the network fields it does
    not name (stem, input size, embedding size) from the model it starts from."""
    start = read_card(args.init_from).config if args.init_from else None
    values: dict[str, Any] = {}
    for name in TrainRecipe.model_fields:
        value = getattr(args, name)
        if name in NETWORK_FIELDS and value is None:
            if start is None:
                continue  # the recipe's own default
            value = getattr(start, name)
        if isinstance(value, Path):
            value = str(value)
        elif name == "data":
            value = [str(v) for v in value]
        elif name == "oversample":
            value = dict(value or [])
        elif name == "bf16" and value is None:
            value = bf16_native()
        values[name] = value
    return TrainRecipe(**values)


def run_train(args: argparse.Namespace) -> int:
    try:
        recipe = recipe_from_args(args)
        check_device(recipe)
        check_init_from(recipe)
    except ValueError as exc:  # pydantic's ValidationError is one too
        print(f"invalid recipe: {exc}", file=sys.stderr)
        return 2

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

    # under torchrun, each process is one rank of a distributed run; alone, the only one
    processes = distributed.start()
    try:
        card = train(recipe, args.out, on_event=report, processes=processes)
    finally:
        distributed.stop(processes)
    if processes.main:
        print(json.dumps({"version": card.version, "out": str(args.out), "metrics": card.metrics}))
    return 0


def run_eval(args: argparse.Namespace) -> int:
    embedder = Embedder.from_dir(args.model, args.backend, args.flip_tta, selection_cache())
    print(f"backend: {embedder.backend}, flip TTA: {embedder.flip_tta}", file=sys.stderr)
    config = embedder.config
    recipe = embedder.card.recipe if embedder.card else {}
    val_fraction = (
        args.val_fraction if args.val_fraction is not None else recipe.get("val_fraction", 0.1)
    )
    seed = args.seed if args.seed is not None else recipe.get("seed", 0)
    version = embedder.card.version if embedder.card else None
    if args.data and (args.per_root or args.near_duplicates):
        result: dict[str, Any] = {"model": version, "val_fraction": val_fraction, "seed": seed}
        if args.per_root:
            result["per_root"] = evaluate_per_root(
                embedder, args.data, args.classes, val_fraction, seed, None, args.max_per_class
            )
        if args.near_duplicates:
            result["near_duplicates"] = near_duplicates_per_root(
                embedder, args.data, args.classes, val_fraction, seed, args.max_per_class
            )
        if args.record and embedder.card is not None:
            record_in_card(args.model, embedder, result, args.data, args.classes)
        print(json.dumps(result, indent=2))
        return 0
    if args.data:
        samples = discover(args.data, args.classes, args.max_per_class, seed)
        gallery_samples, query_samples = split(samples, val_fraction, seed)
    elif args.queries and args.gallery:
        query_samples = discover(args.queries, args.classes, args.max_per_class, seed)
        gallery_samples = discover(args.gallery, args.classes, args.max_per_class, seed)
    elif args.queries:
        query_samples = discover(args.queries, args.classes, args.max_per_class, seed)
        gallery_samples = []
    else:
        print("eval needs --data, or --queries (with or without --gallery)", file=sys.stderr)
        return 2
    classes = sorted({s.label for s in [*query_samples, *gallery_samples]})
    queries = load(query_samples, config.input_size, classes)
    gallery = load(gallery_samples, config.input_size, classes) if gallery_samples else None
    metrics = evaluate(embedder, queries, gallery, seed=seed)
    result = {
        "model": version,
        "gallery": len(gallery) if gallery is not None else 0,
        **metrics,
        "queries": len(queries),
    }
    print(json.dumps(result, indent=2))
    return 0


def dataset_name(root: Path, classes: list[str] | None) -> str:
    """``../shared/data/cifar10/train`` with cats and birds -> ``cifar10_cat_bird``."""
    return "_".join([root.parent.name, *(classes or ["all"])])


def record_in_card(
    model_dir: Path,
    embedder: Embedder,
    result: dict[str, Any],
    roots: list[Path],
    classes: list[str] | None,
) -> None:
    """Stores evaluation figures in ``model.json`` under ``metrics.per_dataset`` and
    ``metrics.near_duplicates``, each data set named by :func:`dataset_name`, and the flip
    test-time augmentation setting they were measured with, which serving then uses."""
    assert embedder.card is not None
    card = embedder.card
    card.config = dataclasses.replace(card.config, flip_tta=embedder.flip_tta)
    names = {str(root): dataset_name(root, classes) for root in roots}
    if "per_root" in result:
        card.metrics["per_dataset"] = {
            names[root]: metrics for root, metrics in result["per_root"].items()
        }
    if "near_duplicates" in result:
        card.metrics["near_duplicates"] = {
            edit: {names.get(group, group): value for group, value in groups.items()}
            for edit, groups in result["near_duplicates"].items()
        }
    write_card(card, model_dir)


def run_quantize(args: argparse.Namespace) -> int:
    from model.calibration import calibrate_model_dir

    try:
        import nncf  # noqa: F401
    except ImportError:
        print(missing_extra("quantize"), file=sys.stderr)
        return 2
    int8 = calibrate_model_dir(args.model, args.data, args.classes, args.images).save(args.model)
    wrote = [str(args.model / name) for name in (MANIFEST_FILE, *IR_FILES)]
    print(json.dumps({"wrote": wrote, **int8.summary()}, indent=2))
    return 0 if int8.passes else 1


def missing_extra(extra: str) -> str:
    """What to say when a command needs an optional extra that is not installed."""
    return f"this command needs the '{extra}' extra: pip install 'triplet-embed[{extra}]'"


def run_report(args: argparse.Namespace) -> int:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print(missing_extra("report"), file=sys.stderr)
        return 2
    embedder = Embedder.from_dir(args.model)
    args.out.mkdir(parents=True, exist_ok=True)
    if embedder.card and embedder.card.history:
        plot_training_curve(embedder.card.history, args.out / "training_curve.png")
        start = embedder.card.metrics.get("init", {})
        if start.get("history"):
            plot_training_curve(start["history"], args.out / "pretraining_curve.png")
    recipe = embedder.card.recipe if embedder.card else {}
    plot_projection(
        embedder,
        args.data,
        args.classes,
        args.out / "projection.png",
        recipe.get("val_fraction", 0.1),
        recipe.get("seed", 0),
    )
    print(f"wrote figures to {args.out}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    try:
        from model.export import export_onnx

        path = export_onnx(args.model, args.out)
    except ImportError as exc:
        print(f"{missing_extra('export')} ({exc})", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


def run_embed(args: argparse.Namespace) -> int:
    embedder = Embedder.from_dir(args.model, args.backend, selection_cache=selection_cache())
    status = 0
    for path in args.images:
        try:
            pixels = decode_prepared(path.read_bytes(), embedder.config.input_size)[0]
        except (ImageDecodeError, OSError) as exc:
            print(f"{path}: {exc}", file=sys.stderr)
            status = 1
            continue
        vector = embedder.embed_tensors(pixels[None])[0]
        print(json.dumps({"file": str(path), "vector": [round(float(x), 6) for x in vector]}))
    return status


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
