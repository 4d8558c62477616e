# Minimal CPU image; the deployment issue hardens it (non-root, GPU variant, healthcheck).
FROM python:3.11-slim
WORKDIR /app
COPY . /app
RUN apt-get update && apt-get install -y --no-install-recommends make gcc g++ && rm -rf /var/lib/apt/lists/* \
 && make install PYTHON=python3.11 PIP_EXTRA="--extra-index-url https://download.pytorch.org/whl/cpu" \
 && .venv/bin/leanserve prepare-model
EXPOSE 8000
CMD [".venv/bin/leanserve", "serve", "--host", "0.0.0.0", "--port", "8000"]
