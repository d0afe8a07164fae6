"""The command line: a command whose optional extra is missing says which one to install; a
recipe this machine cannot run is refused before any work."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest
import torch

import model.backends
from app.cli import build_parser, main
from model.cli import recipe_from_args, selection_cache
from tests.conftest import CIFAR, DEFAULT_MODEL


@pytest.mark.parametrize(
    ("command", "module", "extra"),
    [
        (
            ["report", "--model", str(DEFAULT_MODEL), "--data", ".", "--out", "OUT"],
            "matplotlib",
            "report",
        ),
        (["export", "--model", str(DEFAULT_MODEL), "--out", "OUT"], "onnx", "export"),
        (["quantize", "--model", "OUT", "--data", "."], "nncf", "quantize"),
    ],
)
def test_a_missing_extra_is_named(
    command: list[str],
    module: str,
    extra: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # as if the extra were not installed
    monkeypatch.delitem(sys.modules, "model.export", raising=False)
    command = [str(tmp_path / "out") if part == "OUT" else part for part in command]
    assert main(command) == 2
    assert f"pip install 'triplet-embed[{extra}]'" in capsys.readouterr().err


def test_the_client_names_its_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "httpx2", None)
    monkeypatch.delitem(sys.modules, "app.client", raising=False)
    with pytest.raises(ImportError, match=r"triplet-embed\[client\]"):
        import app.client  # noqa: F401


def test_training_on_a_gpu_the_machine_lacks_is_refused_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    missing = tmp_path / "no-such-folder"  # refused before the data is looked at
    command = ["train", "--data", str(missing), "--device", "cuda", "--out", str(tmp_path / "m")]
    assert main(command) == 2
    assert "device cuda: torch sees no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_fine_tuning_takes_the_network_from_its_starting_model(tmp_path: Path) -> None:
    """Without --stem, --input-size or --embedding-dim, a run that starts from the default
    model (64 px, ``imagenet`` stem) trains that network at that size; a run from scratch
    gets the recipe's defaults."""
    data = ["train", "--data", str(tmp_path), "--out", str(tmp_path / "m")]
    tuned = recipe_from_args(build_parser().parse_args([*data, "--init-from", str(DEFAULT_MODEL)]))
    assert (tuned.stem, tuned.input_size, tuned.embedding_dim) == ("imagenet", 64, 128)
    fresh = recipe_from_args(build_parser().parse_args(data))
    assert (fresh.stem, fresh.input_size, fresh.embedding_dim) == ("stride2", 32, 128)


def test_fine_tuning_with_another_network_shape_is_refused_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A recipe that names another stem or input size than its starting model's is refused:
    its images would be prepared at another size than the model serves at."""
    missing = tmp_path / "no-such-folder"  # refused before the data is looked at
    start = ["train", "--data", str(missing), "--init-from", str(DEFAULT_MODEL)]
    out = ["--out", str(tmp_path / "m")]
    assert main([*start, "--input-size", "32", *out]) == 2
    err = capsys.readouterr().err
    assert "input_size is 32, but the model in init_from has 64" in err
    assert main([*start, "--stem", "stride2", *out]) == 2
    assert "stem is 'stride2', but the model in init_from has 'imagenet'" in capsys.readouterr().err
    assert main(["train", "--data", str(missing), "--init-from", str(missing), *out]) == 2
    assert f"no model.json in {missing}" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_a_missing_model_or_data_folder_is_one_line_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-such-folder"
    assert main(["eval", "--model", str(missing), "--data", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"triplet-embed eval: no model.json in {missing}"
    assert main(["embed", "--model", str(missing), str(tmp_path / "a.jpg")]) == 2
    assert "no model.json" in capsys.readouterr().err
    assert main(["train", "--data", str(missing), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"triplet-embed train: dataset folder not found: {missing}"
    (tmp_path / "cat").mkdir()
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "m")]) == 2
    assert "training needs at least two classes with images" in capsys.readouterr().err


@pytest.mark.slow
def test_the_commands_measure_the_backends_once_per_machine(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``auto`` remembers its measurement in the user's cache folder, so the next ``embed``
    starts without timing five backends."""
    monkeypatch.setattr(model.backends, "_measured", {})  # as in a fresh process
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    image = str(sorted((CIFAR / "cat").iterdir())[0])
    assert main(["embed", "--model", str(DEFAULT_MODEL), image]) == 0
    cache = selection_cache()
    assert cache == tmp_path / "cache" / "triplet-embed" / "backend-selection.json"
    (entry,) = json.loads(cache.read_text()).values()
    assert entry["how"] == "measured" and entry["backend"] in model.backends.BACKENDS
    monkeypatch.setattr(model.backends, "_measured", {})
    with caplog.at_level(logging.INFO, logger="model.backends"):
        assert main(["embed", "--model", str(DEFAULT_MODEL), image]) == 0
    assert f"backend {entry['backend']}, as measured before" in caplog.text
    assert "fastest of" not in caplog.text
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["file"] == image


def test_a_cache_that_cannot_be_written_costs_only_the_next_measurement(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "file").write_text("")
    cache = tmp_path / "file" / "backend-selection.json"  # under a file: cannot be made
    model.backends._remember(cache, "key", model.backends.Selection("torch-fp32", "measured"))
    assert "could not remember the backend measurement" in caplog.text
    assert model.backends._remembered(None, "key") is not None  # this process still knows


def test_a_user_without_a_home_folder_measures_every_time(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_home() -> Path:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setattr(Path, "home", no_home)
    assert selection_cache() is None
    assert build_parser().parse_args(["serve"]).command == "serve"  # the parser still builds
