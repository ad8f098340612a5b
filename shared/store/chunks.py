"""The chunk codec: a generate chunk's input (ChunkInput, made by ChunkBuilder) and result
(ChunkResult) as they are kept in Redis. Pure: bytes in, columns out, no I/O (tests/test_chunks.py
checks it without Redis); lstmq.shared.store.jobs stores and reads the bytes."""
from __future__ import annotations

import zlib
from typing import Any

import msgpack

from lstmq.shared.params import prompt_key


# -- how chunks are kept in Redis -----------------------------------------------------------------
# A chunk's input and its result are each one Redis string: a format byte, then a msgpack map,
# zlib-compressed (FORMAT_MSGPACK_ZLIB) when that is smaller. Columns, not one object per prompt,
# and only what the output needs:
#   input:  {"v": 1, "lines": [first, count, first, count, ...] (runs of seed-file line numbers),
#            "ids": [...] (absent when every id is its line number, as in a .txt file),
#            "prompts": [...], "defaults": {params of the job}, "overrides": {position: {key: value}}
#            (only the parameters that differ from the defaults; absent when none do)}
#   result: {"v": 1, "samples": [every continuation, item after item], "counts": [samples per item]
#            (absent when each item has one, and a failed item none), "logprobs": [per sample, in
#            units of 1e-5 (the worker rounds to 5 decimals; None for a missing one)] or
#            "logprobs_float": [...] for values that are not, "unknown": {position: [words]}
#            (non-empty lists only), "errors": {position: reason}}
# A prompt's key in the random stream is not stored: it is prompt_key(id) (shared.params).
# An integer beyond 64 bits (a .jsonl id may be one) is kept as msgpack extension type BIG_INT,
# its decimal digits. Chunks that an lstmq before 0.2 wrote as JSON are not read: collect jobs
# from an older version before upgrading (stored data expires after result_ttl anyway).
FORMAT_MSGPACK = b"\x01"
FORMAT_MSGPACK_ZLIB = b"\x02"
ENCODING_VERSION = 1
COMPRESS_LEVEL = 1             # zlib: 1 is fast and takes most of the gain on prompt text
COMPRESS_MIN_BYTES = 128       # smaller payloads are stored as plain msgpack
LOGPROB_SCALE = 100_000        # logprobs are kept as integers in units of 1e-5
BIG_INT = 1                    # msgpack extension type: an integer beyond 64 bits, as decimal digits


def _big_int(value: Any) -> Any:
    if isinstance(value, int):
        return msgpack.ExtType(BIG_INT, str(value).encode("ascii"))
    raise TypeError(f"cannot store a {type(value).__name__} in a chunk")


def _extension(code: int, data: bytes) -> Any:
    if code == BIG_INT:
        return int(data)
    raise ValueError(f"unknown msgpack extension type {code} in a chunk")


def pack(value: dict[str, Any]) -> bytes:
    """The stored form of a chunk's map: a format byte, then msgpack, compressed when that pays."""
    packed = msgpack.packb(value, use_bin_type=True, default=_big_int)
    if len(packed) >= COMPRESS_MIN_BYTES:
        compressed = zlib.compress(packed, COMPRESS_LEVEL)
        if len(compressed) < len(packed):
            return FORMAT_MSGPACK_ZLIB + compressed
    return FORMAT_MSGPACK + packed


def unpack(raw: bytes) -> Any:
    """The map pack() stored; ValueError for anything else (an unknown format byte)."""
    marker = raw[:1]
    if marker == FORMAT_MSGPACK_ZLIB:
        raw = zlib.decompress(raw[1:])
    elif marker == FORMAT_MSGPACK:
        raw = raw[1:]
    else:
        raise ValueError(f"not a stored chunk (format byte {marker!r}; an lstmq before 0.2 stored JSON)")
    return msgpack.unpackb(raw, raw=False, strict_map_key=False, use_list=True, ext_hook=_extension)


class ChunkInput:
    """A chunk's prompts as columns: lines, ids, prompts, and each prompt's parameters (the
    chunk's defaults unless `overrides` has the position)."""

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

    def items(self) -> list[dict[str, Any]]:
        """One dict per prompt (PromptItem.to_dict()'s shape): line, id, prompt, key, params."""
        return [{"line": line, "id": identifier, "prompt": prompt, "key": prompt_key(identifier),
                 "params": self.params(position)}
                for position, (line, identifier, prompt) in enumerate(zip(self.lines, self.ids, self.prompts))]

    @classmethod
    def decode(cls, raw: bytes) -> ChunkInput:
        return cls.from_value(unpack(raw))

    @classmethod
    def from_value(cls, value: Any) -> ChunkInput:
        """From a stored chunk, unpacked (a map of columns)."""
        lines: list[int] = []
        runs = value["lines"]
        for index in range(0, len(runs), 2):
            lines.extend(range(runs[index], runs[index] + runs[index + 1]))
        ids = value.get("ids")
        return cls(lines, lines if ids is None else ids, value["prompts"], value.get("defaults") or {},
                   value.get("overrides") or {})


