"""The Redis store: the one module that knows key names.

- blobs: content-addressed bytes (corpora, model artifacts), `lstmq:blob:<sha256>`
- registry: model name -> versions 1, 2, ... (meta + artifact blob), aliases (`current`)
- jobs: a hash per job (kind, status, counts, parameters, timestamps, pinned model version),
  generate chunks (input and result, the result written once however often a task runs),
  training progress and per-epoch checkpoints.
Messages on the queues carry only ids ({"job": ..., "chunk": ...}); everything else is here.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from enum import Enum
from typing import Any

import redis

from lstmq.shared.errors import BrokerUnavailable, InputError, JobNotFound, ModelNotFound

PREFIX = "lstmq"
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
RESERVED_MODEL_NAMES = {"export"}


class JobStatus(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED)


class JobKind(str, Enum):
    TRAIN = "train"
    GENERATE = "generate"


class Keys:
    """Every key name lstmq uses."""

    @staticmethod
    def blob(sha256: str) -> str:
        return f"{PREFIX}:blob:{sha256}"

    models = f"{PREFIX}:models"

    @staticmethod
    def model_versions(name: str) -> str:
        return f"{PREFIX}:model:{name}:versions"

    @staticmethod
    def model_counter(name: str) -> str:
        return f"{PREFIX}:model:{name}:counter"

    @staticmethod
    def model_aliases(name: str) -> str:
        return f"{PREFIX}:model:{name}:aliases"

    jobs = f"{PREFIX}:jobs"

    @staticmethod
    def job(job_id: str) -> str:
        return f"{PREFIX}:job:{job_id}"

    @staticmethod
    def chunk_input(job_id: str, chunk: int) -> str:
        return f"{PREFIX}:job:{job_id}:chunk:{chunk}"

    @staticmethod
    def chunk_result(job_id: str, chunk: int) -> str:
        return f"{PREFIX}:job:{job_id}:result:{chunk}"

    @staticmethod
    def chunks_done(job_id: str) -> str:
        return f"{PREFIX}:job:{job_id}:done"

    @staticmethod
    def chunks_failed(job_id: str) -> str:
        return f"{PREFIX}:job:{job_id}:failed"

    @staticmethod
    def input_errors(job_id: str) -> str:
        return f"{PREFIX}:job:{job_id}:input-errors"

    @staticmethod
    def history(job_id: str) -> str:
        return f"{PREFIX}:job:{job_id}:history"

    @staticmethod
    def checkpoint(job_id: str) -> str:
        return f"{PREFIX}:job:{job_id}:checkpoint"

    @staticmethod
    def lock(job_id: str) -> str:
        return f"{PREFIX}:job:{job_id}:lock"


# Record a chunk's outcome once; finish the job when every chunk has an outcome.
# KEYS: job, done set, failed hash, result key. ARGV: chunk, outcome, payload, prompts, words, ttl, now.
_FINISH_CHUNK = """
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

