"""Model versions: registration, start-up, and activation (re-embed everything, then swap).

Activation never interrupts serving: the new model embeds every stored item into its own
vectors while the old snapshot keeps answering; then, holding the catalog's write lock, it
embeds the items added meanwhile, builds the new index, records the new active version in
the database and swaps model and index in one step. A crash before that commit leaves the old
model active; the new version's partial vectors are dropped at the next start.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

from app.errors import BadRequest, Conflict, NotFound, NotReady, ServiceError
from app.services.catalog import Catalog
from app.services.idempotency import replay_if_done
from app.services.runtime import Runtime, Snapshot
from app.store.database import (
    Claim,
    Database,
    DatabaseUnavailable,
    IdempotencyKey,
    ItemsWithoutVectors,
)
from app.store.images import ImageStore
from app.store.index import VectorIndex
from model.backends import BackendChoice
from model.checkpoint import CheckpointError, ModelCard, load_model, read_card
from model.embedding import Embedder
from model.preprocessing import ImageDecodeError, decode_prepared

log = logging.getLogger(__name__)

REEMBED_BATCH = 128
ACTIVATION_ATTEMPTS = 10  # rounds of embedding what other workers added during an activation
ACTIVATION = "activation"  # the claim an activation holds
MAX_REPORTED_IDS = 100  # ids listed in an activation result; the count is always exact
STALE_STAGING_S = 3600.0  # a model copy takes seconds: a staging folder this old was orphaned
# in the models folder: the backend `auto` measured, by CPU, libraries and model
BACKEND_SELECTION_FILE = "backend-selection.json"


class ModelService:
    def __init__(
        self,
        db: Database,
        images: ImageStore,
        runtime: Runtime,
        catalog: Catalog,
        models_dir: Path,
        index_dir: Path,
        backend: BackendChoice = "auto",
    ) -> None:
        self.db = db
        self.images = images
        self.runtime = runtime
        self.catalog = catalog
        self.models_dir = models_dir
        self.index_dir = index_dir
        self.backend = backend
        self.backend_cache = models_dir / BACKEND_SELECTION_FILE
        self._activation_lock = threading.Lock()
        self._activation_claim: Claim | None = None
        self._stop_following = threading.Event()
        self.activating: str | None = None
        self.progress = {"reembedded": 0, "total": 0}  # of the running activation
        self.last_activation: dict[str, Any] = {}
        self.unreadable_at_start: list[int] = []

    # --- registry --------------------------------------------------------------------------

    def register(self, model_dir: Path, source: str) -> ModelCard:
        """Copies a model directory into the data directory and records it as a version."""
        try:
            card = read_card(model_dir)
            load_model(model_dir)  # verifies hash and architecture
        except CheckpointError as exc:
            raise BadRequest(f"not a usable model: {exc}") from exc
        target = self.models_dir / card.version
        if not target.exists():
            # a staging folder of this process's own: workers starting together on shared
            # storage may copy the same model at once; the first rename wins
            self.models_dir.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{card.version}.", dir=self.models_dir))
            try:
                shutil.copytree(
                    model_dir,
                    staging,
                    ignore=shutil.ignore_patterns("training_state"),
                    dirs_exist_ok=True,
                )
                staging.replace(target)
            except OSError:
                if not target.is_dir():  # not another worker's copy: a real failure
                    raise
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        self.db.add_model(card.version, str(target), card.to_dict(), source)
        return card

    def versions(self) -> list[dict[str, Any]]:
        active = self.db.get_state("active_model")
        return [
            {
                "version": m["version"],
                "active": m["version"] == active,
                "source": m["source"],
                "created_at": m["created_at"],
                "trained_at": m["card"].get("trained_at"),
                "model_type": m["card"]["config"]["model_type"],
                "metrics": m["card"].get("metrics", {}),
            }
            for m in self.db.models()
        ]

    def _load(self, version: str) -> tuple[Embedder, ModelCard]:
        record = self.db.model(version)
        if record is None:
            raise NotFound(f"model version {version!r} not found")
        try:
            embedder = Embedder.from_dir(
                Path(record["path"]), self.backend, selection_cache=self.backend_cache
            )
        except CheckpointError as exc:
            raise Conflict(f"model version {version!r} cannot be loaded: {exc}") from exc
        except OSError as exc:
            raise NotReady(f"model version {version!r} cannot be read: {exc}") from exc
        assert embedder.card is not None
        return embedder, embedder.card

    # --- start-up --------------------------------------------------------------------------

    def start(self, default_model_dir: Path) -> None:
        """Registers the configured model, loads the active one and its index."""
        self._sweep_staging()
        default_card = self.register(default_model_dir, "default")
        active = self.db.get_state("active_model")
        if active is None or self.db.model(active) is None:
            active = default_card.version
            self.db.activate_model(active)
        embedder, card = self._load(active)
        claim = self.db.claim(ACTIVATION)
        if claim is not None:  # no other worker is activating a model
            try:
                self.db.drop_vectors_except(active)  # those of an interrupted activation
            finally:
                claim.release()
        self.unreadable_at_start = self._embed_missing(embedder, active)
        policy = self.runtime.index_policy
        index = self.db.open_index(active, embedder.dim, policy, self.index_dir)
        self.runtime.swap(Snapshot(active, card, embedder, index))

    def _sweep_staging(self) -> None:
        """Removes the staging folders (``.<version>.<random>``) of model copies that a crash
        interrupted. A recent one may be another worker's copy in progress, so it stays."""
        if not self.models_dir.is_dir():
            return
        cutoff = time.time() - STALE_STAGING_S
        for path in self.models_dir.glob(".*.*"):
            if path.is_dir() and path.stat().st_mtime < cutoff:
                log.info("removing %s, left by an interrupted model copy", path)
                shutil.rmtree(path, ignore_errors=True)

    def follow(self, interval_s: float) -> threading.Thread:
        """Switches this worker to the model that another worker activated, checking the
        active version every ``interval_s`` seconds (a shared store only). Until it has
        switched, a write with the old model is refused (503), and searches answer from the
        old version's vectors, which the store keeps until the next activation."""

        def run() -> None:
            while not self._stop_following.wait(interval_s):
                try:
                    self._follow_once()
                except (DatabaseUnavailable, ServiceError) as exc:
                    log.warning("could not check the active model: %s", exc)
                except Exception:
                    log.exception("could not switch to the active model")

        thread = threading.Thread(target=run, name="follow-model", daemon=True)
        thread.start()
        return thread

    def stop_following(self) -> None:
        self._stop_following.set()

    def _follow_once(self) -> None:
        """Loads the active model if it is not this worker's, then swaps it in under the
        write lock after reading the active version again there: this worker's own
        activation commits and swaps under that lock, so the follower can never swap an
        older model back in over it."""
        active = self.db.get_state("active_model")
        if active is None or active == self.runtime.snapshot.version:
            return
        embedder, card = self._load(active)
        index = self.db.build_index(active, embedder.dim, self.runtime.index_policy)
        with self.catalog.write_lock:
            if self.db.get_state("active_model") != active:
                return  # changed meanwhile: the next round follows
            if self.runtime.snapshot.version == active:
                return
            self.runtime.swap(Snapshot(active, card, embedder, index))
        log.info("switched to model %s, activated by another worker", active)

    def save_index(self) -> None:
        """Saves the active index for a quick next start. Under the write lock, so that no
        write is between its database commit and its index update: the saved index holds
        exactly the database generation it is labelled with."""
        if self.runtime.ready:
            with self.catalog.write_lock:
                snapshot = self.runtime.snapshot
                snapshot.index.save(self.index_dir, self.db.generation())

    # --- activation ------------------------------------------------------------------------

    def activate(self, version: str) -> dict[str, Any]:
        """Re-embeds every item with ``version`` and makes it active; returns the result
        (timings, and the items whose stored image could not be read)."""
        self._claim(version)
        return self._run_claimed(version)

    def replay_if_done(self, idempotency: IdempotencyKey | None) -> None:
        """Raises :class:`Replayed` with the answer recorded under this key, if any."""
        replay_if_done(self.db, idempotency)

    def remember_answer(self, idempotency: IdempotencyKey | None, answer: Any) -> None:
        """Records the answer to an activation request under its key. An activation is not
        one database transaction, so a crash before this leaves the key unused; its retry
        then activates again, which leaves the same model active."""
        if idempotency is not None:
            self.db.remember(idempotency, answer)

    def start_activation(self, version: str) -> None:
        """``activate`` in a background thread. The claim happens here, before returning, so
        a caller learns of a conflict at once; the outcome, success or failure, is recorded
        in ``last_activation`` (shown by ``GET /models``)."""
        self._claim(version)
        threading.Thread(
            target=self._run_claimed_logged, args=(version,), name="activation", daemon=True
        ).start()

    def _claim(self, version: str) -> None:
        if self.db.model(version) is None:
            raise NotFound(f"model version {version!r} not found")
        if not self._activation_lock.acquire(blocking=False):
            raise Conflict(f"model {self.activating} is being activated")
        try:
            claim = self.db.claim(ACTIVATION)
        except BaseException:
            self._activation_lock.release()
            raise
        if claim is None:
            self._activation_lock.release()
            raise Conflict("another worker is activating a model")
        self._activation_claim = claim
        self.activating = version
        self.progress = {"reembedded": 0, "total": 0}

    def _run_claimed(self, version: str) -> dict[str, Any]:
        """Runs a claimed activation and releases the claim; records the outcome before
        ``activating`` clears, so that no reader sees neither (idle, yet no outcome)."""
        try:
            result = self._activate(version)
            self.last_activation = result
        except Exception as exc:
            detail = exc.detail if isinstance(exc, ServiceError) else repr(exc)
            self.last_activation = {"version": version, "status": "failed", "error": detail}
            raise
        finally:
            self.activating = None
            if self._activation_claim is not None:
                self._activation_claim.release()
                self._activation_claim = None
            self._activation_lock.release()
        return result

    def _run_claimed_logged(self, version: str) -> None:
        try:
            self._run_claimed(version)
        except Exception:
            log.exception("activation of %s failed; the previous model stays active", version)

    def _activate(self, version: str) -> dict[str, Any]:
        started = time.perf_counter()
        current = self.runtime.snapshot
        if current.version == version:
            return {"version": version, "status": "active", "reembedded": 0, "seconds": 0.0}
        embedder, card = self._load(version)
        unreadable = set(self._embed_missing(embedder, version))
        with self.catalog.write_lock:  # the items added meanwhile (and the unreadable again)
            for _ in range(ACTIVATION_ATTEMPTS):
                unreadable.update(self._embed_missing(embedder, version))
                index = self.db.build_index(version, embedder.dim, self.runtime.index_policy)
                try:  # fails if another worker added items since
                    self.db.activate_model(version, unreadable)
                    break
                except ItemsWithoutVectors:
                    continue
            else:
                raise Conflict(
                    f"items kept arriving faster than {version} could embed them; try again"
                )
            self.runtime.swap(Snapshot(version, card, embedder, index))
            index.save(self.index_dir, self.db.generation())
        VectorIndex.discard(self.index_dir, current.version)
        result = {
            "version": version,
            "status": "active",
            "reembedded": len(index),
            "unreadable_items": len(unreadable),
            "unreadable_ids": sorted(unreadable)[:MAX_REPORTED_IDS],
            "seconds": round(time.perf_counter() - started, 3),
        }
        log.info("activated %s: %s", version, result)
        return result

    def _embed_missing(self, embedder: Embedder, version: str) -> list[int]:
        """Embeds the items that have no vector for ``version`` yet. Returns the ids of those
        whose stored image could not be read: they stay stored but have no vector, so search
        cannot find them; the caller reports them."""
        missing = self.db.items_missing_vectors(version)
        unreadable: list[int] = []
        self.progress["total"] += len(missing)
        size = embedder.config.input_size
        for start in range(0, len(missing), REEMBED_BATCH):
            chunk = missing[start : start + REEMBED_BATCH]
            pixels, ids = [], []
            for item in chunk:
                try:
                    data = self.images.read(item.image_hash, item.image_ext)
                    decoded = decode_prepared(data, size, max_pixels=self.runtime.max_pixels)
                    pixels.append(decoded[0])
                except (OSError, ImageDecodeError) as exc:
                    log.error("item %d: stored image unreadable (%s); skipped", item.id, exc)
                    unreadable.append(item.id)
                    continue
                ids.append(item.id)
            if pixels:
                vectors = self.runtime.embed_tensors(embedder, torch.stack(pixels))
                self.db.put_vectors(version, ids, vectors)
            self.progress["reembedded"] += len(ids)
        return unreadable
