"""Submitting jobs, without click: check the input, write the job to the store, send its task
messages through the dispatcher, and return a typed result for the CLI (or a script) to show."""
from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from lstmq.producer.seeds import Seed, SeedError, check_path, display_name, read_seeds
from lstmq.shared.config import Settings
from lstmq.shared.errors import InputError
from lstmq.shared.messages import ROUTES, Dispatcher, JobKind
from lstmq.shared.store import JobStatus, Store, check_model_name
from lstmq.shared.store.chunks import ChunkBuilder
from lstmq.shared.artifact import read_artifact
from lstmq.shared.params import GenerationParams
from lstmq.shared.text import Vocabulary, words

MIN_CORPUS_LINES = 2
RENEW_SUBMISSION_S = 2.0   # how often a long submission renews its deadline between chunks
PIPELINE_PROMPTS = 8192    # prompts' chunks stored per Redis round trip (their messages follow)
PIPELINE_CHUNKS_MAX = 64   # and at most this many chunks
OVERRIDES_CACHE_LIMIT = 4096   # distinct per-line parameter sets remembered while submitting
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
    """What a seed file holds, checked against the pinned model's vocabulary: valid and invalid
    lines, prompts with words the model does not know, the unknown-word rate and the most
    frequent unknown words, and how many words the job would generate."""

    def __init__(self, vocabulary: Vocabulary):
        self.vocabulary = vocabulary
        self.valid = self.invalid = self.prompts_with_unknown = self.words = self.unknown = 0
        self.words_to_generate = 0
        self.unknown_counts: Counter[str] = Counter()
        self._encoded: dict[str, tuple[int, tuple[str, ...]]] = {}   # prompt -> (words, unknown words)

    CACHE_LIMIT = 50_000        # prompts whose word counts are remembered (a file repeats short prompts)
    CACHED_PROMPT_CHARS = 64    # longer prompts are not remembered

    def add(self, entry: Seed | SeedError) -> None:
        if isinstance(entry, SeedError):
            self.invalid += 1
            return
        self.valid += 1
        prompt = entry.prompt
        counted = self._encoded.get(prompt)
        if counted is None:
            ids, unknown = self.vocabulary.encode(prompt)
            counted = (len(ids), tuple(unknown))
            if len(prompt) <= self.CACHED_PROMPT_CHARS and len(self._encoded) < self.CACHE_LIMIT:
                self._encoded[prompt] = counted
        words, unknown = counted
        self.words += words
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
                "top_unknown_words": [[word, count] for word, count in self.unknown_counts.most_common(TOP_UNKNOWN)],
                "words_to_generate": self.words_to_generate}

    def describe(self) -> str:
        data = self.to_json()
        top = ", ".join(f"{word} ({count})" for word, count in data["top_unknown_words"][:5])
        return (f"{self.valid} valid line(s), {self.invalid} invalid; {self.prompts_with_unknown} prompt(s) with "
                f"unknown words ({data['unknown_word_rate']:.1%} of prompt words{': ' + top if top else ''}); "
                f"{self.words_to_generate:,} words to generate")


@dataclass(frozen=True)
class GenerateSubmission:
    job: str | None                 # None for a dry run (nothing was submitted)
    model: str                      # NAME@VERSION, pinned for the whole job
    seed: int                       # the job's default seed (recorded in every output line)
    lines: int = 0                  # non-blank seed lines read
    prompts: int = 0
    chunks: int = 0
    bad_lines: list[SeedError] = field(default_factory=list)
    report: SeedReport | None = None


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
    """Check every line against the pinned model version; store and send nothing."""
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
    """Prompts per chunk: the chunk_size setting, or chunk_size_gpu when it was left at its default
    and a GPU worker consumes the generate queue (a GPU decodes a chunk of the CPU's size in a few
    milliseconds, so the per-task costs would dominate)."""
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


