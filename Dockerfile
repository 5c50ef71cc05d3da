# lsif_agg with its embedded sample worker; build FROM this image and set WORKER_COMMAND to run yours.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    WORKERS=4

WORKDIR /opt/lsif_agg
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir . \
    && useradd --system --uid 10001 --no-create-home lsif_agg

USER 10001
# Where the in-container Prometheus that lsif_agg replaces listened.
EXPOSE 9090

# lsif_agg runs as PID 1: it reaps orphans and forwards signals, so no init wrapper is needed.
ENTRYPOINT ["lsif-agg"]
