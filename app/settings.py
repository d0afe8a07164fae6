"""The service's settings: environment variables with the ``EMBED_`` prefix."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from model.backends import BackendChoice

SHIPPED_MODEL_DIR = Path(__file__).resolve().parent.parent / "model" / "default"


class Settings(BaseSettings):
    """Read once when the app is built; see the README's configuration table."""

    model_config = SettingsConfigDict(env_prefix="EMBED_", extra="ignore")

    data_dir: Path = Path("./data")
    # postgresql://...: the shared store (several workers and replicas); unset: SQLite + FAISS
    database_url: str | None = None
    database_wait_s: float = Field(default=30.0, ge=0)  # for the server at start-up
    model_poll_s: float = Field(default=1.0, gt=0)  # how often workers check the active model
    model_dir: Path = SHIPPED_MODEL_DIR
    api_key: str | None = None
    train_roots: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    max_upload_mb: float = Field(default=32.0, gt=0)
    max_files: int = Field(default=64, ge=1)
    max_concurrent_uploads: int = Field(default=16, ge=1)
    body_timeout_s: float = Field(default=120.0, gt=0)
    body_idle_timeout_s: float = Field(default=15.0, gt=0)
    header_timeout_s: float = Field(default=10.0, gt=0)
    max_connections: int = Field(default=1000, ge=1)
    max_image_pixels: int = Field(default=40_000_000, ge=1)
    max_k: int = Field(default=1000, ge=1)
    cluster_sample: int = Field(default=20_000, ge=2)
    backend: BackendChoice = "auto"
    torch_threads: int = Field(default=0, ge=0)
    batch_max_images: int = Field(default=64, ge=1, le=1024)
    batch_wait_ms: float = Field(default=2.0, ge=0, le=1000)
    index_kind: Literal["auto", "flat", "ivf"] = "auto"
    ann_threshold: int = Field(default=200_000, ge=1)
    ivf_nprobe: int = Field(default=32, ge=1, le=65536)
    hnsw_ef_search: int = Field(default=100, ge=1, le=1000)
    seed_dir: Path | None = None
    max_archive_mb: float = Field(default=512.0, gt=0)
    train_procs: int = Field(default=1, ge=1, le=256)

    @field_validator("train_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: object) -> object:
        if isinstance(value, str):
            return [Path(p) for p in value.split(",") if p.strip()]
        return value

    @field_validator("database_url", mode="before")
    @classmethod
    def _check_database_url(cls, value: object) -> object:
        if value == "":
            return None
        if isinstance(value, str) and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("EMBED_DATABASE_URL must be a postgresql:// URL")
        return value

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)
