"""The output lines of a generate job, as the workers write them (finished JSONL, one line per
prompt and sample) and the producer collects them (by concatenation, in input order).

A line is exactly what json.dumps(record, ensure_ascii=False) writes for the record
{id, prompt, continuation, model, seed, sample, params, unknown_words, logprob}; an error record
is {id, line, error}. docs/json/output-line.schema.json and error-line.schema.json describe them."""
from __future__ import annotations

import json
from json.encoder import encode_basestring
from typing import Any

from lstmq.shared.params import GenerationParams
from lstmq.shared.store.chunks import ChunkInput, ChunkResult, LogprobHistogram

OUTPUT_PARAMS = tuple(key for key in GenerationParams.keys() if key != "seed")   # the seed has its own field
TEMPLATE_CACHE_LIMIT = 4096    # distinct (parameters, sample) line tails remembered while writing
_string = encode_basestring     # a str as JSON, as json.dumps(..., ensure_ascii=False) writes it


def _head(identifier: Any, prompt: str) -> str:
    """An output line up to its continuation: '{"id": ..., "prompt": ..., "continuation": '."""
    id_json = str(identifier) if type(identifier) is int else (
        _string(identifier) if type(identifier) is str else json.dumps(identifier, ensure_ascii=False))
    return f'{{"id": {id_json}, "prompt": {_string(prompt)}, "continuation": '


def error_line(identifier: Any, line: int | None, error: str, **more: Any) -> str:
    return json.dumps({"id": identifier, "line": line, "error": error, **more}, ensure_ascii=False) + "\n"


class LineWriter:
    """Formats a chunk's output lines for one job's model; the tails of lines (everything after
    the continuation but the unknown words and the logprob) are made once per parameter set."""

    def __init__(self, model: str | None):
        self.model = model
        self.templates: dict[tuple, str] = {}

    def _template(self, params: dict[str, Any], sample: int) -> str:
        try:
            key = (tuple(params.items()), sample)
            tail = self.templates.get(key)
        except TypeError:   # an unhashable parameter value: not remembered
            key, tail = None, None
        if tail is None:
            output_params = json.dumps({name: params[name] for name in OUTPUT_PARAMS}, ensure_ascii=False)
            tail = (f', "model": {json.dumps(self.model, ensure_ascii=False)}, "seed": '
                    f'{json.dumps(params["seed"], ensure_ascii=False)}, "sample": {sample}, "params": {output_params}, '
                    f'"unknown_words": ')
            if key is not None:
                if len(self.templates) >= TEMPLATE_CACHE_LIMIT:
                    self.templates.clear()
                self.templates[key] = tail
        return tail

    def slice_lines(self, inputs: ChunkInput, positions: list[int], scored: list[list[tuple[str, float]]],
                    unknown: dict[int, list[str]], histogram: LogprobHistogram) -> tuple[str, int]:
        """The output lines of the prompts at `positions` (in order), each with its decoded
        samples [(continuation, logprob)]: what lines() writes for them, a slice at a time (a
        worker formats each slice beside the decoder). Logprobs are kept to 5 decimals first, as
        the result columns keep them."""
        lines: list[str] = []
        append, add_logprob = lines.append, histogram.add
        ids, prompts, overrides = inputs.ids, inputs.prompts, inputs.overrides
        default_tail = self._template(inputs.defaults, 0) if inputs.defaults else ""
        for position, item in zip(positions, scored):
            head = _head(ids[position], prompts[position])
            unknown_words = "[]" if position not in unknown else json.dumps(unknown[position], ensure_ascii=False)
            custom = position in overrides
            params = inputs.params(position) if custom else inputs.defaults
            for sample, (text, logprob) in enumerate(item):
                tail = default_tail if sample == 0 and not custom else self._template(params, sample)
                logprob = round(logprob, 5)
                rounded = round(logprob, 4)
                add_logprob(logprob, rounded)
                score = repr(rounded) if rounded - rounded == 0 else json.dumps(rounded)
                append(f"{head}{_string(text)}{tail}{unknown_words}, \"logprob\": {score}}}\n")
        return "".join(lines), len(lines)

    def lines(self, inputs: ChunkInput, result: ChunkResult, histogram: LogprobHistogram) -> tuple[str, int]:
        """The chunk's output lines (its prompts that have samples, in order) and how many;
        every line's logprob goes into `histogram`."""
        lines: list[str] = []
        append, add_logprob = lines.append, histogram.add
        samples, logprobs, counts = result.samples, result.logprobs, result.counts
        errors, unknown, overrides = result.errors, result.unknown, inputs.overrides
        default_tail = self._template(inputs.defaults, 0) if inputs.defaults else ""
        at = 0   # the next sample's index in `samples`
        for position, (identifier, prompt) in enumerate(zip(inputs.ids, inputs.prompts)):
            if errors and position in errors:
                continue
            count = 1 if counts is None else counts[position]
            if not count:
                continue
            head = _head(identifier, prompt)
            unknown_words = "[]" if position not in unknown else json.dumps(unknown[position], ensure_ascii=False)
            custom = position in overrides
            params = inputs.params(position) if custom else inputs.defaults
            for sample in range(count):
                tail = default_tail if sample == 0 and not custom else self._template(params, sample)
                logprob = None if logprobs is None else logprobs[at]
                if logprob is None:
                    score = "null"
                else:
                    rounded = round(logprob, 4)
                    add_logprob(logprob, rounded)
                    score = repr(rounded) if rounded - rounded == 0 else json.dumps(rounded)
                append(f"{head}{_string(samples[at])}{tail}{unknown_words}, \"logprob\": {score}}}\n")
                at += 1
        return "".join(lines), len(lines)
