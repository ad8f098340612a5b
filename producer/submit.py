"""Submitting jobs, without click: check the input, write the job to the store, send its task
messages through the dispatcher, and return a typed result for the CLI (or a script) to show."""
from __future__ import annotations

import json
import random
import time
from collections.abc import Iterable
from contextlib import ExitStack
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from lstmq.producer.render import describe_report
from lstmq.producer.seeds import (Seed, SeedError, check_path, display_name, long_line_error, open_seeds, read_chunks,
                                  read_seeds, seed_format)
from lstmq.shared.config import Settings
from lstmq.shared.errors import InputError
from lstmq.shared.messages import ROUTES, Dispatcher, JobKind
from lstmq.shared.store import Store, check_model_name
from lstmq.shared.store.chunks import pack_input
from lstmq.shared.artifact import read_artifact
from lstmq.shared.params import GenerationParams, check_generation_params
from lstmq.shared.text import Vocabulary, words

MIN_CORPUS_LINES = 2
RENEW_SUBMISSION_S = 2.0   # how often a long submission renews its deadline between chunks
PIPELINE_LINES = 65536     # seed lines' chunks stored per Redis round trip (their messages follow)
PIPELINE_CHUNKS_MAX = 64   # and at most this many chunks
FLUSH_AFTER_S = 0.5        # a slow input (standard input) still sends each finished chunk within this long


@dataclass(frozen=True)
class TrainSubmission:
    job: str
    model_name: str
    corpus_file: str
    corpus_bytes: int
    corpus_sha256: str


TOP_UNKNOWN = 10


class SeedReport:
    """What a seed file holds, checked against the pinned model's vocabulary in this process (a
    dry run): valid and invalid lines, prompts with words the model does not know, the unknown-word
    rate and the most frequent unknown words, and how many words the job would generate. A real
    run gets the same figures from its workers (JobRecord.seed_report)."""

    def __init__(self, vocabulary: Vocabulary):
        self.vocabulary = vocabulary
        self.valid = self.invalid = self.prompts_with_unknown = self.words = self.unknown = 0
        self.words_to_generate = 0
        self.unknown_counts: Counter[str] = Counter()

    def add(self, entry: Seed | SeedError) -> None:
        if isinstance(entry, SeedError):
            self.invalid += 1
            return
        self.valid += 1
        ids, unknown = self.vocabulary.encode(entry.prompt)
        self.words += len(ids)
        if unknown:
            self.unknown += len(unknown)
            self.prompts_with_unknown += 1
            self.unknown_counts.update(unknown)
        params = entry.params
        self.words_to_generate += params.words * params.n

    def to_json(self) -> dict[str, Any]:
        return {"lines_valid": self.valid, "lines_invalid": self.invalid,
                "prompts_with_unknown_words": self.prompts_with_unknown,
                "unknown_word_rate": round(self.unknown / self.words, 4) if self.words else 0.0,
                "top_unknown_words": [[word, count] for word, count in sorted(
                    self.unknown_counts.items(), key=lambda pair: (-pair[1], pair[0]))[:TOP_UNKNOWN]],
                "words_to_generate": self.words_to_generate, "complete": True}

    def describe(self) -> str:
        return describe_report(self.to_json())


@dataclass(frozen=True)
class GenerateSubmission:
    job: str | None                 # None for a dry run (nothing was submitted)
    model: str                      # NAME@VERSION, pinned for the whole job
    seed: int                       # the job's default seed (recorded in every output line)
    lines: int = 0                  # seed lines read (a dry run: non-blank ones)
    prompts: int | None = None      # usable lines: known to a dry run; a real run's workers count them
    chunks: int = 0
    bad_lines: list[SeedError] = field(default_factory=list)   # a dry run: every bad line; else lines too long to send
    report: SeedReport | None = None
    bytes: int = 0                  # seed bytes sent


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


def model_vocabulary(store: Store, name: str, version: int) -> Vocabulary:
    """The pinned version's vocabulary, read from its artifact (no TensorFlow)."""
    _, tokens, _ = read_artifact(store.registry.artifact(name, version))
    return Vocabulary(tokens)


