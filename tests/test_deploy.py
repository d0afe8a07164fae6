"""What can be checked of the Docker deployment without a Docker engine."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def test_dockerfile_lints_clean() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or "hadolint"
    result = subprocess.run(
        [hadolint, "--failure-threshold", "info", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_as_non_root_with_a_health_check() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert text.count("FROM ") == 2  # multi-stage
    assert "download.pytorch.org/whl/cpu" in text
    assert "USER 10001" in text and "HEALTHCHECK" in text and "/readyz" in text
    assert 'VOLUME ["/data"]' in text


def test_compose_file() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    service = compose["services"]["embed"]
    assert service["build"] == "."
    assert "8000:8000" in service["ports"]
    assert "embed-data:/data" in service["volumes"] and "embed-data" in compose["volumes"]
    assert service["restart"] == "unless-stopped"
    assert "/readyz" in " ".join(service["healthcheck"]["test"])
    assert service["environment"]["EMBED_DATA_DIR"] == "/data"


def debian_docker_compose() -> str:
    """Debian's docker-compose, which validates a compose file without a Docker engine;
    installed on first use where we are root with apt (as on a fresh machine)."""
    found = shutil.which("docker-compose")
    if not found and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "docker-compose"], check=True, env=env)
        found = shutil.which("docker-compose")
    if not found:
        pytest.fail("this test needs Debian's docker-compose package")
    return found


@pytest.mark.parametrize("name", ["docker-compose.yml", "docker-compose.scale.yml"])
def test_compose_files_are_valid(name: str) -> None:
    result = subprocess.run(
        [debian_docker_compose(), "-f", str(ROOT / name), "config", "--quiet"],
        cwd=ROOT,
        env={**os.environ, "EMBED_DB_PASSWORD": "test"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_scale_compose_runs_replicas_on_postgres_behind_a_balancer() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.scale.yml").read_text())
    services = compose["services"]
    assert services["postgres"]["image"].startswith("pgvector/pgvector:")
    embed = services["embed"]
    assert embed["environment"]["EMBED_DATABASE_URL"].startswith("postgresql://embed:")
    assert "@postgres:5432/embed" in embed["environment"]["EMBED_DATABASE_URL"]
    assert embed["deploy"]["replicas"] >= 2 and "--workers" in embed["command"]
    assert "ports" not in embed  # only the balancer is published
    assert embed["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "embed-data:/data" in embed["volumes"]  # one data folder for every replica
    balancer = services["balancer"]
    assert "8000:8000" in balancer["ports"]
    config = (ROOT / "deploy" / "nginx.conf").read_text()
    assert "server embed:8000 resolve;" in config and "proxy_pass http://embed;" in config
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'pip install ".[postgres]"' in dockerfile  # the image can use the shared store


def test_the_images_install_step_packages_model_and_page(tmp_path: Path) -> None:
    """The Dockerfile's `pip install .` (the torch step needs PyTorch's CPU index, which is
    out of reach here): the built package carries the default model and the web page, and
    the service finds them from site-packages."""
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    assert (target / "model" / "default" / "model.safetensors").is_file()
    for name in ("int8.json", "int8.xml", "int8.bin"):  # the int8 model and its manifest
        assert (target / "model" / "default" / name).is_file()
    assert (target / "app" / "ui" / "index.html").is_file()
    code = (
        "from app.settings import SHIPPED_MODEL_DIR; from model.checkpoint import load_model;"
        "print(SHIPPED_MODEL_DIR); print(load_model(SHIPPED_MODEL_DIR)[1].version)"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    model_dir, version = result.stdout.split()
    assert (
        model_dir.startswith(str(target))
        and version in (ROOT / "model/default/README.md").read_text()
    )
