# CPU image for emilia-pipe drivers and CPU workers (the same image on every CPU node of a Ray cluster).
# Build from the repository root:  docker build -f docker/cpu.Dockerfile -t emilia-pipe:cpu .
# The lite profile's models ship inside the installed wheels, so this image builds and runs offline.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PYANNOTE_METRICS_ENABLED=false \
    EMILIA_PIPE_CACHE=/models

WORKDIR /opt/emilia-pipe
COPY requirements.txt pyproject.toml README.md ./
RUN pip install --no-cache-dir -r requirements.txt
COPY emilia_pipe ./emilia_pipe
RUN pip install --no-cache-dir --no-deps -e . && emilia-pipe models verify

# Hub models for the full profile are fetched at run time into /models (mount a volume there):
#   docker run -e HF_TOKEN=... -v models:/models emilia-pipe:cpu models fetch --profile full
ENTRYPOINT ["emilia-pipe"]
CMD ["--help"]
