"""Wait for jobs (progress drawn by producer.render), and write a generate job's results as JSONL:
one line per prompt and sample, in input order, written to a temporary file and renamed
(re-runnable). OUT.errors.jsonl is written by write_errors alone, the same way."""
from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterable
from contextlib import nullcontext
from pathlib import Path
from typing import Any, NamedTuple, TextIO

import kombu.exceptions
import redis

from lstmq.producer.render import GenerateProgress, TrainProgress, note
from lstmq.shared.config import Settings
from lstmq.shared.errors import LstmqError
from lstmq.shared.messages import ROUTES, Dispatcher
from lstmq.shared.params import GenerationParams
from lstmq.shared.recovery import recover
from lstmq.shared.redact import redact, redact_url
from lstmq.shared.store import JobKind, JobRecord, JobStatus, Store

STDOUT = "-"                   # -o -: the results go to standard output
NO_WORKER_NOTICE_S = 10.0      # a waiting CLI says within this long that no worker consumes the queue
UNREACHABLE_POLL_MAX_S = 5.0   # polling slows down to this while Redis is unreachable
OUTPUT_PARAMS = tuple(key for key in GenerationParams.keys() if key != "seed")   # the seed has its own field


def errors_path(out: str | Path) -> Path:
    """OUT.jsonl -> OUT.errors.jsonl"""
    out = Path(out)
    stem = out.name[: -len(".jsonl")] if out.name.endswith(".jsonl") else out.name
    return out.with_name(f"{stem}.errors.jsonl")


class WaitTimeout(LstmqError):
    """Waiting for the job took longer than --timeout (the job goes on)."""


class Watch:
    """What a waiting CLI says besides progress: no live worker on the job's queue (within
    NO_WORKER_NOTICE_S, and again when one appears), Redis unreachable and back, and work that
    lost its worker and went out again (recover() runs here too, for this job)."""

    def __init__(self, store: Store, dispatcher: Dispatcher | None, settings: Settings, record: JobRecord):
        self.store, self.dispatcher, self.settings = store, dispatcher, settings
        self.queue = ROUTES[record.kind].queue
        self.started = time.monotonic()
        self.workers_seen: bool | None = None
        self.unreachable_since: float | None = None

    def check(self, record: JobRecord) -> None:
        if self.dispatcher is not None:
            for recovery in recover(self.store, self.dispatcher, self.settings.redispatch_limit, [record.id],
                                    self.settings.lease_seconds):
                note(f"lstmq: {recovery.describe()}")
        consuming = bool(self.store.workers.consuming(self.queue))
        if not consuming and self.workers_seen is None and time.monotonic() - self.started < NO_WORKER_NOTICE_S:
            return   # a worker may be starting: give it a moment before saying anything
        if consuming != self.workers_seen:
            if not consuming:
                note(f"lstmq: no live lstmq-worker consumes the '{self.queue}' queue on {redact_url(self.settings.broker_url)}; "
                     f"job {record.id} waits until one does (start one: lstmq-worker)")
            elif self.workers_seen is False:
                note(f"lstmq: a worker now consumes the '{self.queue}' queue")
            self.workers_seen = consuming

    def unreachable(self, error: Exception) -> None:
        if self.unreachable_since is None:
            self.unreachable_since = time.monotonic()
            note(f"lstmq: Redis at {redact_url(self.settings.broker_url)} is unreachable ({redact(str(error))}); "
                 f"still waiting, retrying")

    def reachable(self) -> None:
        if self.unreachable_since is not None:
            note(f"lstmq: Redis is back after {time.monotonic() - self.unreachable_since:.0f}s")
            self.unreachable_since = None


def wait(store: Store, job_id: str, settings: Settings, show: bool, dispatcher: Dispatcher | None = None,
         timeout: float | None = None, log: TextIO = sys.stderr) -> JobRecord:
    """Poll the job until it reaches a final state, drawing its progress and saying what stands
    in its way (see Watch). Raises WaitTimeout after `timeout` seconds."""
    record = store.jobs.get(job_id)
    progress = (TrainProgress(record, show, log, settings.progress_interval) if record.kind is JobKind.TRAIN
                else GenerateProgress(record, show, time.monotonic, log, settings.progress_interval))
    watch = Watch(store, dispatcher, settings, record)
    deadline = None if timeout is None else time.monotonic() + timeout
    pause = settings.poll_interval
    try:
        while True:
            try:
                record = store.jobs.get(job_id)
                progress.update(record)
                if record.status.finished:
                    return record
                watch.check(record)
                watch.reachable()
                pause = settings.poll_interval
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                    kombu.exceptions.OperationalError) as error:
                watch.unreachable(error)
                pause = min(pause * 2, UNREACHABLE_POLL_MAX_S)
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(f"job {job_id} did not end within {timeout:g}s (it goes on: lstmq wait {job_id})")
            time.sleep(pause if deadline is None else max(min(pause, deadline - time.monotonic()), 0))
    finally:
        progress.close()


