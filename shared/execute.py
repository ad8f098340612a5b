"""What a worker does with a job: the logic behind the thin Celery tasks. Training and
decoding modules (TensorFlow) are imported only when a job runs.

Every outcome is recorded: a chunk ends with its result or failed with its reason (missing
input, Redis out of memory, a bug alike); a training job ends succeeded, failed or cancelled.
Transient errors (Redis unreachable) are retried in place with backoff (retry_transient), and
work in progress holds a lease (Lease) so that a lost worker's work is dispatched again."""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import redis

from lstmq.shared.config import Settings
from lstmq.shared.errors import InputError, LstmqError
from lstmq.shared.messages import JobKind
from lstmq.shared.params import SAMPLING_STREAM, prompt_key
from lstmq.shared.store import JobRecord, JobStatus, Store
from lstmq.shared.store.health import is_out_of_memory, out_of_memory
from lstmq.shared.store.jobs import TRAIN, ChunkInput, ChunkResult

log = logging.getLogger("lstmq.jobs")
TRANSIENT = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
RETRY_BACKOFF_MAX_S = 60.0
T = TypeVar("T")


def retry_transient(operation: Callable[[], T], attempts: int, what: str,
                    sleep: Callable[[float], None] = time.sleep) -> T:
    """Run `operation`; while Redis is unreachable, try again after 1, 2, 4, ... s (at most 60 s
    apart), `attempts` more times, each logged; then the last error is raised."""
    for attempt in range(attempts + 1):
        try:
            return operation()
        except TRANSIENT as error:
            if attempt == attempts:
                raise
            delay = min(2.0 ** attempt, RETRY_BACKOFF_MAX_S)
            log.warning("%s: Redis unreachable (%s); retry %d of %d in %.0fs", what, error, attempt + 1, attempts, delay)
            sleep(delay)
    raise AssertionError("unreachable")


def job_of_kind(store: Store, job_id: str, kind: JobKind) -> JobRecord:
    record = store.jobs.get(job_id)
    if record.kind is not kind:
        raise InputError(f"job {job_id} is a {record.kind.value!r} job, not a {kind.value} job")
    return record


class Lease:
    """`with Lease(...)`: renew the work's lease every third of lease_seconds while the block
    runs. A renewal that finds the lease gone (lapsed and dispatched again elsewhere) is logged;
    the work goes on (results are written once)."""

    def __init__(self, store: Store, job_id: str, member: int | str, lease_seconds: float, worker: str):
        self.store, self.job_id, self.member, self.lease_seconds = store, job_id, member, lease_seconds
        self.worker = worker
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._renew, daemon=True, name=f"lease-{job_id}-{member}")

    def __enter__(self) -> Lease:
        self._hold()
        self.thread.start()
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.stopped.set()
        try:
            self.store.workers.release(self.worker)
        except redis.exceptions.RedisError as error:   # it expires on its own
            log.warning("could not clear what worker %s holds: %s", self.worker, error)

    def _hold(self) -> None:
        """Tell which work this worker holds (lstmq-worker gives it back on a bounded stop)."""
        self.store.workers.hold(self.worker, self.job_id, self.member, self.lease_seconds)

    def _renew(self) -> None:
        while not self.stopped.wait(self.lease_seconds / 3):
            try:
                self._hold()
                if not self.store.jobs.renew_lease(self.job_id, self.member, self.lease_seconds):
                    log.warning("job %s %s: the lease lapsed and was taken away; finishing anyway",
                                self.job_id, self.member)
                    return
            except redis.exceptions.RedisError as error:   # Redis away for a moment: the next beat tries again
                log.warning("job %s %s: could not renew the lease: %s", self.job_id, self.member, error)


class StoreCheckpoints:
    """shared.train's Checkpoints, kept in the store beside the job."""

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
    from lstmq.shared.model import read_artifact
    from lstmq.shared.train import train

    record = job_of_kind(store, job_id, JobKind.TRAIN)
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


