"""Read and validate seed files, line by line, streaming.

.txt: one prompt per line, id = 1-based line number, blank lines skipped.
.jsonl: one object per line: {"id", "prompt"} plus optional words, temperature, top_k, top_p,
n, seed. A line that cannot be used becomes a SeedError (file, line, what is wrong); the other
lines go on.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lstmq.shared.errors import InputError
from lstmq.shared.messages import PromptItem
from lstmq.shared.params import GenerationParams, Limits, check_generation_params, prompt_key
from lstmq.shared.text import words

SUFFIXES = (".txt", ".jsonl")
JSONL_FIELDS = ("id", "prompt", *GenerationParams.keys())


@dataclass(frozen=True)
class Seed:
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


def check_path(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise InputError(f"{path}: seed files must end in .txt (one prompt per line) or .jsonl "
                         f"(one JSON object per line), got {path.suffix or 'no suffix'!r}")
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    return path


def read_seeds(path: str | Path, defaults: GenerationParams, limits: Limits) -> Iterator[Seed | SeedError]:
    """Yield a Seed or a SeedError for every non-blank line, in file order."""
    path = check_path(path)
    is_jsonl = path.suffix.lower() == ".jsonl"
    seen_ids: dict[Any, int] = {}
    with path.open("rb") as stream:
        for number, raw in enumerate(stream, start=1):
            raw = raw.rstrip(b"\n").rstrip(b"\r")
            identifier: Any = None if is_jsonl else number
            try:
                if len(raw) > limits.max_line_bytes:
                    raise InputError(f"line is {len(raw)} bytes, over max_line_bytes ({limits.max_line_bytes})")
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as error:
                    raise InputError(f"not valid UTF-8 (byte 0x{raw[error.start]:02x} at column {error.start + 1})") from None
                if not text.strip():
                    continue
                if is_jsonl:
                    record = _parse_json_object(text)
                    identifier = _check_id(record.get("id", number))
                    prompt = _check_prompt_field(record)
                    overrides = {key: record[key] for key in GenerationParams.keys() if key in record}
                else:
                    prompt, overrides = text.strip(), {}
                if identifier in seen_ids:
                    raise InputError(f"duplicate id {identifier!r} (first used on line {seen_ids[identifier]})")
                _check_prompt(prompt, limits)
                params = check_generation_params({**defaults.to_dict(), **overrides}, limits)
            except InputError as error:
                yield SeedError(str(path), number, identifier, str(error))
                continue
            seen_ids[identifier] = number
            yield Seed(number, identifier, prompt, params)


def _parse_json_object(text: str) -> dict[str, Any]:
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(f"not valid JSON: {error.msg} at column {error.colno}") from None
    if not isinstance(record, dict):
        raise InputError(f"expected a JSON object like {{\"id\": 1, \"prompt\": \"...\"}}, got {type(record).__name__}")
    unknown = [key for key in record if key not in JSONL_FIELDS]
    if unknown:
        raise InputError(f"unknown field {unknown[0]!r} (fields: {', '.join(JSONL_FIELDS)})")
    return record


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
    if not words(prompt):
        raise InputError("prompt has no words (only spaces or punctuation)")
