"""lstmq: a batch job runner for word-level LSTM text generation on Celery workers and Redis.

One import namespace. The sources stay at the top of the repository and are mapped here by
pyproject.toml (`package-dir`): lstmq.shared (code both sides use), lstmq.worker (the Celery
side), lstmq.producer (the `lstmq` CLI), lstmq.config (default.yaml)."""
from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("lstmq")
except metadata.PackageNotFoundError:   # a source tree that was never installed
    __version__ = "0+unknown"
