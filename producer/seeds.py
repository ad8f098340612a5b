"""Read and validate seed files, line by line, streaming.

.txt: one prompt per line, id = 1-based line number, blank lines skipped.
.jsonl: one object per line: {"id", "prompt"} plus optional words, temperature, top_k, top_p,
n, seed. A line that cannot be used becomes a SeedError (file, line, what is wrong); the other
lines go on. A UTF-8 byte order mark at the start of the file is skipped. JSON's non-standard
NaN, Infinity and -Infinity are rejected: every number must be finite.
"""
from __future__ import annotations

import json
import sys
from contextlib import nullcontext
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from lstmq.shared.errors import InputError
from lstmq.shared.messages import PromptItem
from lstmq.shared.params import GenerationParams, Limits, check_generation_params, prompt_key
from lstmq.shared.text import has_words

SUFFIXES = (".txt", ".jsonl")
JSONL_FIELDS = ("id", "prompt", *GenerationParams.keys())
_PARAM_KEYS = GenerationParams.keys()
_KNOWN_FIELDS = frozenset(JSONL_FIELDS)
BYTE_ORDER_MARK = b"\xef\xbb\xbf"   # UTF-8 BOM, written by some Windows editors


class Seed(NamedTuple):
    """A usable seed line (a tuple: millions are made, one per line)."""
    line: int
    id: Any
    prompt: str
    params: GenerationParams

    def item(self) -> PromptItem:
        """The chunk item stored for the worker."""
        return PromptItem(line=self.line, id=self.id, prompt=self.prompt, key=prompt_key(self.id), params=self.params)


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


STDIN = "-"            # read the seeds from standard input
FORMATS = ("txt", "jsonl")


def seed_format(path: str | Path, fmt: str | None = None) -> str:
    """txt or jsonl: `fmt` when given, else the file's suffix (standard input: txt)."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise InputError(f"seed format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        return fmt
    return "txt" if str(path) == STDIN else Path(path).suffix.lower().lstrip(".")


def check_path(path: str | Path, fmt: str | None = None) -> str | Path:
    """The seed file (or STDIN), checked: it exists, and its format is known."""
    if str(path) == STDIN:
        seed_format(path, fmt)
        return STDIN
    path = Path(path)
    if fmt is None and path.suffix.lower() not in SUFFIXES:
        raise InputError(f"{path}: seed files must end in .txt (one prompt per line) or .jsonl "
                         f"(one JSON object per line), got {path.suffix or 'no suffix'!r} (or say --format)")
    seed_format(path, fmt)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    return path


def display_name(path: str | Path) -> str:
    return "<stdin>" if str(path) == STDIN else str(path)


def read_seeds(path: str | Path, defaults: GenerationParams, limits: Limits,
               fmt: str | None = None) -> Iterator[Seed | SeedError]:
    """Yield a Seed or a SeedError for every non-blank line, in file order. `path` STDIN ("-")
    reads standard input (txt unless `fmt` says jsonl). Streams: memory does not grow with the
    file, but for the ids a .jsonl file sets itself (kept to find duplicates). A line with the
    job's own parameters gets `defaults`, checked once, as its params (the same object)."""
    path = check_path(path, fmt)
    is_jsonl = seed_format(path, fmt) == "jsonl"
    source = nullcontext(sys.stdin.buffer) if path == STDIN else Path(path).open("rb", buffering=1 << 20)
    params_for = _ParamsChecker(defaults, limits)
    with source as stream:
        if is_jsonl:
            yield from _read_jsonl(stream, display_name(path), params_for, limits)
        else:
            yield from _read_txt(stream, display_name(path), params_for, limits)


def _lines(stream) -> Iterator[tuple[int, bytes]]:
    """(line number, the line without its end of line), the first one without a byte order mark."""
    for number, raw in enumerate(stream, start=1):
        raw = raw.rstrip(b"\n").rstrip(b"\r")
        if number == 1 and raw.startswith(BYTE_ORDER_MARK):
            raw = raw[len(BYTE_ORDER_MARK):]
        yield number, raw


def _read_txt(stream, name: str, params_for: _ParamsChecker, limits: Limits) -> Iterator[Seed | SeedError]:
    """A prompt per line; its id is its line number (unique by construction)."""
    max_line_bytes, max_prompt_chars = limits.max_line_bytes, limits.max_prompt_chars
    for number, raw in _lines(stream):
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
        params = params_for.defaults
        if params is None:
            try:
                params = params_for({})
            except InputError as error:
                yield SeedError(name, number, number, str(error))
                continue
        yield Seed(number, number, prompt, params)


def _read_jsonl(stream, name: str, params_for: _ParamsChecker, limits: Limits) -> Iterator[Seed | SeedError]:
    """An object per line. Ids must be unique: those a line sets are kept (id -> line), those
    implied by the line number only as a bit per line."""
    explicit_ids: dict[Any, int] = {}
    implied_lines = bytearray()   # implied_lines[n] == 1: line n was used with its line number as its id
    for number, raw in _lines(stream):
        identifier: Any = None
        implied = True
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
            first = explicit_ids.get(identifier)
            if first is not None:
                raise InputError(_duplicate_id_message(identifier, number, implied, first, False))
            if type(identifier) is int and 0 < identifier < len(implied_lines) and implied_lines[identifier]:
                raise InputError(_duplicate_id_message(identifier, number, implied, identifier, True))
            _check_prompt(prompt, limits)
            params = params_for(overrides)
        except InputError as error:
            yield SeedError(name, number, identifier, str(error))
            continue
        if implied:
            if len(implied_lines) <= number:
                implied_lines.extend(bytes(max(number + 1 - len(implied_lines), len(implied_lines))))
            implied_lines[number] = 1
        else:
            explicit_ids[identifier] = number
        yield Seed(number, identifier, prompt, params)


class _ParamsChecker:
    """A line's parameters, checked: the job's defaults with the line's overrides. The defaults
    alone are checked once (`defaults`, None when they do not pass); overrides are remembered by
    their values and types (a file repeats a few combinations many times)."""

    CACHE_LIMIT = 4096

    def __init__(self, defaults: GenerationParams, limits: Limits):
        self.base, self.limits = defaults.to_dict(), limits
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


def _duplicate_id_message(identifier: Any, line: int, implied: bool, first_line: int, first_implied: bool) -> str:
    """Why `identifier` on `line` clashes with the same id on `first_line`, saying which id came from a line number."""
    if not implied and not first_implied:
        return f"duplicate id {identifier!r} (first used on line {first_line})"
    if implied:
        return (f"duplicate id {identifier!r} (line {line} has no \"id\", so its id is its line number; "
                f"line {first_line} set \"id\": {json.dumps(identifier)})")
    return (f"duplicate id {identifier!r} (line {first_line} has no \"id\", so its id is its line number; "
            f"line {line} sets \"id\": {json.dumps(identifier)})")


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
