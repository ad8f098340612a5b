"""Seed lines: the rules of .txt and .jsonl seed files, applied to a chunk of raw bytes.

The producer moves a seed file's bytes, cut into chunks at line boundaries (producer.seeds); the
worker that takes a chunk parses it here, line by line, and so does `lstmq generate --dry-run`
over a whole file. No TensorFlow, no Redis.

.txt: one prompt per line, id = 1-based line number, blank lines skipped.
.jsonl: one object per line: {"id", "prompt"} plus optional words, temperature, top_k, top_p,
n, seed. A line that cannot be used becomes a SeedError (file, line, what is wrong); the other
lines go on. A UTF-8 byte order mark at the start of the file is skipped (by the producer, which
sees the file's first bytes). JSON's non-standard NaN, Infinity and -Infinity are rejected: every
number must be finite. Ids must be unique: a chunk's ids are checked against the whole job's by
the worker (store.jobs.register_ids), a dry run's in the producer (LocalIds).
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from lstmq.shared.errors import InputError
from lstmq.shared.params import GenerationParams, Limits, check_generation_params
from lstmq.shared.text import has_words

FORMATS = ("txt", "jsonl")
JSONL_FIELDS = ("id", "prompt", *GenerationParams.keys())
_PARAM_KEYS = GenerationParams.keys()
_KNOWN_FIELDS = frozenset(JSONL_FIELDS)
BYTE_ORDER_MARK = b"\xef\xbb\xbf"   # UTF-8 BOM, written by some Windows editors


class Seed(NamedTuple):
    """A usable seed line (a tuple: millions are made, one per line). `implied`: its id is its
    line number (a .txt line, or a .jsonl line with no "id")."""
    line: int
    id: Any
    prompt: str
    params: GenerationParams
    implied: bool = True


@dataclass(frozen=True)
class SeedError:
    path: str
    line: int
    id: Any
    error: str

    def record(self) -> dict[str, Any]:
        return {"id": self.id, "line": self.line, "error": self.error}

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.error}"


def id_key(identifier: Any) -> str:
    """An id as the job's id registry keeps it: "i<digits>" for an integer, "s<text>" for a string
    (the integer 7 and the string "7" are different ids)."""
    return f"i{identifier}" if type(identifier) is int else f"s{identifier}"


def id_of_key(key: str) -> Any:
    return int(key[1:]) if key[:1] == "i" else key[1:]


def duplicate_id_message(identifier: Any, line: int, implied: bool, first_line: int, first_implied: bool) -> str:
    """Why `identifier` on `line` clashes with the same id on `first_line`, saying which id came from a line number."""
    if not implied and not first_implied:
        return f"duplicate id {identifier!r} (first used on line {first_line})"
    if implied:
        return (f"duplicate id {identifier!r} (line {line} has no \"id\", so its id is its line number; "
                f"line {first_line} set \"id\": {json.dumps(identifier)})")
    return (f"duplicate id {identifier!r} (line {first_line} has no \"id\", so its id is its line number; "
            f"line {line} sets \"id\": {json.dumps(identifier)})")


class LocalIds:
    """Unique ids within one process's view of a whole file (a dry run): the ids lines set are
    kept (id -> line), those implied by line numbers only as a bit per line."""

    def __init__(self) -> None:
        self.explicit: dict[Any, int] = {}
        self.implied_lines = bytearray()   # implied_lines[n] == 1: line n was used with its number as its id

    def check(self, identifier: Any, line: int, implied: bool) -> None:
        """InputError when the id was used before; otherwise remember it."""
        first = self.explicit.get(identifier)
        if first is not None:
            raise InputError(duplicate_id_message(identifier, line, implied, first, False))
        implied_lines = self.implied_lines
        if type(identifier) is int and 0 < identifier < len(implied_lines) and implied_lines[identifier]:
            raise InputError(duplicate_id_message(identifier, line, implied, identifier, True))
        if implied:
            if len(implied_lines) <= line:
                implied_lines.extend(bytes(max(line + 1 - len(implied_lines), len(implied_lines))))
            implied_lines[line] = 1
        else:
            self.explicit[identifier] = line


def parse_chunk(raw: bytes, first_line: int, fmt: str, name: str, params_for: ParamsChecker, limits: Limits,
                ids: LocalIds | None = None) -> Iterator[Seed | SeedError]:
    """A Seed or a SeedError for every non-blank line of `raw` (lines ending in \\n, the last one
    may not), numbered from `first_line`. `name`: the seed file as messages name it. `ids`: check
    ids against those seen before (None: the caller checks them, as a worker does)."""
    return parse_lines(split_lines(raw), first_line, fmt, name, params_for, limits, ids)


def split_lines(raw: bytes) -> list[bytes]:
    """A chunk's lines, without their newlines (a last line without one included)."""
    lines = raw.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()   # the chunk's last line ended with \n
    return lines


