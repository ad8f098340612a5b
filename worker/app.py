"""The Celery app, importable for Celery's own tools:

    celery -A lstmq.worker.app inspect ping
    celery -A lstmq.worker.app flower

Its settings are read when Celery first needs them (never at import): those lstmq-worker
configured in this process, else the LSTMQ_* environment and LSTMQ_CONFIG (broker_url and
visibility_timeout). Queues, routes and JSON come from the task contract (shared.messages)."""
from __future__ import annotations

from typing import Any

from celery import Celery

from lstmq.shared.config import Settings
from lstmq.shared.messages import celery_config
from lstmq.worker import runtime


def worker_config(settings: Settings, label: str = "") -> dict[str, Any]:
    from lstmq.worker.transport import broker_transport   # here: only workers and Celery's tools need it
    return {
        **celery_config(settings),
        "broker_transport": broker_transport(settings.broker_url),   # undecodable queue entries -> dead-letter list
        "task_acks_late": True,                # a task is acknowledged only after it finished...
        "task_reject_on_worker_lost": True,    # ...and redelivered when its process died
        "worker_prefetch_multiplier": 1,       # long tasks: never hold messages another worker could run
        "worker_proc_alive_timeout": 180,      # the pool process imports TensorFlow before saying it is up
        "worker_send_task_events": True,       # Flower and `celery events` see lstmq's tasks
        "task_send_sent_event": True,
        # a demoted primary answers READONLY after a Sentinel failover: a channel error to retry on
        "broker_channel_error_retry": True,
        "worker_log_format": f"[%(asctime)s: %(levelname)s/%(processName)s] {label}%(message)s",
        "worker_task_log_format": f"[%(asctime)s: %(levelname)s/%(processName)s] {label}"
                                  "%(task_name)s[%(task_id)s]: %(message)s",
    }


app = Celery("lstmq", set_as_current=False, include=["lstmq.worker.tasks"])
app.add_defaults(lambda: worker_config(runtime.ensure_settings(), runtime.describe()))
