"""Shared fixtures: where the real images are, and small files made for a test."""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pillow_heif
import pytest
from PIL import Image

from model.data import content_fraction

if TYPE_CHECKING:
    from tests.postgres import PostgresForTests
    from tests.server import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("EMBED_TEST_DATA", ROOT.parent / "shared" / "data")).resolve()
CIFAR = SHARED_DATA / "cifar10" / "train"
PHOTOS = SHARED_DATA / "photos" / "train"
DEFAULT_MODEL = ROOT / "model" / "default"


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, two test processes share the cores: each computes on one thread
    (and so do the servers and training processes it starts), or their OpenMP threads spin
    against each other's and every computation runs several times slower. The commands'
    backend measurements are remembered in a cache folder of the session's own, not the
    user's."""
    os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="triplet-embed-tests-")
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(os.environ["XDG_CACHE_HOME"], ignore_errors=True)


@pytest.fixture(scope="session")
def cifar() -> Path:
    if not CIFAR.is_dir():
        pytest.fail(f"the shared data set is missing: {CIFAR}")
    return CIFAR


@pytest.fixture(scope="session")
def photos() -> Path:
    if not PHOTOS.is_dir():
        pytest.fail(f"the shared data set is missing: {PHOTOS}")
    return PHOTOS


def held_out(root: Path, label: str, count: int, val_fraction: float = 0.1) -> list[Path]:
    """The first ``count`` images of ``root/label`` that the shipped model's training split
    (content hash, seed 0) held out: images it never trained on."""
    chosen = []
    for path in sorted((root / label).iterdir()):
        if content_fraction(path, 0) < val_fraction:
            chosen.append(path)
            if len(chosen) == count:
                break
    return chosen


def image_bytes(
    fmt: str = "PNG", size: tuple[int, int] = (40, 30), mode: str = "RGB", **save: object
) -> bytes:
    color: object = (200, 30, 60) if mode in ("RGB", "RGBA") else 128
    if mode == "CMYK":
        color = (10, 200, 30, 5)
    image = Image.new(mode, size, color)  # type: ignore[arg-type]
    if fmt == "HEIF":
        pillow_heif.register_heif_opener()  # Pillow writes HEIC through pillow-heif
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresForTests]:
    """One real PostgreSQL server (with pgvector) for the whole session."""
    from tests.postgres import PostgresForTests

    server = PostgresForTests()
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresForTests) -> Iterator[str]:
    """A fresh database on the session's PostgreSQL server, dropped after the test (after
    the test's servers have stopped: see ``server_process``)."""
    url = postgres_server.new_database()
    yield url
    postgres_server.drop_database(url)


@pytest.fixture
def server_process(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., ServerProcess]]:
    """Starts real server processes (``start(env=..., name=..., data_dir=..., args=...,
    measure_backends=...)``: see :class:`ServerProcess`);
    each has its own data directory under the test's ``tmp_path`` unless given one (workers
    share theirs), and logs to ``<name>.log`` there. All are stopped after the test, before
    the test's ``postgres_url`` database is dropped, whatever order the test names them in."""
    from tests.server import ServerProcess

    if "postgres_url" in request.fixturenames:
        # Fixtures end in reverse order of their start: a database made first goes last.
        # Dropped under running workers, it stalls their shutdown (a job's end unrecorded).
        request.getfixturevalue("postgres_url")

    started: list[ServerProcess] = []

    def start(
        env: dict[str, str] | None = None,
        name: str = "server",
        data_dir: Path | None = None,
        args: list[str] | None = None,
        measure_backends: bool = False,
    ) -> ServerProcess:
        data_dir = data_dir or tmp_path / name / "data"
        server = ServerProcess(data_dir, tmp_path / f"{name}.log", env, args, measure_backends)
        server.data_dir.parent.mkdir(parents=True, exist_ok=True)
        started.append(server.start())
        return server

    yield start
    for server in started:
        server.stop()
