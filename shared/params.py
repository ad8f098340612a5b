"""Generation parameters of one prompt: validated the same way by the producer (per seed line)
and by the worker (a message is never trusted). No TensorFlow."""
from __future__ import annotations

import hashlib
import json
from typing import Any

from lstmq.shared.config import GENERATION_KEYS, check_value
from lstmq.shared.errors import InputError


def check_generation_params(values: dict[str, Any], max_words: int, max_n: int, source: str = "") -> dict[str, Any]:
    """The parameters with types checked and ranges enforced; InputError names the field."""
    checked = {}
    for key in GENERATION_KEYS:
        if key not in values:
            raise InputError(f"{source + ': ' if source else ''}missing field {key!r}")
        checked[key] = check_value(key, values[key], source, noun="field", error=InputError)
    prefix = f"{source}: " if source else ""
    if checked["words"] > max_words:
        raise InputError(f"{prefix}field 'words' must be <= max_words ({max_words}), got {checked['words']}")
    if checked["n"] > max_n:
        raise InputError(f"{prefix}field 'n' must be <= max_n ({max_n}), got {checked['n']}")
    if checked["seed"] is None:
        raise InputError(f"{prefix}field 'seed' must be an integer >= 0, got null")
    return checked


def prompt_key(prompt_id: Any) -> int:
    """The prompt's key in the random stream: a non-negative integer id is its own key, anything
    else is hashed. Keyed by id (a .txt file's id is its line number), a prompt keeps its samples
    when the file is split, reordered or chunked differently."""
    if isinstance(prompt_id, int) and not isinstance(prompt_id, bool) and 0 <= prompt_id < 2**63:
        return prompt_id
    digest = hashlib.sha256(json.dumps(prompt_id, sort_keys=True).encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)
