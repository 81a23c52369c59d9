# nrr-engine: the scheduler by default; mount the folder holding config/nrr.yaml at /config.
# pinned: an exact Python patch release and Debian release (bump deliberately, with the constraints below)
FROM python:3.11.7-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    NRR_ENGINE_CONFIG=/config/config/nrr.yaml

WORKDIR /app
COPY pyproject.toml README.md constraints.txt ./
# the shipped rules: nrr_engine/scaffold/rules links to them (init and demo copy them)
COPY rules ./rules
COPY nrr_engine ./nrr_engine
# every dependency (and the build backend) at the exact version of constraints.txt, not whatever is newest today
RUN PIP_CONSTRAINT=/app/constraints.txt pip install --no-cache-dir -c constraints.txt . \
    && useradd --create-home --uid 10001 --user-group nrr \
    && mkdir -p /config \
    && chown 10001:10001 /config

USER 10001:10001
# the folded gazetteer and word lists of every country's languages, made once here (~/.cache/nrr-engine), not
# again by every run of the container
RUN python -c "import pycountry; from nrr_engine.hierarchy import normalise; \
normalise.read_word_lists([c.alpha_2 for c in pycountry.countries])"
VOLUME ["/config"]
ENTRYPOINT ["nrr-engine"]
CMD ["schedule"]