def parse_lines(lines: list[bytes], first_line: int, fmt: str, name: str, params_for: ParamsChecker, limits: Limits,
                ids: LocalIds | None = None) -> Iterator[Seed | SeedError]:
    """parse_chunk for lines already split (split_lines), numbered from `first_line`."""
    if fmt == "jsonl":
        return _parse_jsonl(lines, first_line, name, params_for, limits, ids)
    if fmt != "txt":
        raise InputError(f"seed format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return _parse_txt(lines, first_line, name, params_for, limits)


def _parse_txt(lines: list[bytes], first_line: int, name: str, params_for: ParamsChecker,
               limits: Limits) -> Iterator[Seed | SeedError]:
    """A prompt per line; its id is its line number (unique by construction)."""
    max_line_bytes, max_prompt_chars = limits.max_line_bytes, limits.max_prompt_chars
    params = params_for.defaults
    for number, raw in enumerate(lines, start=first_line):
        if raw[-1:] == b"\r":
            raw = raw[:-1]
        if len(raw) > max_line_bytes:
            yield SeedError(name, number, number, f"line is {len(raw)} bytes, over max_line_bytes ({max_line_bytes})")
            continue
        try:
            prompt = raw.decode("utf-8").strip()
        except UnicodeDecodeError as error:
            yield SeedError(name, number, number, _utf8_error(raw, error))
            continue
        if not prompt:
            continue
        if len(prompt) > max_prompt_chars or not has_words(prompt):
            yield SeedError(name, number, number, _prompt_error(prompt, limits))
            continue
        if params is None:
            try:
                params_for({})
            except InputError as error:
                yield SeedError(name, number, number, str(error))
                continue
        yield Seed(number, number, prompt, params)


def _parse_jsonl(lines: list[bytes], first_line: int, name: str, params_for: ParamsChecker, limits: Limits,
                 ids: LocalIds | None) -> Iterator[Seed | SeedError]:
    for number, raw in enumerate(lines, start=first_line):
        if raw[-1:] == b"\r":
            raw = raw[:-1]
        identifier: Any = None
        try:
            if len(raw) > limits.max_line_bytes:
                raise InputError(f"line is {len(raw)} bytes, over max_line_bytes ({limits.max_line_bytes})")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise InputError(_utf8_error(raw, error)) from None
            if not text.strip():
                continue
            record = _parse_json_object(text)
            implied = "id" not in record
            identifier = _check_id(record.get("id", number))
            prompt = _check_prompt_field(record)
            overrides = {key: record[key] for key in _PARAM_KEYS if key in record}
            if ids is not None:
                ids.check(identifier, number, implied)
            _check_prompt(prompt, limits)
            params = params_for(overrides)
        except InputError as error:
            yield SeedError(name, number, identifier, str(error))
            continue
        yield Seed(number, identifier, prompt, params, implied)


class ParamsChecker:
    """A line's parameters, checked: the job's defaults with the line's overrides. The defaults
    alone are checked once (`defaults`, None when they do not pass); overrides are remembered by
    their values and types (a file repeats a few combinations many times)."""

    CACHE_LIMIT = 4096

    def __init__(self, defaults: GenerationParams | dict[str, Any], limits: Limits):
        self.base = defaults if isinstance(defaults, dict) else defaults.to_dict()
        self.limits = limits
        self.cache: dict[tuple, GenerationParams | str] = {}
        try:
            self.defaults: GenerationParams | None = check_generation_params(self.base, limits)
        except InputError:
            self.defaults = None

    def __call__(self, overrides: dict[str, Any]) -> GenerationParams:
        if not overrides and self.defaults is not None:
            return self.defaults
        try:
            key = tuple((name, type(value), value) for name, value in overrides.items())
            hash(key)
        except TypeError:   # a list or an object as a value: not cached (and an error below)
            return check_generation_params({**self.base, **overrides}, self.limits)
        checked = self.cache.get(key)
        if checked is None:
            try:
                checked = check_generation_params({**self.base, **overrides}, self.limits)
            except InputError as error:
                checked = str(error)
            if len(self.cache) >= self.CACHE_LIMIT:
                self.cache.clear()
            self.cache[key] = checked
        if isinstance(checked, str):
            raise InputError(checked)
        return checked


def _prompt_error(prompt: str, limits: Limits) -> str:
    try:
        _check_prompt(prompt, limits)
    except InputError as error:
        return str(error)
    raise AssertionError("the prompt passed its checks")


def _utf8_error(raw: bytes, error: UnicodeDecodeError) -> str:
    return f"not valid UTF-8 (byte 0x{raw[error.start]:02x} at column {error.start + 1})"


class _NonFinite:
    """Stands in for a NaN, Infinity or -Infinity that json.loads met, so that it can be reported."""

    def __init__(self, constant: str) -> None:
        self.constant = constant


def _parse_json_object(text: str) -> dict[str, Any]:
    non_finite: list[_NonFinite] = []

    def parse_constant(constant: str) -> _NonFinite:
        # json.loads accepts NaN, Infinity and -Infinity, which are not JSON: remember them, reject below
        non_finite.append(_NonFinite(constant))
        return non_finite[-1]

    try:   # parse_constant is only ever called where the text holds one of those words
        record = (json.loads(text, parse_constant=parse_constant) if "NaN" in text or "Infinity" in text
                  else json.loads(text))
    except json.JSONDecodeError as error:
        raise InputError(f"not valid JSON: {error.msg} at column {error.colno}") from None
    except ValueError as error:   # e.g. an integer over Python's 4300-digit conversion limit
        raise InputError(f"not valid JSON: {error}") from None
    except RecursionError:
        raise InputError("not valid JSON: arrays or objects nested too deeply") from None
    if non_finite:
        _reject_non_finite(text, record, non_finite[0])
    if not isinstance(record, dict):
        raise InputError(f"expected a JSON object like {{\"id\": 1, \"prompt\": \"...\"}}, got {type(record).__name__}")
    unknown = [key for key in record if key not in _KNOWN_FIELDS]
    if unknown:
        raise InputError(f"unknown field {unknown[0]!r} (fields: {', '.join(JSONL_FIELDS)})")
    return record


def _reject_non_finite(text: str, record: Any, first: _NonFinite) -> None:
    """Raise InputError for the first NaN or Infinity on the line, naming its field and column."""
    column = _constant_column(text, first.constant)
    where = f" at column {column}" if column else ""
    if isinstance(record, dict):
        for key, value in record.items():
            if value is first and key in GenerationParams.keys():
                raise InputError(f"field {key!r} must be a finite number, got {first.constant}{where}")
    raise InputError(f"not valid JSON: {first.constant}{where} (JSON numbers must be finite)")


def _constant_column(text: str, constant: str) -> int | None:
    """The 1-based column of the first `constant` outside a JSON string, or None.
    json.loads reads left to right, so the first one it met is the first one outside strings."""
    in_string = escaped = False
    for index, character in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif character == "\\":
                escaped = True
            elif character == '"':
                in_string = False
        elif character == '"':
            in_string = True
        elif text.startswith(constant, index):
            return index + 1
    return None


def _check_id(identifier: Any) -> Any:
    if isinstance(identifier, bool) or not isinstance(identifier, (str, int)):
        raise InputError(f"field 'id' must be a string or an integer, got {json.dumps(identifier)}")
    return identifier


def _check_prompt_field(record: dict[str, Any]) -> str:
    if "prompt" not in record:
        raise InputError("missing field 'prompt'")
    if not isinstance(record["prompt"], str):
        raise InputError(f"field 'prompt' must be a string, got {json.dumps(record['prompt'])}")
    return record["prompt"]


def _check_prompt(prompt: str, limits: Limits) -> None:
    if len(prompt) > limits.max_prompt_chars:
        raise InputError(f"prompt is {len(prompt)} characters, over max_prompt_chars ({limits.max_prompt_chars})")
    if not has_words(prompt):
        raise InputError("prompt has no words (only spaces or punctuation)")
