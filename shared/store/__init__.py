"""The Redis store: the only code that knows the key schema (keys.py), one module per aggregate.

- blobs: content-addressed bytes (corpora, model artifacts)
- registry: model name -> versions 1, 2, ... (meta + artifact blob), aliases (`current`)
- jobs: the typed job record, generate chunks (input, result written once), leases, bad seed lines
  (with the Lua scripts that guard them); chunks: the pure codec of a chunk's input and result
- queues: Celery's queues (length, consumers) and their dead-letter lists
- training: per-epoch history, checkpoints, the training lock
- workers: heartbeats of live workers and the queues they consume
- health: Redis' eviction policy and out-of-memory errors

Messages on the queues carry only ids; everything else is here.
"""
from __future__ import annotations

from typing import Any

import redis

from lstmq.shared.config import Settings
from lstmq.shared.errors import BrokerUnavailable
from lstmq.shared.messages import JobKind
from lstmq.shared.store.blobs import Blobs, sha256
from lstmq.shared.store.jobs import Jobs
from lstmq.shared.store.queues import Queues
from lstmq.shared.store.records import JobRecord, JobStatus, Progress
from lstmq.shared.store.registry import Registry, check_model_name, parse_model_spec
from lstmq.shared.store.sentinel import (SentinelProblem, check_sentinels, follow_primary, is_sentinel_url,
                                         master_address, sentinel_client)
from lstmq.shared.store.training import Training
from lstmq.shared.store.workers import Workers

__all__ = ["Store", "JobKind", "JobRecord", "JobStatus", "Progress", "check_model_name", "parse_model_spec",
           "sha256"]


class Store:
    def __init__(self, client: redis.Redis, ttl: int, sentinel: Any = None, sentinel_master: str | None = None):
        """`ttl`: seconds that jobs, chunks, results and corpora are kept (the result_ttl setting).
        `sentinel`: the redis.sentinel.Sentinel that `client` follows the primary `sentinel_master` with."""
        self.redis = client
        self.ttl = ttl
        self.sentinel, self.sentinel_master = sentinel, sentinel_master
        if sentinel is not None:
            follow_primary(client)
        self.blobs = Blobs(client)
        self.registry = Registry(client, self.blobs)
        self.jobs = Jobs(client, ttl)
        self.training = Training(client, ttl)
        self.workers = Workers(client)
        self.queues = Queues(client, self.workers)

    def for_job(self, record: JobRecord) -> Store:
        """This store, keeping what it writes for `record` as long as the job's own result_ttl (fixed
        when the job was submitted: a worker whose own setting differs uses the job's)."""
        if not record.result_ttl or record.result_ttl == self.ttl:
            return self
        return Store(self.redis, record.result_ttl, self.sentinel, self.sentinel_master)

    @classmethod
    def from_settings(cls, settings: Settings) -> Store:
        """The store at settings.broker_url, keeping job data for settings.result_ttl. A rediss://
        URL gets TLS with the broker_tls_* settings: the server's certificate is checked (and its
        name, with broker_tls_cert_reqs: required) against broker_tls_ca_certs, else the system's CAs.
        A TLS file that cannot be read is a ConfigError naming its setting."""
        options: dict = {}
        sentinel = is_sentinel_url(settings.broker_url)
        if settings.broker_url.lower().startswith("rediss://") or (sentinel and settings.sentinel_tls):
            import os

            from lstmq.shared.errors import ConfigError

            sources = getattr(settings, "sources", {}) or {}
            for key in ("broker_tls_ca_certs", "broker_tls_certfile", "broker_tls_keyfile"):
                path = settings.values.get(key)
                if path is not None and not os.access(path, os.R_OK):
                    where = sources.get(key, "settings")
                    problem = "not found" if not os.path.exists(path) else "not readable"
                    raise ConfigError(f"{where}: setting {key!r}: file {path} {problem}")
            if settings.values.get("broker_tls_keyfile") and not settings.values.get("broker_tls_certfile"):
                raise ConfigError(f"{sources.get('broker_tls_keyfile', 'settings')}: setting 'broker_tls_keyfile' "
                                  "needs broker_tls_certfile (the client certificate)")
            cert_reqs = settings.broker_tls_cert_reqs
            options = {"ssl_ca_certs": settings.broker_tls_ca_certs, "ssl_certfile": settings.broker_tls_certfile,
                       "ssl_keyfile": settings.broker_tls_keyfile, "ssl_cert_reqs": cert_reqs,
                       "ssl_check_hostname": cert_reqs == "required"}
            if sentinel:
                options["ssl"] = True
        if sentinel:
            client, found = sentinel_client(settings.broker_url, settings.sentinel_master, settings.sentinel_password,
                                            **options)
            return cls(client, settings.result_ttl, found, settings.sentinel_master)
        return cls.from_url(settings.broker_url, settings.result_ttl, **options)

    @classmethod
    def from_url(cls, url: str, ttl: int, **options) -> Store:
        """`options`: more keyword arguments for redis-py (ssl_* for a rediss:// URL)."""
        return cls(redis.Redis.from_url(url, socket_connect_timeout=5, health_check_interval=30, **options), ttl)

    def sentinel_password(self) -> str | None:
        if self.sentinel is None or not self.sentinel.sentinels:
            return None
        return self.sentinel.sentinels[0].connection_pool.connection_kwargs.get("password")

    def primary(self) -> tuple[str, int] | None:
        """With Redis Sentinel: where the sentinels say the primary is now; else None."""
        if self.sentinel is None:
            return None
        return master_address(self.sentinel, self.sentinel_master)

    def ping(self, url: str = "") -> None:
        """Raise BrokerUnavailable, with a message that holds no password, if Redis does not answer.
        The exception's `reason` says why: "credentials" (Redis refused them: wrong password, none
        given where one is required, an ACL user without the right), "certificate" (the server's TLS
        certificate or its name failed the check), "sentinel" (no Redis Sentinel answers, or none
        monitors sentinel_master) or "unreachable" (anything else, maybe passing); `cause` is
        redis-py's exception."""
        import ssl

        from lstmq.shared.redact import redact, redact_url

        if self.sentinel is not None:   # first the sentinels: a wrong set-up is no passing trouble
            where = redact_url(url) if url else "the broker URL"
            try:
                check_sentinels(self.sentinel, self.sentinel_master, where)
            except SentinelProblem as problem:
                failure = BrokerUnavailable(redact(problem, url, self.sentinel_password()))
                failure.reason, failure.cause = {"credentials": "credentials"}.get(problem.reason, "sentinel"), problem
                raise failure from None
        try:
            self.redis.ping()
        except redis.exceptions.RedisError as error:
            where = redact_url(url) if url else "the broker URL"
            detail = redact(error, url)
            if isinstance(error, (redis.exceptions.AuthenticationError, redis.exceptions.NoPermissionError)):
                reason, message = "credentials", f"Redis at {where} refused the credentials: {detail}"
            elif isinstance(error.__context__, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in detail:
                reason = "certificate"
                message = (f"cannot reach Redis at {where}: the server's TLS certificate failed the check: {detail} "
                           "(set broker_tls_ca_certs / LSTMQ_BROKER_TLS_CA_CERTS to the CA file that signed it, "
                           "and use the host name the certificate names)")
            else:
                reason, message = "unreachable", f"cannot reach Redis at {where}: {detail}"
            failure = BrokerUnavailable(message)
            failure.reason, failure.cause = reason, error
            raise failure from None
