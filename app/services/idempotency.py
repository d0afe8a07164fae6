"""Idempotent writes: what a service does with a caller's ``Idempotency-Key``.

The database records the key, with a fingerprint of the request and what the write made, in
the write's own transaction (:class:`app.store.database.IdempotencyKey`). Before any work, a
service asks whether the key was used (:func:`replay_if_done`); inside the transaction, a
concurrent retry that committed first shows up as :class:`AlreadyDone`. Either way the
caller gets :class:`Replayed` with the first result, or a conflict (409) for a key used
with another request.
"""

from __future__ import annotations

from app.errors import Conflict, Replayed
from app.store.database import AlreadyDone, Database, IdempotencyKey, KeyReused


def replay_if_done(db: Database, idempotency: IdempotencyKey | None) -> None:
    """Raises :class:`Replayed` if the write under this key happened before, or
    :class:`Conflict` if the key came with another request."""
    if idempotency is None:
        return
    try:
        result = db.idempotent_result(idempotency)
    except KeyReused as exc:
        raise as_service_error(exc) from exc
    if result is not None:
        raise Replayed(result)


def as_service_error(exc: AlreadyDone | KeyReused) -> Replayed | Conflict:
    """What a write transaction's idempotency outcome means to the caller."""
    if isinstance(exc, AlreadyDone):
        return Replayed(exc.result)
    return Conflict(f"Idempotency-Key {exc} was used for a different request")
