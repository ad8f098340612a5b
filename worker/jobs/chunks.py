"""The chunk pipeline: what a worker does with one chunk of a generate job. Read its raw seed
lines, parse and check them (shared.seeds; a .jsonl job's ids against the whole job's), tokenize
them, decode them in slices with the host work overlapped, and write the chunk's output once as
finished JSONL with its error records and its share of the seed report; or record the chunk
failed with its reason (missing input, Redis out of memory, a bug alike)."""
from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis

from lstmq.shared.config import Settings
from lstmq.shared.errors import InputError
from lstmq.shared.messages import JobKind
from lstmq.shared.output import LineWriter, error_line
from lstmq.shared.params import SAMPLING_STREAM, prompt_key
from lstmq.shared.seeds import ParamsChecker, Seed, duplicate_id_message, id_key, parse_lines, split_lines
from lstmq.shared.store import Store
from lstmq.shared.store.chunks import (TOP_UNKNOWN_PER_CHUNK, ChunkInput, ChunkOutput, ChunkReport, ChunkResult,
                                       LogprobHistogram)
from lstmq.shared.store.health import is_out_of_memory, out_of_memory
from lstmq.shared.store.records import JobRecord
from lstmq.worker.jobs.leases import TRANSIENT, Lease, describe, job_of_kind
from lstmq.worker.runtime import settled_if_traced

log = logging.getLogger("lstmq.jobs")


def run_generate_chunk(store: Store, models, job_id: str, chunk: int, worker: str,
                       settings: Settings) -> dict[str, Any]:
    """Parse and decode one chunk of a generate job and write its output once; or record it failed."""
    started = time.monotonic()
    record = job_of_kind(store, job_id, JobKind.GENERATE)
    store = store.for_job(record)   # the job's result_ttl, not this worker's
    taken = store.jobs.take_lease(job_id, chunk, worker, settings.lease_seconds)
    if taken == "finished":
        log.info("job %s chunk %d already has an outcome; skipping the redelivered task", job_id, chunk)
        return {"job": job_id, "chunk": chunk, "skipped": True}
    if taken != "ok":
        log.info("job %s is %s; skipping chunk %d", job_id, taken, chunk)
        return {"job": job_id, "chunk": chunk, "skipped": True}
    lines: int | None = None
    with Lease(store, job_id, chunk, settings.lease_seconds, worker):
        try:
            try:
                first_line, lines, data = store.jobs.chunk_source(job_id, chunk)
            except LookupError as error:
                raise InputError(f"chunk {chunk}: its input is gone ({error})") from None
            loaded = models.get(record.model_name, record.version)
            if record.sampling_stream != SAMPLING_STREAM:   # once per job: which stream its samples come from
                store.jobs.update(job_id, sampling_stream=SAMPLING_STREAM)
            parsed = ParsedChunk(record, first_line, data, settings,
                                 lambda entries: store.jobs.register_ids(job_id, entries))
            with settled_if_traced(loaded.decoder):
                plan, words = decode_parsed(parsed, loaded.decoder, settings, LineWriter(record.model))
            output, report = parsed.output(record.model, plan, lines)
            try:
                first = store.jobs.save_output(job_id, chunk, output, words, report)
            except redis.exceptions.ResponseError as error:   # OutOfMemoryError is one
                if is_out_of_memory(error):
                    raise out_of_memory(store.redis, error) from None
                raise
        except TRANSIENT:
            raise      # retried by the task (the lease lapses if it never comes back)
        except Exception as error:
            store.jobs.fail_chunk(job_id, chunk, describe(error), lines)
            log.error("job %s chunk %d failed: %s", job_id, chunk, describe(error))
            raise
    seconds = time.monotonic() - started
    log.info("job %s chunk %d: %d lines, %d prompts, %d words with %s in %.2fs (%.0f words/s)%s", job_id, chunk,
             lines, report.valid, words, loaded.label, seconds, words / max(seconds, 1e-9),
             "" if first else " (duplicate)")
    return {"job": job_id, "chunk": chunk, "prompts": report.valid, "words": words}