def job_defaults(settings: Settings) -> GenerationParams:
    defaults = settings.generation_params()
    if defaults.seed is None:
        defaults = defaults.replace(seed=random.SystemRandom().randrange(2**31))
    return defaults


def dry_run(store: Store, settings: Settings, seeds: str | Path, model_spec: str,
            fmt: str | None = None) -> GenerateSubmission:
    """Check every line against the pinned model version in this process, as a worker would;
    store and send nothing. The slow path: a real run leaves the lines to the workers."""
    check_path(seeds, fmt)
    name, version = store.registry.resolve(model_spec)
    defaults = job_defaults(settings)
    report = SeedReport(model_vocabulary(store, name, version))
    bad_lines, lines = [], 0
    for entry in read_seeds(seeds, defaults, settings.limits(), fmt):
        lines += 1
        report.add(entry)
        if isinstance(entry, SeedError):
            bad_lines.append(entry)
    return GenerateSubmission(job=None, model=f"{name}@{version}", seed=defaults.seed, lines=lines,
                              prompts=report.valid, bad_lines=bad_lines, report=report)


def chunk_size_for(store: Store, settings: Settings) -> int:
    """Seed lines per chunk: the chunk_size setting, or chunk_size_gpu when it was left at its
    default and a GPU worker consumes the generate queue (a GPU decodes a chunk of the CPU's size
    in a few milliseconds, so the per-task costs would dominate)."""
    from lstmq.shared.config import default_file

    if settings.sources.get("chunk_size") != str(default_file()):
        return settings.chunk_size   # chosen: --chunk-size, LSTMQ_CHUNK_SIZE or a settings file
    try:
        consumers = store.workers.consuming(ROUTES[JobKind.GENERATE].queue)
    except redis.exceptions.RedisError:
        return settings.chunk_size
    gpu = any(worker.get("gpu_index") is not None or str(worker.get("device", "")).startswith("gpu")
              for worker in consumers)
    return settings.chunk_size_gpu if gpu else settings.chunk_size


