"""Prometheus metrics and JSON logs with request ids."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    """One registry per app, so several apps in one process (tests) never collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "embed_http_requests_total",
            "HTTP requests by route and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "embed_http_request_seconds",
            "HTTP request latency by route",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.batch_size = Histogram(
            "embed_batch_size",
            "images per forward pass after dynamic batching (its _sum counts images embedded)",
            registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
        )
        self.index_size = Gauge(
            "embed_index_vectors", "vectors in the index", registry=self.registry
        )
        self.model_version = Gauge(
            "embed_model_info", "the active model version", ["version"], registry=self.registry
        )
        self.jobs = Gauge(
            "embed_training_jobs", "training jobs by status", ["status"], registry=self.registry
        )

    def bind(
        self,
        index_size: Callable[[], float],
        version: Callable[[], str | None],
        job_counts: Callable[[], dict[str, int]],
    ) -> None:
        """Gauges read at scrape time from the live services."""
        self.index_size.set_function(index_size)
        self._version = version
        self._job_counts = job_counts

    def render(self) -> bytes:
        version = getattr(self, "_version", lambda: None)()
        self.model_version.clear()
        if version:
            self.model_version.labels(version=version).set(1)
        for status, count in getattr(self, "_job_counts", dict)().items():
            self.jobs.labels(status=status).set(count)
        return generate_latest(self.registry)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("request_id", "method", "path", "status", "duration_ms"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_json_logging(level: str = "info") -> None:
    """One JSON object per line on stderr for the service and uvicorn's own loggers."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
