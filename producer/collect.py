"""Wait for jobs (progress drawn by producer.render), and write a generate job's results as JSONL:
one line per prompt and sample, in input order, written to a temporary file and renamed
(re-runnable). OUT.errors.jsonl is written by write_errors alone, the same way."""
from __future__ import annotations

import json
import os
import sys
import time
from array import array
from collections.abc import Callable, Iterable
from json.encoder import encode_basestring
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
from lstmq.shared.store.chunks import ChunkInput, ChunkResult

STDOUT = "-"                   # -o -: the results go to standard output
NO_WORKER_NOTICE_S = 10.0      # a waiting CLI says within this long that no worker consumes the queue
UNREACHABLE_POLL_MAX_S = 5.0   # polling slows down to this while Redis is unreachable
WATCH_INTERVAL_S = 0.5         # a waiting CLI's recovery and live-worker checks, however often it polls
OUTPUT_PARAMS = tuple(key for key in GenerationParams.keys() if key != "seed")   # the seed has its own field
WRITE_BUFFER_BYTES = 1 << 20   # output files are written in blocks this large
TEMPLATE_CACHE_LIMIT = 4096    # distinct (parameters, sample) line tails remembered while writing
_string = encode_basestring     # a str as JSON, as json.dumps(..., ensure_ascii=False) writes it


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
         timeout: float | None = None, log: TextIO = sys.stderr,
         on_poll: Callable[[JobRecord], None] | None = None) -> JobRecord:
    """Poll the job until it reaches a final state, drawing its progress and saying what stands
    in its way (see Watch). Raises WaitTimeout after `timeout` seconds. `on_poll(record)` runs
    after each poll that finds the job still going (Output.advance: the output as it comes)."""
    record = store.jobs.get(job_id)
    progress = (TrainProgress(record, show, log, settings.progress_interval) if record.kind is JobKind.TRAIN
                else GenerateProgress(record, show, time.monotonic, log, settings.progress_interval))
    watch = Watch(store, dispatcher, settings, record)
    deadline = None if timeout is None else time.monotonic() + timeout
    pause = settings.poll_interval
    watch_due = 0.0   # the Watch's checks (recovery, live workers) run at most every WATCH_INTERVAL_S
    try:
        while True:
            try:
                record = store.jobs.get(job_id)
                progress.update(record)
                if record.status.finished:
                    return record
                if on_poll is not None:
                    on_poll(record)
                if time.monotonic() >= watch_due:
                    watch.check(record)
                    watch_due = time.monotonic() + WATCH_INTERVAL_S
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


class LogprobSummary:
    """The distribution of the written lines' logprob in constant memory: a count per 1e-4 step
    (the output's precision) from LOWEST up to 0, and a dict for the rare value outside that range.
    Rounding keeps order, so the k-th smallest rounded value is the k-th smallest value rounded:
    the percentiles are those of the values themselves, at 4 decimals. Non-finite values are left out."""

    LOWEST = -30.0
    STEPS = 300_000                 # 1e-4 steps from 0 down to LOWEST

    def __init__(self) -> None:
        self.count, self.total = 0, 0.0
        self.bins = array("I", bytes(4 * (self.STEPS + 1)))   # bins[s]: lines whose rounded logprob is -s / 1e4
        self.outside: dict[float, int] = {}

    def __len__(self) -> int:
        return self.count

    def add(self, logprob: float, rounded: float) -> None:
        """`rounded`: round(logprob, 4), as written on the line."""
        if rounded - rounded != 0:   # inf or NaN
            return
        self.count += 1
        self.total += logprob
        step = round(rounded * -10_000)
        if 0 <= step <= self.STEPS:
            self.bins[step] += 1
        else:
            self.outside[rounded] = self.outside.get(rounded, 0) + 1

    def stats(self) -> dict[str, float] | None:
        """mean, min, 10th, 50th and 90th percentile, max (None when no line has a logprob)."""
        if not self.count:
            return None
        import numpy as np

        counts = np.frombuffer(self.bins, dtype=np.uint32)[::-1].astype(np.int64)   # ascending values
        below = sorted(item for item in self.outside.items() if item[0] < self.LOWEST)
        above = sorted(item for item in self.outside.items() if item[0] > 0)
        values = np.concatenate([np.array([value for value, _ in below], dtype=np.float64),
                                 -np.arange(self.STEPS, -1, -1, dtype=np.float64) / 10_000,
                                 np.array([value for value, _ in above], dtype=np.float64)])
        counts = np.concatenate([np.array([count for _, count in below], dtype=np.int64), counts,
                                 np.array([count for _, count in above], dtype=np.int64)])
        cumulative = np.cumsum(counts)
        at = lambda index: float(values[int(np.searchsorted(cumulative, index, side="right"))])
        fraction = lambda share: at(min(int(share * self.count), self.count - 1))
        return {"lines": self.count, "mean": round(self.total / self.count, 4), "min": at(0),
                "p10": fraction(0.1), "median": fraction(0.5), "p90": fraction(0.9), "max": at(self.count - 1)}