class ChunkBuilder:
    """Collects a chunk's prompts (in line order) for ChunkBuilder.encode: the producer's side of
    ChunkInput. `defaults`: the job's parameters, as a dict; add() takes only what differs."""

    def __init__(self, defaults: dict[str, Any]):
        self.defaults = defaults
        self.runs: list[int] = []
        self.ids: list[Any] = []
        self.prompts: list[str] = []
        self.overrides: dict[int, dict[str, Any]] = {}
        self.ids_are_lines = True

    def __len__(self) -> int:
        return len(self.prompts)

    def add(self, line: int, identifier: Any, prompt: str, overrides: dict[str, Any] | None = None) -> None:
        runs = self.runs
        if runs and runs[-2] + runs[-1] == line:
            runs[-1] += 1
        else:
            runs += (line, 1)
        if self.ids_are_lines and (identifier != line or type(identifier) is not int):
            self.ids_are_lines = False
        self.ids.append(identifier)
        if overrides:
            self.overrides[len(self.prompts)] = overrides
        self.prompts.append(prompt)

    def add_item(self, item: dict[str, Any]) -> None:
        params = item["params"]
        overrides = {key: value for key, value in params.items()
                     if key not in self.defaults or self.defaults[key] != value
                     or type(self.defaults[key]) is not type(value)}
        self.add(item["line"], item["id"], item["prompt"], overrides)

    def encode(self) -> bytes:
        value: dict[str, Any] = {"v": ENCODING_VERSION, "lines": self.runs, "prompts": self.prompts,
                                 "defaults": self.defaults}
        if not self.ids_are_lines:
            value["ids"] = self.ids
        if self.overrides:
            value["overrides"] = self.overrides
        return pack(value)


def encode_items(items: list[dict[str, Any]]) -> bytes:
    """Item dicts (PromptItem.to_dict(): line, id, prompt, params) in the stored form."""
    builder = ChunkBuilder(items[0]["params"] if items else {})
    for item in items:
        builder.add_item(item)
    return builder.encode()


class ChunkResult:
    """A chunk's results as columns: per item its samples and their logprobs, its unknown words,
    or its error."""

    __slots__ = ("samples", "counts", "logprobs", "unknown", "errors")

    def __init__(self, samples: list[str], counts: list[int] | None, logprobs: list[float | None] | None,
                 unknown: dict[int, list[str]], errors: dict[int, str]):
        self.samples, self.counts, self.logprobs = samples, counts, logprobs
        self.unknown, self.errors = unknown, errors

    def results(self, items: int | None = None) -> list[dict[str, Any]]:
        """One dict per item, the shape the worker wrote: {"samples", "logprobs", "unknown"} or {"error"}."""
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

    @classmethod
    def from_results(cls, results: list[dict[str, Any]]) -> ChunkResult:
        samples: list[str] = []
        counts: list[int] = []
        logprobs: list[float | None] = []
        unknown: dict[int, list[str]] = {}
        errors: dict[int, str] = {}
        scored = False
        for position, result in enumerate(results):
            if "error" in result:
                errors[position] = result["error"]
                counts.append(0)
                continue
            item_samples = result["samples"]
            samples.extend(item_samples)
            counts.append(len(item_samples))
            scores = result.get("logprobs")
            if scores:
                scored = True
                logprobs.extend(scores)
            else:
                logprobs.extend([None] * len(item_samples))
            if result.get("unknown"):
                unknown[position] = result["unknown"]
        return cls(samples, counts, logprobs if scored else None, unknown, errors)

    def __len__(self) -> int:
        """How many items (prompts) the chunk had."""
        return len(self.counts) if self.counts is not None else len(self.samples) + len(self.errors)

    def encode(self) -> bytes:
        """The stored form (see "how chunks are kept")."""
        value: dict[str, Any] = {"v": ENCODING_VERSION, "samples": self.samples}
        if self.counts is not None and any(count != (0 if position in self.errors else 1)
                                           for position, count in enumerate(self.counts)):
            value["counts"] = self.counts
        if self.logprobs is not None:
            try:
                scaled = [None if score is None else round(score * LOGPROB_SCALE) for score in self.logprobs]
                exact = all(score is None or scaled_score / LOGPROB_SCALE == score
                            for score, scaled_score in zip(self.logprobs, scaled))
            except (OverflowError, ValueError, TypeError):   # inf, NaN, not a number
                exact = False
            if exact:
                value["logprobs"] = scaled
            else:
                value["logprobs_float"] = self.logprobs
        if self.unknown:
            value["unknown"] = self.unknown
        if self.errors:
            value["errors"] = self.errors
        return pack(value)

    @classmethod
    def decode(cls, raw: bytes) -> ChunkResult:
        value = unpack(raw)
        logprobs = value.get("logprobs")
        if logprobs is not None:
            logprobs = [None if score is None else score / LOGPROB_SCALE for score in logprobs]
        else:
            logprobs = value.get("logprobs_float")
        counts = value.get("counts")
        errors = value.get("errors") or {}
        if counts is None and errors:   # one sample per item, none for a failed one
            total = len(value["samples"]) + len(errors)
            counts = [0 if position in errors else 1 for position in range(total)]
        return cls(value["samples"], counts, logprobs, value.get("unknown") or {}, errors)


def encode_results(results: list[dict[str, Any]] | ChunkResult) -> bytes:
    """Result dicts ({"samples", "logprobs", "unknown"} or {"error"}), or a ChunkResult, in the
    stored form."""
    if isinstance(results, ChunkResult):
        return results.encode()
    return ChunkResult.from_results(results).encode()
