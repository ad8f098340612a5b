"""The Celery app: JSON only, queues `train` and `generate`, late acks, one message at a time."""
from __future__ import annotations

from celery import Celery
from kombu import Exchange, Queue

from lstmq.shared.config import Settings

TRAIN_TASK, GENERATE_TASK = "lstmq.train", "lstmq.generate"
TRAIN_QUEUE, GENERATE_QUEUE = "train", "generate"
QUEUES = (TRAIN_QUEUE, GENERATE_QUEUE)


def create_app(settings: Settings, label: str = "") -> Celery:
    app = Celery("lstmq", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,            # results live in the store, written idempotently
        task_acks_late=True,                # a task is acknowledged only after it finished...
        task_reject_on_worker_lost=True,    # ...and redelivered when its process died
        worker_prefetch_multiplier=1,       # long tasks: never hold messages another worker could run
        task_queues=[Queue(name, Exchange(name, type="direct"), routing_key=name) for name in QUEUES],
        task_default_queue=GENERATE_QUEUE,
        task_routes={TRAIN_TASK: {"queue": TRAIN_QUEUE}, GENERATE_TASK: {"queue": GENERATE_QUEUE}},
        broker_transport_options={"visibility_timeout": settings.visibility_timeout},
        broker_connection_retry_on_startup=True,
        worker_proc_alive_timeout=180,      # the pool process imports TensorFlow before saying it is up
        worker_send_task_events=False,
        worker_log_format=f"[%(asctime)s: %(levelname)s/%(processName)s] {label}%(message)s",
        worker_task_log_format=f"[%(asctime)s: %(levelname)s/%(processName)s] {label}%(task_name)s[%(task_id)s]: %(message)s",
    )
    return app
