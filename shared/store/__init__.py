"""The Redis store: the only code that knows the key schema (keys.py), one module per aggregate.

- blobs: content-addressed bytes (corpora, model artifacts)
- registry: model name -> versions 1, 2, ... (meta + artifact blob), aliases (`current`)
- jobs: the typed job record, generate chunks (input, result written once), bad seed lines
- training: per-epoch history, checkpoints, the training lock

Messages on the queues carry only ids; everything else is here.
"""
from __future__ import annotations

import redis

from lstmq.shared.config import Settings
from lstmq.shared.errors import BrokerUnavailable
from lstmq.shared.messages import JobKind
from lstmq.shared.store.blobs import Blobs, sha256
from lstmq.shared.store.jobs import JobRecord, Jobs, JobStatus, Progress
from lstmq.shared.store.registry import Registry, check_model_name, parse_model_spec
from lstmq.shared.store.training import Training

__all__ = ["Store", "JobKind", "JobRecord", "JobStatus", "Progress", "check_model_name", "parse_model_spec",
           "sha256"]


class Store:
    def __init__(self, client: redis.Redis, ttl: int):
        """`ttl`: seconds that jobs, chunks, results and corpora are kept (the result_ttl setting)."""
        self.redis = client
        self.ttl = ttl
        self.blobs = Blobs(client)
        self.registry = Registry(client, self.blobs)
        self.jobs = Jobs(client, ttl)
        self.training = Training(client, ttl)

    @classmethod
    def from_settings(cls, settings: Settings) -> Store:
        """The store at settings.broker_url, keeping job data for settings.result_ttl."""
        return cls.from_url(settings.broker_url, settings.result_ttl)

    @classmethod
    def from_url(cls, url: str, ttl: int) -> Store:
        return cls(redis.Redis.from_url(url, socket_connect_timeout=5, health_check_interval=30), ttl)

    def ping(self, url: str = "") -> None:
        try:
            self.redis.ping()
        except redis.exceptions.RedisError as error:
            raise BrokerUnavailable(f"cannot reach Redis at {url or 'the broker URL'}: {error}") from None
