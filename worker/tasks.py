"""Thin tasks: check the message, call shared.jobs, let Celery acknowledge. A bad message or a
job that cannot run is logged, recorded in the job where there is one, and acknowledged (never
retried forever, never fatal to the worker)."""
from __future__ import annotations

import logging

from celery import Celery
from celery.signals import worker_process_init

from lstmq.shared.errors import JobNotFound, LstmqError
from lstmq.worker import runtime
from lstmq.worker.app import GENERATE_TASK, TRAIN_TASK

log = logging.getLogger("lstmq.worker")
BUSY_RETRY_S = 15   # a redelivered training task checks again this often while another worker holds the job


def register(app: Celery) -> None:
    @app.task(name=TRAIN_TASK, bind=True, max_retries=None)
    def train(self, *positional, job=None, **unexpected):
        from lstmq.shared.jobs import JobBusy, check_message, run_training
        try:
            check_message(job, 0, positional, unexpected)
            store, _ = runtime.ensure_process()
            return run_training(store, job, runtime.STATE.name)
        except JobBusy as error:
            log.info("%s; retrying in %ds", error, BUSY_RETRY_S)
            raise self.retry(countdown=BUSY_RETRY_S) from None
        except (JobNotFound, LstmqError, ValueError) as error:
            log.error("train job %r failed: %s", job, error)
            return {"job": job, "error": str(error)}

    @app.task(name=GENERATE_TASK, bind=True)
    def generate(self, *positional, job=None, chunk=None, **unexpected):
        from lstmq.shared.jobs import check_message, run_generate_chunk
        try:
            check_message(job, chunk, positional, unexpected)
            store, models = runtime.ensure_process()
            settings = runtime.ensure_settings()
            limits = {"max_words": settings.max_words, "max_n": settings.max_n}
            return run_generate_chunk(store, models, job, chunk, runtime.STATE.name, limits)
        except (JobNotFound, LstmqError, ValueError, LookupError) as error:
            log.error("generate task failed (job %r chunk %r): %s", job, chunk, error)
            return {"job": job, "chunk": chunk, "error": str(error)}


@worker_process_init.connect
def _init_pool_process(**_):
    runtime.init_process()
