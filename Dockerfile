# syntax=docker/dockerfile:1
# Build: docker build -t triplet-embed .   Run: docker compose up
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# CPU-only torch and torchvision: a few hundred MB instead of the multi-GB CUDA build.
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --index-url https://download.pytorch.org/whl/cpu \
        torch==2.14.1 torchvision==0.29.1
COPY pyproject.toml README.md ./
COPY app ./app
COPY model ./model
# the postgres extra: the same image serves the embedded store and the shared PostgreSQL one
RUN /opt/venv/bin/pip install ".[postgres]"

FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    EMBED_DATA_DIR=/data \
    OMP_NUM_THREADS=2
RUN useradd --system --uid 10001 --home-dir /data embed \
    && mkdir -p /data && chown 10001 /data
COPY --from=build /opt/venv /opt/venv
USER 10001
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u, sys; sys.exit(u.urlopen('http://127.0.0.1:8000/readyz', timeout=4).status != 200)"]
CMD ["triplet-embed", "serve", "--host", "0.0.0.0", "--port", "8000"]
