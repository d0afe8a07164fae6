"""Everything the lifespan builds, in one object on ``app.state.services``."""

from __future__ import annotations

import logging
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch

from app.observability import Metrics
from app.services.batching import InferenceBatcher
from app.services.catalog import Catalog
from app.services.imports import Imports
from app.services.models import ModelService
from app.services.runtime import Runtime
from app.services.seed import seed_gallery
from app.services.training import TrainingJobs
from app.settings import Settings
from app.store.database import Database, open_database
from app.store.images import ImageStore
from app.store.index import IndexPolicy

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    db: Database
    runtime: Runtime
    catalog: Catalog
    models: ModelService
    jobs: TrainingJobs
    imports: Imports
    metrics: Metrics

    @classmethod
    def build(cls, settings: Settings, metrics: Metrics) -> Services:
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        data = settings.data_dir
        data.mkdir(parents=True, exist_ok=True)
        db = open_database(settings.database_url, data, settings.database_wait_s)
        images = ImageStore(data / "images")
        batcher = InferenceBatcher(
            settings.batch_max_images,
            settings.batch_wait_ms / 1000,
            on_batch=metrics.batch_size.observe,
        )
        policy = IndexPolicy(
            settings.index_kind,
            settings.ann_threshold,
            settings.ivf_nprobe,
            ef_search=settings.hnsw_ef_search,
        )
        runtime = Runtime(settings.max_image_pixels, batcher, policy)
        catalog = Catalog(db, images, runtime, settings.cluster_sample)
        models = ModelService(
            db, images, runtime, catalog, data / "models", data / "index", settings.backend
        )
        max_archive_bytes = int(settings.max_archive_mb * 1024 * 1024)
        jobs = TrainingJobs(
            db,
            images,
            models,
            data / "jobs",
            settings.train_roots,
            max_archive_bytes,
            settings.train_procs,
        )
        imports = Imports(db, catalog, runtime, max_archive_bytes)
        return cls(settings, db, runtime, catalog, models, jobs, imports, metrics)

    def start(self) -> None:
        """Blocking start-up work; the lifespan runs it in a worker thread."""
        self.jobs.recover()
        self.imports.recover()
        self.models.start(self.settings.model_dir)
        backend = self.runtime.snapshot.embedder.backend
        if backend.startswith("openvino") and not self.settings.torch_threads:
            # OpenVINO runs the network on threads of its own; PyTorch only copies small
            # tensors here, and its OpenMP threads, spinning after each copy, would take the
            # cores OpenVINO is about to use (4 ms of every 11 ms batch, measured).
            torch.set_num_threads(1)
        log.info("inference backend: %s", backend)
        if self.db.shared:  # other workers may activate a model: follow them
            self.models.follow(self.settings.model_poll_s)
        if self.settings.seed_dir is not None:
            self._seed(self.settings.seed_dir)

    def _seed(self, seed_dir: Path) -> None:
        """Seeds an empty store; of workers starting together, the one that claims it."""
        claim = self.db.claim("seed")
        if claim is None:
            return
        try:
            if self.catalog.count() == 0:
                added = seed_gallery(self.catalog, self.runtime, seed_dir)
                log.info("seeded the empty store with %d images from %s", added, seed_dir)
        finally:
            claim.release()

    def stop(self) -> None:
        """Stops every part in turn, each even if one before it failed (a database lost on
        the way must not leave the batcher's thread or the connection pool open); a failure
        is raised once every part has stopped."""
        with ExitStack() as stack:  # runs its callbacks last in, first out
            stack.callback(self.db.close)
            stack.callback(self.runtime.shutdown)
            stack.callback(self.models.save_index)
            stack.callback(self.imports.shutdown)
            stack.callback(self.jobs.shutdown)
            stack.callback(self.models.stop_following)
