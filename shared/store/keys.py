"""Every Redis key lstmq uses, and nothing else: the one module that knows key names.

    lstmq:blob:<sha256>                  content-addressed bytes (corpora, model artifacts)
    lstmq:models                         set of model names
    lstmq:model:<name>:versions|counter|aliases
    lstmq:jobs                           sorted set of job ids by creation time
    lstmq:job:<id>                       the job record (a hash)
    lstmq:job:<id>:<part>[:<n>]          everything that belongs to one job (job_key)
"""
from __future__ import annotations

PREFIX = "lstmq"

MODELS = f"{PREFIX}:models"
JOBS = f"{PREFIX}:jobs"


def blob(sha256: str) -> str:
    return f"{PREFIX}:blob:{sha256}"


def model_key(name: str, part: str) -> str:
    """A model's versions (hash: version -> meta), counter, or aliases (hash: alias -> version)."""
    return f"{PREFIX}:model:{name}:{part}"


def job_key(job_id: str, *parts: str | int) -> str:
    """The job's record (no parts), or one of its keys: job_key(id, "chunk", 3), job_key(id, "lock")."""
    return ":".join((f"{PREFIX}:job:{job_id}", *map(str, parts)))
