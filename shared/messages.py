"""The task contract between the producer and the workers, in one place:

- job kind <-> queue <-> task name (ROUTES), and the Celery settings both sides share;
- the send-only Dispatcher that the producer uses (no task code, nothing from lstmq.worker);
- the parsing of messages and chunk items that the tasks use (a message is never trusted).

Messages are JSON and carry only ids: {"job": ID} for training, {"job": ID, "chunk": N} for a
generate chunk. Everything else (corpus, prompts, parameters, results) lives in the store.
Celery and kombu are imported only when a dispatcher or a queue declaration is made."""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from typing import Any

from lstmq.shared.config import Settings
from lstmq.shared.errors import BadMessage
from lstmq.shared.params import GenerationParams


class JobKind(str, Enum):
    TRAIN = "train"
    GENERATE = "generate"


@dataclass(frozen=True)
class Route:
    kind: JobKind
    queue: str
    task: str


ROUTES: dict[JobKind, Route] = {
    JobKind.TRAIN: Route(JobKind.TRAIN, "train", "lstmq.train"),
    JobKind.GENERATE: Route(JobKind.GENERATE, "generate", "lstmq.generate"),
}
QUEUES = tuple(route.queue for route in ROUTES.values())


def celery_queues() -> list[Any]:
    """Each queue bound to its own direct exchange (declared by whoever sends or consumes first)."""
    from kombu import Exchange, Queue

    return [Queue(route.queue, Exchange(route.queue, type="direct"), routing_key=route.queue)
            for route in ROUTES.values()]


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery settings that sender and consumer must agree on: JSON only, the queues, routes;
    for a rediss:// broker, TLS with the broker_tls_* settings (kombu would otherwise connect to a
    rediss:// URL without checking the server's certificate); for a sentinel:// broker, the
    primary's name and the sentinels' password (and TLS with sentinel_tls). Results are ignored, so no result
    backend and no redis_backend_use_ssl."""
    tls: dict[str, Any] = {}
    transport_options: dict[str, Any] = {"visibility_timeout": settings.visibility_timeout}
    sentinel = settings.broker_url.lower().startswith("sentinel://")
    if sentinel:   # kombu's sentinel:// transport: the primary's name, and the sentinels' own password
        transport_options["master_name"] = settings.sentinel_master
        sentinel_kwargs: dict[str, Any] = {"socket_connect_timeout": 5, "socket_timeout": 5}
        if settings.sentinel_password:
            sentinel_kwargs["password"] = settings.sentinel_password
        transport_options["sentinel_kwargs"] = sentinel_kwargs
    if settings.broker_url.lower().startswith("rediss://") or (sentinel and settings.sentinel_tls):
        import ssl

        cert_reqs = settings.broker_tls_cert_reqs
        tls["broker_use_ssl"] = {
            "ssl_cert_reqs": {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL,
                              "none": ssl.CERT_NONE}[cert_reqs],
            "ssl_ca_certs": settings.broker_tls_ca_certs,
            "ssl_certfile": settings.broker_tls_certfile,
            "ssl_keyfile": settings.broker_tls_keyfile,
            "ssl_check_hostname": cert_reqs == "required",
        }
        if sentinel:
            transport_options["sentinel_kwargs"].update({"ssl": True, **tls["broker_use_ssl"]})
    return {
        **tls,
        "broker_url": settings.broker_url,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "task_ignore_result": True,          # results live in the store, written idempotently
        "task_queues": celery_queues(),
        "task_default_queue": ROUTES[JobKind.GENERATE].queue,
        "task_routes": {route.task: {"queue": route.queue} for route in ROUTES.values()},
        "broker_transport_options": transport_options,
        "broker_connection_retry_on_startup": True,
    }


class Dispatcher:
    """Sends task messages; runs no task. The producer's only way to reach the workers."""

    def __init__(self, settings: Settings):
        from celery import Celery

        self.app = Celery("lstmq-producer", set_as_current=False)
        self.app.conf.update(celery_config(settings))

    def send(self, kind: JobKind, producer: Any = None, **fields: Any) -> None:
        route = ROUTES[kind]
        self.app.send_task(route.task, kwargs=fields, queue=route.queue, producer=producer)

    def train(self, job_id: str) -> None:
        self.send(JobKind.TRAIN, job=job_id)

    @contextmanager
    def chunks(self, job_id: str) -> Iterator[Any]:
        """Send many chunk messages over one connection: `send(chunk)` for each."""
        with self.app.producer_or_acquire() as producer:
            yield lambda chunk: self.send(JobKind.GENERATE, producer, job=job_id, chunk=chunk)


# -- parsing, on the worker side ------------------------------------------------------------------
@dataclass(frozen=True)
class TrainMessage:
    job: str


@dataclass(frozen=True)
class ChunkMessage:
    job: str
    chunk: int


def parse_message(kind: JobKind, args: tuple, kwargs: Mapping[str, Any]) -> TrainMessage | ChunkMessage:
    """The message's ids, or BadMessage saying what is wrong with it."""
    expected = ("job",) if kind is JobKind.TRAIN else ("job", "chunk")
    unexpected = sorted(set(kwargs) - set(expected))
    if args or unexpected:
        raise BadMessage(f"message has unexpected arguments {list(args)} {unexpected}; "
                         f"expected keyword arguments {' and '.join(expected)}")
    job = kwargs.get("job")
    if not isinstance(job, str) or not job:
        raise BadMessage(f"message has no job id (got {job!r})")
    if kind is JobKind.TRAIN:
        return TrainMessage(job)
    chunk = kwargs.get("chunk")
    if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 0:
        raise BadMessage(f"message has no valid chunk index (got {chunk!r})")
    return ChunkMessage(job, chunk)


@dataclass(frozen=True)
class PromptItem:
    """One prompt of a chunk, as the producer stores it: its seed-file line and id, the text,
    its key in the random stream and its parameters."""
    line: int
    id: Any
    prompt: str
    key: int
    params: GenerationParams

    def to_dict(self) -> dict[str, Any]:
        return {"line": self.line, "id": self.id, "prompt": self.prompt, "key": self.key,
                "params": self.params.to_dict()}
