"""Wait for jobs (progress drawn by producer.render), and write a generate job's results as JSONL:
one line per prompt and sample, in input order, written to a temporary file and renamed
(re-runnable), and OUT.errors.jsonl beside it the same way. The lines are the workers' finished
JSONL, concatenated (Output)."""
from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple, TextIO

import numpy as np

import kombu.exceptions
import redis

from lstmq.producer.render import GenerateProgress, TrainProgress, note
from lstmq.shared.config import Settings, load_settings
from lstmq.shared.errors import LstmqError
from lstmq.shared.messages import ROUTES, Dispatcher
from lstmq.shared.seeds import ParamsChecker, Seed, duplicate_id_message, id_of_key, parse_chunk
from lstmq.shared.recovery import recover
from lstmq.shared.redact import redact, redact_url
from lstmq.shared.store import JobKind, JobRecord, JobStatus, Store
from lstmq.shared.store.chunks import LOGPROB_STEPS, ChunkOutput, LogprobHistogram

STDOUT = "-"                   # -o -: the results go to standard output
NO_WORKER_NOTICE_S = 10.0      # a waiting CLI says within this long that no worker consumes the queue
UNREACHABLE_POLL_MAX_S = 5.0   # polling slows down to this while Redis is unreachable
WATCH_INTERVAL_S = 0.5         # a waiting CLI's recovery and live-worker checks, however often it polls
WRITE_BUFFER_BYTES = 1 << 20   # output files are written in blocks this large
SHOWN_ERRORS = 10              # error records of a chunk shown as they come (Output.on_error)


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
        self.primary = store.primary()   # with Redis Sentinel: where the primary is (a failover moves it)

    def check_primary(self) -> None:
        """With Redis Sentinel: say so when the primary moved (a failover)."""
        if self.store.sentinel is None:
            return
        now = self.store.primary()
        if now is not None and now != self.primary:
            if self.primary is not None:
                note(f"lstmq: Redis failed over: the primary is now {now[0]}:{now[1]} (was {self.primary[0]}:"
                     f"{self.primary[1]}); going on")
            self.primary = now

    def check(self, record: JobRecord) -> None:
        self.check_primary()
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
            self.check_primary()


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
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, redis.exceptions.ReadOnlyError,
                    kombu.exceptions.OperationalError) as error:
                watch.unreachable(error)
                pause = min(pause * 2, UNREACHABLE_POLL_MAX_S)
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(f"job {job_id} did not end within {timeout:g}s (it goes on: lstmq wait {job_id})")
            time.sleep(pause if deadline is None else max(min(pause, deadline - time.monotonic()), 0))
    finally:
        progress.close()


class LogprobSummary:
    """The distribution of the written lines' logprob in constant memory, added up from the
    chunks' histograms (shared.store.chunks.LogprobHistogram): a count per 1e-4 step (the
    output's precision) from LOWEST up to 0, and a dict for the rare value outside that range.
    The percentiles are those of the values themselves, at 4 decimals."""

    LOWEST = -30.0
    STEPS = LOGPROB_STEPS           # 1e-4 steps from 0 down to LOWEST

    def __init__(self) -> None:
        self.count, self.total = 0, 0.0
        self.bins = np.zeros(self.STEPS + 1, dtype=np.int64)   # bins[s]: lines whose rounded logprob is -s / 1e4
        self.outside: dict[float, int] = {}

    def __len__(self) -> int:
        return self.count

    def add_chunk(self, histogram: dict[str, Any] | None) -> None:
        """A chunk's histogram (LogprobHistogram.to_value, as stored)."""
        if not histogram:
            return
        steps = np.frombuffer(histogram["steps"], dtype=np.uint32)
        counts = np.frombuffer(histogram["counts"], dtype=np.uint32)
        self.bins[steps] += counts   # a chunk's steps are distinct (np.add.at, for repeats, is 10x slower)
        for value, count in histogram["outside"]:
            self.outside[value] = self.outside.get(value, 0) + count
        self.count += histogram["lines"]
        self.total += histogram["total"]

    def stats(self) -> dict[str, float] | None:
        """mean, min, 10th, 50th and 90th percentile, max (None when no line has a logprob)."""
        if not self.count:
            return None
        counts = self.bins[::-1]   # ascending values
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
    errors: int                    # error records written (OUT.errors.jsonl, or stderr with -o -)
    logprobs: LogprobSummary       # the written lines' mean log-probability per word

    def logprob_stats(self) -> dict[str, float] | None:
        """The distribution of the lines' logprob: mean, min, 10th, 50th and 90th percentile, max."""
        return self.logprobs.stats()


