"""The training job: one slice of a training run at a time (worker.engine.training does the fitting),
checkpoints in the store, the next slice queued, the new version registered and promoted or
not (promotion_decision). Every outcome is recorded: succeeded, failed or cancelled."""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from lstmq.shared.config import Settings
from lstmq.shared.errors import InputError, LstmqError
from lstmq.shared.messages import JobKind
from lstmq.shared.store import JobRecord, JobStatus, Store
from lstmq.shared.store.jobs import TRAIN
from lstmq.worker.jobs.leases import TRANSIENT, Lease, describe, job_of_kind, retry_transient

log = logging.getLogger("lstmq.jobs")


class StoreCheckpoints:
    """worker.engine.training's Checkpoints, kept in the store beside the job."""

    def __init__(self, store: Store, job_id: str, attempts: int):
        self.store, self.job_id, self.attempts = store, job_id, attempts

    def load(self):
        checkpoint = self.store.training.load_checkpoint(self.job_id)
        if checkpoint:
            log.info("train job %s: resuming from the checkpoint after epoch %d", self.job_id, checkpoint.epoch)
        return checkpoint

    def save(self, epoch, model_bytes, history, best):
        retry_transient(lambda: self.store.training.save_checkpoint(self.job_id, epoch, model_bytes, history, best),
                        self.attempts, f"train job {self.job_id}: checkpoint")


