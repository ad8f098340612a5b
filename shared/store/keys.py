"""Every Redis key lstmq uses, and nothing else: the one module that knows key names.

    lstmq:blob:<sha256>                  content-addressed bytes (corpora, model artifacts)
    lstmq:models                         set of model names
    lstmq:model:<name>:versions|counter|aliases|load-errors
    lstmq:jobs                           sorted set of job ids by creation time
    lstmq:active                         sorted set of jobs not yet final (watched for lapsed leases)
    lstmq:job:<id>                       the job record (a hash)
    lstmq:job:<id>:<part>[:<n>]          everything that belongs to one job (job_key)
    lstmq:workers                        sorted set of worker names by last heartbeat
    lstmq:worker:<name>                  one worker's description (JSON, expires)
    lstmq:worker:<name>:current          the work it holds now ({"job", "member"}, expires)
    lstmq:dead-letter:<queue>            undecodable entries taken off a queue (raw, newest first)
"""
from __future__ import annotations

PREFIX = "lstmq"

MODELS = f"{PREFIX}:models"
JOBS = f"{PREFIX}:jobs"
ACTIVE = f"{PREFIX}:active"
WORKERS = f"{PREFIX}:workers"


def blob(sha256: str) -> str:
    return f"{PREFIX}:blob:{sha256}"


def model_key(name: str, part: str) -> str:
    """A model's versions (hash: version -> meta), counter, or aliases (hash: alias -> version)."""
    return f"{PREFIX}:model:{name}:{part}"


def job_key(job_id: str, *parts: str | int) -> str:
    """The job's record (no parts), or one of its keys: job_key(id, "chunk", 3), job_key(id, "lock")."""
    return ":".join((f"{PREFIX}:job:{job_id}", *map(str, parts)))


def job_pattern(job_id: str) -> str:
    """A SCAN pattern for every key of one job except its record (job_key(job_id))."""
    return f"{PREFIX}:job:{job_id}:*"


def worker_key(name: str, *parts: str) -> str:
    return ":".join((f"{PREFIX}:worker:{name}", *parts))


def dead_letter(queue: str) -> str:
    return f"{PREFIX}:dead-letter:{queue}"


def celery_queue(name: str) -> str:
    """The Redis list that kombu keeps a Celery queue's messages in (the queue's own name)."""
    return name
