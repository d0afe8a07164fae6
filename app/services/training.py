"""Training jobs: one at a time, each in its own process (``app.training_worker``).

A job's dataset is the stored items (exported as class folders of links to the stored
images), a folder under one of ``EMBED_TRAIN_ROOTS``, or an uploaded zip of class folders
extracted with every path, link and size checked. By default a job fine-tunes the active
model. When the worker succeeds the new model is registered as a version and, per the
job's ``activate`` policy, activated (``if_better``: its held-out precision@1 beats the
active model's on the same split).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from app.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    NotReady,
    ServiceError,
)
from app.services.archives import ClassFolderArchive
from app.services.idempotency import as_service_error, replay_if_done
from app.services.models import ModelService
from app.store.database import AlreadyDone, Claim, Database, IdempotencyKey, KeyReused
from app.store.images import ImageStore
from app.training_worker import EXIT_CANCELLED
from model.backends import bf16_native
from model.data import IMAGE_SUFFIXES
from model.recipe import TUNABLE_FIELDS, TrainRecipe

log = logging.getLogger(__name__)

FINISHED = ("succeeded", "failed", "cancelled")
TRAINING = "training"  # the claim the worker running a job holds: one job at a time


MIN_IMAGES_PER_LABEL = 5


def check_class_sizes(root: Path, error: type[ServiceError] = Conflict) -> Path:
    """Refuses, before any job starts, data too small to split and train on: a conflict with
    what is stored (items, a server folder), or ``error`` for an uploaded archive."""
    sizes = {
        d.name: sum(1 for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        for d in root.iterdir()
        if d.is_dir()
    }
    usable = {name: n for name, n in sizes.items() if n >= MIN_IMAGES_PER_LABEL}
    if len(usable) < 2:
        raise error(
            f"training needs at least {MIN_IMAGES_PER_LABEL} images of each of two labels; "
            f"found {dict(sorted(sizes.items()))}"
        )
    return root


def beats_active(comparison: dict[str, Any]) -> bool:
    """``if_better``: the new model's held-out precision@1 beats the active model's on the
    same images, none of which either trained on. No such images, or a model that was not
    evaluated, is never better."""
    new = comparison.get("candidate", {}).get("precision_at_1")
    old = comparison.get("metrics", {}).get("precision_at_1")
    return comparison.get("images", 0) > 0 and new is not None and old is not None and new > old


class TrainingJobs:
    def __init__(
        self,
        db: Database,
        images: ImageStore,
        models: ModelService,
        jobs_dir: Path,
        train_roots: list[Path],
        max_archive_bytes: int,
        procs: int = 1,
    ) -> None:
        self.db = db
        self.procs = procs
        self.images = images
        self.models = models
        self.jobs_dir = jobs_dir
        self.train_roots = [root.resolve() for root in train_roots]
        self.max_archive_bytes = max_archive_bytes
        self._lock = threading.Lock()
        self._process: subprocess.Popen[str] | None = None
        self._job_id: str | None = None
        self._claim: Claim | None = None
        self._cancel_requested = False
        self._monitor: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------------

    def recover(self) -> None:
        """Marks jobs that a previous server process left unfinished as failed: those no
        worker holds the training claim for (a shared store releases a dead worker's)."""
        claim = self.db.claim(TRAINING)
        if claim is None:  # another worker is running a job
            return
        try:
            self._fail_unfinished("interrupted by a server restart")
        finally:
            claim.release()

    def _fail_unfinished(self, reason: str) -> None:
        for job in self.db.jobs():
            if job["status"] not in FINISHED:
                self.db.update_job(job["job_id"], status="failed", error=reason)

    def _fail_orphans(self, jobs: list[dict[str, Any]]) -> bool:
        """Fails the unfinished jobs that no worker runs any more (their worker died, and
        with it its claim); returns whether it changed any."""
        with self._lock:
            running_here = self._job_id is not None
        if running_here or all(job["status"] in FINISHED for job in jobs):
            return False
        claim = self.db.claim(TRAINING)
        if claim is None:
            return False
        try:
            self._fail_unfinished("its server worker stopped")
        finally:
            claim.release()
        return True

    def shutdown(self) -> None:
        with self._lock:
            process = self._process
            self._cancel_requested = True
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
        if self._monitor is not None:
            self._monitor.join(timeout=30)

    # --- requests --------------------------------------------------------------------------

    def start(
        self,
        options: dict[str, Any],
        archive: bytes | None = None,
        idempotency: IdempotencyKey | None = None,
    ) -> dict[str, Any]:
        """Prepares the job's data set and starts its worker process. Under an
        ``idempotency`` key used before, nothing starts: :class:`Replayed` carries the job
        that the key's first request started.

        The job's slot is claimed under the lock, but the data set (an archive to extract,
        the stored items to export) is prepared outside it: a large archive does not hold up
        cancels, shutdown or a second request, which is told at once that a job is running."""
        replay_if_done(self.db, idempotency)
        job_id = uuid.uuid4().hex[:16]
        with self._lock:
            if self._job_id is not None:
                raise Conflict(f"training job {self._job_id} is still running")
            claim = self.db.claim(TRAINING)
            if claim is None:
                raise Conflict("a training job is running on another worker")
            self._claim = claim
            self._job_id = job_id  # claimed: preparing, no process yet
            self._cancel_requested = False
        job_dir = self.jobs_dir / job_id
        try:
            job_dir.mkdir(parents=True)
            dataset_dir = self._prepare_dataset(options["dataset"], archive, job_dir)
            spec = self._spec(options, dataset_dir, job_dir)
            try:
                self.db.add_job(job_id, options, idempotency)
            except (AlreadyDone, KeyReused) as exc:  # a concurrent retry recorded it first
                raise as_service_error(exc) from exc
            spec_path = job_dir / "spec.json"
            spec_path.write_text(json.dumps(spec))
            with self._lock:
                if self._cancel_requested:  # the server is shutting down
                    raise NotReady("the service is shutting down")
                self._process = self._launch(spec_path, job_dir)
                self.db.update_job(job_id, status="running")
                self._monitor = threading.Thread(
                    target=self._watch, args=(job_id, self._process, job_dir, options), daemon=True
                )
                self._monitor.start()
        except BaseException:
            shutil.rmtree(job_dir, ignore_errors=True)
            failed = {"status": "failed", "error": "the job could not start"}
            self._release(job_id, failed if self.db.jobs(job_id) else None)
            raise
        return self.get(job_id)

    def _release(self, job_id: str, outcome: dict[str, Any] | None) -> None:
        """Ends this process's job: records ``outcome``, its final fields (None: the job was
        never recorded), then frees its slot and its claim.

        All three happen under the lock, in this order. A client that sees the job finished
        can start the next one at once: this process's ``start`` waits for the lock. And no
        worker ever finds the job unfinished with its claim free, which would make it fail
        the job as orphaned (a status poll did that to a job that had succeeded, in the gap
        when the slot was freed first)."""
        with self._lock:
            try:
                if outcome is not None:
                    self.db.update_job(job_id, **outcome)
            finally:
                self._job_id = None
                self._process = None
                claim, self._claim = self._claim, None
                if claim is not None:
                    claim.release()

    def _launch(self, spec_path: Path, job_dir: Path) -> subprocess.Popen[str]:
        """The worker process; with ``procs`` > 1, ``torchrun`` running that many workers
        on this machine (rank 0 reports), each with an equal share of the cores."""
        command = [sys.executable, "-m", "app.training_worker", str(spec_path)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if self.procs > 1:
            launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
            command = [*launcher, f"--nproc_per_node={self.procs}", *command[1:]]
            env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // self.procs)))
        with (job_dir / "worker.log").open("w") as stderr:
            return subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env
            )

    def list(self) -> list[dict[str, Any]]:
        jobs = self.db.jobs()
        return self.db.jobs() if self._fail_orphans(jobs) else jobs

    def get(self, job_id: str) -> dict[str, Any]:
        jobs = self.db.jobs(job_id)
        if jobs and self._fail_orphans(jobs):
            jobs = self.db.jobs(job_id)
        if not jobs:
            raise NotFound(f"training job {job_id!r} not found")
        return jobs[0]

    def delete(self, job_id: str) -> dict[str, Any]:
        """Cancels the job if it is running (its worker stops at the next step) and forgets
        it; returns its last state. A model the job produced stays a model version."""
        job = self.get(job_id)
        with self._lock:
            if job_id == self._job_id and self._process is not None:
                self._cancel_requested = True
                self._process.terminate()
                job["status"] = "cancelled"
            elif job["status"] not in FINISHED:  # run by another worker, which stops it
                job["status"] = "cancelled"
            self.db.delete_job(job_id)  # under the lock: the job's monitor cannot be between
        return job

    # --- datasets --------------------------------------------------------------------------

    def _prepare_dataset(
        self, dataset: dict[str, Any], archive: bytes | None, job_dir: Path
    ) -> Path:
        source = dataset.get("source")
        if source == "directory":
            return check_class_sizes(self._allowed_directory(str(dataset.get("path", ""))))
        if source == "archive" and archive is None:
            raise BadRequest("an archive dataset needs the 'archive' file")
        target = job_dir / "dataset"
        target.mkdir()
        if source == "items":
            self._export_items(target)
        elif source == "archive" and archive is not None:
            ClassFolderArchive(archive, self.max_archive_bytes).extract(target)
            return check_class_sizes(target, BadRequest)
        else:
            raise BadRequest("dataset source must be 'items', 'directory' or 'archive'")
        return check_class_sizes(target)

    def _allowed_directory(self, path: str) -> Path:
        if not path or "\x00" in path:
            raise BadRequest("dataset.path is required")
        if not self.train_roots:
            raise Forbidden("no training folders are allowed (EMBED_TRAIN_ROOTS is empty)")
        resolved = Path(path).resolve()
        if not any(resolved.is_relative_to(root) for root in self.train_roots):
            raise Forbidden("dataset.path is not under an allowed training folder")
        if not resolved.is_dir():
            raise NotFound("dataset.path is not a folder")
        return resolved

    def _export_items(self, target: Path) -> None:
        total = 0
        for start in range(0, 1 << 62, 1000):
            items, total = self.db.list_items(None, 1000, start)
            for item in items:
                if item.label is None:
                    continue
                class_dir = target / item.label
                class_dir.mkdir(exist_ok=True)
                source = self.images.path(item.image_hash, item.image_ext)
                (class_dir / f"{item.id}.{item.image_ext}").symlink_to(source)
            if start + 1000 >= total:
                break

    # --- the worker ------------------------------------------------------------------------

    def _spec(self, options: dict[str, Any], dataset_dir: Path, job_dir: Path) -> dict[str, Any]:
        active = self.models.runtime.snapshot
        active_record = self.db.model(active.version)
        assert active_record is not None
        config = active.card.config
        from_scratch = options.get("init") == "scratch"
        embedding_dim = options.get("embedding_dim") or config.embedding_dim
        if not from_scratch and embedding_dim != config.embedding_dim:
            raise Conflict(
                "embedding_dim differs from the active model's: use init='scratch' to change it"
            )
        try:
            recipe = TrainRecipe(
                data=[str(dataset_dir)],
                embedding_dim=embedding_dim,
                stem=config.stem,
                input_size=config.input_size,
                bf16=bf16_native(),
                init_from=None if from_scratch else active_record["path"],
                **{name: options[name] for name in TUNABLE_FIELDS if name in options},
            ).to_dict()
        except ValidationError as exc:
            raise BadRequest(f"invalid training recipe: {exc}") from exc
        return {"recipe": recipe, "out": str(job_dir / "model"), "baseline": active_record["path"]}

    def _watch(
        self,
        job_id: str,
        process: subprocess.Popen[str],
        job_dir: Path,
        options: dict[str, Any],
    ) -> None:
        history: list[dict[str, Any]] = []
        metrics: dict[str, Any] = {}
        baseline: dict[str, Any] = {}
        int8: dict[str, Any] = {}
        last_update = 0.0
        assert process.stdout is not None
        for line in process.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            kind = event.get("event")
            if kind == "step" and time.monotonic() - last_update > 0.5:
                last_update = time.monotonic()
                if not self.db.jobs(job_id):  # deleted, through another worker
                    self._cancel_requested = True
                    process.terminate()
                progress = {k: event[k] for k in ("epoch", "step", "steps", "loss")}
                progress["epochs"] = options["epochs"]
                self.db.update_job(job_id, progress=progress)
            elif kind == "epoch":
                history.append({k: v for k, v in event.items() if k != "event"})
                self.db.update_job(job_id, history=history)
            elif kind == "done":
                metrics = dict(event["metrics"])
            elif kind == "baseline":
                baseline = {k: v for k, v in event.items() if k != "event"}
            elif kind == "int8":
                int8 = {k: v for k, v in event.items() if k != "event"}
        code = process.wait()
        outcome: dict[str, Any] = {"status": "failed", "error": "its monitor stopped"}
        try:
            outcome = self._finish(
                job_id, code, job_dir, options, {**metrics, "int8": int8}, baseline
            )
        except Exception as exc:  # the job records any failure; the server carries on
            log.exception("training job %s failed while finishing", job_id)
            outcome = {"status": "failed", "error": str(exc)}
        finally:
            shutil.rmtree(job_dir / "dataset", ignore_errors=True)
            self._release(job_id, outcome)

    def _finish(
        self,
        job_id: str,
        code: int,
        job_dir: Path,
        options: dict[str, Any],
        metrics: dict[str, Any],
        baseline: dict[str, Any],
    ) -> dict[str, Any]:
        """Registers (and may activate) a finished job's model; returns the job's final
        status fields, which the caller records once the job's slot is free."""
        if code == EXIT_CANCELLED or (code != 0 and self._cancel_requested):
            return {"status": "cancelled"}
        if code != 0:
            log_tail = (job_dir / "worker.log").read_text(errors="replace")[-2000:]
            return {"status": "failed", "error": f"worker exited {code}: {log_tail}"}
        # a cancel that came after the worker finished is too late: the model is kept
        card = self.models.register(job_dir / "model", f"job:{job_id}")
        shutil.rmtree(job_dir / "model", ignore_errors=True)  # register keeps its own copy
        metrics = {**metrics, "baseline": baseline}
        self.db.update_job(job_id, metrics=metrics, model_version=card.version)
        policy = options["activate"]
        activated = False
        if policy == "always" or (policy == "if_better" and beats_active(baseline)):
            self.models.activate(card.version)
            activated = True
        return {"status": "succeeded", "activated": int(activated)}
