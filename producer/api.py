"""lstmq's Python API: what the `lstmq` CLI does, for scripts and pipelines.

    from lstmq import Client, LstmqError

    client = Client()                                  # the CLI's settings: flags aside, the same
    job = client.train("corpus.txt", model="sherlock", epochs=5, promote="if-better")
    final = job.wait()                                 # the status object; JobFailed if it failed
    job = client.generate("seeds.txt", model="sherlock", words=7)
    for row in job.results():                          # rows as in OUT.jsonl, in input order
        ...

Every failure raises an LstmqError subclass (shared.errors) with the message the CLI prints;
nothing here exits the process. No TensorFlow is imported."""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from lstmq.shared.config import Settings, load_settings
from lstmq.shared.errors import InputError, JobCancelled, JobFailed, LstmqError
from lstmq.shared.store import JobKind, JobRecord, JobStatus, Store

__all__ = ["Client", "Job", "LstmqError"]

PROMOTE = ("always", "never", "if-better")


def lstmq_errors(method):
    """Redis errors met in the middle of a call as LstmqError subclasses, with the CLI's words:
    BrokerUnavailable (Redis went away), RedisOutOfMemory, else LstmqError ("Redis error: ...")."""
    import functools

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        import redis

        from lstmq.shared.errors import BrokerUnavailable, RedisOutOfMemory
        from lstmq.shared.redact import redact
        from lstmq.shared.store.health import is_out_of_memory

        try:
            return method(*args, **kwargs)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as error:
            raise BrokerUnavailable(f"Redis went away: {redact(str(error))}") from error
        except redis.exceptions.RedisError as error:
            if is_out_of_memory(error):
                raise RedisOutOfMemory(f"Redis is out of memory: {error} (free memory or raise maxmemory)") from error
            raise LstmqError(f"Redis error: {redact(str(error))}") from error

    import inspect

    return _generator_errors(method) if inspect.isgeneratorfunction(method) else wrapper


def _generator_errors(method):
    """lstmq_errors for a generator method: each step of it."""
    import functools

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        iterator = method(*args, **kwargs)
        step = lstmq_errors(lambda: next(iterator))
        while True:
            try:
                yield step()
            except StopIteration:
                return
    return wrapper


