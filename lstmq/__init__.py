"""lstmq: a batch job runner for word-level LSTM text generation on Celery workers and Redis.

    from lstmq import Client, LstmqError      # the Python API (lstmq.producer.api)

One import namespace. The sources stay at the top of the repository and are mapped here by
pyproject.toml (`package-dir`): lstmq.shared (code both sides use), lstmq.worker (the Celery
side), lstmq.producer (the `lstmq` CLI and the Python API), lstmq.config (default.yaml)."""
from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("lstmq")
except metadata.PackageNotFoundError:   # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["Client", "Job", "LstmqError", "__version__"]


def __getattr__(name: str):
    """Client, Job and LstmqError on first use: `import lstmq` alone (as a worker does) stays light."""
    if name in ("Client", "Job"):
        from lstmq.producer import api
        return getattr(api, name)
    if name == "LstmqError":
        from lstmq.shared.errors import LstmqError
        return LstmqError
    raise AttributeError(f"module 'lstmq' has no attribute {name!r}")
