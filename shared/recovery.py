"""Failover that does not lean on Celery's visibility timeout.

A running chunk (or training slice) holds a lease in Redis that its worker renews every third of
lease_seconds. When a worker is killed or its machine is lost, the lease lapses; whoever notices
first (any worker's watchdog, or a CLI waiting on the job) takes the lapsed lease away, once,
and sends the work again. Results are written once, so a late duplicate is harmless. Work that
loses its worker more than redispatch_limit times is recorded failed. A submission whose producer
stopped renewing it is failed the same way. Both sides call recover(); nothing here needs
TensorFlow."""
from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

import kombu.exceptions
import redis

from lstmq.shared.errors import JobNotFound
from lstmq.shared.messages import ROUTES, Dispatcher, JobKind
from lstmq.shared.store import Store
from lstmq.shared.store.jobs import TRAIN

log = logging.getLogger("lstmq.recovery")

LAPSED = "its worker stopped renewing its lease (the worker was killed, or its machine lost)"
UNREACHABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, kombu.exceptions.OperationalError)
ORPHAN_AFTER_LEASES = 2   # a job idle this many lease periods, with its queue empty, lost its messages


@dataclass(frozen=True)
class Recovery:
    """What recover() did: `action` is 'redispatched', 'failed' or 'submission failed'."""
    job: str
    member: str          # a chunk number, 'train', or '' for the submission
    action: str

    def describe(self) -> str:
        if self.action == "submission failed":
            return f"job {self.job}: its submission stopped (producer gone); the job failed"
        what = "training" if self.member == TRAIN else f"chunk {self.member}"
        if self.action == "redispatched":
            return f"job {self.job}: {what}: {LAPSED}; dispatched again"
        return f"job {self.job}: {what}: {LAPSED} too often; recorded failed"


def recover(store: Store, dispatcher: Dispatcher, redispatch_limit: int, job_ids: Iterable[str] | None = None,
            lease_seconds: float = 30.0) -> list[Recovery]:
    """Check the given jobs (default: every job not yet final) once; return what was done.

    Besides lapsed leases: a job with work left but no lease, idle for ORPHAN_AFTER_LEASES lease
    periods while its queue is empty, has lost its messages (a purged queue, a write Redis
    refused): its pending work gets a lapsed lease, and goes out again like any other."""
    done: list[Recovery] = []
    for job_id in store.jobs.active() if job_ids is None else job_ids:
        try:
            done += recover_job(store, dispatcher, redispatch_limit, job_id, lease_seconds)
        except UNREACHABLE:
            raise          # the whole pass waits for Redis
        except Exception:   # noqa: BLE001 (one job that cannot be read or recovered must not stop the others)
            log.exception("could not check job %s for lapsed work; the other jobs are checked", job_id)
    for recovery in done:
        log.warning("%s", recovery.describe())
    return done


def recover_job(store: Store, dispatcher: Dispatcher, redispatch_limit: int, job_id: str,
                lease_seconds: float) -> list[Recovery]:
    """recover() for one job."""
    try:
        record = store.jobs.get(job_id)
    except JobNotFound:
        store.jobs.forget(job_id)   # expired or removed
        return []
    if record.status.finished:
        return []
    if record.kind is JobKind.GENERATE and not record.submitted and store.jobs.fail_lapsed_submission(job_id):
        return [Recovery(job_id, "", "submission failed")]
    if time.time() - record.updated > ORPHAN_AFTER_LEASES * lease_seconds:
        adopt_orphans(store, record)
    done = []
    for member in store.jobs.lapsed(job_id):
        outcome = store.jobs.claim_lapsed(job_id, member, redispatch_limit, LAPSED)
        if outcome == "redispatch":
            try:
                if member == TRAIN:
                    dispatcher.train(job_id)
                else:
                    dispatcher.send(JobKind.GENERATE, job=job_id, chunk=int(member))
            except Exception:
                store.jobs.mark_lapsed(job_id, member)   # not sent: the next check tries again
                raise
            done.append(Recovery(job_id, member, "redispatched"))
        elif outcome == "failed":
            done.append(Recovery(job_id, member, "failed"))
    return done


def adopt_orphans(store: Store, record) -> None:
    if store.jobs.leases(record.id) or store.queues.queue_length(ROUTES[record.kind].queue) > 0:
        return   # work in progress, or messages still waiting their turn
    if record.kind is JobKind.TRAIN:
        if store.training.lock_holder(record.id) is None:
            store.jobs.mark_lapsed(record.id, TRAIN)
    elif record.submitted:
        for chunk in store.jobs.pending_chunks(record.id, record.chunks):
            store.jobs.mark_lapsed(record.id, chunk)