class Client:
    """A connection to an lstmq fleet's Redis. `Client()` reads the settings the CLI reads
    (LSTMQ_CONFIG or the config files it looks for, then LSTMQ_* variables); `broker_url`,
    `config` and any other setting given here win over them. Redis is reached on first use."""

    def __init__(self, broker_url: str | None = None, config: str | Path | None = None, **settings: Any):
        self.settings: Settings = load_settings(config, {"broker_url": broker_url, **settings})
        self._store: Store | None = None
        self._dispatcher = None

    # -- plumbing ---------------------------------------------------------------------------------
    @property
    def store(self) -> Store:
        """The store, once Redis answered and its eviction policy is safe (BrokerUnavailable else)."""
        if self._store is None:
            from lstmq.shared.store.health import check_eviction_policy

            store = Store.from_settings(self.settings)
            store.ping(self.settings.broker_url)
            check_eviction_policy(store.redis, self.settings.allow_eviction)
            self._store = store
        return self._store

    @property
    def dispatcher(self):
        if self._dispatcher is None:
            from lstmq.shared.messages import Dispatcher

            self._dispatcher = Dispatcher(self.settings)
        return self._dispatcher

    def with_settings(self, **overrides: Any) -> Client:
        """A client for the same Redis with some settings changed (None: unchanged)."""
        if all(value is None for value in overrides.values()):
            return self
        other = Client.__new__(Client)
        other.settings = self.settings.replace(**overrides)
        other._store, other._dispatcher = self._store, self._dispatcher
        return other

    # -- jobs -------------------------------------------------------------------------------------
    @lstmq_errors
    def train(self, corpus: str | Path, model: str, epochs: int | None = None, promote: str = "always",
              batch_size: int | None = None, learning_rate: float | None = None, layers: int | None = None,
              dropout: float | None = None, clipnorm: float | None = None) -> Job:
        """Upload `corpus` and queue the training of the next version of `model`; returns at once.
        `promote`: "always" (the new version becomes current), "never", or "if-better" (only if its
        validation perplexity beats the current version's on the same held-out lines)."""
        from lstmq.producer.submit import read_corpus, submit_train
        from lstmq.shared.store import check_model_name

        if promote not in PROMOTE:
            raise InputError(f"promote must be one of {', '.join(PROMOTE)}, got {promote!r}")
        client = self.with_settings(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                                    lstm_layers=layers, dropout=dropout, clipnorm=clipnorm)
        check_model_name(model)
        data = read_corpus(corpus, client.settings)   # a bad corpus is reported before Redis is needed
        submission = submit_train(client.store, client.dispatcher, client.settings, corpus, model, data, promote)
        return Job(client, submission.job, JobKind.TRAIN, submission)

    @lstmq_errors
    def generate(self, seeds: str | Path | Iterable[str | dict[str, Any]], model: str, words: int | None = None,
                 temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                 n: int | None = None, seed: int | None = None, chunk_size: int | None = None,
                 format: str | None = None, on_created: Callable[[str], None] | None = None) -> Job:
        """Submit a generate job and return it once its lines are sent (the workers work on).
        `seeds`: a seed file's path (.txt or .jsonl, or `format`), or prompt strings, or
        {"id", "prompt", ...} dicts (per-line parameters as in a .jsonl file; the id defaults to
        the position, from 1). `model`: NAME, NAME@VERSION or NAME@ALIAS. `on_created(job_id)`
        runs as soon as the job exists, before its first chunk goes out."""
        from lstmq.producer.submit import SeedStream, submit_generate

        client = self.with_settings(words=words, temperature=temperature, top_k=top_k, top_p=top_p, n=n, seed=seed,
                                    chunk_size=chunk_size)
        if not isinstance(seeds, (str, Path)):
            if isinstance(seeds, (bytes, dict)):
                raise InputError("seeds must be a path, or prompt strings or dicts (an iterable of them)")
            seeds = SeedStream(seeds)
        submission = submit_generate(client.store, client.dispatcher, client.settings, seeds, model, on_created,
                                     fmt=format)
        return Job(client, submission.job, JobKind.GENERATE, submission)

    @lstmq_errors
    def job(self, job_id: str) -> Job:
        """A job submitted before (by anyone): JobNotFound if there is none."""
        record = self.store.jobs.get(job_id)
        return Job(self, job_id, record.kind)

    @lstmq_errors
    def jobs(self, limit: int = 20) -> list[dict[str, Any]]:
        """The most recent jobs' records (as `lstmq status --json`), newest first."""
        from lstmq.shared.errors import JobNotFound

        found = []
        for job_id in self.store.jobs.recent(limit):
            try:
                found.append(self.store.jobs.get(job_id).to_json())
            except JobNotFound:
                continue
        return found

    # -- the fleet --------------------------------------------------------------------------------
    @lstmq_errors
    def models(self) -> list[dict[str, Any]]:
        """Every model, as model(NAME) describes it."""
        return [self.model(name) for name in self.store.registry.names()]

    @lstmq_errors
    def model(self, name: str) -> dict[str, Any]:
        """One model: {"name", "current", "latest", "aliases", "versions": [each version's details:
        epochs, validation perplexity, vocabulary, corpus, aliases, load errors]} (ModelNotFound
        for an unknown name). `lstmq models list --json` and `models show --json` print this."""
        from lstmq.producer import render

        registry = self.store.registry
        registry.resolve(name)   # ModelNotFound for an unknown name
        versions, aliases, failures = registry.versions(name), registry.aliases(name), registry.load_failures(name)
        return {"name": name, "current": aliases.get("current"), "latest": max(versions) if versions else None,
                "aliases": aliases, "versions": [
                    {**render.version_row(name, version, meta, aliases),
                     "load_errors": [render.load_failure_json(failure) for failure in failures.get(version, [])]}
                    for version, meta in sorted(versions.items())]}

    @lstmq_errors
    def promote(self, spec: str, alias: str = "current") -> dict[str, Any]:
        """Point `alias` at the version `spec` names; {"model", "alias", "previous"}."""
        name, version = self.store.registry.resolve(spec)
        before = self.store.registry.promote(name, version, alias)
        return {"model": f"{name}@{version}", "alias": alias, "previous": before}

    @lstmq_errors
    def workers(self) -> list[dict[str, Any]]:
        """The live workers (as `lstmq workers --json`)."""
        from lstmq.producer import render

        return [render.worker_json(worker) for worker in self.store.workers.live()]

    @lstmq_errors
    def queues(self, newest: int = 5) -> list[dict[str, Any]]:
        from lstmq.shared.messages import QUEUES

        return self.store.queues.report(QUEUES, newest)