class Written(NamedTuple):
    lines: int
    errors: list[dict[str, Any]]
    logprobs: list[float]          # each written line's mean log-probability per word

    def logprob_stats(self) -> dict[str, float] | None:
        """The distribution of the lines' logprob: mean, min, 10th, 50th and 90th percentile, max."""
        if not self.logprobs:
            return None
        ordered = sorted(self.logprobs)
        at = lambda fraction: ordered[min(int(fraction * len(ordered)), len(ordered) - 1)]
        return {"lines": len(ordered), "mean": round(sum(ordered) / len(ordered), 4), "min": round(ordered[0], 4),
                "p10": round(at(0.1), 4), "median": round(at(0.5), 4), "p90": round(at(0.9), 4),
                "max": round(ordered[-1], 4)}


def write_results(store: Store, job_id: str, out: str | Path) -> Written:
    """Write OUT.jsonl (and OUT.errors.jsonl when any line or prompt failed); OUT "-" writes the
    lines to standard output and the error records to stderr. Each line carries `logprob`, its
    mean log-probability per generated word under the model (<= 0)."""
    record = store.jobs.get(job_id)
    failed_chunks = store.jobs.failed_chunks(job_id)
    errors = list(store.jobs.input_errors(job_id))
    to_stdout = str(out) == STDOUT
    written = 0
    logprobs: list[float] = []
    with (nullcontext(sys.stdout) if to_stdout else _atomic(Path(out))) as stream:
        for chunk in range(record.chunks if record.submitted else record.chunks_sent):
            results = store.jobs.result(job_id, chunk)
            reason = None if results is not None else missing_reason(record, failed_chunks.get(chunk))
            try:
                items = store.jobs.chunk(job_id, chunk)
            except LookupError:   # its input is gone too: the prompts can only be counted
                errors.append({"id": None, "line": None, "chunk": chunk, "prompts": store.jobs.chunk_prompts(job_id, chunk),
                               "error": reason or "the chunk's input is gone (expired, or deleted)"})
                continue
            if reason is not None:
                errors.extend({"id": item["id"], "line": item["line"], "error": reason} for item in items)
                continue
            for item, result in zip(items, results):
                if "error" in result:
                    errors.append({"id": item["id"], "line": item["line"], "error": result["error"]})
                    continue
                params = item["params"]
                scores = result.get("logprobs") or [None] * len(result["samples"])
                for sample, (continuation, logprob) in enumerate(zip(result["samples"], scores)):
                    stream.write(json.dumps({
                        "id": item["id"], "prompt": item["prompt"], "continuation": continuation, "model": record.model,
                        "seed": params["seed"], "sample": sample,
                        "params": {key: params[key] for key in OUTPUT_PARAMS},
                        "unknown_words": result["unknown"],
                        "logprob": None if logprob is None else round(logprob, 4),
                    }, ensure_ascii=False) + "\n")
                    written += 1
                    if logprob is not None:
                        logprobs.append(logprob)
    errors.sort(key=lambda error: error["line"] if error["line"] is not None else float("inf"))
    if to_stdout:   # no OUT to put OUT.errors.jsonl beside: the errors go to stderr, one JSON object a line
        sys.stdout.flush()
        for error in errors:
            print(f"lstmq: error {json.dumps(error, ensure_ascii=False)}", file=sys.stderr)
    else:
        write_errors(out, errors)
    return Written(written, errors, logprobs)


def missing_reason(record: JobRecord, failure: str | None) -> str:
    """Why a chunk has no result: its failure, the job's end, or that the job has not ended."""
    if failure is not None:
        return f"generation failed: {failure}"
    if record.status is JobStatus.CANCELLED:
        return "cancelled (lstmq cancel) before this prompt was generated"
    if record.status is JobStatus.FAILED:
        return f"cancelled: {record.error or 'the job failed'}"
    return "no result (the job has not finished)"


def write_errors(out: str | Path, errors: Iterable[dict[str, Any]]) -> Path | None:
    """OUT.errors.jsonl, one {"id", "line", "error"} per line, written atomically; with no
    errors, a stale file from an earlier run of the same output is removed. Returns its path."""
    target = errors_path(out)
    errors = list(errors)
    if not errors:
        target.unlink(missing_ok=True)
        return None
    with _atomic(target) as stream:
        for error in errors:
            stream.write(json.dumps(error, ensure_ascii=False) + "\n")
    return target


class _atomic:
    """Write to OUT.partial-PID, rename onto OUT on success, remove it on failure."""

    def __init__(self, path: Path):
        self.path = path
        self.temporary = path.with_name(f".{path.name}.partial-{os.getpid()}")

    def __enter__(self) -> TextIO:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.stream = self.temporary.open("w", encoding="utf-8")
        return self.stream

    def __exit__(self, exc_type, *_):
        self.stream.close()
        if exc_type is None:
            os.replace(self.temporary, self.path)
        else:
            self.temporary.unlink(missing_ok=True)