# KEYS: job. ARGV: now. Sets the final status when submission is complete and every chunk is
# done or failed. Returns the status.
_MAYBE_FINISH_JOB = """
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

# KEYS: job, counter, versions, models, aliases. ARGV: name, meta, now.
# Registers the job's model once: a redelivered training task gets the same version back.
_REGISTER_MODEL = """
local existing = redis.call('HGET', KEYS[1], 'version')
if existing then return tonumber(existing) end
local version = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[3], version, ARGV[2])
redis.call('SADD', KEYS[4], ARGV[1])
redis.call('HSET', KEYS[5], 'current', version)
redis.call('HSET', KEYS[1], 'version', version, 'model', ARGV[1] .. '@' .. version, 'updated', ARGV[3])
return version
"""

_RELEASE_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_REFRESH_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

JSON_FIELDS = ("params",)
INT_FIELDS = ("chunks", "chunks_done", "chunks_failed", "prompts", "prompts_done", "prompts_failed",
              "words_done", "input_errors", "version", "epoch", "epochs", "step", "steps", "lines",
              "epochs_run", "epoch_running", "submitted")
FLOAT_FIELDS = ("created", "updated", "started", "finished", "loss", "val_loss", "val_perplexity")


def now() -> float:
    return round(time.time(), 3)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parse_model_spec(spec: str) -> tuple[str, str | None]:
    """'name' -> (name, None); 'name@3' -> (name, '3'); 'name@current' -> (name, 'current')."""
    name, _, version = spec.partition("@")
    check_model_name(name)
    if _ and not version:
        raise InputError(f"model {spec!r}: missing version after '@' (use NAME or NAME@VERSION)")
    return name, version or None


def check_model_name(name: str) -> str:
    if not MODEL_NAME.match(name) or name in RESERVED_MODEL_NAMES:
        raise InputError(f"model name {name!r} is not valid: use 1-64 letters, digits, '_', '.' or '-', "
                         f"starting with a letter or digit (and not {', '.join(sorted(RESERVED_MODEL_NAMES))})")
    return name


class Store:
    def __init__(self, client: redis.Redis, ttl: int = 604800):
        self.redis = client
        self.ttl = ttl
        self._finish_chunk = client.register_script(_FINISH_CHUNK)
        self._maybe_finish_job = client.register_script(_MAYBE_FINISH_JOB)
        self._register_model = client.register_script(_REGISTER_MODEL)
        self._release_lock = client.register_script(_RELEASE_LOCK)
        self._refresh_lock = client.register_script(_REFRESH_LOCK)

    @classmethod
    def from_url(cls, url: str, ttl: int = 604800) -> Store:
        return cls(redis.Redis.from_url(url, socket_connect_timeout=5, health_check_interval=30), ttl)

    def ping(self, url: str = "") -> None:
        try:
            self.redis.ping()
        except redis.exceptions.RedisError as error:
            raise BrokerUnavailable(f"cannot reach Redis at {url or 'the broker URL'}: {error}") from None

    # -- blobs -----------------------------------------------------------------------------------
    def put_blob(self, data: bytes, ttl: int | None = None) -> str:
        """Store bytes under their sha256; `ttl` None keeps them for good (model artifacts)."""
        digest = sha256(data)
        key = Keys.blob(digest)
        if ttl is None:
            self.redis.set(key, data)
            self.redis.persist(key)
        else:
            self.redis.set(key, data, ex=ttl)
        return digest

    def get_blob(self, digest: str) -> bytes:
        data = self.redis.get(Keys.blob(digest))
        if data is None:
            raise LookupError(f"blob {digest} is not in Redis (expired after result_ttl, or never uploaded)")
        return data

    # -- model registry ------------------------------------------------------------------------
    def register_model(self, job_id: str, name: str, artifact: bytes, meta: dict[str, Any]) -> int:
        digest = self.put_blob(artifact)
        record = {**meta, "name": name, "artifact_sha256": digest, "artifact_bytes": len(artifact),
                  "job": job_id, "registered": now()}
        return int(self._register_model(
            keys=[Keys.job(job_id), Keys.model_counter(name), Keys.model_versions(name), Keys.models,
                  Keys.model_aliases(name)],
            args=[name, json.dumps(record), now()]))

    def model_names(self) -> list[str]:
        return sorted(name.decode() for name in self.redis.smembers(Keys.models))

    def model_versions(self, name: str) -> dict[int, dict[str, Any]]:
        raw = self.redis.hgetall(Keys.model_versions(name))
        versions = {int(version): json.loads(meta) for version, meta in raw.items()}
        return dict(sorted(versions.items()))

    def aliases(self, name: str) -> dict[str, int]:
        return {alias.decode(): int(version) for alias, version in self.redis.hgetall(Keys.model_aliases(name)).items()}

    def resolve_model(self, spec: str) -> tuple[str, int]:
        """'name', 'name@alias' or 'name@N' -> (name, version), or ModelNotFound."""
        name, version = parse_model_spec(spec)
        versions = self.redis.hkeys(Keys.model_versions(name))
        if not versions:
            known = ", ".join(self.model_names()) or "none yet"
            raise ModelNotFound(f"no model named {name!r} in the registry (models: {known})")
        if version is None or not version.isdigit():
            alias = version or "current"
            resolved = self.redis.hget(Keys.model_aliases(name), alias)
            if resolved is None:
                raise ModelNotFound(f"model {name!r} has no alias {alias!r}")
            return name, int(resolved)
        if version.encode() not in versions:
            available = ", ".join(str(v) for v in sorted(int(v) for v in versions))
            raise ModelNotFound(f"model {name!r} has no version {version} (versions: {available})")
        return name, int(version)

    def model_meta(self, name: str, version: int) -> dict[str, Any]:
        raw = self.redis.hget(Keys.model_versions(name), version)
        if raw is None:
            raise ModelNotFound(f"model {name}@{version} is not in the registry")
        return json.loads(raw)

    def model_artifact(self, name: str, version: int) -> bytes:
        return self.get_blob(self.model_meta(name, version)["artifact_sha256"])

    # -- jobs --------------------------------------------------------------------------------------
    def create_job(self, kind: JobKind, params: dict[str, Any], **fields: Any) -> str:
        job_id = uuid.uuid4().hex[:16]
        created = now()
        mapping = {"id": job_id, "kind": kind.value, "status": JobStatus.QUEUED.value, "created": created,
                   "updated": created, "params": json.dumps(params), **_encode(fields)}
        pipe = self.redis.pipeline()
        pipe.hset(Keys.job(job_id), mapping=mapping)
        pipe.expire(Keys.job(job_id), self.ttl)
        pipe.zadd(Keys.jobs, {job_id: created})
        pipe.execute()
        return job_id

    def job(self, job_id: str) -> dict[str, Any]:
        raw = self.redis.hgetall(Keys.job(job_id))
        if not raw:
            raise JobNotFound(f"no job {job_id!r} (never submitted, or expired after result_ttl)")
        return _decode(raw)

    def update_job(self, job_id: str, **fields: Any) -> None:
        self.redis.hset(Keys.job(job_id), mapping={**_encode(fields), "updated": now()})

    def start_job(self, job_id: str, worker: str) -> None:
        pipe = self.redis.pipeline()
        pipe.hsetnx(Keys.job(job_id), "started", now())
        pipe.hset(Keys.job(job_id), mapping={"worker": worker, "updated": now()})
        pipe.execute()
        # queued -> running, never back from a final state
        self.redis.eval("if redis.call('HGET', KEYS[1], 'status') == 'queued' then "
                        "redis.call('HSET', KEYS[1], 'status', 'running') end return 0", 1, Keys.job(job_id))

    def finish_job(self, job_id: str, status: JobStatus, **fields: Any) -> None:
        self.update_job(job_id, status=status.value, finished=now(), **fields)

    def job_ids(self, limit: int = 20) -> list[str]:
        cutoff = time.time() - self.ttl
        self.redis.zremrangebyscore(Keys.jobs, "-inf", cutoff)
        return [job_id.decode() for job_id in self.redis.zrevrange(Keys.jobs, 0, limit - 1)]

    # -- generate chunks -----------------------------------------------------------------------
    def put_chunk(self, job_id: str, chunk: int, items: list[dict[str, Any]]) -> None:
        self.redis.set(Keys.chunk_input(job_id, chunk), json.dumps(items), ex=self.ttl)

    def chunk(self, job_id: str, chunk: int) -> list[dict[str, Any]]:
        raw = self.redis.get(Keys.chunk_input(job_id, chunk))
        if raw is None:
            raise LookupError(f"job {job_id} has no chunk {chunk} (expired, or never submitted)")
        return json.loads(raw)

    def finish_submission(self, job_id: str, chunks: int, prompts: int, input_errors: int, lines: int) -> str:
        self.update_job(job_id, chunks=chunks, prompts=prompts, input_errors=input_errors, lines=lines, submitted=1)
        return self._maybe_finish_job(keys=[Keys.job(job_id)], args=[now()]).decode()

    def chunk_finished(self, job_id: str, chunk: int) -> bool:
        return bool(self.redis.sismember(Keys.chunks_done(job_id), chunk)
                    or self.redis.hexists(Keys.chunks_failed(job_id), chunk))

    def save_chunk_result(self, job_id: str, chunk: int, results: list[dict[str, Any]], words: int) -> bool:
        """Write a chunk's results once; False when it was already written (a redelivered task)."""
        return self._chunk_outcome(job_id, chunk, "done", json.dumps(results), len(results), words)

    def fail_chunk(self, job_id: str, chunk: int, error: str, prompts: int) -> bool:
        return self._chunk_outcome(job_id, chunk, "failed", error, prompts, 0)

    def _chunk_outcome(self, job_id, chunk, outcome, payload, prompts, words) -> bool:
        keys = [Keys.job(job_id), Keys.chunks_done(job_id), Keys.chunks_failed(job_id), Keys.chunk_result(job_id, chunk)]
        first = bool(self._finish_chunk(keys=keys, args=[chunk, outcome, payload, prompts, words, self.ttl, now()]))
        self._maybe_finish_job(keys=[Keys.job(job_id)], args=[now()])
        return first

    def chunk_result(self, job_id: str, chunk: int) -> list[dict[str, Any]] | None:
        raw = self.redis.get(Keys.chunk_result(job_id, chunk))
        return None if raw is None else json.loads(raw)

    def failed_chunks(self, job_id: str) -> dict[int, str]:
        return {int(k): v.decode() for k, v in self.redis.hgetall(Keys.chunks_failed(job_id)).items()}

    def add_input_errors(self, job_id: str, errors: list[dict[str, Any]]) -> None:
        if errors:
            self.redis.rpush(Keys.input_errors(job_id), *(json.dumps(error) for error in errors))
            self.redis.expire(Keys.input_errors(job_id), self.ttl)

    def input_errors(self, job_id: str) -> list[dict[str, Any]]:
        return [json.loads(raw) for raw in self.redis.lrange(Keys.input_errors(job_id), 0, -1)]

    # -- training ----------------------------------------------------------------------------------
    def add_epoch(self, job_id: str, record: dict[str, Any]) -> None:
        """Record a finished epoch: the job's latest figures, and the per-epoch history."""
        fields = {key: record[key] for key in ("epoch", "epochs", "loss", "val_loss", "val_perplexity") if key in record}
        pipe = self.redis.pipeline()
        pipe.hset(Keys.job(job_id), mapping={**fields, "updated": now()})
        pipe.rpush(Keys.history(job_id), json.dumps({key: value for key, value in record.items() if key != "event"}))
        pipe.expire(Keys.history(job_id), self.ttl)
        pipe.execute()

    def history(self, job_id: str) -> list[dict[str, Any]]:
        """Per-epoch records of a training job; a resumed job's epochs appear once each."""
        by_epoch = {}
        for raw in self.redis.lrange(Keys.history(job_id), 0, -1):
            record = json.loads(raw)
            by_epoch[record["epoch"]] = record
        return [by_epoch[epoch] for epoch in sorted(by_epoch)]

    def save_checkpoint(self, job_id: str, epoch: int, model_bytes: bytes, history: list[dict[str, Any]]) -> None:
        self.redis.hset(Keys.checkpoint(job_id), mapping={"epoch": epoch, "model": model_bytes, "history": json.dumps(history)})
        self.redis.expire(Keys.checkpoint(job_id), self.ttl)

    def load_checkpoint(self, job_id: str) -> tuple[int, bytes, list[dict[str, Any]]] | None:
        raw = self.redis.hgetall(Keys.checkpoint(job_id))
        if not raw:
            return None
        return int(raw[b"epoch"]), raw[b"model"], json.loads(raw[b"history"])

    def drop_checkpoint(self, job_id: str) -> None:
        self.redis.delete(Keys.checkpoint(job_id))

    def acquire_lock(self, job_id: str, owner: str, ttl_s: int) -> bool:
        return bool(self.redis.set(Keys.lock(job_id), owner, nx=True, px=ttl_s * 1000))

    def lock_holder(self, job_id: str) -> str | None:
        holder = self.redis.get(Keys.lock(job_id))
        return None if holder is None else holder.decode()

    def refresh_lock(self, job_id: str, owner: str, ttl_s: int) -> bool:
        return bool(self._refresh_lock(keys=[Keys.lock(job_id)], args=[owner, ttl_s * 1000]))

    def release_lock(self, job_id: str, owner: str) -> None:
        self._release_lock(keys=[Keys.lock(job_id)], args=[owner])


def _encode(fields: dict[str, Any]) -> dict[str, Any]:
    encoded = {}
    for key, value in fields.items():
        if value is None:
            continue
        if key in JSON_FIELDS:
            value = json.dumps(value)
        elif isinstance(value, Enum):
            value = value.value
        elif isinstance(value, bool):
            value = int(value)
        encoded[key] = value
    return encoded


def _decode(raw: dict[bytes, bytes]) -> dict[str, Any]:
    record: dict[str, Any] = {}
    for key_bytes, value_bytes in raw.items():
        key, value = key_bytes.decode(), value_bytes.decode()
        if key in JSON_FIELDS:
            record[key] = json.loads(value)
        elif key in INT_FIELDS:
            record[key] = int(value)
        elif key in FLOAT_FIELDS:
            record[key] = float(value)
        else:
            record[key] = value
    return record
