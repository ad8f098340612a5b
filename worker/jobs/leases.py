"""Leases, retries and attempts: how a worker holds work in progress.

Transient errors (Redis unreachable) are retried in place with backoff (retry_transient), and
work in progress holds a lease (Lease) that its worker renews, so that a lost worker's work is
dispatched again (shared.recovery)."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis

from lstmq.shared.errors import InputError, LstmqError
from lstmq.shared.messages import JobKind
from lstmq.shared.store import JobRecord, Store

log = logging.getLogger("lstmq.jobs")
TRANSIENT = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
             redis.exceptions.ReadOnlyError)   # READONLY: a demoted primary, for a moment after a Sentinel failover
RETRY_BACKOFF_MAX_S = 60.0
T = TypeVar("T")


def retry_transient(operation: Callable[[], T], attempts: int, what: str,
                    sleep: Callable[[float], None] = time.sleep) -> T:
    """Run `operation`; while Redis is unreachable, try again after 1, 2, 4, ... s (at most 60 s
    apart), `attempts` more times, each logged; then the last error is raised."""
    for attempt in range(attempts + 1):
        try:
            return operation()
        except TRANSIENT as error:
            if attempt == attempts:
                raise
            delay = min(2.0 ** attempt, RETRY_BACKOFF_MAX_S)
            log.warning("%s: Redis unreachable (%s); retry %d of %d in %.0fs", what, error, attempt + 1, attempts, delay)
            sleep(delay)
    raise AssertionError("unreachable")


def job_of_kind(store: Store, job_id: str, kind: JobKind) -> JobRecord:
    record = store.jobs.get(job_id)
    if record.kind is not kind:
        raise InputError(f"job {job_id} is a {record.kind.value!r} job, not a {kind.value} job")
    return record


class Lease:
    """`with Lease(...)`: renew the work's lease every third of lease_seconds while the block
    runs. A renewal that finds the lease gone (lapsed and dispatched again elsewhere) is logged;
    the work goes on (results are written once)."""

    def __init__(self, store: Store, job_id: str, member: int | str, lease_seconds: float, worker: str):
        self.store, self.job_id, self.member, self.lease_seconds = store, job_id, member, lease_seconds
        self.worker = worker
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._renew, daemon=True, name=f"lease-{job_id}-{member}")

    def __enter__(self) -> Lease:
        self._hold()
        self.thread.start()
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.stopped.set()
        try:
            self.store.workers.release(self.worker)
        except redis.exceptions.RedisError as error:   # it expires on its own
            log.warning("could not clear what worker %s holds: %s", self.worker, error)

    def _hold(self) -> None:
        """Tell which work this worker holds (lstmq-worker gives it back on a bounded stop)."""
        self.store.workers.hold(self.worker, self.job_id, self.member, self.lease_seconds)

    def _renew(self) -> None:
        while not self.stopped.wait(self.lease_seconds / 3):
            try:
                self._hold()
                if not self.store.jobs.renew_lease(self.job_id, self.member, self.lease_seconds):
                    log.warning("job %s %s: the lease lapsed and was taken away; finishing anyway",
                                self.job_id, self.member)
                    return
            except redis.exceptions.RedisError as error:   # Redis away for a moment: the next beat tries again
                log.warning("job %s %s: could not renew the lease: %s", self.job_id, self.member, error)


def describe(error: BaseException) -> str:
    if isinstance(error, (LstmqError, LookupError, ValueError)):
        return str(error)
    return f"{type(error).__name__}: {error}"
