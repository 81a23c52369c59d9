# nrr-engine: the scheduler by default; mount the folder holding config/nrr.yaml at /config.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    NRR_ENGINE_CONFIG=/config/config/nrr.yaml

WORKDIR /app
COPY pyproject.toml README.md ./
# the shipped rules: nrr_engine/scaffold/rules links to them (init and demo copy them)
COPY rules ./rules
COPY nrr_engine ./nrr_engine
RUN pip install --no-cache-dir . \
    && useradd --create-home --uid 10001 --user-group nrr \
    && mkdir -p /config \
    && chown 10001:10001 /config

USER 10001:10001
VOLUME ["/config"]
ENTRYPOINT ["nrr-engine"]
CMD ["schedule"]
