"""The command line: a command whose optional extra is missing says which one to install; a
recipe this machine cannot run is refused before any work."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from app.cli import main
from tests.conftest import DEFAULT_MODEL


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


def test_fine_tuning_with_another_network_shape_is_refused_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The default model is 64 px with the ``imagenet`` stem: a recipe that starts from it
    must say the same, or its images would be prepared at another size than it serves."""
    missing = tmp_path / "no-such-folder"  # refused before the data is looked at
    start = ["train", "--data", str(missing), "--init-from", str(DEFAULT_MODEL)]
    out = ["--out", str(tmp_path / "m")]
    assert main([*start, "--stem", "imagenet", *out]) == 2  # the recipe's default size, 32
    err = capsys.readouterr().err
    assert "input_size is 32, but the model in init_from has 64" in err
    assert main([*start, "--input-size", "64", *out]) == 2  # the recipe's default stem
    assert "stem is 'stride2', but the model in init_from has 'imagenet'" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
