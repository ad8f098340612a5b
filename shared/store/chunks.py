"""The chunk codec: a generate chunk's input (the seed file's raw lines) and its output (finished
JSONL bytes) as they are kept in Redis, and the columns a worker works with in between. Pure:
bytes in, bytes out, no I/O (tests/test_chunks.py checks it without Redis);
lstmq.shared.store.jobs stores and reads the bytes.

How chunks are kept in Redis (each one Redis string):
  input:  INPUT_FORMAT, first line and line count (struct "<QI"), then the lines as the seed file
          holds them, packed (see compress): what the producer read, untouched.
  output: OUTPUT_FORMAT, then a msgpack map {"v": 2, "first": first line, "count": lines,
          "out": the chunk's output lines, finished JSONL, packed; "lines": how many,
          "err": its error records ({"id", "line", "error"} per line, in line order), packed, or
          absent; "errors": how many, "hist": the lines' logprob histogram (see LogprobHistogram)}
The producer writes a chunk's input without looking at a line, and collects its output by
concatenation: per-line work belongs to the workers.
Chunks that an lstmq before 0.3 stored (msgpack columns) are not read: collect jobs from an older
version before upgrading (stored data expires after result_ttl anyway).
"""
from __future__ import annotations

import struct
import threading
from typing import Any

import msgpack
import numpy as np
import zstandard

INPUT_FORMAT = b"\x03"
OUTPUT_FORMAT = b"\x04"
ENCODING_VERSION = 2
_HEADER = struct.Struct("<QI")   # first line, lines
PLAIN = b"\x00"                  # packed bytes: a codec byte, then the bytes
ZSTD = b"\x01"
COMPRESS_LEVEL = 1               # zstd: level 1 runs at hundreds of MB/s a core and takes most of the gain on text
COMPRESS_MIN_BYTES = 256         # smaller payloads are stored as they are
LOGPROB_STEPS = 300_000          # the histogram: 1e-4 steps from 0 down to -30

_local = threading.local()       # zstd contexts are not thread-safe: one per thread


def _contexts() -> tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor]:
    contexts = getattr(_local, "contexts", None)
    if contexts is None:
        contexts = _local.contexts = (zstandard.ZstdCompressor(level=COMPRESS_LEVEL), zstandard.ZstdDecompressor())
    return contexts


def compress(data: bytes) -> bytes:
    """`data` packed: zstd when that makes it smaller, else as it is (a codec byte says which)."""
    if len(data) >= COMPRESS_MIN_BYTES:
        packed = _contexts()[0].compress(data)
        if len(packed) < len(data):
            return ZSTD + packed
    return PLAIN + data


def decompress(packed: bytes) -> bytes:
    codec, body = packed[:1], packed[1:]
    if codec == ZSTD:
        return _contexts()[1].decompress(body)
    if codec == PLAIN:
        return bytes(body)
    raise ValueError(f"unknown codec byte {codec!r} in a stored chunk")


def pack_input(first_line: int, lines: int, data: bytes) -> bytes:
    """A chunk's input as stored: its first line number, its line count and its raw lines."""
    return INPUT_FORMAT + _HEADER.pack(first_line, lines) + compress(data)


def unpack_input(raw: bytes) -> tuple[int, int, bytes]:
    """(first line, line count, the raw lines) of a stored input; ValueError for anything else."""
    if raw[:1] != INPUT_FORMAT:
        raise ValueError(f"not a stored chunk input (format byte {raw[:1]!r}; an lstmq before 0.3 stored columns)")
    first_line, lines = _HEADER.unpack_from(raw, 1)
    return first_line, lines, decompress(raw[1 + _HEADER.size:])


class ChunkInput:
    """A chunk's usable prompts as columns, in line order: lines, ids, prompts, and each prompt's
    parameters (the job's `defaults` unless `overrides` has the position). A worker makes it from
    the lines it parsed."""

    __slots__ = ("lines", "ids", "prompts", "defaults", "overrides")

    def __init__(self, lines: list[int], ids: list[Any], prompts: list[str], defaults: dict[str, Any],
                 overrides: dict[int, dict[str, Any]]):
        self.lines, self.ids, self.prompts = lines, ids, prompts
        self.defaults, self.overrides = defaults, overrides

    def __len__(self) -> int:
        return len(self.prompts)

    def params(self, position: int) -> dict[str, Any]:
        override = self.overrides.get(position)
        return self.defaults if override is None else {**self.defaults, **override}