def run_generate_chunk(store: Store, models, job_id: str, chunk: int, worker: str,
                       settings: Settings) -> dict[str, Any]:
    """Decode one chunk of a generate job and write its result once; or record it failed."""
    started = time.monotonic()
    record = job_of_kind(store, job_id, JobKind.GENERATE)
    taken = store.jobs.take_lease(job_id, chunk, worker, settings.lease_seconds)
    if taken == "finished":
        log.info("job %s chunk %d already has an outcome; skipping the redelivered task", job_id, chunk)
        return {"job": job_id, "chunk": chunk, "skipped": True}
    if taken != "ok":
        log.info("job %s is %s; skipping chunk %d", job_id, taken, chunk)
        return {"job": job_id, "chunk": chunk, "skipped": True}
    items: ChunkInput | None = None
    with Lease(store, job_id, chunk, settings.lease_seconds, worker):
        try:
            try:
                items = store.jobs.chunk_input(job_id, chunk)
            except LookupError as error:
                raise InputError(f"chunk {chunk}: its input is gone ({error})") from None
            loaded = models.get(record.model_name, record.version)
            if record.sampling_stream != SAMPLING_STREAM:   # once per job: which stream its samples come from
                store.jobs.update(job_id, sampling_stream=SAMPLING_STREAM)
            with settled_if_traced(loaded.decoder):
                results, words = decode_items(items, loaded.decoder, settings)
            try:
                first = store.jobs.save_result(job_id, chunk, results, words)
            except redis.exceptions.ResponseError as error:   # OutOfMemoryError is one
                if is_out_of_memory(error):
                    raise out_of_memory(store.redis, error) from None
                raise
        except TRANSIENT:
            raise      # retried by the task (the lease lapses if it never comes back)
        except Exception as error:
            prompts = len(items) if items is not None else store.jobs.chunk_prompts(job_id, chunk)
            store.jobs.fail_chunk(job_id, chunk, describe(error), prompts)
            log.error("job %s chunk %d failed: %s", job_id, chunk, describe(error))
            raise
    seconds = time.monotonic() - started
    log.info("job %s chunk %d: %d prompts, %d words with %s in %.2fs (%.0f words/s)%s", job_id, chunk,
             len(items), words, loaded.label, seconds, words / max(seconds, 1e-9), "" if first else " (duplicate)")
    return {"job": job_id, "chunk": chunk, "prompts": len(items), "words": words}


def settle_heap() -> None:
    """Collect the garbage, then move every object left to Python's permanent generation (gc.freeze),
    out of the way of its full collections: a worker holds TensorFlow's and Keras's objects (about
    400,000 with the seed's network), and each full collection scanned them all, 0.18 s on 2 cores,
    about 3 times per 100,000 prompts decoded. Run when a model was loaded or traced: what exists
    then lives as long as the model. The frozen objects are unfrozen first, so that a model dropped
    from the cache since the last call is collected."""
    import gc

    gc.unfreeze()
    gc.collect()
    gc.freeze()


@contextmanager
def settled_if_traced(decoder) -> Iterator[None]:
    """settle_heap() after the block if the decoder traced new graphs in it (they live as long as
    the model)."""
    traced = decoder.tracing_count()
    yield
    if decoder.tracing_count() != traced:
        settle_heap()


_HOST: ThreadPoolExecutor | None = None   # this process's host-side thread (see decode_items)
_HOST_PID = 0


def host_thread() -> ThreadPoolExecutor:
    """One thread per process for the host-side work that overlaps decoding (made after a fork)."""
    global _HOST, _HOST_PID
    if _HOST is None or _HOST_PID != os.getpid():
        _HOST, _HOST_PID = ThreadPoolExecutor(1, thread_name_prefix="lstmq-host"), os.getpid()
    return _HOST


