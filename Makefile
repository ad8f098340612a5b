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
	$(BIN)/python -m examples.demo

# Test files run in TEST_JOBS processes (pytest-xdist), each file's tests in one of them (module
# fixtures: one redis-server and one worker per file): most of a test's time is spent waiting on
# real workers and leases, so 2 processes on 2 cores halve the wall time. TEST_JOBS=0: one process.
TEST_JOBS ?= 2
PYTEST := $(BIN)/python -m pytest -n $(TEST_JOBS) --dist loadfile --durations=15

test: setup
	$(PYTEST)

test-unit: setup
	$(PYTEST) -m "not integration"

test-integration: setup
	$(PYTEST) -m integration

test-faults: setup
	$(PYTEST) tests/faults

# Each benchmark prints its table with ratios against a baseline measured in the same run. They run
# from the repository root as modules (they import tests.devstack and benchmarks.common).
BENCH := $(BIN)/python -m benchmarks
bench: setup
	$(BENCH).decode_throughput --sampling --mixed --bound-batch-sizes 256,1024,4096
	$(BENCH).worker_overhead
	$(BENCH).end_to_end
	$(BENCH).million
	$(BENCH).scale_out
	$(BENCH).train_speed --full-corpus
	$(BENCH).train_memory

# The same, small: what tests/test_benchmarks.py and tests/test_million.py run in `make test` (smoke
# tests: each table is read back, no figure is compared with a target).
bench-quick: setup
	$(BENCH).decode_throughput --quick
	$(BENCH).worker_overhead --quick
	$(BENCH).end_to_end --quick
	$(BENCH).million --quick
	$(BENCH).scale_out --quick
	$(BENCH).train_speed --quick

# On a machine with NVIDIA GPUs (make setup installs tensorflow[and-cuda] where nvidia-smi finds
# one): the GPU checks (device pinning, memory growth, the cuDNN kernel in training, a profile of
# decoding), greedy decoding at 4,096 and 16,384 rows, and end to end with one GPU worker.
bench-gpu: setup
	$(BENCH).gpu_check --profile-dir gpu-profile
	$(BENCH).decode_throughput --sampling --bound-batch-sizes 1024,4096,16384
	$(BENCH).end_to_end --gpus 0 --prompts 1000000 --chunk-size 65536

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache demo-out.jsonl demo-out.errors.jsonl