def submit_generate(store: Store, dispatcher: Dispatcher, settings: Settings, seeds: str | Path, model_spec: str,
                    on_created: Callable[[str], None] | None = None, fmt: str | None = None) -> GenerateSubmission:
    """Pin the model version, stream the seed file into chunks and send a task as each chunk
    fills (workers start early). Bad lines are kept in the job (and returned), good lines go on.
    `on_created(job_id)` runs once the job exists, before the first chunk is sent.

    While it streams, the submission renews a deadline (submission_timeout ahead): if the
    producer dies, whoever looks at the job after that deadline fails it ("submission
    interrupted after N lines") and the chunks already sent are cancelled (workers skip them).
    A file with no usable line ends the job failed and raises InputError."""
    check_path(seeds, fmt)
    name, version = store.registry.resolve(model_spec)
    defaults = job_defaults(settings)
    report = SeedReport(model_vocabulary(store, name, version))
    job_id = store.jobs.create(JobKind.GENERATE, defaults, model_name=name, version=version, model=f"{name}@{version}",
                               seeds_file=display_name(seeds),
                               submit_deadline=time.time() + settings.submission_timeout)
    if on_created:
        on_created(job_id)
    bad_lines: list[SeedError] = []
    default_values = defaults.to_dict()
    chunk_size = chunk_size_for(store, settings)
    chunks_per_round_trip = min(max(PIPELINE_PROMPTS // chunk_size, 1), PIPELINE_CHUNKS_MAX)
    builder = ChunkBuilder(default_values)
    pending: list[tuple[int, bytes, int]] = []   # encoded chunks not yet stored: (index, payload, prompts)
    chunks = prompts = lines = 0
    overrides_of: dict[int, tuple[GenerationParams, dict[str, Any] | None]] = {}   # id(params) -> (params, overrides)
    renewed = time.monotonic()
    add_to_report, add_to_chunk, monotonic = report.add, builder.add, time.monotonic
    with dispatcher.chunks(job_id) as send:
        def flush() -> None:
            """Store the pending chunks in one round trip, then send their messages."""
            nonlocal pending, renewed
            store.jobs.put_chunks(job_id, pending, lines, time.time() + settings.submission_timeout)
            for index, _payload, _count in pending:
                send(index)
            pending, renewed = [], time.monotonic()

        def close_chunk() -> None:
            nonlocal builder, add_to_chunk, chunks
            pending.append((chunks, builder.encode(), len(builder)))
            chunks += 1
            builder = ChunkBuilder(default_values)
            add_to_chunk = builder.add
            if len(pending) >= chunks_per_round_trip:
                flush()

        for entry in read_seeds(seeds, defaults, settings.limits(), fmt):
            lines += 1
            add_to_report(entry)
            if type(entry) is Seed:
                params = entry.params   # lines with the same parameters share one object (read_seeds)
                known = overrides_of.get(id(params))
                if known is None or known[0] is not params:
                    if len(overrides_of) >= OVERRIDES_CACHE_LIMIT:
                        overrides_of.clear()
                    known = overrides_of[id(params)] = (params, _overrides(params, default_values))
                add_to_chunk(entry.line, entry.id, entry.prompt, known[1])
                prompts += 1
                if len(builder) >= chunk_size:
                    close_chunk()
            else:
                bad_lines.append(entry)
            waited = monotonic() - renewed
            if waited > FLUSH_AFTER_S and (pending or waited > RENEW_SUBMISSION_S):
                if pending:     # a slow input: what is ready goes out now
                    flush()
                else:
                    store.jobs.keep_submitting(job_id, lines, time.time() + settings.submission_timeout)
                    renewed = monotonic()
        if len(builder):
            close_chunk()
        if pending:
            flush()
    store.jobs.add_input_errors(job_id, [error.record() for error in bad_lines])
    submission = GenerateSubmission(job=job_id, model=f"{name}@{version}", seed=defaults.seed, lines=lines,
                                    prompts=prompts, chunks=chunks, bad_lines=bad_lines, report=report)
    if prompts == 0:
        reason = (f"{display_name(seeds)}: no usable line ({len(bad_lines)} bad line(s))" if bad_lines
                  else f"{display_name(seeds)}: no prompt in the file (it is empty or holds only blank lines)")
        store.jobs.finish(job_id, JobStatus.FAILED, error=reason)
    store.jobs.finish_submission(job_id, chunks=chunks, prompts=prompts, input_errors=len(bad_lines), lines=lines)
    if prompts == 0:
        raise NoPrompts(reason, submission)
    return submission


def _overrides(params: GenerationParams, default_values: dict[str, Any]) -> dict[str, Any] | None:
    """The parameters of a line that differ from the job's (None when none do)."""
    values = params.to_dict()
    changed = {key: value for key, value in values.items()
               if default_values.get(key) != value or type(default_values.get(key)) is not type(value)}
    return changed or None


class NoPrompts(InputError):
    """A seed file with no usable line: the job ends failed; `submission` says what was read."""

    def __init__(self, message: str, submission: GenerateSubmission):
        super().__init__(message)
        self.submission = submission
