"""The training job's worker process, run in this process: cancels honoured in every phase."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from app import training_worker
from model.recipe import TrainRecipe
from tests.conftest import CIFAR

pytestmark = pytest.mark.slow


def test_a_cancel_during_calibration_ends_the_job_cancelled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = TrainRecipe(
        data=[str(CIFAR)], classes=["bird", "cat"], max_per_class=40, epochs=1, batch_size=16
    )
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"recipe": recipe.to_dict(), "out": str(tmp_path / "model")}))
    calibrate = training_worker.calibrate_model_dir
    calls = []

    def cancelled_while_calibrating(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        # the worker's own handler of the SIGTERM that DELETE /train/{id} sends, called
        # directly: a real SIGTERM to the test process once ended a test-runner process
        on_sigterm = signal.getsignal(signal.SIGTERM)
        assert callable(on_sigterm), "the worker handles SIGTERM"
        on_sigterm(signal.SIGTERM, None)
        return calibrate(*args, **kwargs)

    monkeypatch.setattr(training_worker, "calibrate_model_dir", cancelled_while_calibrating)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        code = training_worker.main(str(spec))
    finally:
        signal.signal(signal.SIGTERM, previous)
    events = [json.loads(line)["event"] for line in capsys.readouterr().out.splitlines()]
    assert calls, "calibration never ran"
    assert code == training_worker.EXIT_CANCELLED
    assert events[-1] == "cancelled" and "finished" not in events


def test_without_nncf_the_job_keeps_its_model_and_skips_int8(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NNCF is the 'quantize' extra: a service installed without it still trains; the new
    model is then served by a float backend."""
    monkeypatch.setitem(sys.modules, "nncf", None)  # as if the extra were not installed
    recipe = TrainRecipe(data=[str(CIFAR)], classes=["bird", "cat"])
    event = training_worker.quantize(tmp_path, recipe)
    assert event == {"event": "int8", "skipped": "NNCF is not installed (the 'quantize' extra)"}
    assert list(tmp_path.iterdir()) == []