class Written(NamedTuple):
    lines: int
    errors: list[dict[str, Any]]
    logprobs: LogprobSummary       # the written lines' mean log-probability per word

    def logprob_stats(self) -> dict[str, float] | None:
        """The distribution of the lines' logprob: mean, min, 10th, 50th and 90th percentile, max."""
        return self.logprobs.stats()


def write_results(store: Store, job_id: str, out: str | Path) -> Written:
    """Write OUT.jsonl (and OUT.errors.jsonl when any line or prompt failed); OUT "-" writes the
    lines to standard output and the error records to stderr. Each line carries `logprob`, its
    mean log-probability per generated word under the model (<= 0). See Output."""
    output = Output(store, job_id, out)
    try:
        return output.finish(store.jobs.get(job_id))
    except BaseException:
        output.abort()
        raise


class Output:
    """OUT.jsonl written as the job goes: one line per prompt and sample, in input order.
    advance(record) (on every poll while waiting) appends the lines of each chunk that has an
    outcome once every earlier chunk has been written; finish(record) (once the job has ended)
    writes the rest, then renames the file onto OUT and writes OUT.errors.jsonl. Until then the
    lines go to .OUT.partial-PID, which abort() removes: OUT is never a truncated file. Memory
    stays flat: a few chunks at a time, the error records, and the logprobs' histogram (--stats)."""

    BATCH_CHUNKS = 16   # chunks read per Redis round trip

    def __init__(self, store: Store, job_id: str, out: str | Path):
        self.store, self.job_id, self.out = store, job_id, out
        self.to_stdout = str(out) == STDOUT
        self.file = None if self.to_stdout else _atomic(Path(out))
        self.stream: TextIO = sys.stdout if self.file is None else self.file.__enter__()
        self.next_chunk = 0          # every chunk before it has been written
        self.written = 0
        self.errors: list[dict[str, Any]] = []
        self.logprobs = LogprobSummary()
        self.templates: dict[tuple, str] = {}

    def advance(self, record: JobRecord) -> None:
        """Write every chunk, in order from the next one, that has an outcome."""
        available = record.chunks if record.submitted else record.chunks_sent
        while self.next_chunk < available:
            count = min(self.BATCH_CHUNKS, available - self.next_chunk)
            ready = self.store.jobs.outcomes(self.job_id, self.next_chunk, count)
            finished = ready.index(False) if False in ready else count
            if finished:
                self._write(record, range(self.next_chunk, self.next_chunk + finished), None)
            if finished < count:
                return

    def finish(self, record: JobRecord) -> Written:
        """Write the chunks not written yet (those with no result: their prompts go to the
        errors with the reason), rename the file onto OUT, write OUT.errors.jsonl."""
        failed = self.store.jobs.failed_chunks(self.job_id)
        total = record.chunks if record.submitted else record.chunks_sent
        while self.next_chunk < total:
            count = min(self.BATCH_CHUNKS, total - self.next_chunk)
            self._write(record, range(self.next_chunk, self.next_chunk + count), failed)
        errors = list(self.store.jobs.input_errors(self.job_id)) + self.errors
        errors.sort(key=lambda error: error["line"] if error["line"] is not None else float("inf"))
        self.stream.flush()
        if self.file is not None:
            self.file.__exit__(None, None, None)
            self.file = None
            write_errors(self.out, errors)
        else:   # no OUT to put OUT.errors.jsonl beside: the errors go to stderr, one JSON object a line
            for error in errors:
                print(f"lstmq: error {json.dumps(error, ensure_ascii=False)}", file=sys.stderr)
        return Written(self.written, errors, self.logprobs)

    def abort(self) -> None:
        """Remove the partial file (OUT is left as it was)."""
        if self.file is not None:
            self.file.__exit__(RuntimeError, None, None)
            self.file = None

    def _write(self, record: JobRecord, chunks: range, failed: dict[int, str] | None) -> None:
        """Write `chunks` (each has an outcome, or the job has ended); `failed`: the failed chunks' reasons
        (read here when None and needed)."""
        fetched = self.store.jobs.chunks_with_results(self.job_id, chunks)
        for chunk, (inputs, result) in zip(chunks, fetched):
            if result is None and failed is None:
                failed = self.store.jobs.failed_chunks(self.job_id)
            reason = None if result is not None else missing_reason(record, failed.get(chunk))
            if inputs is None:   # its input is gone too: the prompts can only be counted
                self.errors.append({"id": None, "line": None, "chunk": chunk,
                                    "prompts": self.store.jobs.chunk_prompts(self.job_id, chunk),
                                    "error": reason or "the chunk's input is gone (expired, or deleted)"})
            elif reason is not None:
                self.errors.extend({"id": identifier, "line": line, "error": reason}
                                   for identifier, line in zip(inputs.ids, inputs.lines))
            else:
                self.stream.write("".join(self._lines(record.model, inputs, result)))
            self.next_chunk = chunk + 1
        if self.to_stdout:
            self.stream.flush()

    def _template(self, model: str | None, params: dict[str, Any], sample: int) -> str:
        """What follows the continuation on a line, up to the unknown words' list."""
        try:
            key = (tuple(params.items()), sample)
            tail = self.templates.get(key)
        except TypeError:   # an unhashable parameter value (an old chunk's): not remembered
            key, tail = None, None
        if tail is None:
            output_params = json.dumps({name: params[name] for name in OUTPUT_PARAMS}, ensure_ascii=False)
            tail = (f', "model": {json.dumps(model, ensure_ascii=False)}, "seed": '
                    f'{json.dumps(params["seed"], ensure_ascii=False)}, "sample": {sample}, "params": {output_params}, '
                    f'"unknown_words": ')
            if key is not None:
                if len(self.templates) >= TEMPLATE_CACHE_LIMIT:
                    self.templates.clear()
                self.templates[key] = tail
        return tail

    def _lines(self, model: str | None, inputs: ChunkInput, result: ChunkResult) -> list[str]:
        """The chunk's output lines, each exactly as json.dumps(..., ensure_ascii=False) writes the
        record {id, prompt, continuation, model, seed, sample, params, unknown_words, logprob}."""
        lines: list[str] = []
        append, add_logprob = lines.append, self.logprobs.add
        samples, logprobs, counts = result.samples, result.logprobs, result.counts
        errors, unknown, overrides = result.errors, result.unknown, inputs.overrides
        default_tail = self._template(model, inputs.defaults, 0) if inputs.defaults else ""
        at = 0   # the next sample's index in `samples`
        for position, (identifier, prompt) in enumerate(zip(inputs.ids, inputs.prompts)):
            if errors and position in errors:
                self.errors.append({"id": identifier, "line": inputs.lines[position], "error": errors[position]})
                continue
            count = 1 if counts is None else counts[position]
            id_json = str(identifier) if type(identifier) is int else (
                _string(identifier) if type(identifier) is str else json.dumps(identifier, ensure_ascii=False))
            head = f'{{"id": {id_json}, "prompt": {_string(prompt)}, "continuation": '
            unknown_words = "[]" if position not in unknown else json.dumps(unknown[position], ensure_ascii=False)
            custom = position in overrides
            params = inputs.params(position) if custom else inputs.defaults
            for sample in range(count):
                tail = default_tail if sample == 0 and not custom else self._template(model, params, sample)
                logprob = None if logprobs is None else logprobs[at]
                if logprob is None:
                    score = "null"
                else:
                    rounded = round(logprob, 4)
                    add_logprob(logprob, rounded)
                    score = repr(rounded) if rounded - rounded == 0 else json.dumps(rounded)
                append(f"{head}{_string(samples[at])}{tail}{unknown_words}, \"logprob\": {score}}}\n")
                at += 1
            self.written += count
        return lines


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
        self.stream = self.temporary.open("w", encoding="utf-8", buffering=WRITE_BUFFER_BYTES)
        return self.stream

    def __exit__(self, exc_type, *_):
        self.stream.close()
        if exc_type is None:
            os.replace(self.temporary, self.path)
        else:
            self.temporary.unlink(missing_ok=True)
