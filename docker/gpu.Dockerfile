# GPU image for emilia-pipe workers (full profile) on NVIDIA nodes, CUDA 12 base.
# Build from the repository root:  docker build -f docker/gpu.Dockerfile -t emilia-pipe:gpu .
# Run with --gpus all (Docker) or an nvidia.com/gpu resource limit (Kubernetes). torch's CUDA wheels and
# CTranslate2 (which needs CUDA 12 cuBLAS) bring their CUDA user-space libraries from PyPI; the base image
# supplies cuDNN and the driver interface.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PYANNOTE_METRICS_ENABLED=false \
    EMILIA_PIPE_CACHE=/models

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /opt/emilia-pipe
COPY requirements.txt pyproject.toml README.md ./
RUN pip install --no-cache-dir -r requirements.txt
COPY emilia_pipe ./emilia_pipe
RUN pip install --no-cache-dir --no-deps -e .

# Full-profile weights (htdemucs, Whisper large-v3, pyannote community-1) come from the hub: fetch them
# once into a volume mounted at /models, with HF_TOKEN set after accepting pyannote's conditions:
#   docker run --gpus all -e HF_TOKEN=... -v models:/models emilia-pipe:gpu models fetch --profile full
ENTRYPOINT ["emilia-pipe"]
CMD ["--help"]