class ChunkResult:
    """A chunk's decoded results as columns: per item its samples and their logprobs, its unknown
    words, or its error (what the worker's decoding produces, before it writes the lines)."""

    __slots__ = ("samples", "counts", "logprobs", "unknown", "errors")

    def __init__(self, samples: list[str], counts: list[int] | None, logprobs: list[float | None] | None,
                 unknown: dict[int, list[str]], errors: dict[int, str]):
        self.samples, self.counts, self.logprobs = samples, counts, logprobs
        self.unknown, self.errors = unknown, errors

    def results(self, items: int | None = None) -> list[dict[str, Any]]:
        """One dict per item: {"samples", "logprobs", "unknown"} or {"error"} (for tests and debugging)."""
        if items is None:
            items = len(self.counts) if self.counts is not None else len(self.samples) + len(self.errors)
        results, start = [], 0
        for position in range(items):
            error = self.errors.get(position)
            if error is not None:
                results.append({"error": error})
                continue
            count = self.counts[position] if self.counts is not None else 1
            result: dict[str, Any] = {"unknown": self.unknown.get(position, []),
                                      "samples": self.samples[start:start + count]}
            if self.logprobs is not None:
                result["logprobs"] = self.logprobs[start:start + count]
            results.append(result)
            start += count
        return results


class LogprobHistogram:
    """The distribution of lines' logprob, exactly at the output's 4 decimals: a count per 1e-4
    step from 0 down to -30 (steps and counts, only the steps that occur), the rare value outside
    that range by value, and the sum of the unrounded values (for the mean)."""

    __slots__ = ("counts", "outside", "total", "lines")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.outside: dict[float, int] = {}
        self.total = 0.0
        self.lines = 0

    def add(self, logprob: float, rounded: float) -> None:
        """`rounded`: round(logprob, 4), as written on the line; non-finite values are left out."""
        if rounded - rounded != 0:
            return
        self.lines += 1
        self.total += logprob
        step = round(rounded * -10_000)
        if 0 <= step <= LOGPROB_STEPS:
            self.counts[step] = self.counts.get(step, 0) + 1
        else:
            self.outside[rounded] = self.outside.get(rounded, 0) + 1

    def to_value(self) -> dict[str, Any]:
        steps = np.fromiter(self.counts.keys(), dtype=np.uint32, count=len(self.counts))
        counts = np.fromiter(self.counts.values(), dtype=np.uint32, count=len(self.counts))
        return {"steps": steps.tobytes(), "counts": counts.tobytes(), "outside": list(self.outside.items()),
                "total": self.total, "lines": self.lines}


class ChunkOutput:
    """What a worker stores for a finished chunk: its output lines and its error records as
    finished JSONL (bytes, UTF-8), how many of each, and the lines' logprob histogram."""

    __slots__ = ("first_line", "count", "out", "lines", "err", "errors", "hist")

    def __init__(self, first_line: int, count: int, out: bytes, lines: int, err: bytes, errors: int,
                 hist: dict[str, Any] | None):
        self.first_line, self.count = first_line, count
        self.out, self.lines, self.err, self.errors, self.hist = out, lines, err, errors, hist

    def pack(self) -> bytes:
        value: dict[str, Any] = {"v": ENCODING_VERSION, "first": self.first_line, "count": self.count,
                                 "out": compress(self.out), "lines": self.lines, "errors": self.errors}
        if self.err:
            value["err"] = compress(self.err)
        if self.hist is not None:
            value["hist"] = self.hist
        return OUTPUT_FORMAT + msgpack.packb(value, use_bin_type=True)

    @classmethod
    def unpack(cls, raw: bytes) -> ChunkOutput:
        if raw[:1] != OUTPUT_FORMAT:
            raise ValueError(f"not a stored chunk output (format byte {raw[:1]!r}; an lstmq before 0.3 stored columns)")
        value = msgpack.unpackb(memoryview(raw)[1:], raw=False, strict_map_key=False)
        err = value.get("err")
        return cls(value["first"], value["count"], decompress(value["out"]), value["lines"],
                   decompress(err) if err is not None else b"", value.get("errors", 0), value.get("hist"))


TOP_UNKNOWN_PER_CHUNK = 20   # a chunk reports this many of its most frequent unknown words


class ChunkReport:
    """A chunk's share of the job's seed report, as its worker found it: valid and invalid lines,
    prompt words, unknown words and the prompts that have any, words to generate, output lines,
    and its most frequent unknown words. The job record adds them up (store.jobs.save_output)."""

    __slots__ = ("valid", "invalid", "prompt_words", "unknown_words", "prompts_with_unknown", "words_to_generate",
                 "output_lines", "top_unknown")

    def __init__(self, valid: int = 0, invalid: int = 0, prompt_words: int = 0, unknown_words: int = 0,
                 prompts_with_unknown: int = 0, words_to_generate: int = 0, output_lines: int = 0,
                 top_unknown: list[tuple[str, int]] | None = None):
        self.valid, self.invalid, self.prompt_words, self.unknown_words = valid, invalid, prompt_words, unknown_words
        self.prompts_with_unknown, self.words_to_generate = prompts_with_unknown, words_to_generate
        self.output_lines, self.top_unknown = output_lines, top_unknown or []

    def counters(self) -> list[int]:
        """In the order the outcome script adds them to the job record."""
        return [self.valid, self.invalid, self.prompt_words, self.unknown_words, self.prompts_with_unknown,
                self.words_to_generate, self.output_lines]