def run_training(store: Store, job_id: str, worker: str, settings: Settings,
                 next_slice: Callable[[str], None],
                 epoch_done: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run one slice of a training job (at most train_slice_seconds, then a checkpoint and
    `next_slice(job_id)`); the last slice registers the model as a new version. Idempotent on
    redelivery; raises JobBusy while another live worker holds the job. `epoch_done`, if given,
    is called with each epoch event this slice finishes ({"event": "epoch", "seconds", ...}: the
    worker's metrics); an error in it is logged, never fails the job."""
    from lstmq.shared.artifact import read_artifact
    from lstmq.worker.engine.training import train

    record = job_of_kind(store, job_id, JobKind.TRAIN)
    store = store.for_job(record)   # the job's result_ttl, not this worker's
    if record.status.finished:
        log.info("train job %s is already %s; nothing to do", job_id, record.status.value)
        return {"job": job_id, "status": record.status.value, "skipped": True}
    with store.training.lock(job_id):
        taken = store.jobs.take_lease(job_id, TRAIN, worker, settings.lease_seconds)
        if taken != "ok":
            log.info("train job %s is %s; nothing to do", job_id, taken)
            return {"job": job_id, "status": taken, "skipped": True}
        with Lease(store, job_id, TRAIN, settings.lease_seconds, worker):
            name = record.model_name
            try:
                try:
                    corpus = store.blobs.get(record.corpus_sha256 or "").decode("utf-8").removeprefix("\ufeff")
                except LookupError as error:
                    raise InputError(f"train job {job_id}: {error}") from None

                def progress(event: dict[str, Any]) -> None:
                    if event["event"] == "epoch":
                        retry_transient(lambda: store.training.add_epoch(job_id, event), settings.task_retries,
                                        f"train job {job_id}: epoch record")
                        log.info("%s epoch %d/%d: loss %.4f, validation perplexity %s (%.1fs)", name,
                                 event["epoch"], event["epochs"], event["loss"],
                                 f"{event['val_perplexity']:.2f}" if "val_perplexity" in event else "n/a",
                                 event["seconds"])
                        if epoch_done is not None:
                            try:
                                epoch_done(event)
                            except Exception as error:   # metrics only: training goes on
                                log.warning("train job %s: epoch hook failed: %s", job_id, describe(error))
                    else:
                        try:
                            running = {"batch_loss": round(event["loss"], 5)} if event.get("loss") is not None \
                                and event["loss"] == event["loss"] else {}   # not NaN
                            store.jobs.update(job_id, step=event["step"], steps=event["steps"],
                                              epoch_running=event["epoch"], **running)
                        except TRANSIENT as error:   # progress only: the next report tries again
                            log.warning("train job %s: could not record progress: %s", job_id, error)

                def cancelled() -> bool:
                    try:
                        return store.jobs.get(job_id).status.finished
                    except TRANSIENT:
                        return False

                result = train(corpus, record.params, record.corpus_sha256, progress,
                               StoreCheckpoints(store, job_id, settings.task_retries),
                               slice_seconds=settings.train_slice_seconds, cancelled=cancelled)
                if result.stopped == "cancelled" or cancelled():
                    store.training.drop_checkpoint(job_id)
                    log.info("train job %s was cancelled after %d epochs", job_id, len(result.history))
                    return {"job": job_id, "status": "cancelled"}
                if store.training.complete_history(job_id, result.history):   # epoch records lost in a failover
                    log.warning("train job %s: epoch records lost in Redis were written again", job_id)
                if not result.finished:
                    store.jobs.update(job_id, slices=record.slices + 1)
                    store.jobs.drop_lease(job_id, TRAIN)
            except TRANSIENT:
                raise          # retried by the task; the checkpoint keeps the finished epochs
            except Exception as error:
                store.jobs.finish(job_id, JobStatus.FAILED, error=describe(error))
                raise
            if result.finished:
                _, _, meta = read_artifact(result.artifact)
                meta.pop("history", None)
                metrics = result.metrics
                make_current, promotion = promotion_decision(store, record, meta)
                version = store.registry.register(job_id, name, result.artifact, meta, make_current)
                store.jobs.finish(job_id, JobStatus.SUCCEEDED, model=f"{name}@{version}", version=version,
                                  epochs_run=metrics["epochs_run"], loss=metrics["loss"],
                                  val_loss=metrics["val_loss"], val_perplexity=metrics["val_perplexity"],
                                  promoted=make_current, promotion=promotion)
                store.training.drop_checkpoint(job_id)
    if not result.finished:   # the lock is released: the next slice may start anywhere
        next_slice(job_id)
        log.info("train job %s: slice done after epoch %d of %d; next slice queued", job_id,
                 len(result.history), record.params.epochs)
        return {"job": job_id, "status": "running", "epochs": len(result.history)}
    log.info("registered model %s@%d (%d epochs, %.1fs)", name, version, metrics["epochs_run"], metrics["seconds"])
    return {"job": job_id, "status": "succeeded", "model": f"{name}@{version}"}


HELD_OUT_KEYS = ("validation_split", "shuffle_seed", "context_window")   # with the corpus: the held-out lines


def promotion_decision(store: Store, record: JobRecord, meta: dict[str, Any]) -> tuple[bool, str]:
    """Whether the new version becomes `current`, and why: always (the default), never
    (--no-promote), or only when its validation perplexity beats the current version's on the
    same held-out lines (--promote-if-better; other held-out lines are not a comparison)."""
    mode = record.promote or "always"
    name = record.model_name or ""
    try:
        _, current = store.registry.resolve(f"{name}@current")
    except LstmqError:
        return True, "promoted: the model's first version (a model always has a current version)"
    if mode == "never":
        return False, f"not promoted (--no-promote): {name}@{current} stays current"
    if mode == "always":
        return True, f"promoted over {name}@{current}"
    old = store.registry.meta(name, current)
    new_training, old_training = meta.get("training", {}), old.get("training", {})
    same_lines = meta.get("corpus_sha256") == old.get("corpus_sha256") and all(
        new_training.get(key) == old_training.get(key) for key in HELD_OUT_KEYS)
    new_ppl = meta.get("metrics", {}).get("val_perplexity")
    old_ppl = old.get("metrics", {}).get("val_perplexity")
    if not same_lines:
        return False, (f"not promoted: {name}@{current} was validated on other held-out lines (another corpus, "
                       f"or other {', '.join(HELD_OUT_KEYS)}), so the perplexities do not compare")
    if new_ppl is None or old_ppl is None:
        return False, "not promoted: no validation perplexity to compare (validation_split 0)"
    if new_ppl < old_ppl:
        return True, (f"promoted: validation perplexity {new_ppl:.2f} beats {name}@{current}'s {old_ppl:.2f} "
                      f"on the same held-out lines")
    return False, (f"not promoted: validation perplexity {new_ppl:.2f} does not beat {name}@{current}'s "
                   f"{old_ppl:.2f} on the same held-out lines")
