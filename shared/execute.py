"""What a worker does with a job: the logic behind the thin Celery tasks. Training and
decoding modules (TensorFlow) are imported only when a job runs."""
from __future__ import annotations

import logging
import time
from typing import Any

from lstmq.shared.errors import InputError, LstmqError
from lstmq.shared.messages import JobKind, PromptItem
from lstmq.shared.params import Limits
from lstmq.shared.store import JobRecord, JobStatus, Store

log = logging.getLogger("lstmq.jobs")


def job_of_kind(store: Store, job_id: str, kind: JobKind) -> JobRecord:
    record = store.jobs.get(job_id)
    if record.kind is not kind:
        raise InputError(f"job {job_id} is a {record.kind.value!r} job, not a {kind.value} job")
    return record


class StoreCheckpoints:
    """shared.train's Checkpoints, kept in the store beside the job."""

    def __init__(self, store: Store, job_id: str):
        self.store, self.job_id = store, job_id

    def load(self):
        checkpoint = self.store.training.load_checkpoint(self.job_id)
        if checkpoint:
            log.info("train job %s: resuming from the checkpoint after epoch %d", self.job_id, checkpoint[0])
        return checkpoint

    def save(self, epoch, model_bytes, history):
        self.store.training.save_checkpoint(self.job_id, epoch, model_bytes, history)


def run_training(store: Store, job_id: str, worker: str) -> dict[str, Any]:
    """Train the job's model, register it as a new version; idempotent on redelivery.
    Raises JobBusy while another live worker holds the job."""
    from lstmq.shared.model import read_artifact
    from lstmq.shared.train import train

    record = job_of_kind(store, job_id, JobKind.TRAIN)
    if record.status.finished:
        log.info("train job %s is already %s; nothing to do", job_id, record.status.value)
        return {"job": job_id, "status": record.status.value, "skipped": True}
    with store.training.lock(job_id):
        try:
            store.jobs.start(job_id, worker)
            name = record.model_name
            try:
                corpus = store.blobs.get(record.corpus_sha256 or "").decode("utf-8")
            except LookupError as error:
                raise InputError(f"train job {job_id}: {error}") from None

            def progress(event: dict[str, Any]) -> None:
                if event["event"] == "epoch":
                    store.training.add_epoch(job_id, event)
                    log.info("%s epoch %d/%d: loss %.4f, validation perplexity %s (%.1fs)", name,
                             event["epoch"], event["epochs"], event["loss"],
                             f"{event['val_perplexity']:.2f}" if "val_perplexity" in event else "n/a", event["seconds"])
                else:
                    store.jobs.update(job_id, step=event["step"], steps=event["steps"], epoch_running=event["epoch"])

            result = train(corpus, record.params, record.corpus_sha256, progress, StoreCheckpoints(store, job_id))
            _, _, meta = read_artifact(result.artifact)
            meta.pop("history", None)
            version = store.registry.register(job_id, name, result.artifact, meta)
            metrics = result.metrics
            store.jobs.finish(job_id, JobStatus.SUCCEEDED, model=f"{name}@{version}", version=version,
                              epochs_run=metrics["epochs_run"], loss=metrics["loss"],
                              val_loss=metrics["val_loss"], val_perplexity=metrics["val_perplexity"])
            store.training.drop_checkpoint(job_id)
        except Exception as error:
            store.jobs.finish(job_id, JobStatus.FAILED, error=describe(error))
            raise
    log.info("registered model %s@%d (%d epochs, %.1fs)", name, version, metrics["epochs_run"], metrics["seconds"])
    return {"job": job_id, "status": "succeeded", "model": f"{name}@{version}"}


def run_generate_chunk(store: Store, models, job_id: str, chunk: int, worker: str, limits: Limits) -> dict[str, Any]:
    """Decode one chunk of a generate job and write its result once."""
    from lstmq.shared.generate import Request

    started = time.monotonic()
    record = job_of_kind(store, job_id, JobKind.GENERATE)
    if store.jobs.chunk_finished(job_id, chunk):
        log.info("job %s chunk %d already written; skipping the redelivered task", job_id, chunk)
        return {"job": job_id, "chunk": chunk, "skipped": True}
    items = store.jobs.chunk(job_id, chunk)
    store.jobs.start(job_id, worker)
    try:
        loaded = models.get(record.model_name, record.version)
        vocabulary = loaded.decoder.vocabulary
        results: list[dict[str, Any]] = []
        requests, positions = [], []
        for position, raw in enumerate(items):
            try:
                item = PromptItem.parse(raw, limits)
                ids, unknown = vocabulary.encode(item.prompt)
                if not ids:
                    raise InputError("prompt has no words")
            except InputError as error:
                results.append({"error": str(error)})
                continue
            results.append({"unknown": unknown})
            positions.append(position)
            requests.append(Request(ids=ids, params=item.params, key=item.key))
        words = 0
        for position, request, samples in zip(positions, requests, loaded.decoder.continuations(requests)):
            results[position]["samples"] = samples
            words += request.words * request.n
    except Exception as error:
        store.jobs.fail_chunk(job_id, chunk, describe(error), len(items))
        raise
    first = store.jobs.save_result(job_id, chunk, results, words)
    seconds = time.monotonic() - started
    log.info("job %s chunk %d: %d prompts, %d words with %s in %.2fs (%.0f words/s)%s", job_id, chunk,
             len(items), words, loaded.label, seconds, words / max(seconds, 1e-9), "" if first else " (duplicate)")
    return {"job": job_id, "chunk": chunk, "prompts": len(items), "words": words}


def describe(error: BaseException) -> str:
    if isinstance(error, (LstmqError, LookupError, ValueError)):
        return str(error)
    return f"{type(error).__name__}: {error}"
