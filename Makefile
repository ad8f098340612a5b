# lstmq: `make demo` runs the main job end to end, `make test` runs the whole suite.
# Both create .venv and install everything they need (redis-server from Debian's packages when
# it is missing and we are root). TensorFlow: tensorflow-cpu, or tensorflow[and-cuda] where
# nvidia-smi finds a GPU (override with TF_EXTRA=cpu|gpu).
PYTHON ?= python3
VENV ?= .venv
TF_EXTRA ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(TF_EXTRA)

.PHONY: setup demo test test-unit test-integration test-faults bench bench-quick bench-gpu clean redis-server compose-tool

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

# Each benchmark prints its table with ratios against a baseline measured in the same run.
BENCH := $(BIN)/python benchmarks
bench: setup
	$(BENCH)/decode_throughput.py --sampling --mixed --bound-batch-sizes 256,1024,4096
	$(BENCH)/worker_overhead.py
	$(BENCH)/end_to_end.py
	$(BENCH)/million.py
	$(BENCH)/scale_out.py
	$(BENCH)/train_speed.py --full-corpus
	$(BENCH)/train_memory.py

# The same, small: what tests/test_benchmarks.py runs in `make test` (a smoke test, no figure checked).
bench-quick: setup
	$(BENCH)/decode_throughput.py --quick
	$(BENCH)/worker_overhead.py --quick
	$(BENCH)/end_to_end.py --quick
	$(BENCH)/million.py --quick
	$(BENCH)/scale_out.py --quick
	$(BENCH)/train_speed.py --quick

# On a machine with NVIDIA GPUs (make setup installs tensorflow[and-cuda] where nvidia-smi finds
# one): the GPU checks (device pinning, memory growth, the cuDNN kernel in training, a profile of
# decoding), greedy decoding at 4,096 and 16,384 rows, and end to end with one GPU worker.
bench-gpu: setup
	$(BENCH)/gpu_check.py --profile-dir gpu-profile
	$(BENCH)/decode_throughput.py --sampling --bound-batch-sizes 1024,4096,16384
	$(BENCH)/end_to_end.py --gpus 0 --prompts 1000000 --chunk-size 65536

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache demo-out.jsonl demo-out.errors.jsonl
