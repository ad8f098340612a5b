"""Jobs and their chunks: a typed job record (a Redis hash per job), generate chunks (input and
result, each result written once however often a task runs), and the seed lines that could not
be used. The Lua scripts that keep chunk outcomes and final states consistent live here, beside
the data they guard."""
from __future__ import annotations

import dataclasses
import json
import time
import typing
import uuid
from dataclasses import dataclass
from enum import Enum
from typing import Any

import redis

from lstmq.shared.errors import JobNotFound
from lstmq.shared.messages import JobKind
from lstmq.shared.params import GenerationParams, ModelParams
from lstmq.shared.store import keys
from lstmq.shared.store.clock import iso_utc, now


class JobStatus(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED)


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
    epochs_run: int | None = None
    loss: float | None = None
    val_loss: float | None = None
    val_perplexity: float | None = None
    # generation
    seeds_file: str | None = None
    lines: int = 0                     # non-blank seed lines read
    prompts: int = 0
    input_errors: int = 0              # seed lines that could not be used
    chunks: int = 0
    chunks_done: int = 0
    chunks_failed: int = 0
    prompts_done: int = 0
    prompts_failed: int = 0
    words_done: int = 0
    submitted: bool = False            # every chunk of the seed file has been stored and sent

    TIMESTAMPS: typing.ClassVar[tuple[str, ...]] = ("created", "updated", "started", "finished")

    def progress(self) -> Progress:
        if self.kind is JobKind.TRAIN:
            done = float(self.epoch)
            if self.epoch_running == self.epoch + 1 and self.steps:
                done += min((self.step or 0) / self.steps, 0.999)   # the epoch in progress
            return Progress(done, self.epochs or getattr(self.params, "epochs", None), "epoch")
        return Progress(self.prompts_done + self.prompts_failed, self.prompts if self.submitted else None, "prompt")

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


# Record a chunk's outcome once; finish the job when every chunk has an outcome.
# KEYS: job, done set, failed hash, result key. ARGV: chunk, outcome, payload, prompts, words, ttl, now.
FINISH_CHUNK = """
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 or redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then
  return 0
end
local ttl = tonumber(ARGV[6])
if ARGV[2] == 'done' then
  redis.call('SET', KEYS[4], ARGV[3], 'EX', ttl)
  redis.call('SADD', KEYS[2], ARGV[1])
  redis.call('HINCRBY', KEYS[1], 'chunks_done', 1)
  redis.call('HINCRBY', KEYS[1], 'prompts_done', tonumber(ARGV[4]))
  redis.call('HINCRBY', KEYS[1], 'words_done', tonumber(ARGV[5]))
else
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
  redis.call('HINCRBY', KEYS[1], 'chunks_failed', 1)
  redis.call('HINCRBY', KEYS[1], 'prompts_failed', tonumber(ARGV[4]))
end
redis.call('EXPIRE', KEYS[2], ttl)
redis.call('EXPIRE', KEYS[3], ttl)
redis.call('HSET', KEYS[1], 'updated', ARGV[7])
return 1
"""

# Set the final status when submission is complete and every chunk is done or failed.
# KEYS: job. ARGV: now. Returns the status.
MAYBE_FINISH_JOB = """
local fields = redis.call('HMGET', KEYS[1], 'status', 'submitted', 'chunks', 'chunks_done', 'chunks_failed')
if fields[1] == 'succeeded' or fields[1] == 'failed' then return fields[1] end
if fields[2] ~= '1' then return fields[1] end
local total = tonumber(fields[3] or '0')
local done = tonumber(fields[4] or '0')
local failed = tonumber(fields[5] or '0')
if done + failed < total then return fields[1] end
local status = 'succeeded'
if failed > 0 then status = 'failed' end
redis.call('HSET', KEYS[1], 'status', status, 'finished', ARGV[1], 'updated', ARGV[1])
return status
"""

