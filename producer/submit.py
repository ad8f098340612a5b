"""Submitting jobs, without click: check the input, write the job to the store, send its task
messages through the dispatcher, and return a typed result for the CLI (or a script) to show."""
from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lstmq.producer.seeds import SeedError, check_path, read_seeds
from lstmq.shared.config import Settings
from lstmq.shared.errors import InputError
from lstmq.shared.messages import Dispatcher, JobKind
from lstmq.shared.store import JobStatus, Store, check_model_name
from lstmq.shared.text import words

MIN_CORPUS_LINES = 2
RENEW_SUBMISSION_S = 2.0   # how often a long submission renews its deadline between chunks


@dataclass(frozen=True)
class TrainSubmission:
    job: str
    model_name: str
    corpus_file: str
    corpus_bytes: int
    corpus_sha256: str


@dataclass(frozen=True)
class GenerateSubmission:
    job: str
    model: str                      # NAME@VERSION, pinned for the whole job
    seed: int                       # the job's default seed (recorded in every output line)
    lines: int = 0                  # non-blank seed lines read
    prompts: int = 0
    chunks: int = 0
    bad_lines: list[SeedError] = field(default_factory=list)


def read_corpus(path: str | Path, settings: Settings) -> bytes:
    """The corpus bytes, or InputError naming the file (and line) and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    size = path.stat().st_size
    if size > settings.max_corpus_bytes:
        raise InputError(f"{path}: {size} bytes, over max_corpus_bytes ({settings.max_corpus_bytes})")
    data = path.read_bytes().removeprefix(b"\xef\xbb\xbf")   # a UTF-8 BOM is not text
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise InputError(f"{path}:{line}: not valid UTF-8 (byte 0x{data[error.start]:02x}); "
                         f"a corpus must be UTF-8 text") from None
    usable = sum(1 for line in text.split("\n") if len(words(line)) >= 2)
    if usable < MIN_CORPUS_LINES:
        raise InputError(f"{path}: {usable} line(s) with two or more words; training needs at least {MIN_CORPUS_LINES}")
    return data


def submit_train(store: Store, dispatcher: Dispatcher, settings: Settings, corpus: str | Path,
                 model_name: str, data: bytes | None = None, promote: str = "always") -> TrainSubmission:
    """Upload the corpus (content-addressed, kept for result_ttl) and queue a training job.
    `data`: the corpus as read_corpus returned it, when the caller checked it already.
    `promote`: always (the new version becomes current), never, or if-better."""
    check_model_name(model_name)
    data = read_corpus(corpus, settings) if data is None else data
    digest = store.blobs.put(data, ttl=settings.result_ttl)
    params = settings.model_params()
    job_id = store.jobs.create(JobKind.TRAIN, params, model_name=model_name, corpus_sha256=digest,
                               corpus_file=Path(corpus).name, epochs=params.epochs, promote=promote)
    dispatcher.train(job_id)
    return TrainSubmission(job_id, model_name, Path(corpus).name, len(data), digest)


def submit_generate(store: Store, dispatcher: Dispatcher, settings: Settings, seeds: str | Path, model_spec: str,
                    on_created: Callable[[str], None] | None = None) -> GenerateSubmission:
    """Pin the model version, stream the seed file into chunks and send a task as each chunk
    fills (workers start early). Bad lines are kept in the job (and returned), good lines go on.
    `on_created(job_id)` runs once the job exists, before the first chunk is sent.

    While it streams, the submission renews a deadline (submission_timeout ahead): if the
    producer dies, whoever looks at the job after that deadline fails it ("submission
    interrupted after N lines") and the chunks already sent are cancelled (workers skip them).
    A file with no usable line ends the job failed and raises InputError."""
    check_path(seeds)
    name, version = store.registry.resolve(model_spec)
    defaults = settings.generation_params()
    if defaults.seed is None:
        defaults = defaults.replace(seed=random.SystemRandom().randrange(2**31))
    job_id = store.jobs.create(JobKind.GENERATE, defaults, model_name=name, version=version, model=f"{name}@{version}",
                               seeds_file=Path(seeds).name,
                               submit_deadline=time.time() + settings.submission_timeout)
    if on_created:
        on_created(job_id)
    bad_lines: list[SeedError] = []
    chunk: list[dict] = []
    chunks = prompts = lines = 0
    renewed = time.monotonic()
    with dispatcher.chunks(job_id) as send:
        def flush() -> None:
            nonlocal chunk, chunks, renewed
            store.jobs.put_chunk(job_id, chunks, chunk, lines, time.time() + settings.submission_timeout)
            send(chunks)
            chunks, chunk, renewed = chunks + 1, [], time.monotonic()

        for entry in read_seeds(seeds, defaults, settings.limits()):
            lines += 1
            if isinstance(entry, SeedError):
                bad_lines.append(entry)
            else:
                chunk.append(entry.item().to_dict())
                prompts += 1
                if len(chunk) >= settings.chunk_size:
                    flush()
            if time.monotonic() - renewed > RENEW_SUBMISSION_S:
                store.jobs.keep_submitting(job_id, lines, time.time() + settings.submission_timeout)
                renewed = time.monotonic()
        if chunk:
            flush()
    store.jobs.add_input_errors(job_id, [error.record() for error in bad_lines])
    submission = GenerateSubmission(job=job_id, model=f"{name}@{version}", seed=defaults.seed, lines=lines,
                                    prompts=prompts, chunks=chunks, bad_lines=bad_lines)
    if prompts == 0:
        reason = (f"{seeds}: no usable line ({len(bad_lines)} bad line(s))" if bad_lines
                  else f"{seeds}: no prompt in the file (it is empty or holds only blank lines)")
        store.jobs.finish(job_id, JobStatus.FAILED, error=reason)
    store.jobs.finish_submission(job_id, chunks=chunks, prompts=prompts, input_errors=len(bad_lines), lines=lines)
    if prompts == 0:
        raise NoPrompts(reason, submission)
    return submission


class NoPrompts(InputError):
    """A seed file with no usable line: the job ends failed; `submission` says what was read."""

    def __init__(self, message: str, submission: GenerateSubmission):
        super().__init__(message)
        self.submission = submission
