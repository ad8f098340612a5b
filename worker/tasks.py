"""Thin tasks: parse the message (shared.messages), call worker.jobs, let Celery acknowledge.
A message that cannot run (malformed, or its job does not exist) is logged and rejected the
Celery way (Reject, not requeued); a job that fails is recorded failed in the store and the task
fails in Celery's eyes too (an expected error: logged without a traceback)."""
from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager

from billiard.exceptions import WorkerLostError
from celery import Task
from celery.exceptions import Reject
from celery.signals import celeryd_after_setup, worker_process_init
from celery.worker.request import Request

from lstmq.shared.errors import BadMessage, JobBusy, JobNotFound, LstmqError
from lstmq.shared.store.jobs import TRAIN
from lstmq.shared.messages import ROUTES, JobKind, parse_message
from lstmq.worker import metrics, runtime
from lstmq.worker.app import app
from lstmq.worker.lifetime import watch_parent

log = logging.getLogger("lstmq.worker")
BUSY_RETRY_S = 15   # a redelivered training task checks again this often while another worker holds the job


class LstmqRequest(Request):
    """A task request as the Celery main process handles it. When the pool process running it dies
    (the OOM killer, a crash in native code), the attempt it held is lost: recorded in the store
    with how the process ended and its lease given back at once, before Celery puts the message
    back (task_reject_on_worker_lost). Past redispatch_limit lost attempts the chunk (or training
    job) is recorded failed, and the message put back finds it so: nothing loops for ever."""

    def on_failure(self, exc_info, send_failed_event=True, return_ok=False):
        error = getattr(exc_info.exception, "exc", exc_info.exception)   # unwrap billiard's ExceptionWithTraceback
        if isinstance(error, WorkerLostError):
            record_lost_attempt(self.task.name, self.kwargs, self.hostname, self.worker_pid, lost_worker_reason(error))
        return super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)


def lost_worker_reason(error: WorkerLostError) -> str:
    """'signal 9 (SIGKILL), likely out of memory' from billiard's "Worker exited prematurely:
    signal 9 (SIGKILL) Job: 3.", or 'exitcode 1'."""
    found = re.search(r"(signal \d+ \(\w+\)|exitcode -?\d+)", str(error))
    reason = found.group(1) if found else str(error)
    return reason + (", likely out of memory" if reason.startswith("signal 9 ") else "")


def record_lost_attempt(task_name: str, kwargs: dict, node: str, pid: int | None, reason: str) -> None:
    """In the Celery main process: the pool process `pid` died running this task (see LstmqRequest).
    Never raises: if Redis cannot be told, the attempt's lease lapses and recovery counts it."""
    kind = next((route.kind for route in ROUTES.values() if route.task == task_name), None)
    try:
        message = parse_message(kind, (), kwargs or {})
        what = "training" if kind is JobKind.TRAIN else f"chunk {message.chunk}"
        member = TRAIN if kind is JobKind.TRAIN else message.chunk
        settings = runtime.ensure_settings()
        outcome = runtime.main_store().jobs.attempt_ended(message.job, member, f"{node} {pid}",
                                                          settings.redispatch_limit, reason)
    except (BadMessage, ValueError) as error:
        log.error("a task's worker process died (%s); its message cannot say which work: %s", reason, error)
        return
    except Exception as error:   # noqa: BLE001 (Redis away, say: the lease lapses instead)
        log.error("a task's worker process died (%s); could not record the lost attempt: %s", reason, error)
        return
    if outcome == "failed":
        log.error("job %s %s killed its worker process (%s) once too often: recorded failed", message.job, what, reason)
    elif outcome == "redispatch":
        log.error("job %s %s killed its worker process (%s); its lease is given back and it runs again",
                  message.job, what, reason)


class LstmqTask(Task):
    """Per-process resources (Celery's "Instantiation"): the store and the model cache are made
    once in the pool process (runtime.init_process) and shared by every task it runs."""
    throws = (LstmqError,)   # expected failures: recorded in the job, logged without a traceback
    Request = LstmqRequest

    @property
    def store(self):
        return runtime.process().store

    @property
    def models(self):
        return runtime.process().models

    @property
    def dispatcher(self):
        return runtime.process().dispatcher

    @contextmanager
    def rejecting(self, kind: JobKind, message: dict) -> Iterator[None]:
        """A message that cannot run is rejected (dropped, never redelivered), and logged."""
        try:
            yield
        except (BadMessage, JobNotFound) as error:
            log.error("rejected %s message %s: %s", kind.value, message, error)
            raise Reject(str(error), requeue=False) from None


@app.task(name=ROUTES[JobKind.TRAIN].task, bind=True, base=LstmqTask, max_retries=None)
def train(self, *args, **kwargs):
    from lstmq.worker.jobs.leases import retry_transient
    from lstmq.worker.jobs.training import run_training

    with self.rejecting(JobKind.TRAIN, kwargs):
        message = parse_message(JobKind.TRAIN, args, kwargs)
        settings = runtime.ensure_settings()
        try:
            return retry_transient(
                lambda: run_training(self.store, message.job, runtime.STATE.name, settings, self.dispatcher.train,
                                     epoch_done=metrics.epoch_finished),
                settings.task_retries, f"train job {message.job}")
        except JobBusy as error:
            log.info("%s; retrying in %ds", error, BUSY_RETRY_S)
            raise self.retry(countdown=BUSY_RETRY_S) from None


@app.task(name=ROUTES[JobKind.GENERATE].task, bind=True, base=LstmqTask)
def generate(self, *args, **kwargs):
    """One chunk; its outcome (done, skipped, failed, rejected), time, prompts and words are
    counted in worker.metrics."""
    started = time.monotonic()
    try:
        outcome = _generate(self, args, kwargs)
    except Reject:
        metrics.chunk_finished("rejected", time.monotonic() - started)
        raise
    except Exception:
        metrics.chunk_finished("failed", time.monotonic() - started)
        raise
    metrics.chunk_finished("skipped" if outcome.get("skipped") else "done", time.monotonic() - started, outcome)
    return outcome


def _generate(self, args, kwargs):
    from lstmq.worker.jobs.chunks import run_generate_chunk
    from lstmq.worker.jobs.leases import TRANSIENT, describe, retry_transient

    with self.rejecting(JobKind.GENERATE, kwargs):
        message = parse_message(JobKind.GENERATE, args, kwargs)
        settings = runtime.ensure_settings()
        what = f"job {message.job} chunk {message.chunk}"
        try:
            outcome = retry_transient(
                lambda: run_generate_chunk(self.store, self.models, message.job, message.chunk, runtime.STATE.name,
                                           settings), settings.task_retries, what)
            if not outcome.get("skipped"):
                runtime.STATE.chunks_done += 1
            return outcome
        except TRANSIENT as error:
            # out of retries: record the failure if Redis is back; else its lease lapses and
            # whoever notices dispatches it again (at most redispatch_limit times)
            reason = f"Redis unreachable after {settings.task_retries} retries: {describe(error)}"
            try:
                self.store.jobs.fail_chunk(message.job, message.chunk, reason)
            except TRANSIENT:
                log.error("%s: %s; could not record it either", what, reason)
            raise


@celeryd_after_setup.connect
def _remember_queues(sender, instance, **_):
    """The queues this worker consumes (told in its heartbeat), known before the pool forks."""
    runtime.STATE.queues = tuple(instance.app.amqp.queues.consume_from)


@worker_process_init.connect
def _init_pool_process(**_):
    watch_parent()   # a pool process never outlives its Celery main process
    runtime.init_process()
