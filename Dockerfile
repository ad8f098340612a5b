# lstmq image: the worker (entrypoint lstmq-worker), the producer (`lstmq`) and Celery's tools.
# docker-compose.yml builds three variants from this one file:
#   TF_EXTRA=cpu                        -> lstmq:cpu    CPU workers (tensorflow-cpu)
#   TF_EXTRA=gpu                        -> lstmq:gpu    GPU workers (tensorflow[and-cuda]; the NVIDIA
#                                                       driver comes from the host's container toolkit)
#   TF_EXTRA=none EXTRA_PIP=flower...   -> lstmq:tools  the producer and Flower (no TensorFlow: neither
#                                                       the producer nor Celery's tools import it)
FROM python:3.11-slim

ARG TF_EXTRA=cpu
ARG EXTRA_PIP=""

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2

# The processes run as this user, never as root (Keras and TensorFlow write under its home).
RUN groupadd --system --gid 10001 lstmq \
 && useradd --system --uid 10001 --gid lstmq --create-home --home-dir /home/lstmq --shell /usr/sbin/nologin lstmq

# CPU workers build lstmq's native decoding kernels on first use (worker/engine/kernels): they need g++.
RUN if [ "$TF_EXTRA" = cpu ]; then apt-get update && apt-get install -y --no-install-recommends g++ \
    && rm -rf /var/lib/apt/lists/*; fi

# 1. Dependencies only, read from pyproject.toml (the core list plus the TF_EXTRA extra): this layer
#    is built again when pyproject.toml or a build argument changes, never for a change of the source.
COPY pyproject.toml /src/pyproject.toml
RUN python -c 'import sys, tomllib; \
project = tomllib.load(open("/src/pyproject.toml", "rb"))["project"]; \
extras = project["optional-dependencies"]; extra = sys.argv[1]; \
extra == "none" or extra in extras or sys.exit(f"TF_EXTRA={extra}: use none or one of {sorted(extras)}"); \
print("\n".join(project["dependencies"] + extras.get(extra, [])))' "$TF_EXTRA" > /tmp/requirements.txt \
 && cat /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt $EXTRA_PIP \
 && rm /tmp/requirements.txt

# 2. The source, installed without dependencies (they are all above). It is installed into
#    site-packages and /src removed: the working directory holds no `lstmq/` folder that could shadow
#    the installed package when `celery -A lstmq.worker.app` puts the current directory on sys.path.
COPY README.md /src/README.md
COPY lstmq /src/lstmq
COPY shared /src/shared
COPY worker /src/worker
COPY producer /src/producer
COPY config /src/config
RUN pip install --no-deps /src && rm -rf /src

USER lstmq
WORKDIR /home/lstmq

# Healthy when every Celery node that lstmq-worker started in this container answers a ping
# (`celery -A lstmq.worker.app inspect ping -d NODE`, for each of its own nodes only): the node names
# are read from the worker processes' command lines (`--name lstmq-gpu0@%h`, %h = this hostname),
# so this holds for --cpu, --gpus 0, several GPUs and any --name prefix. The producer and Flower
# services replace this check (docker-compose.yml).
HEALTHCHECK --interval=30s --timeout=25s --start-period=120s --retries=3 \
  CMD for f in /proc/[0-9]*/cmdline; do tr '\0' ' ' < "$f"; echo; done 2>/dev/null | python -c '\
import os, sys; \
from lstmq.worker.app import app; \
host = os.uname().nodename; \
commands = [line.split() for line in sys.stdin]; \
nodes = sorted({c[c.index("--name") + 1].replace("%h", host) for c in commands if "lstmq.worker.run" in c and "--name" in c[:-1]}); \
replies = app.control.ping(destination=nodes, timeout=10) if nodes else []; \
missing = [node for node in nodes if not any(node in reply for reply in replies)]; \
print("no lstmq worker process in this container" if not nodes else f"no pong from {missing}" if missing else f"pong from {nodes}"); \
sys.exit(0 if nodes and not missing else 1)'

ENTRYPOINT ["lstmq-worker"]
