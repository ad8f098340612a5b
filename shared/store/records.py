"""The job record: kind and status enums, counts, typed parameters, timestamps, and progress
computed in one place; how it is stored in (and read back from) a Redis hash."""
from __future__ import annotations

import dataclasses
import json
import time
import typing
from dataclasses import dataclass
from enum import Enum
from typing import Any

from lstmq.shared.messages import JobKind
from lstmq.shared.params import GenerationParams, ModelParams
from lstmq.shared.store.clock import iso_utc


class JobStatus(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        """A final state: nothing more happens to the job."""
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


@dataclass(frozen=True)
class Progress:
    """How far a job is: `done` of `total` `unit`s (epochs may be fractional while one runs)."""
    done: float
    total: int | None
    unit: str

    @property
    def fraction(self) -> float | None:
        return None if not self.total else min(self.done / self.total, 1.0)


@dataclass(frozen=True)
class JobRecord:
    """A job as the store holds it. Timestamps are Unix seconds; to_json() shows ISO 8601 UTC."""
    id: str
    kind: JobKind
    status: JobStatus
    params: ModelParams | GenerationParams
    created: float
    updated: float
    started: float | None = None
    finished: float | None = None
    worker: str | None = None          # the last worker that ran part of it
    error: str | None = None
    model_name: str | None = None
    version: int | None = None         # train: the version registered; generate: the version pinned
    model: str | None = None           # NAME@VERSION
    # training
    corpus_sha256: str | None = None
    corpus_file: str | None = None
    epochs: int | None = None
    epoch: int = 0                     # epochs finished
    epoch_running: int | None = None
    step: int | None = None
    steps: int | None = None
    batch_loss: float | None = None    # training: the running loss of the epoch in progress
    epochs_run: int | None = None
    promote: str | None = None         # training: always, never (--no-promote), if-better (--promote-if-better)
    promoted: bool | None = None       # training: whether the new version became `current`
    promotion: str | None = None       # training: why (or why not)
    loss: float | None = None
    val_loss: float | None = None
    val_perplexity: float | None = None
    # generation
    seeds_file: str | None = None
    seed_format: str | None = None     # txt or jsonl: how workers parse the chunks' lines
    lines: int = 0                     # seed lines read and sent (blank ones too)
    chunks: int = 0
    chunks_done: int = 0
    chunks_failed: int = 0
    lines_done: int = 0                # seed lines of the chunks with an output
    lines_failed: int = 0              # seed lines of the chunks that failed
    words_done: int = 0
    # the seed report, added up from the chunks' outputs as workers parse the lines
    prompts: int = 0                   # usable seed lines found so far
    input_errors: int = 0              # seed lines that could not be used
    prompts_done: int = 0              # usable lines of the chunks with an output
    prompt_words: int = 0
    unknown_words: int = 0             # prompt words the model does not know
    prompts_with_unknown: int = 0
    words_to_generate: int = 0
    output_lines: int = 0
    submitted: bool = False            # every chunk of the seed file has been stored and sent
    chunks_sent: int = 0               # chunks stored and sent so far (while submitting)
    submit_deadline: float | None = None   # a submission not renewed by then was interrupted
    lease_lapses: int = 0              # times a worker stopped renewing its lease (and the work went out again)
    slices: int = 0                    # training: task slices run
    sampling_stream: int | None = None  # generate: the random stream its samples came from (params.SAMPLING_STREAM)
    result_ttl: int | None = None      # seconds its data is kept: the submitter's result_ttl, which every worker uses

    TIMESTAMPS: typing.ClassVar[tuple[str, ...]] = ("created", "updated", "started", "finished", "submit_deadline")

    def progress(self) -> Progress:
        if self.kind is JobKind.TRAIN:
            done = float(self.epoch)
            if self.epoch_running == self.epoch + 1 and self.steps:
                done += min((self.step or 0) / self.steps, 0.999)   # the epoch in progress
            return Progress(done, self.epochs or getattr(self.params, "epochs", None), "epoch")
        return Progress(self.lines_done + self.lines_failed, self.lines if self.submitted else None, "line")

    def seed_report(self, top_unknown: list[tuple[str, int]] | None = None) -> dict[str, Any]:
        """What the workers found in the seed lines so far (all of them once every chunk has an
        outcome): valid and invalid lines, unknown words, words to generate."""
        return {"lines_valid": self.prompts, "lines_invalid": self.input_errors,
                "prompts_with_unknown_words": self.prompts_with_unknown,
                "unknown_word_rate": round(self.unknown_words / self.prompt_words, 4) if self.prompt_words else 0.0,
                "top_unknown_words": [[word, count] for word, count in (top_unknown or [])],
                "words_to_generate": self.words_to_generate,
                "complete": self.status.finished or (self.submitted and self.chunks_done + self.chunks_failed >= self.chunks)}

    @property
    def seconds(self) -> float | None:
        """Wall time from submission to the final state (or to now while it runs)."""
        end = self.finished if self.finished is not None else time.time()
        return max(end - self.created, 0.0)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: enums as strings, timestamps as ISO 8601 UTC, unset fields left out."""
        data: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is None:
                continue
            if isinstance(value, Enum):
                value = value.value
            elif field.name == "params":
                value = value.to_dict()
            elif field.name in self.TIMESTAMPS:
                value = iso_utc(value)
            data[field.name] = value
        return data

    @classmethod
    def from_hash(cls, raw: dict[bytes, bytes]) -> JobRecord:
        values: dict[str, Any] = {}
        text = {key.decode(): value.decode() for key, value in raw.items()}
        kind = JobKind(text["kind"])
        for name, value in text.items():
            convert = _CONVERTERS.get(name)
            if convert is None:
                continue      # a field written by a newer lstmq: ignored, never fatal
            values[name] = convert(value)
        params_class = ModelParams if kind is JobKind.TRAIN else GenerationParams
        values["params"] = params_class.from_mapping(json.loads(text["params"]))
        return cls(**values)


def _converter(annotation: Any):
    """How a hash value (text) becomes the field's type: `int | None` -> int, and so on."""
    base = next((kind for kind in typing.get_args(annotation) if kind is not type(None)), annotation)
    if base is bool:
        return lambda value: value == "1"
    return base


_CONVERTERS = {name: _converter(annotation) for name, annotation in typing.get_type_hints(JobRecord).items()
               if name not in ("params", "TIMESTAMPS")}


def encode_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """Job fields as Redis hash values (None = leave the field unset)."""
    encoded = {}
    for key, value in fields.items():
        if value is None:
            continue
        if key == "params":
            value = json.dumps(value.to_dict())
        elif isinstance(value, Enum):
            value = value.value
        elif isinstance(value, bool):
            value = int(value)
        encoded[key] = value
    return encoded