# A worker picks the job up: queued -> running (never back from a final state).
# KEYS: job. ARGV: worker, now.
START_JOB = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSETNX', KEYS[1], 'started', ARGV[2])
redis.call('HSET', KEYS[1], 'worker', ARGV[1], 'updated', ARGV[2])
if redis.call('HGET', KEYS[1], 'status') == 'queued' then redis.call('HSET', KEYS[1], 'status', 'running') end
return 1
"""


class Jobs:
    def __init__(self, client: redis.Redis, ttl: int):
        self.redis, self.ttl = client, ttl
        self._finish_chunk = client.register_script(FINISH_CHUNK)
        self._maybe_finish_job = client.register_script(MAYBE_FINISH_JOB)
        self._start_job = client.register_script(START_JOB)

    # -- the record ------------------------------------------------------------------------------
    def create(self, kind: JobKind, params: ModelParams | GenerationParams, **fields: Any) -> str:
        job_id = uuid.uuid4().hex[:16]
        created = now()
        mapping = encode_fields({"id": job_id, "kind": kind, "status": JobStatus.QUEUED, "created": created,
                                 "updated": created, "params": params, **fields})
        pipe = self.redis.pipeline()
        pipe.hset(keys.job_key(job_id), mapping=mapping)
        pipe.expire(keys.job_key(job_id), self.ttl)
        pipe.zadd(keys.JOBS, {job_id: created})
        pipe.execute()
        return job_id

    def get(self, job_id: str) -> JobRecord:
        raw = self.redis.hgetall(keys.job_key(job_id))
        if not raw:
            raise JobNotFound(f"no job {job_id!r} (never submitted, or expired after result_ttl)")
        return JobRecord.from_hash(raw)

    def update(self, job_id: str, **fields: Any) -> None:
        self.redis.hset(keys.job_key(job_id), mapping={**encode_fields(fields), "updated": now()})

    def start(self, job_id: str, worker: str) -> None:
        self._start_job(keys=[keys.job_key(job_id)], args=[worker, now()])

    def finish(self, job_id: str, status: JobStatus, **fields: Any) -> None:
        self.update(job_id, status=status, finished=now(), **fields)

    def recent(self, limit: int = 20) -> list[str]:
        """The newest job ids first (those past result_ttl are dropped from the index)."""
        self.redis.zremrangebyscore(keys.JOBS, "-inf", time.time() - self.ttl)
        return [job_id.decode() for job_id in self.redis.zrevrange(keys.JOBS, 0, limit - 1)]

    # -- generate chunks ---------------------------------------------------------------------------
    def put_chunk(self, job_id: str, chunk: int, items: list[dict[str, Any]]) -> None:
        self.redis.set(keys.job_key(job_id, "chunk", chunk), json.dumps(items), ex=self.ttl)

    def chunk(self, job_id: str, chunk: int) -> list[Any]:
        raw = self.redis.get(keys.job_key(job_id, "chunk", chunk))
        if raw is None:
            raise LookupError(f"job {job_id} has no chunk {chunk} (expired, or never submitted)")
        return json.loads(raw)

    def finish_submission(self, job_id: str, chunks: int, prompts: int, input_errors: int, lines: int) -> JobStatus:
        self.update(job_id, chunks=chunks, prompts=prompts, input_errors=input_errors, lines=lines, submitted=True)
        return JobStatus(self._maybe_finish_job(keys=[keys.job_key(job_id)], args=[now()]).decode())

    def chunk_finished(self, job_id: str, chunk: int) -> bool:
        return bool(self.redis.sismember(keys.job_key(job_id, "done"), chunk)
                    or self.redis.hexists(keys.job_key(job_id, "failed"), chunk))

    def save_result(self, job_id: str, chunk: int, results: list[dict[str, Any]], words: int) -> bool:
        """Write a chunk's results once; False when it was already written (a redelivered task)."""
        return self._chunk_outcome(job_id, chunk, "done", json.dumps(results), len(results), words)

    def fail_chunk(self, job_id: str, chunk: int, error: str, prompts: int) -> bool:
        return self._chunk_outcome(job_id, chunk, "failed", error, prompts, 0)

    def _chunk_outcome(self, job_id: str, chunk: int, outcome: str, payload: str, prompts: int, words: int) -> bool:
        chunk_keys = [keys.job_key(job_id), keys.job_key(job_id, "done"), keys.job_key(job_id, "failed"),
                      keys.job_key(job_id, "result", chunk)]
        first = bool(self._finish_chunk(keys=chunk_keys, args=[chunk, outcome, payload, prompts, words, self.ttl, now()]))
        self._maybe_finish_job(keys=[keys.job_key(job_id)], args=[now()])
        return first

    def result(self, job_id: str, chunk: int) -> list[dict[str, Any]] | None:
        raw = self.redis.get(keys.job_key(job_id, "result", chunk))
        return None if raw is None else json.loads(raw)

    def failed_chunks(self, job_id: str) -> dict[int, str]:
        return {int(k): v.decode() for k, v in self.redis.hgetall(keys.job_key(job_id, "failed")).items()}

    # -- seed lines that could not be used ----------------------------------------------------------
    def add_input_errors(self, job_id: str, errors: list[dict[str, Any]]) -> None:
        if errors:
            key = keys.job_key(job_id, "input-errors")
            pipe = self.redis.pipeline()
            pipe.rpush(key, *(json.dumps(error) for error in errors))
            pipe.expire(key, self.ttl)
            pipe.execute()

    def input_errors(self, job_id: str) -> list[dict[str, Any]]:
        return [json.loads(raw) for raw in self.redis.lrange(keys.job_key(job_id, "input-errors"), 0, -1)]