def submit_generate(store: Store, dispatcher: Dispatcher, settings: Settings, seeds: str | Path | SeedStream,
                    model_spec: str, on_created: Callable[[str], None] | None = None,
                    fmt: str | None = None) -> GenerateSubmission:
    """Pin the model version and stream the seed file's bytes into chunks of whole lines, sending a
    task as each chunk is stored (workers start early). No line is parsed here: the workers parse,
    check and count them (the seed report comes from them, JobRecord.seed_report). A line too long
    to be a seed line is cut out and kept in the job as a bad line. `on_created(job_id)` runs once
    the job exists: when the first chunk with anything but blank lines is ready, before it is sent.

    While it streams, the submission renews a deadline (submission_timeout ahead): if the
    producer dies, whoever looks at the job after that deadline fails it ("submission
    interrupted after N lines") and the chunks already sent are cancelled (workers skip them).
    A file with nothing but blank lines raises NoPrompts, and no job is made."""
    if isinstance(seeds, SeedStream):
        path, fmt, source = seeds, seeds.format, seeds.name
    else:
        path = check_path(seeds, fmt)
        fmt, source = seed_format(path, fmt), display_name(seeds)
    name, version = store.registry.resolve(model_spec)
    defaults = job_defaults(settings)
    limits = settings.limits()
    check_generation_params(defaults.to_dict(), limits, "settings")   # else every line would fail the same way
    chunk_size = chunk_size_for(store, settings)
    chunks_per_round_trip = min(max(PIPELINE_LINES // chunk_size, 1), PIPELINE_CHUNKS_MAX)
    job_id: str | None = None
    pending: list[tuple[int, bytes, int]] = []   # packed chunks not yet stored: (index, payload, lines)
    pending_errors: list[dict[str, Any]] = []
    bad_lines: list[SeedError] = []
    chunks = lines = lines_sent = sent_bytes = 0   # lines: read; lines_sent: in the chunks sent
    renewed = time.monotonic()
    with ExitStack() as stack:
        stream = path if isinstance(path, SeedStream) else stack.enter_context(open_seeds(path))
        send = None

        def flush() -> None:
            """Store the pending chunks (and the bad lines found in them) in one round trip, then send their messages."""
            nonlocal pending, pending_errors, renewed
            if pending_errors:
                store.jobs.add_input_errors(job_id, pending_errors)
            store.jobs.put_chunks(job_id, pending, lines_sent, time.time() + settings.submission_timeout)
            for index, _payload, _lines in pending:
                send(index)
            pending, pending_errors, renewed = [], [], time.monotonic()

        for raw in read_chunks(stream, chunk_size, limits.max_line_bytes, flush_after=FLUSH_AFTER_S):
            lines = raw.first_line + raw.lines - 1
            if not raw.long_lines and (not raw.data or raw.data.isspace()):   # blank lines only: nothing to do
                if job_id is not None and time.monotonic() - renewed > RENEW_SUBMISSION_S:
                    store.jobs.keep_submitting(job_id, lines_sent, time.time() + settings.submission_timeout)
                    renewed = time.monotonic()
                continue
            if job_id is None:
                job_id = store.jobs.create(JobKind.GENERATE, defaults, model_name=name, version=version,
                                           model=f"{name}@{version}", seeds_file=source, seed_format=fmt,
                                           submit_deadline=time.time() + settings.submission_timeout)
                if on_created:
                    on_created(job_id)
                send = stack.enter_context(dispatcher.chunks(job_id))
            for line, size in raw.long_lines:
                bad_line = long_line_error(source, line, size, limits.max_line_bytes)
                bad_lines.append(bad_line)
                pending_errors.append({**bad_line.record(), "chunk": chunks})
            pending.append((chunks, pack_input(raw.first_line, raw.lines, raw.data), raw.lines))
            sent_bytes += len(raw.data)
            lines_sent += raw.lines
            chunks += 1
            if len(pending) >= chunks_per_round_trip or time.monotonic() - renewed > FLUSH_AFTER_S:
                flush()
        if pending:
            flush()
    if job_id is None:
        raise NoPrompts(f"{source}: no prompt in the file (it is empty or holds only blank lines); no job was made",
                        GenerateSubmission(job=None, model=f"{name}@{version}", seed=defaults.seed, lines=lines))
    store.jobs.finish_submission(job_id, chunks=chunks, lines=lines_sent)
    return GenerateSubmission(job=job_id, model=f"{name}@{version}", seed=defaults.seed, lines=lines,
                              chunks=chunks, bad_lines=bad_lines, bytes=sent_bytes)


class SeedStream:
    """Seed lines from Python (lstmq.Client.generate): prompt strings or {"id", "prompt", ...}
    dicts, turned into .jsonl lines as they are read (a read() like a file's)."""

    def __init__(self, seeds: Iterable[str | dict[str, Any]], name: str = "<python>"):
        self.iterator, self.name, self.format = iter(seeds), name, "jsonl"
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        lines, length = [], 0
        for entry in self.iterator:
            self.count += 1
            if isinstance(entry, str):
                entry = {"prompt": entry}
            elif not isinstance(entry, dict):
                raise InputError(f"{self.name}: seed {self.count} is a {type(entry).__name__}; give prompt strings "
                                 f"or {{\"id\", \"prompt\", ...}} dicts")
            try:
                line = json.dumps(entry, ensure_ascii=False, allow_nan=True).encode("utf-8") + b"\n"
            except (TypeError, ValueError) as error:
                raise InputError(f"{self.name}: seed {self.count} cannot be written as JSON ({error})") from None
            lines.append(line)
            length += len(line)
            if 0 <= size <= length:
                break
        return b"".join(lines)


class NoPrompts(InputError):
    """A seed file with no usable line: `submission` says what was read."""

    def __init__(self, message: str, submission: GenerateSubmission):
        super().__init__(message)
        self.submission = submission
