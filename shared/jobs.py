"""What a worker does with a job: the logic behind the thin Celery tasks. Training and
decoding modules (TensorFlow) are imported only when a job runs."""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

from lstmq.shared.errors import InputError, LstmqError
from lstmq.shared.params import check_generation_params
from lstmq.shared.store import JobKind, JobStatus, Store

log = logging.getLogger("lstmq.jobs")
LOCK_TTL_S = 30    # a training job's lock expires this long after its worker stopped refreshing it


class JobBusy(LstmqError):
    """Another live worker holds the job (a redelivered message while the first still runs)."""


class LockHeartbeat(threading.Thread):
    """Refreshes a job lock while training runs; dies with the process, so the lock expires
    LOCK_TTL_S after a crash and a redelivered task can take over."""

    def __init__(self, store: Store, job_id: str, owner: str):
        super().__init__(daemon=True, name=f"lock-{job_id}")
        self.store, self.job_id, self.owner = store, job_id, owner
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(LOCK_TTL_S / 3):
            try:
                if not self.store.refresh_lock(self.job_id, self.owner, LOCK_TTL_S):
                    log.warning("lost the lock of train job %s", self.job_id)
            except Exception as error:  # a Redis hiccup: try again at the next beat
                log.warning("could not refresh the lock of train job %s: %s", self.job_id, error)


def lock_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def take_lock(store: Store, job_id: str, owner: str) -> bool:
    """Take the job's lock; a lock left by a dead process on this host is taken over at once."""
    if store.acquire_lock(job_id, owner, LOCK_TTL_S):
        return True
    holder = store.lock_holder(job_id)
    if holder:
        host, _, rest = holder.partition(":")
        pid = rest.partition(":")[0]
        if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
            log.info("train job %s: its previous worker process %s is gone; taking over", job_id, pid)
            store.release_lock(job_id, holder)
            return store.acquire_lock(job_id, owner, LOCK_TTL_S)
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StoreCheckpoints:
    def __init__(self, store: Store, job_id: str):
        self.store, self.job_id = store, job_id

    def load(self):
        checkpoint = self.store.load_checkpoint(self.job_id)
        if checkpoint:
            log.info("train job %s: resuming from the checkpoint after epoch %d", self.job_id, checkpoint[0])
        return checkpoint

    def save(self, epoch, model_bytes, history):
        self.store.save_checkpoint(self.job_id, epoch, model_bytes, history)


def run_training(store: Store, job_id: str, worker: str) -> dict[str, Any]:
    """Train the job's model, register it as a new version; idempotent on redelivery."""
    from lstmq.shared.model import read_artifact
    from lstmq.shared.train import train

    record = store.job(job_id)
    if record.get("kind") != JobKind.TRAIN.value:
        raise InputError(f"job {job_id} is a {record.get('kind')!r} job, not a train job")
    if JobStatus(record["status"]).finished:
        log.info("train job %s is already %s; nothing to do", job_id, record["status"])
        return {"job": job_id, "status": record["status"], "skipped": True}
    owner = lock_owner()
    if not take_lock(store, job_id, owner):
        raise JobBusy(f"train job {job_id} is running on another worker")
    heartbeat = LockHeartbeat(store, job_id, owner)
    heartbeat.start()
    try:
        store.start_job(job_id, worker)
        name = record["model_name"]
        try:
            corpus = store.get_blob(record["corpus_sha256"]).decode("utf-8")
        except LookupError as error:
            raise InputError(f"train job {job_id}: {error}") from None

        def progress(event: dict[str, Any]) -> None:
            if event["event"] == "epoch":
                store.add_epoch(job_id, event)
                log.info("%s epoch %d/%d: loss %.4f, validation perplexity %s (%.1fs)", name,
                         event["epoch"], event["epochs"], event["loss"],
                         f"{event['val_perplexity']:.2f}" if "val_perplexity" in event else "n/a", event["seconds"])
            else:
                store.update_job(job_id, step=event["step"], steps=event["steps"], epoch_running=event["epoch"])

        result = train(corpus, record["params"], record["corpus_sha256"], progress, StoreCheckpoints(store, job_id))
        _, _, meta = read_artifact(result.artifact)
        meta.pop("history", None)
        version = store.register_model(job_id, name, result.artifact, meta)
        metrics = result.metrics
        store.finish_job(job_id, JobStatus.SUCCEEDED, model=f"{name}@{version}", version=version,
                         epochs_run=metrics["epochs_run"], loss=metrics["loss"],
                         val_loss=metrics["val_loss"], val_perplexity=metrics["val_perplexity"])
        store.drop_checkpoint(job_id)
        log.info("registered model %s@%d (%d epochs, %.1fs)", name, version,
                 metrics["epochs_run"], metrics["seconds"])
        return {"job": job_id, "status": "succeeded", "model": f"{name}@{version}"}
    except JobBusy:
        raise
    except Exception as error:
        store.finish_job(job_id, JobStatus.FAILED, error=_describe(error))
        raise
    finally:
        heartbeat.stopped.set()
        store.release_lock(job_id, owner)


