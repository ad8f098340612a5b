# lstmq: `make demo` runs the main job end to end, `make test` runs the whole suite.
# Both create .venv and install everything they need (redis-server from Debian's packages when
# it is missing and we are root). TensorFlow: tensorflow-cpu, or tensorflow[and-cuda] where
# nvidia-smi finds a GPU (override with TF_EXTRA=cpu|gpu).
PYTHON ?= python3
VENV ?= .venv
TF_EXTRA ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(TF_EXTRA)

.PHONY: setup demo test test-unit test-integration test-faults bench clean redis-server compose-tool

setup: $(STAMP) redis-server compose-tool

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[$(TF_EXTRA),test]"
	touch $@

redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing redis-server from Debian's packages"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
	  else echo "redis-server is missing: install it (e.g. sudo apt-get install redis-server)"; exit 1; fi; }

# docker-compose (Debian's package) validates docker-compose.yml in tests/test_compose.py, no Docker
# engine needed; without it (or Docker Compose v2) that test skips, so a missing tool is no failure.
compose-tool:
	@command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing docker-compose from Debian's packages"; \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null; } || \
	      echo "could not install docker-compose: tests/test_compose.py will skip validating docker-compose.yml"; \
	  else echo "docker-compose is missing (sudo apt-get install docker-compose): tests/test_compose.py will skip validating docker-compose.yml"; fi; }

demo: setup
	$(BIN)/python -m lstmq.producer.demo

test: setup
	$(BIN)/python -m pytest

test-unit: setup
	$(BIN)/python -m pytest -m "not integration"

test-integration: setup
	$(BIN)/python -m pytest -m integration

test-faults: setup
	$(BIN)/python -m pytest tests/faults

bench: setup
	$(BIN)/python benchmarks/decode_throughput.py
	$(BIN)/python benchmarks/train_memory.py
	$(BIN)/python benchmarks/end_to_end.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache demo-out.jsonl demo-out.errors.jsonl