class Job:
    """A job: `id`, `kind` ("train" or "generate"), and what can be asked of it."""

    def __init__(self, client: Client, job_id: str, kind: JobKind, submission: Any = None):
        self.client, self.id, self.kind = client, job_id, kind.value
        self.submission = submission
        self._output = None

    def __repr__(self) -> str:
        return f"<lstmq.Job {self.kind} {self.id}>"

    @lstmq_errors
    def record(self) -> JobRecord:
        return self.client.store.jobs.get(self.id)

    @lstmq_errors
    def status(self) -> dict[str, Any]:
        """The job as `lstmq status JOB --json` prints it."""
        return status_json(self.client.store, self.record())

    @lstmq_errors
    def wait(self, timeout: float | None = None, progress: bool = False) -> dict[str, Any]:
        """Wait until the job ends; its status. Raises JobFailed (with .status) when it failed,
        JobCancelled when it was cancelled, WaitTimeout after `timeout` seconds (the job goes on).
        `progress`: draw progress on stderr, as the CLI does."""
        import io
        import sys

        from lstmq.producer.collect import wait

        log = sys.stderr if progress else io.StringIO()   # no progress: nothing drawn, no lines either
        record = wait(self.client.store, self.id, self.client.settings, progress and sys.stderr.isatty(),
                      self.client.dispatcher, timeout, log=log)
        return self._final(record)

    def _final(self, record: JobRecord) -> dict[str, Any]:
        from lstmq.producer import render

        status = status_json(self.client.store, record)
        if record.status is JobStatus.FAILED:
            raise JobFailed(f"job {self.id} failed: {render.failure_summary(record, self.client.store.jobs.failed_chunks(self.id))}",
                            status)
        if record.status is JobStatus.CANCELLED:
            raise JobCancelled(f"job {self.id} was cancelled", status)
        return status

    @lstmq_errors
    def results(self, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """A generate job's output rows (dicts, as the lines of OUT.jsonl), in input order, each
        chunk's as soon as it and every earlier one has finished; waits for the job as it goes.
        The rows of chunks that failed are not there: see errors()."""
        self._require(JobKind.GENERATE, "results")
        deadline = None if timeout is None else time.monotonic() + timeout
        output = self._reader()
        while True:
            record = self.record()
            finished = record.status.finished
            yield from output.rows(record, finished)
            if finished:
                return
            if deadline is not None and time.monotonic() >= deadline:
                from lstmq.producer.collect import WaitTimeout

                raise WaitTimeout(f"job {self.id} did not end within {timeout:g}s (it goes on)")
            time.sleep(self.client.settings.poll_interval)

    @lstmq_errors
    def errors(self) -> list[dict[str, Any]]:
        """A generate job's error records ({"id", "line", "error"}), in line order: the seed lines
        that could not be used and the prompts that were not generated. Complete once the job
        has ended (wait() first)."""
        self._require(JobKind.GENERATE, "errors")
        output = RowReader(self.client, self.id)
        for _row in output.rows(self.record(), self.record().status.finished):
            pass
        return output.error_rows

    @lstmq_errors
    def cancel(self) -> str:
        """Cancel the job (workers skip its pending work); its final status."""
        return self.client.store.jobs.cancel(self.id).value

    def _require(self, kind: JobKind, what: str) -> None:
        if self.kind != kind.value:
            raise InputError(f"job {self.id} is a {self.kind} job; only {kind.value} jobs have {what}")

    def _reader(self) -> RowReader:
        return RowReader(self.client, self.id)


class RowReader:
    """A generate job's output as rows, read chunk by chunk in input order (producer.collect.Output
    into memory instead of a file)."""

    def __init__(self, client: Client, job_id: str):
        import io

        from lstmq.producer.collect import Output

        self.buffer = io.BytesIO()
        self.output = Output(client.store, job_id, "<memory>", client.settings, stream=self.buffer)
        self.error_rows: list[dict[str, Any]] = []

    def rows(self, record: JobRecord, finished: bool) -> Iterator[dict[str, Any]]:
        if finished:
            self.output.write_rest(record)
        else:
            self.output.advance(record)
        data = self.buffer.getvalue()
        self.buffer.seek(0)
        self.buffer.truncate()
        self.error_rows.extend(json.loads(line) for line in self.output.take_errors().splitlines())
        for line in data.splitlines():
            yield json.loads(line)


def status_json(store: Store, record: JobRecord) -> dict[str, Any]:
    """A job's status object (`lstmq status JOB --json`): its record, and for a training job its
    history, for a generate job its seed report; failed chunks, running work, attempts."""
    extra: dict[str, Any] = {}
    if record.kind is JobKind.TRAIN:
        extra["history"] = store.training.history(record.id)
    else:
        extra["check"] = record.seed_report(store.jobs.top_unknown_words(record.id))
    return {**record.to_json(), **extra,
            "failed_chunks": {str(chunk): reason for chunk, reason in store.jobs.failed_chunks(record.id).items()},
            "running": sorted(store.jobs.leases(record.id)), "attempts": store.jobs.attempts(record.id)}
