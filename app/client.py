"""A small typed client for other Python services.

    from app.client import EmbedClient
    with EmbedClient("http://127.0.0.1:8000", api_key=None) as client:
        ids = client.add_items([Path("cat.jpg")], labels=["cat"])
        result = client.search_image(Path("query.jpg"), k=5)
        print(result["prediction"])

Errors come back as :class:`EmbedServiceError` with the HTTP status and the service's detail.
"""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import numpy as np

try:
    import httpx2 as httpx
except ImportError as exc:  # the service does not need it: it is the 'client' extra
    raise ImportError(
        "app.client needs the 'client' extra: pip install 'triplet-embed[client]'"
    ) from exc


class EmbedServiceError(Exception):
    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail


class EmbedClient:
    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 60.0) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout)

    def __enter__(self) -> EmbedClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._http.request(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail")
            except ValueError:
                detail = response.text
            raise EmbedServiceError(response.status_code, detail)
        return response.json() if response.content else None

    @staticmethod
    def _files(paths: list[Path], field: str = "files") -> list[tuple[str, tuple[str, bytes]]]:
        return [(field, (p.name, p.read_bytes())) for p in paths]

    def ready(self) -> bool:
        return self._http.get("/readyz").status_code == 200

    def wait_until_ready(
        self, timeout: float, gone: Callable[[], str | None] = lambda: None
    ) -> None:
        """Polls ``/readyz`` until the service answers 200, as a caller that has just started
        it would. Raises ``TimeoutError`` after ``timeout`` seconds, or ``RuntimeError`` as
        soon as ``gone`` returns a reason to stop waiting (say, the server process exited)."""
        deadline = time.monotonic() + timeout
        while True:
            reason = gone()
            if reason is not None:
                raise RuntimeError(reason)
            try:
                if self.ready():
                    return
            except httpx.TransportError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise TimeoutError(f"the service did not become ready in {timeout} s")
            time.sleep(0.2)

    def model(self) -> dict[str, Any]:
        return dict(self._call("GET", "/model"))

    def embed(self, images: list[Path]) -> list[list[float]]:
        body = self._call("POST", "/embed", files=self._files(images))
        return [e["vector"] for e in body["embeddings"]]

    def embed_array(self, images: list[Path]) -> np.ndarray:
        """The images' vectors as one float32 array (rows in the order given), sent as
        ``.npy`` bytes rather than JSON."""
        response = self._http.post(
            "/embed", files=self._files(images), headers={"Accept": "application/x-npy"}
        )
        if response.status_code >= 400:
            raise EmbedServiceError(response.status_code, response.json().get("detail"))
        return np.load(io.BytesIO(response.content), allow_pickle=False)

    def add_items(
        self,
        images: list[Path],
        labels: list[str] | None = None,
        metadata: dict[str, Any] | list[dict[str, Any]] | None = None,
        external_ids: list[str] | None = None,
        idempotency_key: str | None = None,
    ) -> list[int]:
        """Stores images; with ``idempotency_key``, a retry of this call after a lost
        answer returns the first call's ids instead of storing the images again."""
        data: dict[str, Any] = {}
        if labels:
            data["labels"] = labels
        if external_ids:
            data["external_ids"] = external_ids
        if metadata is not None:
            data["metadata"] = json.dumps(metadata)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        body = self._call("POST", "/items", files=self._files(images), data=data, headers=headers)
        return [item["id"] for item in body["items"]]

    def put_item(
        self,
        external_id: str,
        image: Path,
        label: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Creates or replaces the item with your own id ``external_id``; a retry of the
        same call leaves the same one item."""
        data: dict[str, str] = {}
        if label is not None:
            data["label"] = label
        if metadata is not None:
            data["metadata"] = json.dumps(metadata)
        files = self._files([image], field="file")
        return dict(self._call("PUT", f"/items/{external_id}", files=files, data=data))

    def get_item(self, item_id: int | str, include_vector: bool = False) -> dict[str, Any]:
        params = {"include": "vector"} if include_vector else {}
        return dict(self._call("GET", f"/items/{item_id}", params=params))

    def export_vectors(self) -> np.ndarray:
        """Every stored item's vector of the active model: a structured array with fields
        ``id``, ``label`` and ``vector``, read from the streamed ``.npy`` export."""
        with self._http.stream("GET", "/vectors", params={"format": "npy"}) as response:
            if response.status_code >= 400:
                response.read()
                raise EmbedServiceError(response.status_code, response.json().get("detail"))
            data = b"".join(response.iter_bytes())
        return np.load(io.BytesIO(data), allow_pickle=False)

    def list_items(
        self,
        label: str | None = None,
        limit: int = 50,
        offset: int = 0,
        where: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A page of items; ``where`` is a filter of exact matches, e.g.
        ``{"metadata.source": "cifar", "label": ["cat", "bird"]}``."""
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if label is not None:
            params["label"] = label
        if where is not None:
            params["filter"] = json.dumps(where)
        return dict(self._call("GET", "/items", params=params))

    def delete_item(self, item_id: int | str) -> None:
        self._call("DELETE", f"/items/{item_id}")

    def search_image(
        self,
        image: Path,
        k: int = 10,
        label: str | None = None,
        where: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        data = {"k": str(k), **({"label": label} if label else {})}
        if where is not None:
            data["filter"] = json.dumps(where)
        files = {"file": (image.name, image.read_bytes())}
        return dict(self._call("POST", "/search", files=files, data=data))

    def search_item(
        self,
        item_id: int,
        k: int = 10,
        label: str | None = None,
        where: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        body = self._options({"id": item_id}, k, label, where)
        return dict(self._call("POST", "/search", json=body))

    def search_vector(
        self,
        vector: list[float],
        k: int = 10,
        label: str | None = None,
        where: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        body = self._options({"vector": vector}, k, label, where)
        return dict(self._call("POST", "/search", json=body))

    def search_many(
        self,
        queries: list[Path | int | list[float]],
        k: int = 10,
        label: str | None = None,
        where: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """One result per query (an image file, a stored item id or a vector), in order,
        from one request."""
        targets = [
            {"image": {"data": base64.b64encode(q.read_bytes()).decode(), "filename": q.name}}
            if isinstance(q, Path)
            else {"id": q}
            if isinstance(q, int)
            else {"vector": q}
            for q in queries
        ]
        body = self._options({"queries": targets}, k, label, where)
        return list(self._call("POST", "/search", json=body)["results"])

    @staticmethod
    def _options(
        body: dict[str, Any], k: int, label: str | None, where: dict[str, Any] | None
    ) -> dict[str, Any]:
        return {
            **body,
            "k": k,
            **({"label": label} if label is not None else {}),
            **({"filter": where} if where is not None else {}),
        }

    def cluster(
        self,
        k: int | Literal["auto"] = 2,
        label: str | None = None,
        seed: int = 0,
        where: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        body = {"k": k, "label": label, "seed": seed, **({"filter": where} if where else {})}
        return dict(self._call("POST", "/cluster", json=body))

    def import_archive(
        self, archive: Path, metadata: dict[str, Any] | None = None, wait: float | None = None
    ) -> dict[str, Any]:
        """Starts a bulk import of a zip of ``<label>/<image>`` folders; with ``wait``,
        polls it until it ends (or raises ``TimeoutError`` after ``wait`` seconds)."""
        data = {"metadata": json.dumps(metadata)} if metadata is not None else {}
        files = {"archive": (archive.name, archive.read_bytes())}
        record = dict(self._call("POST", "/imports", files=files, data=data))
        if wait is None:
            return record
        deadline = time.monotonic() + wait
        while record["status"] in ("queued", "running"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"import {record['import_id']} did not end in {wait} s")
            time.sleep(0.2)
            record = self.import_status(record["import_id"])
        return record

    def import_status(self, import_id: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/imports/{import_id}"))

    def train(self, **options: Any) -> dict[str, Any]:
        return dict(self._call("POST", "/train", json=options))

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/train/{job_id}"))

    def activate(self, version: str, wait: bool = True) -> dict[str, Any]:
        params = {"wait": "true" if wait else "false"}
        return dict(self._call("POST", f"/models/{version}/activate", params=params))
