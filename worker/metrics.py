"""Prometheus metrics of one worker, served by the pool process that runs its tasks (where the
counters change) at http://HOST:PORT/metrics when the metrics_port setting is given. No
TensorFlow here: this module is imported by the Celery prefork parent too (via worker.tasks),
which defines the metrics but never serves them.

lstmq-worker gives worker i of several GPUs the port metrics_port + i (LSTMQ_METRICS_PORT in its
environment). A pool process that Celery starts again after a crash binds the same port again;
the port is bound with SO_REUSEADDR (the standard library's HTTP server), and a port still held
(an orphaned pool process of a worker that was killed) is retried in the background, 1, 2, 4, ...
s apart (at most 30 s), while the worker goes on with its tasks. Counters start from 0 in a new
pool process; Prometheus' rate() and increase() take such resets in their stride."""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger("lstmq.worker")

OUTCOMES = ("done", "failed", "skipped", "rejected")
CHUNK_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
EPOCH_BUCKETS = (1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)
FIRST_RETRY_S, MAX_RETRY_S = 1.0, 30.0

PROMPTS = Counter("lstmq_prompts_generated", "Prompts in the generate chunks this worker finished "
                  "(lines its decoder could not use included)", ["device"])
WORDS = Counter("lstmq_words_generated", "Words generated: words x samples per prompt, summed", ["device"])
CHUNKS = Counter("lstmq_chunks", "Generate chunk tasks by outcome: done, failed (recorded failed, or Redis "
                 "unreachable after every retry), skipped (redelivered, or its job cancelled or ended), "
                 "rejected (a message that cannot run: malformed, or its job does not exist)", ["device", "outcome"])
CHUNK_SECONDS = Histogram("lstmq_chunk_seconds", "Time one generate chunk task took, by outcome "
                          "(model loading included)", ["device", "outcome"], buckets=CHUNK_BUCKETS)
MODELS_LOADED = Gauge("lstmq_models_loaded", "Model versions loaded in this worker's model cache", ["device"])
DECODING = Gauge("lstmq_worker_decoding", "1 for the way this worker's decoders pick words: native (lstmq's "
                 "native CPU kernels), tensorflow (TensorFlow's ops: a GPU, native_kernels off, or the kernels "
                 "unavailable; lstmq workers says why) or unavailable (native_kernels on, no kernels)",
                 ["device", "decoding"])
EPOCH_SECONDS = Histogram("lstmq_train_epoch_seconds", "Time of each training epoch this worker finished",
                          ["device"], buckets=EPOCH_BUCKETS)


class State:
    device: str = "cpu"
    port: int | None = None
    bound: threading.Event = threading.Event()


STATE = State()


def setup(device: str, models_loaded: Callable[[], int], decoding: str = "tensorflow") -> None:
    """Label this process's metrics with its device and create every series at 0, so that a scrape
    shows them all from the start (and after a restart); `decoding`: the decoding path's kind."""
    STATE.device = device
    DECODING.labels(device=device, decoding=decoding).set(1)
    PROMPTS.labels(device=device)
    WORDS.labels(device=device)
    for outcome in OUTCOMES:
        CHUNKS.labels(device=device, outcome=outcome)
        CHUNK_SECONDS.labels(device=device, outcome=outcome)
    EPOCH_SECONDS.labels(device=device)
    MODELS_LOADED.labels(device=device).set_function(lambda: float(models_loaded()))


def chunk_finished(outcome: str, seconds: float, result: dict[str, Any] | None = None) -> None:
    """A generate chunk task ended with `outcome` (one of OUTCOMES) after `seconds`; `result` is
    what run_generate_chunk returned (its prompts and words) for a chunk that was done."""
    CHUNKS.labels(device=STATE.device, outcome=outcome).inc()
    CHUNK_SECONDS.labels(device=STATE.device, outcome=outcome).observe(seconds)
    if outcome == "done" and result:
        PROMPTS.labels(device=STATE.device).inc(result.get("prompts", 0))
        WORDS.labels(device=STATE.device).inc(result.get("words", 0))


def epoch_finished(event: dict[str, Any]) -> None:
    """worker.jobs.training.run_training's per-epoch hook: an {"event": "epoch", "seconds": ...} event."""
    EPOCH_SECONDS.labels(device=STATE.device).observe(float(event["seconds"]))


def url(port: int, host: str | None = None) -> str:
    return f"http://{host or os.uname().nodename}:{port}/metrics"


def serve(port: int, addr: str = "0.0.0.0", sleep: Callable[[float], None] = time.sleep) -> bool:
    """Serve the metrics on `addr`:`port` from a daemon thread of this process. True when bound
    now; else (the port is held) a background thread retries until it is, and False."""
    STATE.port = port
    if _bind(port, addr, first=True):
        return True

    def retry() -> None:
        delay = FIRST_RETRY_S
        while True:
            sleep(delay)
            if _bind(port, addr, first=False):
                return
            delay = min(delay * 2, MAX_RETRY_S)

    threading.Thread(target=retry, daemon=True, name="lstmq-metrics-bind").start()
    return False


def _bind(port: int, addr: str, first: bool) -> bool:
    try:
        start_http_server(port, addr)
    except OSError as error:
        log.warning("cannot serve Prometheus metrics on port %d: %s; %s", port, error.strerror or error,
                    "retrying in the background" if first else "retrying")
        return False
    STATE.bound.set()
    log.info("serving Prometheus metrics at %s (pid %d)", url(port), os.getpid())
    return True