class ParsedChunk:
    """A chunk's seed lines, parsed slice by slice (parse_slice, in line order; parse() does them
    all): the usable prompts as columns (`input`, growing), and the lines that could not be used
    as (line, id, reason), in line order. A .jsonl chunk's ids are registered with the job's as
    each slice is parsed (`register_ids`: store.jobs.register_ids; None checks them within the
    chunk only)."""

    def __init__(self, record: JobRecord, first_line: int, data: bytes, settings: Settings,
                 register_ids: Callable[[list[tuple[int, str, bool]]], list[tuple[int, int, bool]]] | None):
        self.first_line = first_line
        self.lines = split_lines(data)
        self.fmt = record.seed_format or "txt"
        self.defaults = record.params.to_dict()
        self.limits = settings.limits()
        self.params_for = ParamsChecker(self.defaults, self.limits)
        self.name = record.seeds_file or "seeds"
        self.register_ids = register_ids
        self.held: dict[str, tuple[int, bool]] = {}   # ids within the chunk, when not registered with the job
        self.input = ChunkInput([], [], [], self.defaults, {})
        self.errors: list[tuple[int, Any, str]] = []
        self._changed_of: dict[int, tuple[Any, dict[str, Any]]] = {}

    def __len__(self) -> int:
        """How many seed lines the chunk holds (blank ones too)."""
        return len(self.lines)

    @classmethod
    def parse(cls, record: JobRecord, first_line: int, data: bytes, settings: Settings,
              register_ids: Callable[[list[tuple[int, str, bool]]], list[tuple[int, int, bool]]] | None
              ) -> ParsedChunk:
        parsed = cls(record, first_line, data, settings, register_ids)
        parsed.parse_slice(0, len(parsed))
        return parsed

    def parse_slice(self, start: int, end: int) -> tuple[int, int]:
        """Parse lines start .. end-1 (indices into the chunk) after every earlier slice; the
        positions their usable prompts got in `input` (first, end)."""
        seeds: list[Seed] = []
        errors: list[tuple[int, Any, str]] = []
        for entry in parse_lines(self.lines[start:end], self.first_line + start, self.fmt, self.name, self.params_for,
                                 self.limits):
            if type(entry) is Seed:
                seeds.append(entry)
            else:
                errors.append((entry.line, entry.id, entry.error))
        if self.fmt == "jsonl" and seeds:
            entries = [(seed.line, id_key(seed.id), seed.implied) for seed in seeds]
            duplicates = (self.register_ids(entries) if self.register_ids is not None
                          else _duplicates_within(entries, self.held))
            if duplicates:
                by_line = {line: (first, first_implied) for line, first, first_implied in duplicates}
                kept = []
                for seed in seeds:
                    found = by_line.get(seed.line)
                    if found is None:
                        kept.append(seed)
                    else:
                        errors.append((seed.line, seed.id,
                                       duplicate_id_message(seed.id, seed.line, seed.implied, found[0], found[1])))
                seeds = kept
                errors.sort(key=lambda error: error[0])
        self.errors.extend(errors)
        columns, defaults, default_params = self.input, self.defaults, self.params_for.defaults
        first = len(columns)
        overrides = columns.overrides
        for offset, seed in enumerate(seeds):
            params = seed.params
            if params is default_params:
                continue
            known = self._changed_of.get(id(params))
            if known is None or known[0] is not params:
                values = params.to_dict()
                known = self._changed_of[id(params)] = (params, {
                    key: value for key, value in values.items()
                    if defaults.get(key) != value or type(defaults.get(key)) is not type(value)})
            if known[1]:
                overrides[first + offset] = known[1]
        line_numbers = [seed.line for seed in seeds]
        columns.lines.extend(line_numbers)
        columns.ids.extend(line_numbers if self.fmt == "txt" else [seed.id for seed in seeds])
        columns.prompts.extend(seed.prompt for seed in seeds)
        return first, len(columns)

    def output(self, model: str | None, plan: ChunkPlan, lines: int) -> tuple[ChunkOutput, ChunkReport]:
        """The chunk's stored output (finished JSONL and error records) and its seed report."""
        chunk_input, result = self.input, plan.result()
        if getattr(plan, "writer", None) is not None:   # formatted slice by slice, beside the decoder
            histogram, text, count = plan.histogram, "".join(plan.text_parts), plan.lines_written
        else:
            histogram = LogprobHistogram()
            text, count = LineWriter(model).lines(chunk_input, result, histogram)
        errors = self.errors
        if result.errors:
            errors = sorted(errors + [(chunk_input.lines[position], chunk_input.ids[position], reason)
                                      for position, reason in result.errors.items()], key=lambda error: error[0])
        err = "".join(error_line(identifier, line, reason) for line, identifier, reason in errors)
        unknown = Counter(word for words in result.unknown.values() for word in words)
        top_unknown = sorted(unknown.items(), key=lambda pair: (-pair[1], pair[0]))[:TOP_UNKNOWN_PER_CHUNK]
        report = ChunkReport(valid=len(chunk_input) - len(result.errors), invalid=len(errors),
                             prompt_words=plan.prompt_words, unknown_words=sum(unknown.values()),
                             prompts_with_unknown=len(result.unknown), words_to_generate=plan.words_to_generate,
                             output_lines=count, top_unknown=top_unknown)
        output = ChunkOutput(self.first_line, lines, text.encode("utf-8"), count, err.encode("utf-8"), len(errors),
                             histogram.to_value() if histogram.lines else None)
        return output, report


