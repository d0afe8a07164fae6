"""How ``triplet-embed serve`` runs the app under uvicorn, with the limits uvicorn lacks.

uvicorn has no timeout for a request's line and headers: a client that sends them one byte
at a time holds its connection for as long as it likes (slowloris). ``HeaderTimeoutProtocol``
adds one to uvicorn's httptools protocol. Request bodies are timed by
``app.api.middleware.UploadGuard``; connections beyond ``max_connections`` get 503."""

from __future__ import annotations

import asyncio
import functools

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.settings import Settings

REQUEST_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


@functools.cache
def header_timeout_s() -> float:
    """``EMBED_HEADER_TIMEOUT_S``, read once per process."""
    return Settings().header_timeout_s


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """Closes a connection, with 408, when a request's line and headers have not all arrived
    within ``header_timeout`` seconds of the connection opening or of the request's first
    byte. Between requests, uvicorn's keep-alive timeout applies as before."""

    _header_timer: asyncio.TimerHandle | None = None

    @property
    def header_timeout(self) -> float:
        return header_timeout_s()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.write(REQUEST_TIMEOUT)
            self.transport.close()


def serve(host: str, port: int, log_level: str, workers: int = 1) -> None:
    """Runs the service; ``workers`` > 1 runs that many processes under uvicorn's supervisor,
    which needs the shared store (``EMBED_DATABASE_URL``). Raises :class:`SystemExit` with a
    message when the configuration or the database does not allow starting."""
    settings = Settings()
    if workers > 1 and not settings.database_url:
        raise SystemExit(
            "--workers needs EMBED_DATABASE_URL (PostgreSQL): the embedded SQLite store and "
            "its in-process index serve one process"
        )
    if settings.database_url:
        check_database(settings)
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=host,
        port=port,
        http="app.server:HeaderTimeoutProtocol",  # by name: worker processes import it
        limit_concurrency=settings.max_connections,
        log_level=log_level,
        workers=workers if workers > 1 else None,
        log_config=None,  # keep the JSON handlers configured by the caller
        access_log=False,  # RequestContext logs each request, with its id
        timeout_graceful_shutdown=10,
    )


def check_database(settings: Settings) -> None:
    """Waits (up to ``EMBED_DATABASE_WAIT_S``) for the database and migrates its schema
    before any worker starts, so that an unreachable one ends the command with a clear
    message and a non-zero status, not a traceback from every worker."""
    from app.store.database import DatabaseUnavailable, open_database

    try:
        open_database(settings.database_url, settings.data_dir, settings.database_wait_s).close()
    except (DatabaseUnavailable, RuntimeError) as exc:
        raise SystemExit(f"cannot start: {exc}") from None