def decode_items(chunk: ChunkInput | list[Any], decoder, settings: Settings) -> tuple[ChunkResult, int]:
    """A chunk's results as columns (ChunkResult: per item its samples and log-probabilities, its
    unknown words, or its error), and the words generated. `chunk`: its prompts as columns, as
    the worker reads them (or item dicts, as an earlier lstmq stored them).

    The chunk is decoded in slices. While the decoder (TensorFlow, which releases the GIL) runs
    slice k, the host thread checks and tokenizes slice k+1 and appends slice k-1's output to the
    result columns, so that a big chunk's host work hides behind its decoding. A slice holds
    decode_batch_size (max_rows) to 4 x that many prompts, aiming at 4 slices per chunk: the
    decoder refills the rows of prompts that finished early from those still waiting (mixed
    lengths), which works best with more prompts than rows. No dict is made per prompt: on a
    CPU worker the host thread takes its time from the decoder's cores."""
    if not isinstance(chunk, ChunkInput):
        chunk = ChunkInput.from_items(chunk)
    plan = ChunkPlan(chunk, decoder.vocabulary, settings)
    rows = max(1, decoder.max_rows)
    count = len(chunk)
    step = max(rows, min(4 * rows, -(-count // 4)))
    bounds = [(start, min(count, start + step)) for start in range(0, count, step)] or [(0, 0)]
    host = host_thread()
    prepared = host.submit(plan.prepare, *bounds[0])
    finishing = None
    words = 0
    for index in range(len(bounds)):
        requests, positions = prepared.result()
        if index + 1 < len(bounds):
            prepared = host.submit(plan.prepare, *bounds[index + 1])
        scored = decode_splitting(decoder, requests)
        if finishing is not None:
            finishing.result()
        finishing = host.submit(plan.finish, positions, scored)
        words += sum(request.words * request.n for request in requests)
    finishing.result()
    return plan.result(), words


class ChunkPlan:
    """The host side of one chunk: prepare() checks and tokenizes a slice of its prompts into
    decoder requests, finish() appends a slice's decoded samples to the result columns, in order."""

    def __init__(self, chunk: ChunkInput, vocabulary, settings: Settings):
        self.chunk, self.vocabulary = chunk, vocabulary
        self.check = params_checker(settings.limits())
        try:   # the chunk's parameters, checked once (most prompts have no others)
            self.defaults: Any = self.check(chunk.defaults)
        except InputError as error:
            self.defaults = error
        self.errors: dict[int, str] = dict(chunk.invalid)
        self.unknown: dict[int, list[str]] = {}
        self.counts = [0] * len(chunk)
        self.samples: list[str] = []
        self.logprobs: list[float] = []

    def prepare(self, start: int, end: int) -> tuple[list[Any], list[int]]:
        """The requests of prompts start .. end-1 that can be decoded, with their positions; the
        others' errors are recorded."""
        from lstmq.shared.generate import Request

        chunk, errors, unknown_words = self.chunk, self.errors, self.unknown
        prompts, ids, overrides, defaults = chunk.prompts, chunk.ids, chunk.overrides, self.defaults
        encode = self.vocabulary.encode
        requests, positions = [], []
        for position in range(start, end):
            if position in errors:
                continue
            prompt = prompts[position]
            try:
                if not isinstance(prompt, str) or not prompt.strip():
                    raise InputError("field 'prompt' must be a non-empty string")
                override = overrides.get(position)
                if override is None:
                    params = defaults
                elif isinstance(override, dict):
                    params = self.check({**chunk.defaults, **override})
                else:
                    params = self.check(override)   # not a mapping: its InputError
                if isinstance(params, InputError):
                    raise params
                tokens, unknown = encode(prompt)
                if not tokens:
                    raise InputError("prompt has no words")
                key = prompt_key(ids[position])
            except InputError as error:
                errors[position] = str(error)
                continue
            if unknown:
                unknown_words[position] = unknown
            positions.append(position)
            requests.append(Request(ids=tokens, params=params, key=key))
        return requests, positions

    def finish(self, positions: list[int], scored) -> None:
        samples, logprobs, counts = self.samples, self.logprobs, self.counts
        for position, item_samples in zip(positions, scored):
            for text, logprob in item_samples:
                samples.append(text)
                logprobs.append(round(logprob, 5))
            counts[position] = len(item_samples)

    def result(self) -> ChunkResult:
        return ChunkResult(self.samples, self.counts, self.logprobs, self.unknown, self.errors)


def decode_splitting(decoder, requests: list[Any]) -> list[Any]:
    """decoder.continuations_scored(requests); a batch that does not fit in the device's memory
    (TensorFlow's ResourceExhaustedError) is split in halves and each half tried again, down to a
    single prompt, whose failure is the chunk's. Never lost: every request is decoded or raises."""
    if not requests:
        return []
    try:
        return decoder.continuations_scored(requests)
    except Exception as error:
        if type(error).__name__ != "ResourceExhaustedError" or len(requests) == 1:
            raise
        half = len(requests) // 2
        log.warning("%d prompts do not fit in the device's memory at once (%s); decoding them in two halves",
                    len(requests), str(error).splitlines()[0][:200])
        return decode_splitting(decoder, requests[:half]) + decode_splitting(decoder, requests[half:])


def params_checker(limits) -> Callable[[Any], Any]:
    """check_generation_params for one chunk, each distinct parameter set checked once (its
    outcome, parameters or InputError, remembered by value and type: `true` is not `1`)."""
    from lstmq.shared.params import check_generation_params

    checked: dict[Any, Any] = {}

    def check(values: Any):
        try:
            signature = tuple((key, type(value), value) for key, value in sorted(values.items()))
            known = checked.get(signature)
        except (AttributeError, TypeError):   # not a mapping, or an unhashable value: checked on its own
            return check_generation_params(values, limits)
        if known is None:
            try:
                known = check_generation_params(values, limits)
            except InputError as error:
                known = error
            checked[signature] = known
        if isinstance(known, InputError):
            raise known
        return known
    return check


def describe(error: BaseException) -> str:
    if isinstance(error, (LstmqError, LookupError, ValueError)):
        return str(error)
    return f"{type(error).__name__}: {error}"
