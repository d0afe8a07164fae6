"""Domain errors raised by the services; ``app.main`` maps each to one HTTP status."""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    status_code = 400

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class BadRequest(ServiceError):
    status_code = 400


class Forbidden(ServiceError):
    status_code = 403


class NotFound(ServiceError):
    status_code = 404


class Conflict(ServiceError):
    status_code = 409


class PayloadTooLarge(ServiceError):
    status_code = 413


class UnsupportedMedia(ServiceError):
    status_code = 415


class NotReady(ServiceError):
    status_code = 503


class Replayed(Exception):
    """Not an error: the write under this ``Idempotency-Key`` happened before, and
    ``result`` is what it recorded; the route answers from it as it did the first time."""

    def __init__(self, result: Any) -> None:
        super().__init__("replayed")
        self.result = result