def write_results(store: Store, job_id: str, out: str | Path, settings: Settings | None = None) -> Written:
    """Write OUT.jsonl (and OUT.errors.jsonl when any line or prompt failed); OUT "-" writes the
    lines to standard output and the error records to stderr. Each line carries `logprob`, its
    mean log-probability per generated word under the model (<= 0). See Output."""
    output = Output(store, job_id, out, settings)
    try:
        return output.finish(store.jobs.get(job_id))
    except BaseException:
        output.abort()
        raise


class Output:
    """OUT.jsonl written as the job goes, in input order, by concatenation: each chunk's output
    is finished JSONL that its worker wrote, and its error records likewise. advance(record) (on
    every poll while waiting) appends each chunk that has an outcome once every earlier chunk has
    been written; finish(record) (once the job has ended) writes the rest and renames the files
    into place. Until then the lines go to .OUT.partial-PID (and .OUT.errors.jsonl.partial-PID),
    which abort() removes: OUT is never a truncated file. Memory stays flat: a few chunks at a
    time and the logprobs' histogram (--stats).

    Lines are looked at one by one only where something is rare: a chunk with no output (its
    lines are listed in the errors with the reason), a .jsonl id that a later-registered earlier
    line turned into a duplicate (store.jobs.retracted), a line too long to send. `on_error(record)`
    sees each error record as it is written while `wants_errors()` says so (the CLI shows the first few)."""

    BATCH_CHUNKS = 16   # chunks read per Redis round trip

    def __init__(self, store: Store, job_id: str, out: str | Path, settings: Settings | None = None,
                 on_error: Callable[[dict[str, Any]], None] | None = None,
                 wants_errors: Callable[[], bool] = lambda: False, stream: BinaryIO | None = None):
        """`stream`: write the lines there instead (OUT is then only a name), and keep the error
        records for take_errors() (the Python API)."""
        self.store, self.job_id, self.out, self.settings = store, job_id, out, settings
        self.on_error, self.wants_errors = on_error, wants_errors
        self.in_memory = stream is not None
        self.to_stdout = not self.in_memory and str(out) == STDOUT
        self.file = None if self.to_stdout or self.in_memory else _atomic(Path(out))
        self.stream: BinaryIO = (stream if self.in_memory else
                                 sys.stdout.buffer if self.file is None else self.file.__enter__())
        self.errors_file: _atomic | None = None
        self.errors_stream: BinaryIO | None = None
        self.kept_errors: list[bytes] = []
        self.next_chunk = 0          # every chunk before it has been written
        self.written = 0
        self.errors = 0
        self.logprobs = LogprobSummary()

    def advance(self, record: JobRecord) -> None:
        """Write every chunk, in order from the next one, that has an outcome."""
        available = record.chunks if record.submitted else record.chunks_sent
        while self.next_chunk < available:
            count = min(self.BATCH_CHUNKS, available - self.next_chunk)
            ready = self.store.jobs.outcomes(self.job_id, self.next_chunk, count)
            finished = ready.index(False) if False in ready else count
            if finished:
                self._write(record, range(self.next_chunk, self.next_chunk + finished))
            if finished < count:
                return

    def write_rest(self, record: JobRecord) -> None:
        """Once the job has ended: write the chunks not written yet (those with no output: their
        lines go to the errors with the reason)."""
        total = record.chunks if record.submitted else record.chunks_sent
        while self.next_chunk < total:
            count = min(self.BATCH_CHUNKS, total - self.next_chunk)
            self._write(record, range(self.next_chunk, self.next_chunk + count))

    def take_errors(self) -> bytes:
        """The error records kept since the last call (with `stream`), as JSONL."""
        kept, self.kept_errors = b"".join(self.kept_errors), []
        return kept

    def finish(self, record: JobRecord) -> Written:
        """Write the chunks not written yet (write_rest), rename the files into place
        (OUT.errors.jsonl only when there are errors)."""
        self.write_rest(record)
        self.stream.flush()
        if self.file is not None:
            self.file.__exit__(None, None, None)
            self.file = None
            if self.errors_file is not None:
                self.errors_file.__exit__(None, None, None)
                self.errors_file = None
            else:
                errors_path(self.out).unlink(missing_ok=True)   # a stale file from an earlier run
        return Written(self.written, self.errors, self.logprobs)

    def abort(self) -> None:
        """Remove the partial files (OUT and OUT.errors.jsonl are left as they were)."""
        for attribute in ("file", "errors_file"):
            target = getattr(self, attribute)
            if target is not None:
                target.__exit__(RuntimeError, None, None)
                setattr(self, attribute, None)

    def _write(self, record: JobRecord, chunks: range) -> None:
        """Write `chunks` (each has an outcome, or the job has ended)."""
        jobs = self.store.jobs
        outputs = jobs.outputs(self.job_id, chunks)
        extra = self._extra_errors(record, chunks)
        retracted = jobs.retracted(self.job_id) if record.seed_format == "jsonl" else {}
        failed: dict[int, str] | None = None
        for chunk, raw in zip(chunks, outputs):
            chunk_errors = extra.get(chunk, [])
            if raw is None:
                if failed is None:
                    failed = jobs.failed_chunks(self.job_id)
                self._write_missing(record, chunk, missing_reason(record, failed.get(chunk)), chunk_errors, retracted)
            else:
                output = ChunkOutput.unpack(raw)
                first, end = output.first_line, output.first_line + output.count
                mine = {line: entry for line, entry in retracted.items() if first <= line < end} if retracted else {}
                if mine:
                    self._write_retracted(output, mine, chunk_errors)
                else:
                    self.stream.write(output.out)
                    self.written += output.lines
                    self.logprobs.add_chunk(output.hist)
                    self._errors(output.err, output.errors, chunk_errors)
            self.next_chunk = chunk + 1
        if self.to_stdout:
            self.stream.flush()

    def _extra_errors(self, record: JobRecord, chunks: range) -> dict[int, list[dict[str, Any]]]:
        """The bad lines the producer found itself (too long to send) in `chunks`, by chunk."""
        if not record.input_errors:
            return {}
        found: dict[int, list[dict[str, Any]]] = {}
        for error in self.store.jobs.input_errors(self.job_id):
            if error.get("chunk") in chunks:
                found.setdefault(error.pop("chunk"), []).append(error)
        return found

    def _errors(self, err: bytes, count: int, extra: list[dict[str, Any]]) -> None:
        """Write a chunk's error records (finished JSONL) with `extra` records merged in line order."""
        if extra:
            records = [json.loads(line) for line in err.splitlines()] + extra
            records.sort(key=lambda error: error["line"] if error["line"] is not None else float("inf"))
            err = "".join(json.dumps(error, ensure_ascii=False) + "\n" for error in records).encode("utf-8")
            count = len(records)
        if not count:
            return
        if self.on_error is not None and self.wants_errors():
            for line in err.splitlines()[:SHOWN_ERRORS]:
                self.on_error(json.loads(line))
        self.errors += count
        if self.in_memory:
            self.kept_errors.append(err)
            return
        if self.to_stdout:   # no OUT to put OUT.errors.jsonl beside: stderr, one JSON object a line
            sys.stderr.write("".join(f"lstmq: error {line}\n" for line in err.decode("utf-8").splitlines()))
            return
        if self.errors_stream is None:
            self.errors_file = _atomic(errors_path(self.out))
            self.errors_stream = self.errors_file.__enter__()
        self.errors_stream.write(err)

    def _write_retracted(self, output: ChunkOutput, retracted: dict[int, tuple[str, int, bool, bool]],
                         extra: list[dict[str, Any]]) -> None:
        """A chunk some of whose lines turned out duplicates of earlier lines after it was written:
        their output lines go, their error records come in."""
        prefixes = tuple(f'{{"id": {json.dumps(id_of_key(key), ensure_ascii=False)}, "prompt": '.encode("utf-8")
                         for key, _first, _first_implied, _implied in retracted.values())
        kept = [line for line in output.out.splitlines(keepends=True) if not line.startswith(prefixes)]
        self.stream.write(b"".join(kept))
        self.written += len(kept)
        for line in kept:
            logprob = json.loads(line)["logprob"]
            if logprob is not None:
                self.logprobs.add_chunk(_single(logprob))
        more = [{"id": id_of_key(key), "line": line,
                 "error": duplicate_id_message(id_of_key(key), line, implied, first, first_implied)}
                for line, (key, first, first_implied, implied) in retracted.items()]
        self._errors(output.err, output.errors, extra + more)

    def _write_missing(self, record: JobRecord, chunk: int, reason: str, extra: list[dict[str, Any]],
                       retracted: dict[int, tuple[str, int, bool, bool]]) -> None:
        """A chunk with no output: each of its lines goes to the errors, with its own fault when
        it has one, else with `reason` (the chunk's failure, or the job's end)."""
        source = self.store.jobs.sources(self.job_id, [chunk])[0]
        if source is None:   # its input is gone too: the lines can only be counted
            self._errors(b"", 0, extra + [{"id": None, "line": None, "chunk": chunk,
                                           "lines": self.store.jobs.chunk_lines(self.job_id, chunk),
                                           "error": reason if "input is gone" in reason
                                           else f"{reason} (the chunk's input is gone: expired, or deleted)"}])
            return
        first_line, _count, data = source
        settings = self.settings or load_settings()
        limits = settings.limits()
        records = []
        for entry in parse_chunk(data, first_line, record.seed_format or "txt", record.seeds_file or "seeds",
                                 ParamsChecker(record.params, limits), limits):
            if type(entry) is Seed:
                found = retracted.get(entry.line)
                error = reason if found is None else duplicate_id_message(entry.id, entry.line, found[3], found[1],
                                                                          found[2])
                records.append({"id": entry.id, "line": entry.line, "error": error})
            else:
                records.append(entry.record())
        self._errors(b"", 0, extra + records)


def _single(logprob: float) -> dict[str, Any]:
    histogram = LogprobHistogram()
    histogram.add(logprob, round(logprob, 4))
    return histogram.to_value()


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
        stream.write("".join(json.dumps(error, ensure_ascii=False) + "\n" for error in errors).encode("utf-8"))
    return target


class _atomic:
    """Write to OUT.partial-PID, rename onto OUT on success, remove it on failure."""

    def __init__(self, path: Path):
        self.path = path
        self.temporary = path.with_name(f".{path.name}.partial-{os.getpid()}")

    def __enter__(self) -> BinaryIO:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.stream = self.temporary.open("wb", buffering=WRITE_BUFFER_BYTES)
        return self.stream

    def __exit__(self, exc_type, *_):
        self.stream.close()
        if exc_type is None:
            os.replace(self.temporary, self.path)
        else:
            self.temporary.unlink(missing_ok=True)