def _duplicates_within(entries: list[tuple[int, str, bool]], held: dict[str, tuple[int, bool]]
                       ) -> list[tuple[int, int, bool]]:
    """Duplicates among one chunk's ids alone (line, first line, first implied), `held` the ids
    of its earlier slices: a line's implied id has the key of the integer id that equals its line
    number."""
    found = []
    for line, key, implied in entries:
        first = held.get(key)
        if first is not None:
            found.append((line, first[0], first[1]))
        else:
            held[key] = (line, implied)
    return found


_HOST: ThreadPoolExecutor | None = None   # this process's host-side thread (see decode_items)
_HOST_PID = 0


def host_thread() -> ThreadPoolExecutor:
    """One thread per process for the host-side work that overlaps decoding (made after a fork)."""
    global _HOST, _HOST_PID
    if _HOST is None or _HOST_PID != os.getpid():
        _HOST, _HOST_PID = ThreadPoolExecutor(1, thread_name_prefix="lstmq-host"), os.getpid()
    return _HOST


def decode_chunk(chunk: ChunkInput, decoder, settings: Settings) -> tuple[ChunkPlan, int]:
    """A chunk decoded: its plan (plan.result(): per item its samples and log-probabilities, its
    unknown words, or its error) and the words generated. `chunk`: its prompts as columns, as
    the worker parsed them.

    The chunk is decoded in slices. While the decoder (TensorFlow, which releases the GIL) runs
    slice k, the host thread checks and tokenizes slice k+1 and appends slice k-1's output to the
    result columns, so that a big chunk's host work hides behind its decoding. A slice holds
    decode_batch_size (max_rows) to 4 x that many prompts, aiming at 4 slices per chunk: the
    decoder refills the rows of prompts that finished early from those still waiting (mixed
    lengths), which works best with more prompts than rows. No dict is made per prompt: on a
    CPU worker the host thread takes its time from the decoder's cores."""
    plan = ChunkPlan(chunk, decoder.vocabulary, settings)
    rows = max(1, decoder.max_rows)
    count = len(chunk)
    step = max(rows, min(4 * rows, -(-count // 4)))
    bounds = [(start, min(count, start + step)) for start in range(0, count, step)] or [(0, 0)]
    return plan, _pipeline(plan, decoder, bounds, plan.prepare)


def _pipeline(plan: ChunkPlan, decoder, bounds: list[tuple[int, int]], prepare) -> int:
    """Decode slice k while the host thread prepares slice k+1 and finishes slice k-1; the words
    generated."""
    host = host_thread()
    prepared = host.submit(prepare, *bounds[0])
    finishing = None
    words = 0
    for index in range(len(bounds)):
        requests, positions = prepared.result()
        if index + 1 < len(bounds):
            prepared = host.submit(prepare, *bounds[index + 1])
        scored = decode_splitting(decoder, requests)
        if finishing is not None:
            finishing.result()
        finishing = host.submit(plan.finish, positions, scored)
        words += sum(request.words * request.n for request in requests)
    finishing.result()
    return words


def decode_parsed(parsed: ParsedChunk, decoder, settings: Settings,
                  writer: LineWriter | None = None) -> tuple[ChunkPlan, int]:
    """decode_chunk for a chunk still in raw lines: the host thread parses and checks each slice
    of lines (shared.seeds, ids registered with the job's) and tokenizes it while the decoder
    runs the slice before, and (with `writer`) formats the slice before's output lines, so that
    parsing and formatting hide behind decoding as tokenizing does."""
    plan = ChunkPlan(parsed.input, decoder.vocabulary, settings, writer)
    rows = max(1, decoder.max_rows)
    count = len(parsed)
    step = max(rows, min(4 * rows, -(-count // 4)))
    # the first slice is parsed with nothing to hide behind: a short one gets the decoder going
    first = min(count, step, max(64, rows // 4))
    bounds = ([(0, first)] + [(start, min(count, start + step)) for start in range(first, count, step)]
              if count else [(0, 0)])

    def prepare(start: int, end: int) -> tuple[list[Any], list[int]]:
        first, last = parsed.parse_slice(start, end)
        plan.grow(last)
        return plan.prepare(first, last)

    return plan, _pipeline(plan, decoder, bounds, prepare)


def decode_items(chunk: ChunkInput, decoder, settings: Settings) -> tuple[ChunkResult, int]:
    """decode_chunk's results as columns, and the words generated."""
    plan, words = decode_chunk(chunk, decoder, settings)
    return plan.result(), words


class ChunkPlan:
    """The host side of one chunk: prepare() checks and tokenizes a slice of its prompts into
    decoder requests, finish() appends a slice's decoded samples to the result columns, in order."""

    def __init__(self, chunk: ChunkInput, vocabulary, settings: Settings, writer: LineWriter | None = None):
        """`writer`: format each slice's output lines as it is finished (text_parts, histogram)."""
        self.chunk, self.vocabulary, self.writer = chunk, vocabulary, writer
        self.text_parts: list[str] = []
        self.lines_written = 0
        self.histogram = LogprobHistogram()
        self.check = params_checker(settings.limits())
        try:   # the chunk's parameters, checked once (most prompts have no others)
            self.defaults: Any = self.check(chunk.defaults)
        except InputError as error:
            self.defaults = error
        self.errors: dict[int, str] = {}
        self.unknown: dict[int, list[str]] = {}
        self.counts = [0] * len(chunk)
        self.samples: list[str] = []
        self.logprobs: list[float] = []
        self.prompt_words = 0          # the usable prompts' words (the seed report's unknown-word rate)
        self.words_to_generate = 0

    def grow(self, count: int) -> None:
        """The chunk's columns now hold `count` prompts (a chunk parsed slice by slice)."""
        if count > len(self.counts):
            self.counts.extend([0] * (count - len(self.counts)))

    def prepare(self, start: int, end: int) -> tuple[list[Any], list[int]]:
        """The requests of prompts start .. end-1 that can be decoded, with their positions; the
        others' errors are recorded."""
        from lstmq.worker.engine.batching import Request

        chunk, errors, unknown_words = self.chunk, self.errors, self.unknown
        prompts, ids, overrides, defaults = chunk.prompts, chunk.ids, chunk.overrides, self.defaults
        encode = self.vocabulary.encode
        requests, positions = [], []
        prompt_words = to_generate = 0
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
            prompt_words += len(tokens)
            to_generate += params.words * params.n
        self.prompt_words += prompt_words
        self.words_to_generate += to_generate
        return requests, positions

    def finish(self, positions: list[int], scored) -> None:
        if self.writer is not None:
            text, count = self.writer.slice_lines(self.chunk, positions, scored, self.unknown, self.histogram)
            self.text_parts.append(text)
            self.lines_written += count
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