def run_generate_chunk(store: Store, models, job_id: str, chunk: int, worker: str,
                       limits: dict[str, int]) -> dict[str, Any]:
    """Decode one chunk of a generate job and write its result once."""
    from lstmq.shared.generate import Request

    started = time.monotonic()
    record = store.job(job_id)
    if record.get("kind") != JobKind.GENERATE.value:
        raise InputError(f"job {job_id} is a {record.get('kind')!r} job, not a generate job")
    if store.chunk_finished(job_id, chunk):
        log.info("job %s chunk %d already written; skipping the redelivered task", job_id, chunk)
        return {"job": job_id, "chunk": chunk, "skipped": True}
    items = store.chunk(job_id, chunk)
    store.start_job(job_id, worker)
    try:
        loaded = models.get(record["model_name"], int(record["version"]))
        vocabulary = loaded.decoder.vocabulary
        results: list[dict[str, Any]] = []
        requests, positions = [], []
        for position, item in enumerate(items):
            try:
                prompt, params = _check_item(item, limits)
                ids, unknown = vocabulary.encode(prompt)
                if not ids:
                    raise InputError("prompt has no words")
            except (InputError, TypeError) as error:
                results.append({"error": str(error)})
                continue
            results.append({"unknown": unknown})
            positions.append(position)
            requests.append(Request(ids=ids, words=params["words"], temperature=params["temperature"],
                                    top_k=params["top_k"], top_p=params["top_p"], n=params["n"],
                                    seed=params["seed"], key=int(item["key"])))
        words = 0
        for position, request, samples in zip(positions, requests, loaded.decoder.continuations(requests)):
            results[position]["samples"] = samples
            words += request.words * request.n
    except Exception as error:
        store.fail_chunk(job_id, chunk, _describe(error), len(items))
        raise
    first = store.save_chunk_result(job_id, chunk, results, words)
    seconds = time.monotonic() - started
    log.info("job %s chunk %d: %d prompts, %d words with %s in %.2fs (%.0f words/s)%s", job_id, chunk,
             len(items), words, loaded.label, seconds, words / max(seconds, 1e-9), "" if first else " (duplicate)")
    return {"job": job_id, "chunk": chunk, "prompts": len(items), "words": words}


def _check_item(item: Any, limits: dict[str, int]) -> tuple[str, dict[str, Any]]:
    if not isinstance(item, dict):
        raise InputError(f"chunk item must be an object, got {type(item).__name__}")
    prompt = item.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError("field 'prompt' must be a non-empty string")
    if "key" not in item or not isinstance(item["key"], int):
        raise InputError("field 'key' must be an integer")
    return prompt, check_generation_params(item.get("params") or {}, limits["max_words"], limits["max_n"])


def _describe(error: BaseException) -> str:
    if isinstance(error, (LstmqError, LookupError, ValueError)):
        return str(error)
    return f"{type(error).__name__}: {error}"


def check_message(job: Any, chunk: Any = 0, positional: tuple = (), unexpected: dict | None = None) -> None:
    """Reject a malformed message before touching the store."""
    if positional or unexpected:
        raise InputError(f"message has unexpected arguments {list(positional)} {sorted(unexpected or {})}; "
                         f"expected keyword arguments job and chunk")
    if not isinstance(job, str) or not job:
        raise InputError(f"message has no job id (got {job!r})")
    if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 0:
        raise InputError(f"message has no valid chunk index (got {chunk!r})")

