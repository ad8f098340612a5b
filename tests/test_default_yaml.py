"""config/default.yaml documents every setting as `key: value  # unit; range; why`, with the range
the SCHEMA enforces. tests/test_config.py already checks that the parsed keys equal the SCHEMA's and
that every setting line has a comment; this checks the text itself (each key on one line, once),
the three parts of each comment, that the range matches SCHEMA, and that the values are the defaults."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from lstmq.shared.config import SCHEMA, Field, load_settings

DEFAULT_YAML = Path(__file__).resolve().parents[1] / "config" / "default.yaml"
SETTING_LINE = re.compile(r"^(?P<key>[a-z_][a-z0-9_]*):\s*(?P<value>.*?)\s+#\s*(?P<doc>.*)$")


def setting_lines() -> dict[str, list[str]]:
    """key -> the documentation comments of its lines (a list, so that a repeated key shows)."""
    found: dict[str, list[str]] = {}
    for line in DEFAULT_YAML.read_text(encoding="utf-8").splitlines():
        if not line or line.startswith("#"):
            continue
        match = SETTING_LINE.match(line)
        assert match, f"config/default.yaml: not a `key: value  # unit; range; why` line: {line!r}"
        found.setdefault(match["key"], []).append(match["doc"])
    return found


def number(bound: float) -> str:
    if isinstance(bound, int):
        return str(bound)
    return str(int(bound)) if bound.is_integer() else repr(bound)


def schema_range(field: Field) -> str:
    """The range as default.yaml writes it, from the Field that check_value enforces."""
    if field.kind is bool:
        text = "true or false"
    elif field.choices:
        text = "one of " + ", ".join(field.choices)
    elif field.kind is str:
        text = "any text"
    elif field.minimum is not None and field.maximum is not None:
        text = (f"> {number(field.minimum)} and <= {number(field.maximum)}" if field.exclusive_minimum
                else f"{number(field.minimum)}..{number(field.maximum)}")
    elif field.minimum is not None:
        text = f"{'>' if field.exclusive_minimum else '>='} {number(field.minimum)}"
    elif field.maximum is not None:
        text = f"<= {number(field.maximum)}"
    else:
        text = "any number"
    return f"null or {text}" if field.nullable else text


def test_each_setting_is_on_exactly_one_line():
    # yaml.safe_load keeps the last of two equal keys silently: count them in the text
    lines = setting_lines()
    repeated = sorted(key for key, docs in lines.items() if len(docs) > 1)
    assert not repeated, f"config/default.yaml sets these more than once: {repeated}"
    assert sorted(lines) == sorted(SCHEMA)


@pytest.mark.parametrize("key", sorted(SCHEMA))
def test_setting_documents_unit_range_and_why(key):
    docs = setting_lines().get(key)
    assert docs, f"config/default.yaml: no line for setting {key!r}"
    parts = [part.strip() for part in docs[0].split(";")]
    assert len(parts) == 3 and all(parts), (
        f"config/default.yaml: {key}'s comment must be `unit; range; why` (three non-empty parts "
        f"separated by ';'), got {docs[0]!r}")
    unit, documented_range, why = parts
    expected = schema_range(SCHEMA[key])
    assert documented_range == expected or documented_range.startswith(expected + " "), (
        f"config/default.yaml: {key}'s range is {documented_range!r}, SCHEMA enforces {expected!r}")
    if key.endswith(("_seconds", "_timeout", "_interval", "_ttl")):
        assert unit == "seconds", f"{key}: unit {unit!r}, expected seconds"
    if key.endswith("_bytes"):
        assert unit == "bytes", f"{key}: unit {unit!r}, expected bytes"
    assert len(why.split()) >= 3, f"{key}: the why is too short to say anything: {why!r}"


def test_values_are_the_loaded_defaults():
    data = yaml.safe_load(DEFAULT_YAML.read_text(encoding="utf-8"))
    defaults = load_settings(environ={}).values
    assert {key: data[key] for key in SCHEMA} == {key: defaults[key] for key in SCHEMA}


def test_measurements_live_in_docs_performance():
    """Benchmark figures belong in docs/performance.md, not in the defaults' comments."""
    text = DEFAULT_YAML.read_text(encoding="utf-8")
    assert "docs/performance.md" in text
    assert (DEFAULT_YAML.parents[1] / "docs" / "performance.md").is_file()
    narratives = [line for line in text.splitlines() if re.search(r"\bmeasured\b|\bbenchmarks/\w+\.py", line)]
    assert not narratives, f"config/default.yaml: move these measurements to docs/performance.md: {narratives}"
