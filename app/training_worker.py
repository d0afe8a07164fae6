"""The training job's process: ``python -m app.training_worker SPEC.json``.

The service never trains in its own process. It starts this one, reads one JSON event per
line from its standard output, and stops it with SIGTERM (the worker then ends at the next
step, exit code 3). The spec names the recipe, the output folder and, for ``if_better``
activation, the active model, which is evaluated on the same held-out split as the new one.
The new model is then calibrated for int8 on its training split and measured on its held-out
split, so that ``auto`` can serve it with the int8 backend when it keeps fp32's quality.
Only ``model`` is imported here.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
from pathlib import Path
from typing import Any

from model.calibration import calibrate_model_dir
from model.checkpoint import load_model
from model.embedding import Embedder
from model.training import TrainingCancelled, TrainRecipe, evaluate, prepare_data, subset, train

EXIT_CANCELLED = 3


def emit(event: dict[str, Any]) -> None:
    print(json.dumps(event), flush=True)


def quantize(model_dir: Path, recipe: TrainRecipe) -> dict[str, Any]:
    """Writes the new model's int8 calibration; a failure leaves the model without one
    (it is then served by a float backend) rather than failing the job."""
    try:
        # NNCF draws progress bars on standard output, which carries this worker's events
        with contextlib.redirect_stdout(sys.stderr):
            calibration = calibrate_model_dir(
                model_dir, [Path(d) for d in recipe.data], recipe.classes
            )
    except Exception as exc:  # an optional speed-up must not cost the user their model
        return {"event": "int8", "error": f"{type(exc).__name__}: {exc}"}
    calibration.save(model_dir)
    return {"event": "int8", **calibration.summary()}


def main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    recipe = TrainRecipe(**spec["recipe"])
    stop = {"requested": False}

    def on_term(signum: int, frame: object) -> None:
        stop["requested"] = True

    signal.signal(signal.SIGTERM, on_term)
    try:
        data = prepare_data(recipe)
        card = train(
            recipe,
            Path(spec["out"]),
            on_event=emit,
            should_stop=lambda: stop["requested"],
            datasets=data,
        )
        baseline = spec.get("baseline")
        if baseline and len(data.val):
            net, base_card = load_model(Path(baseline))
            base_data = data
            if base_card.config.input_size != recipe.input_size:
                resized = {**spec["recipe"], "input_size": base_card.config.input_size}
                base_data = prepare_data(TrainRecipe(**resized))
            gallery = subset(base_data.train, recipe.eval_gallery_limit, recipe.seed)
            metrics = evaluate(Embedder(net), base_data.val, gallery, clusters=False)
            emit({"event": "baseline", "version": base_card.version, "metrics": metrics})
        if len(data.val):
            emit(quantize(Path(spec["out"]), recipe))
        emit({"event": "finished", "version": card.version})
    except TrainingCancelled:
        emit({"event": "cancelled"})
        return EXIT_CANCELLED
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
