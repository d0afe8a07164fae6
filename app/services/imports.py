"""Bulk imports: a zip of class folders (``<label>/<image>``) stored as labelled items, as
a job with progress.

The archive is checked whole before the request is answered (the checks of training
archives: paths, links, labels, sizes), so a hostile or broken archive is refused and
nothing is stored. One background thread then adds its images a chunk at a time, each chunk
committed as one ``POST /items`` would be; an image that cannot be decoded is counted and
listed, not fatal. The job's progress is in the database after every chunk. A restart ends
an unfinished import as failed, keeping the items it added."""

from __future__ import annotations

import logging
import threading
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import PurePosixPath
from typing import Any

from app.errors import BadRequest, NotFound, NotReady, ServiceError
from app.services.archives import ClassFolderArchive, Member
from app.services.catalog import Catalog
from app.services.runtime import DecodedUpload, Runtime
from app.store.database import Claim, Database

log = logging.getLogger(__name__)

CHUNK = 32  # images decoded, embedded and committed together
MAX_FAILURES_LISTED = 20
FINISHED = ("succeeded", "failed", "cancelled")


def claim_name(import_id: str) -> str:
    """The claim the worker running an import holds."""
    return f"import:{import_id}"


class Imports:
    def __init__(
        self, db: Database, catalog: Catalog, runtime: Runtime, max_archive_bytes: int
    ) -> None:
        self.db = db
        self.catalog = catalog
        self.runtime = runtime
        self.max_archive_bytes = max_archive_bytes
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="import")
        self._lock = threading.Lock()
        self._stop_reasons: dict[str, str] = {}  # import id -> why it is to stop
        self._running: set[str] = set()  # import ids this process runs
        self._closing = False

    def recover(self) -> None:
        """Ends the imports that a stopped server process left unfinished: those whose claim
        no worker holds (a shared store releases a dead worker's)."""
        for record in self.db.imports():
            if record["status"] in FINISHED:
                continue
            claim = self.db.claim(claim_name(record["import_id"]))
            if claim is None:  # another worker is running it
                continue
            try:
                self.db.update_import(
                    record["import_id"],
                    status="failed",
                    error="interrupted by a server restart; the items added before it are kept",
                )
            finally:
                claim.release()

    def start(self, data: bytes, filename: str, metadata: dict[str, Any]) -> dict[str, Any]:
        archive = ClassFolderArchive(data, self.max_archive_bytes)
        if not archive.members:
            raise BadRequest("the archive holds no images in class folders: <label>/<image>")
        import_id = uuid.uuid4().hex
        claim = self.db.claim(claim_name(import_id))
        assert claim is not None  # a new id: nobody else can hold it
        try:
            with self._lock:
                if self._closing:
                    raise NotReady("the service is shutting down")
                self.db.add_import(import_id, filename, len(archive.members))
                self._executor.submit(self._run, import_id, archive, metadata, claim)
        except BaseException:
            claim.release()
            raise
        return self.get(import_id)

    def get(self, import_id: str) -> dict[str, Any]:
        found = self.db.imports(import_id)
        if not found:
            raise NotFound(f"import {import_id} not found")
        return found[0]

    def list(self) -> list[dict[str, Any]]:
        return self.db.imports()

    def cancel(self, import_id: str) -> dict[str, Any]:
        """Stops an unfinished import after its current chunk; the items it added stay."""
        record = self.get(import_id)
        if record["status"] in FINISHED:
            return record
        with self._lock:
            running_here = import_id in self._running
            if running_here:
                self._stop_reasons.setdefault(import_id, "cancelled by a request")
        if not running_here:  # run by another worker, which sees this before its next chunk
            self.db.update_import(import_id, status="cancelled", error="cancelled by a request")
        return record

    def shutdown(self) -> None:
        """Stops the imports of this process at their next chunk, and waits for them. Reads
        nothing from the database, so that a worker whose database is down still stops at
        once."""
        with self._lock:
            self._closing = True
        self._executor.shutdown(wait=True)

    def _stop_reason(self, import_id: str) -> str | None:
        """Why the import is to stop: a cancel or shutdown here, or a cancel recorded by
        another worker."""
        with self._lock:
            reason = self._stop_reasons.get(import_id)
            if reason is None and self._closing:
                reason = "the server shut down"
        if reason is None:
            found = self.db.imports(import_id)
            if not found or found[0]["status"] == "cancelled":
                return "cancelled by a request"
        return reason

    def _run(
        self, import_id: str, archive: ClassFolderArchive, metadata: dict[str, Any], claim: Claim
    ) -> None:
        added, failed, labels = 0, 0, Counter[str]()
        failures: list[dict[str, str]] = []
        with self._lock:
            self._running.add(import_id)
        self.db.update_import(import_id, status="running")
        try:
            for start in range(0, len(archive.members), CHUNK):
                reason = self._stop_reason(import_id)
                if reason is not None:
                    self.db.update_import(import_id, status="cancelled", error=reason)
                    return
                uploads: list[DecodedUpload] = []
                kept: list[Member] = []
                for member in archive.members[start : start + CHUNK]:
                    try:
                        uploads.append(self._decode(archive, member))
                        kept.append(member)
                    except ServiceError as exc:
                        failed += 1
                        if len(failures) < MAX_FAILURES_LISTED:
                            failures.append({"member": member.name, "detail": exc.detail})
                if uploads:
                    item_labels = [m.label for m in kept]
                    self.catalog.add(uploads, item_labels, [metadata] * len(uploads))
                    added += len(uploads)
                    labels.update(item_labels)
                self.db.update_import(
                    import_id, added=added, failed=failed, failures=failures, labels=labels
                )
            self.db.update_import(import_id, status="succeeded")
        except ServiceError as exc:
            self.db.update_import(import_id, status="failed", error=exc.detail)
        except Exception:
            log.exception("import %s failed", import_id)
            self.db.update_import(import_id, status="failed", error="internal error (logged)")
        finally:
            with self._lock:
                self._stop_reasons.pop(import_id, None)
                self._running.discard(import_id)
            claim.release()

    def _decode(self, archive: ClassFolderArchive, member: Member) -> DecodedUpload:
        name = PurePosixPath(member.info.filename.replace("\\", "/")).name[-255:]
        (upload,) = self.runtime.decode([(name, archive.read(member))])
        return upload
