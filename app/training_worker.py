"""The training job's process: ``python -m app.training_worker SPEC.json``.

The service never trains in its own process. It starts this one, reads one JSON event per
line from its standard output, and stops it with SIGTERM (the worker then ends at the next
step, exit code 3). The spec names the recipe, the output folder and, for ``if_better``
activation, the active model, which is evaluated on the same held-out split as the new one.
The new model is then calibrated for int8 on its training split and measured on its held-out
split, so that ``auto`` can serve it with the int8 backend when it keeps fp32's quality. A
SIGTERM during those steps is honoured too: the worker exits with code 3 before "finished".
Only ``model`` is imported here.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Any

from model import distributed
from model.calibration import calibrate_model_dir
from model.checkpoint import load_model
from model.data import content_fraction, load
from model.embedding import Embedder
from model.recipe import TrainRecipe
from model.training import (
    Datasets,
    TrainingCancelled,
    evaluate,
    prepare_data,
    subset,
    subset_of,
    train,
)

EXIT_CANCELLED = 3


def emit(event: dict[str, Any]) -> None:
    print(json.dumps(event), flush=True)


def quantize(model_dir: Path, recipe: TrainRecipe) -> dict[str, Any]:
    """Writes the new model's int8 model; without NNCF (the ``quantize`` extra), or after
    a failure, the model has none (it is then served by a float backend) rather than the
    job failing."""
    try:
        import nncf  # noqa: F401
    except ImportError:
        return {"event": "int8", "skipped": "NNCF is not installed (the 'quantize' extra)"}
    try:
        int8 = calibrate_model_dir(model_dir, [Path(d) for d in recipe.data], recipe.classes)
        int8.save(model_dir)
    except Exception as exc:  # an optional speed-up must not cost the user their model
        return {"event": "int8", "error": f"{type(exc).__name__}: {exc}"}
    return {"event": "int8", **int8.summary()}


def compare_with_active(
    new_dir: Path, active_dir: Path, recipe: TrainRecipe, data: Datasets
) -> dict[str, Any]:
    """Both models' retrieval metrics on the same images, none of which either trained on.

    The new model never trained on its own validation split. The active model's split is
    decided by content with its own seed and share (``model.data.split``), so of the new
    validation images only those that the active model's recipe holds out as well are used:
    such an image was validation for the active model if it saw it at all.
    """
    new_net, _ = load_model(new_dir)
    active_net, active_card = load_model(active_dir)
    active_recipe = active_card.recipe or {}
    active_seed = int(active_recipe.get("seed", 0))
    active_fraction = float(active_recipe.get("val_fraction", 0.0))
    fair = [
        i
        for i, path in enumerate(data.val.paths)
        if content_fraction(path, active_seed) < active_fraction
    ]
    result: dict[str, Any] = {"event": "baseline", "version": active_card.version}
    result["images"] = len(fair)
    if not fair:
        return result
    queries = subset_of(data.val, fair)
    gallery = subset(data.train, recipe.eval_gallery_limit, recipe.seed)
    result["candidate"] = evaluate(Embedder(new_net), queries, gallery, clusters=False)
    active_size = active_card.config.input_size
    if active_size != recipe.input_size:
        queries = load(queries.samples(), active_size, queries.classes)
        gallery = load(gallery.samples(), active_size, gallery.classes)
    result["metrics"] = evaluate(Embedder(active_net), queries, gallery, clusters=False)
    return result


def main(spec_path: str) -> int:
    """Under ``torchrun`` (``EMBED_TRAIN_PROCS`` > 1) every rank runs this; rank 0 alone
    reports, compares with the active model and calibrates int8."""
    spec = json.loads(Path(spec_path).read_text())
    recipe = TrainRecipe.model_validate(spec["recipe"])
    processes = distributed.start()
    stop = {"requested": False}

    def on_term(signum: int, frame: object) -> None:
        stop["requested"] = True

    def check_cancelled() -> None:
        if stop["requested"]:
            raise TrainingCancelled()

    signal.signal(signal.SIGTERM, on_term)
    try:
        data = prepare_data(recipe)
        check_cancelled()
        try:
            card = train(
                recipe,
                Path(spec["out"]),
                on_event=emit,
                should_stop=lambda: stop["requested"],
                datasets=data,
                processes=processes,
            )
        finally:
            distributed.stop(processes)
        if not processes.main:
            return 0
        # the steps after training check for a cancel between them: until the worker exits
        # with its model complete, a cancel is honoured
        baseline = spec.get("baseline")
        if baseline and len(data.val):
            check_cancelled()
            emit(compare_with_active(Path(spec["out"]), Path(baseline), recipe, data))
        if len(data.val):
            check_cancelled()
            emit(quantize(Path(spec["out"]), recipe))
        check_cancelled()
        emit({"event": "finished", "version": card.version})
    except TrainingCancelled:
        if processes.main:
            emit({"event": "cancelled"})
        return EXIT_CANCELLED
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
