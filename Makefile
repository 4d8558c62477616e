# leanserve: `make serve` and `make test` do all set-up on a fresh machine (Python 3.11).
PYTHON ?= python3.11
VENV ?= .venv
ENGINE ?= cpu
# Where torch==2.13.0+cpu is not on a local wheel path, add PyTorch's CPU wheel index:
#   make serve PIP_EXTRA="--extra-index-url https://download.pytorch.org/whl/cpu"
PIP_EXTRA ?=
# More optional-dependency groups of pyproject.toml, comma-separated (e.g. EXTRAS=multinode).
EXTRAS ?=
HOST ?= 127.0.0.1
PORT ?= 8000
SERVE_ARGS ?=
PYTEST_ARGS ?=

BIN := $(VENV)/bin
COMMA := ,
STAMP := $(VENV)/.installed-$(ENGINE)

.PHONY: install system-deps serve test unit prepare-model clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install $(PIP_EXTRA) -e ".[$(ENGINE),dev$(if $(EXTRAS),$(COMMA)$(EXTRAS))]"
	# PyPI's torchaudio/torchcodec (pulled by vLLM) are CUDA builds that cannot load beside
	# torch+cpu and make transformers fail; nothing leanserve runs needs them.
	if [ "$(ENGINE)" = cpu ]; then $(BIN)/python -m pip uninstall --yes torchaudio torchcodec; fi
	# torchvision's pure-Python part works once two op schemas exist (engine/torchvision_compat.py).
	$(BIN)/python -m engine.torchvision_compat
	touch $(STAMP)

install: $(STAMP)

# Debian packages the tests use: a real Prometheus and promtool (tests/prometheus.py). Installed
# once, with root or sudo; on a systemd host Debian also starts its own Prometheus on :9090.
DEBIAN_PACKAGES := prometheus
system-deps:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || { \
	  sudo=$$([ "$$(id -u)" -eq 0 ] || echo sudo); export DEBIAN_FRONTEND=noninteractive; \
	  $$sudo apt-get install -y --no-install-recommends $(DEBIAN_PACKAGES) || \
	  { $$sudo apt-get update && $$sudo apt-get install -y --no-install-recommends $(DEBIAN_PACKAGES); }; }

prepare-model: install
	$(BIN)/leanserve prepare-model

serve: install
	$(BIN)/leanserve serve --host $(HOST) --port $(PORT) $(SERVE_ARGS)

test: install system-deps
	$(BIN)/leanserve prepare-model
	$(BIN)/python -m pytest $(PYTEST_ARGS)

unit: install system-deps
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

clean:
	rm -rf $(VENV)
