# lsif_agg with its embedded sample worker; build FROM this image and set WORKER_COMMAND to run yours.

# The exposition engine has a C extension, so the wheel is built where a compiler is, and only
# the wheel goes into the runtime image.
FROM python:3.11-slim AS build
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY src ./src
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    WORKERS=4

COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl \
    && rm -rf /wheels \
    && useradd --system --uid 10001 --no-create-home lsif_agg

USER 10001
# Where the in-container Prometheus that lsif_agg replaces listened.
EXPOSE 9090

# lsif_agg runs as PID 1: it reaps orphans and forwards signals, so no init wrapper is needed.
ENTRYPOINT ["lsif-agg"]
