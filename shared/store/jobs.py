"""The job repository: the job record (records.py; a Redis hash per job), generate chunks (input
and result, each result written once however often a task runs, in the stored form of
chunks.py), leases on work in progress, cancel and removal, and the seed lines that could not be
used. The Lua scripts that keep chunk outcomes and final states consistent live here, beside
the data they guard."""
from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterable
from typing import Any

import redis

from lstmq.shared.errors import InputError, JobNotFound
from lstmq.shared.messages import JobKind
from lstmq.shared.params import GenerationParams, ModelParams
from lstmq.shared.store import keys
from lstmq.shared.store.chunks import ChunkOutput, ChunkReport, pack_input, unpack_input
from lstmq.shared.store.clock import now
from lstmq.shared.store.records import JobRecord, JobStatus, encode_fields


# Lua: the job's final status, once every chunk has an outcome and the submission is complete.
# Expects `job` (the record key) and `active` (the index of jobs not yet final); returns the status.
_FINISH_IF_COMPLETE = """
local function finish_if_complete(job, active, now)
  local fields = redis.call('HMGET', job, 'status', 'submitted', 'chunks', 'chunks_done', 'chunks_failed', 'id',
                            'prompts', 'input_errors', 'seeds_file')
  local status = fields[1]
  if status == 'succeeded' or status == 'failed' or status == 'cancelled' then return status end
  if fields[2] ~= '1' then return status end
  local done = tonumber(fields[4] or '0')
  local failed = tonumber(fields[5] or '0')
  if done + failed < tonumber(fields[3] or '0') then return status end
  status = 'succeeded'
  if failed > 0 then status = 'failed' end
  if failed == 0 and tonumber(fields[7] or '0') <= 0 then   -- every line was read: none was usable
    local bad = tonumber(fields[8] or '0')
    local why = 'no usable line (' .. bad .. ' bad line(s))'
    if bad == 0 then why = 'no prompt in the file (it is empty or holds only blank lines)' end
    status = 'failed'
    redis.call('HSET', job, 'error', (fields[9] or 'the seed file') .. ': ' .. why)
  end
  redis.call('HSET', job, 'status', status, 'finished', now, 'updated', now)
  redis.call('ZREM', active, fields[6])
  return status
end
"""

# Record a chunk's outcome once (its output, or a failure with its reason), drop its lease, and
# finish the job when that was the last chunk. Returns {1 if recorded now else 0, job status}.
# KEYS: job, done set, failed hash, output key, leases, active, holders, unknown-words zset.
# ARGV: chunk, outcome ('done' or 'failed'), payload, lines (the chunk's), words, ttl, now; for
# 'done' then the chunk's seed report: valid lines, invalid lines, prompt words, unknown words,
# prompts with unknown words, words to generate, output lines; then (word, count) pairs, its most
# frequent unknown words. The job's own result_ttl (fixed at submission) wins over the caller's
# ttl: producer and workers may differ.
_CHUNK_OUTCOME = _FINISH_IF_COMPLETE + """
local first = 0
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 0 and redis.call('HEXISTS', KEYS[3], ARGV[1]) == 0 then
  first = 1
  local ttl = tonumber(redis.call('HGET', KEYS[1], 'result_ttl') or ARGV[6])
  if ARGV[2] == 'done' then
    redis.call('SET', KEYS[4], ARGV[3], 'EX', ttl)
    redis.call('SADD', KEYS[2], ARGV[1])
    redis.call('HINCRBY', KEYS[1], 'chunks_done', 1)
    redis.call('HINCRBY', KEYS[1], 'lines_done', tonumber(ARGV[4]))
    redis.call('HINCRBY', KEYS[1], 'words_done', tonumber(ARGV[5]))
    local counters = {'prompts', 'input_errors', 'prompt_words', 'unknown_words', 'prompts_with_unknown',
                      'words_to_generate', 'output_lines'}
    for index, field in ipairs(counters) do
      local value = tonumber(ARGV[7 + index])
      if value ~= 0 then redis.call('HINCRBY', KEYS[1], field, value) end
    end
    redis.call('HINCRBY', KEYS[1], 'prompts_done', tonumber(ARGV[8]))
    for index = 15, #ARGV, 2 do redis.call('ZINCRBY', KEYS[8], tonumber(ARGV[index + 1]), ARGV[index]) end
    if #ARGV >= 15 then redis.call('EXPIRE', KEYS[8], ttl) end
  else
    redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
    redis.call('HINCRBY', KEYS[1], 'chunks_failed', 1)
    redis.call('HINCRBY', KEYS[1], 'lines_failed', tonumber(ARGV[4]))
  end
  redis.call('EXPIRE', KEYS[2], ttl)
  redis.call('EXPIRE', KEYS[3], ttl)
  redis.call('HSET', KEYS[1], 'updated', ARGV[7])
end
redis.call('ZREM', KEYS[5], ARGV[1])
redis.call('HDEL', KEYS[7], ARGV[1])   -- the attempt ended with an outcome
return {first, finish_if_complete(KEYS[1], KEYS[6], ARGV[7])}
"""
SAVE_RESULT = _CHUNK_OUTCOME
# A failure must be recordable when Redis is out of memory (noeviction): it writes a few bytes.
FAIL_CHUNK = "#!lua flags=allow-oom\n" + _CHUNK_OUTCOME

# KEYS: job, active. ARGV: now. Returns the status.
FINISH_SUBMISSION = _FINISH_IF_COMPLETE + """
return finish_if_complete(KEYS[1], KEYS[2], ARGV[1])
"""

# Every attempt counts. Each time a process takes a chunk (or a training slice, member 'train')
# is an attempt (the job's `attempts` hash counts them; `holders` says which process has the open
# one). An attempt that ends without an outcome is lost: its process died (its Celery main process
# or lstmq-worker saw it die, and says how), or its lease lapsed (nobody saw: a machine lost). Lost
# attempts are counted per member (`lapses`, with the last one's end in `ends`); past the limit the
# chunk is recorded failed ("killed its worker 4 times (last: signal 9 ...)") and its job goes on
# to its final state; a training job fails the same way. Expects KEYS as ATTEMPT_LOST's.
_ATTEMPT_LOST = _FINISH_IF_COMPLETE + """
local function attempt_lost(member, limit, reason, verb, now, ttl)
  redis.call('HDEL', KEYS[8], member)
  redis.call('ZREM', KEYS[2], member)
  local lost = redis.call('HINCRBY', KEYS[3], member, 1)
  redis.call('HSET', KEYS[9], member, reason)
  for _, key in ipairs({KEYS[3], KEYS[9]}) do redis.call('EXPIRE', key, ttl) end
  redis.call('HSET', KEYS[1], 'updated', now)
  if lost <= limit then return 'redispatch' end
  local why = verb .. ' its worker ' .. lost .. ' times (last: ' .. reason .. ')'
  if member == 'train' then
    redis.call('HSET', KEYS[1], 'status', 'failed', 'error', why, 'finished', now)
    redis.call('ZREM', KEYS[6], redis.call('HGET', KEYS[1], 'id'))
    return 'failed'
  end
  if redis.call('SISMEMBER', KEYS[4], member) == 0 and redis.call('HEXISTS', KEYS[5], member) == 0 then
    local lines = redis.call('HGET', KEYS[7], member)
    redis.call('HSET', KEYS[5], member, why)
    redis.call('EXPIRE', KEYS[5], ttl)
    redis.call('HINCRBY', KEYS[1], 'chunks_failed', 1)
    redis.call('HINCRBY', KEYS[1], 'lines_failed', tonumber(lines or '0'))
  end
  finish_if_complete(KEYS[1], KEYS[6], now)
  return 'failed'
end

local function ended(member)
  local status = redis.call('HGET', KEYS[1], 'status')
  if not status or status == 'succeeded' or status == 'failed' or status == 'cancelled' then return true end
  return redis.call('SISMEMBER', KEYS[4], member) == 1 or redis.call('HEXISTS', KEYS[5], member) == 1
end
"""
# KEYS (for every script built on _ATTEMPT_LOST, and TAKE_LEASE): job, leases, lapses hash,
# done set, failed hash, active, chunk sizes hash, holders hash, ends hash, attempts hash.

# A process takes a chunk (or a training slice): a lease that lapses unless renewed, and a new
# attempt. Returns 'ok', 'finished' (the chunk has an outcome already) or the job's final status.
# ARGV: member, deadline (ms), worker, now, ttl, holder (the taking process: "NODE PID").
TAKE_LEASE = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
if status == 'succeeded' or status == 'failed' or status == 'cancelled' then return status end
if redis.call('SISMEMBER', KEYS[4], ARGV[1]) == 1 or redis.call('HEXISTS', KEYS[5], ARGV[1]) == 1 then
  return 'finished'
end
local ttl = tonumber(redis.call('HGET', KEYS[1], 'result_ttl') or ARGV[5])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('HINCRBY', KEYS[10], ARGV[1], 1)
redis.call('HSET', KEYS[8], ARGV[1], ARGV[6])
for _, key in ipairs({KEYS[2], KEYS[8], KEYS[10]}) do redis.call('EXPIRE', key, ttl) end
redis.call('HSETNX', KEYS[1], 'started', ARGV[4])
redis.call('HSET', KEYS[1], 'worker', ARGV[3], 'updated', ARGV[4])
if status == 'queued' then redis.call('HSET', KEYS[1], 'status', 'running') end
return 'ok'
"""

# Renew a lease that is still held. KEYS: leases. ARGV: member, deadline (ms). Returns 1 or 0.
RENEW_LEASE = """
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
  return 1
end
return 0
"""

# A lease lapsed (its worker stopped renewing it): take it away, once, for whoever noticed first;
# the attempt is lost. Returns 'live' (renewed meanwhile, or gone), 'redispatch' (send the work
# again), or 'failed' (lost past the limit). ARGV: member, now (ms), limit, now (s), ttl, reason.
CLAIM_LAPSED = _ATTEMPT_LOST + """
local deadline = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not deadline or tonumber(deadline) > tonumber(ARGV[2]) then return 'live' end
redis.call('ZREM', KEYS[2], ARGV[1])
if ended(ARGV[1]) then return 'live' end
redis.call('HINCRBY', KEYS[1], 'lease_lapses', 1)
return attempt_lost(ARGV[1], tonumber(ARGV[3]), ARGV[6], 'lost', ARGV[4],
                    tonumber(redis.call('HGET', KEYS[1], 'result_ttl') or ARGV[5]))
"""

# The process that held the open attempt died, and whoever saw it says how (its Celery main
# process for a pool process, lstmq-worker for a Celery worker): the attempt is lost, its lease
# given back at once. Counted once: only while the open attempt is the one of `holder` (a whole
# "NODE PID", or "NODE " for any process of that node). Returns 'redispatch', 'failed' or
# 'counted' (not open any more: it ended, or its loss was counted already).
# ARGV: member, holder, limit, reason, verb ('killed' or 'lost'), now, ttl.
ATTEMPT_ENDED = _ATTEMPT_LOST + """
local open = redis.call('HGET', KEYS[8], ARGV[1])
if not open or string.sub(open, 1, string.len(ARGV[2])) ~= ARGV[2] then return 'counted' end
if ended(ARGV[1]) then
  redis.call('HDEL', KEYS[8], ARGV[1])
  return 'counted'
end
return attempt_lost(ARGV[1], tonumber(ARGV[3]), ARGV[4], ARGV[5], ARGV[6],
                    tonumber(redis.call('HGET', KEYS[1], 'result_ttl') or ARGV[7]))
"""

# End a job that is not final yet: cancelled, or failed with a reason. Returns the final status.
# KEYS: job, active. ARGV: status, now, error ('' = none).
END_JOB = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
if status == 'succeeded' or status == 'failed' or status == 'cancelled' then return status end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'finished', ARGV[2], 'updated', ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[3]) end
redis.call('ZREM', KEYS[2], redis.call('HGET', KEYS[1], 'id'))
return ARGV[1]
"""

# A submission whose producer stopped renewing it is failed. KEYS: job, active. ARGV: now.
# Returns 'failed' when it did that, else ''.
SUBMISSION_LAPSED = """
local fields = redis.call('HMGET', KEYS[1], 'status', 'submitted', 'submit_deadline', 'lines', 'id')
local status = fields[1]
if not status or status == 'succeeded' or status == 'failed' or status == 'cancelled' then return '' end
if fields[2] == '1' or not fields[3] or tonumber(fields[3]) > tonumber(ARGV[1]) then return '' end
local reason = 'submission interrupted after ' .. (fields[4] or '0') .. ' lines (the producer stopped)'
redis.call('HSET', KEYS[1], 'status', 'failed', 'error', reason, 'finished', ARGV[1], 'updated', ARGV[1])
redis.call('ZREM', KEYS[2], fields[5])
return 'failed'
"""


# A .jsonl job's ids must be unique. A worker registers the ids of its chunk's usable lines, in
# line order, before it decodes them; the first use of an id (the lowest line) holds it. KEYS:
# ids (hash: id key -> "line,implied"), implied (bitmap: lines whose id is their line number),
# retracted (hash: line -> JSON), job. ARGV: ttl, then per line: line, id key (shared.seeds.id_key),
# '1' when the id is implied by the line number else '0'. Returns, per line of the caller's that
# is a duplicate: line, first line, '1'/'0' (the first line's id was implied). A line that held
# the id but is later than the caller's (its chunk ran first) is a duplicate too: it is recorded
# in `retracted` (the collector leaves its output out and reports it), and the job's counts move
# it from valid to invalid. A chunk that runs again finds its own lines holding their ids (no
# change), or its line retracted: then the retraction goes (the chunk reports the line itself).
REGISTER_IDS = """
local ttl = tonumber(ARGV[1])
local duplicates = {}
local function implied_holder(key, line)
  if string.sub(key, 1, 1) ~= 'i' then return nil end
  local digits = string.sub(key, 2)
  if #digits == 0 or #digits > 10 or string.find(digits, '%D') then return nil end
  local number = tonumber(digits)
  if number < 1 or number > 4294967295 or number == line then return nil end
  if redis.call('GETBIT', KEYS[2], number) == 1 then return number end
  return nil
end
local function hold(key, line, implied)
  if implied == '1' then redis.call('SETBIT', KEYS[2], line, 1) end
  redis.call('HSET', KEYS[1], key, line .. ',' .. implied)
end
for index = 2, #ARGV, 3 do
  local line, key, implied = tonumber(ARGV[index]), ARGV[index + 1], ARGV[index + 2]
  local holder, holder_implied = nil, '0'
  local held = redis.call('HGET', KEYS[1], key)
  if held then
    local comma = string.find(held, ',')
    holder, holder_implied = tonumber(string.sub(held, 1, comma - 1)), string.sub(held, comma + 1)
  else
    holder = implied_holder(key, line)
    if holder then holder_implied = '1' end
  end
  if holder == nil then
    if implied == '1' then redis.call('SETBIT', KEYS[2], line, 1) else hold(key, line, implied) end
  elseif holder == line then
    -- this line's own registration (the chunk runs again)
  elseif holder < line then
    if redis.call('HDEL', KEYS[3], line) == 1 then
      redis.call('HINCRBY', KEYS[4], 'prompts', 1)
      redis.call('HINCRBY', KEYS[4], 'input_errors', -1)
    end
    table.insert(duplicates, line)
    table.insert(duplicates, holder)
    table.insert(duplicates, holder_implied)
  else
    redis.call('HSET', KEYS[3], holder, cjson.encode({key, line, implied, holder_implied}))
    redis.call('HINCRBY', KEYS[4], 'prompts', -1)
    redis.call('HINCRBY', KEYS[4], 'input_errors', 1)
    hold(key, line, implied)
  end
end
for _, key in ipairs({KEYS[1], KEYS[2], KEYS[3]}) do
  if redis.call('EXISTS', key) == 1 then redis.call('EXPIRE', key, ttl) end
end
return duplicates
"""


TRAIN = "train"   # the lease member of a training job's running slice


class Jobs:
    def __init__(self, client: redis.Redis, ttl: int):
        self.redis, self.ttl = client, ttl
        self._save_result = client.register_script(SAVE_RESULT)
        self._fail_chunk = client.register_script(FAIL_CHUNK)
        self._finish_submission = client.register_script(FINISH_SUBMISSION)
        self._take_lease = client.register_script(TAKE_LEASE)
        self._renew_lease = client.register_script(RENEW_LEASE)
        self._claim_lapsed = client.register_script(CLAIM_LAPSED)
        self._attempt_ended = client.register_script(ATTEMPT_ENDED)
        self._end_job = client.register_script(END_JOB)
        self._submission_lapsed = client.register_script(SUBMISSION_LAPSED)
        self._register_ids = client.register_script(REGISTER_IDS)

    # -- the record ------------------------------------------------------------------------------
    def create(self, kind: JobKind, params: ModelParams | GenerationParams, **fields: Any) -> str:
        job_id = uuid.uuid4().hex[:16]
        created = now()
        mapping = encode_fields({"id": job_id, "kind": kind, "status": JobStatus.QUEUED, "created": created,
                                 "updated": created, "params": params, "result_ttl": self.ttl, **fields})
        pipe = self.redis.pipeline()
        pipe.hset(keys.job_key(job_id), mapping=mapping)
        pipe.expire(keys.job_key(job_id), self.ttl)
        pipe.zadd(keys.JOBS, {job_id: created})
        pipe.zadd(keys.ACTIVE, {job_id: created})
        pipe.execute()
        return job_id

    def get(self, job_id: str) -> JobRecord:
        raw = self.redis.hgetall(keys.job_key(job_id))
        if not raw or b"kind" not in raw:
            raise JobNotFound(f"no job {job_id!r} (never submitted, or expired after result_ttl)")
        return JobRecord.from_hash(raw)

    def update(self, job_id: str, **fields: Any) -> None:
        self.redis.hset(keys.job_key(job_id), mapping={**encode_fields(fields), "updated": now()})

    def finish(self, job_id: str, status: JobStatus, **fields: Any) -> JobStatus:
        """Set a final status (with fields) unless the job has one already; returns the final status."""
        if fields:
            self.update(job_id, **fields)
        error = fields.get("error") or ""
        return JobStatus(self._end_job(keys=[keys.job_key(job_id), keys.ACTIVE], args=[status.value, now(), error]).decode())

    def cancel(self, job_id: str) -> JobStatus:
        """Cancel a job that has not ended (workers skip its pending chunks); returns its final status."""
        self.get(job_id)   # JobNotFound for an unknown id
        return self.finish(job_id, JobStatus.CANCELLED)

    def remove(self, job_id: str) -> int:
        """Delete every key of a job (it must have ended); returns how many keys went."""
        record = self.get(job_id)
        if not record.status.finished:
            raise InputError(f"job {job_id} is {record.status.value}; cancel it first (lstmq cancel {job_id})")
        doomed = [keys.job_key(job_id), *self.redis.scan_iter(match=keys.job_pattern(job_id), count=1000)]
        pipe = self.redis.pipeline()
        pipe.delete(*doomed)
        pipe.zrem(keys.JOBS, job_id)
        pipe.zrem(keys.ACTIVE, job_id)
        return int(pipe.execute()[0])

    def forget(self, job_id: str) -> None:
        """Drop a job that no longer exists from the index of active jobs."""
        self.redis.zrem(keys.ACTIVE, job_id)

    def pinning(self, name: str, version: int) -> list[str]:
        """Jobs that have not ended and use model NAME@VERSION (generate jobs pin their version)."""
        pinned = []
        for job_id in self.active():
            try:
                record = self.get(job_id)
            except JobNotFound:
                continue
            if record.kind is JobKind.GENERATE and record.model_name == name and record.version == version \
                    and not record.status.finished:
                pinned.append(job_id)
        return pinned

    def recent(self, limit: int = 20) -> list[str]:
        """The newest job ids first, those past result_ttl left out (a read: nothing is written)."""
        found = self.redis.zrevrangebyscore(keys.JOBS, "+inf", time.time() - self.ttl, start=0, num=limit)
        return [job_id.decode() for job_id in found]

    def active(self, limit: int = 1000) -> list[str]:
        """Jobs that have not ended, oldest first, those past result_ttl left out (a read)."""
        found = self.redis.zrangebyscore(keys.ACTIVE, time.time() - self.ttl, "+inf", start=0, num=limit)
        return [job_id.decode() for job_id in found]

    def prune_indexes(self) -> int:
        """Drop the jobs past result_ttl from the job indexes (the watchdog does, every pass);
        returns how many entries went."""
        pipe = self.redis.pipeline()
        pipe.zremrangebyscore(keys.JOBS, "-inf", time.time() - self.ttl)
        pipe.zremrangebyscore(keys.ACTIVE, "-inf", time.time() - self.ttl)
        return sum(pipe.execute())

    # -- submission --------------------------------------------------------------------------------
    def put_chunk(self, job_id: str, chunk: int, data: bytes, first_line: int, submit_deadline: float) -> None:
        """Store one chunk of raw seed lines (`data`, from line `first_line` on) and count it sent,
        with the lines read so far and the time by which the producer will have shown a sign of life."""
        lines = data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
        self.put_chunks(job_id, [(chunk, pack_input(first_line, lines, data), lines)], first_line + lines - 1,
                        submit_deadline)

    def put_chunks(self, job_id: str, chunks: list[tuple[int, bytes, int]], lines: int,
                   submit_deadline: float) -> None:
        """Store several chunks in one round trip: (chunk index, pack_input payload, its lines) in
        index order; then count them sent, with `lines`, the seed lines read so far."""
        if not chunks:
            return
        sizes = keys.job_key(job_id, "chunk-sizes")
        pipe = self.redis.pipeline(transaction=False)
        for chunk, payload, _lines in chunks:
            pipe.set(keys.job_key(job_id, "chunk", chunk), payload, ex=self.ttl)
        pipe.hset(sizes, mapping={chunk: count for chunk, _payload, count in chunks})
        pipe.expire(sizes, self.ttl)
        pipe.hset(keys.job_key(job_id), mapping={"chunks_sent": chunks[-1][0] + 1, "lines": lines,
                                                 "submit_deadline": submit_deadline, "updated": now()})
        pipe.execute()

    def keep_submitting(self, job_id: str, lines: int, submit_deadline: float) -> None:
        self.redis.hset(keys.job_key(job_id), mapping={"lines": lines, "submit_deadline": submit_deadline})

    def finish_submission(self, job_id: str, chunks: int, lines: int) -> JobStatus:
        self.update(job_id, chunks=chunks, lines=lines, submitted=True)
        return JobStatus(self._finish_submission(keys=[keys.job_key(job_id), keys.ACTIVE], args=[now()]).decode())

    def fail_lapsed_submission(self, job_id: str) -> bool:
        """Fail the job if its producer stopped submitting (see SUBMISSION_LAPSED); True if it did now."""
        return bool(self._submission_lapsed(keys=[keys.job_key(job_id), keys.ACTIVE], args=[now()]))

    # -- chunks --------------------------------------------------------------------------------------
    def chunk_lines(self, job_id: str, chunk: int) -> int:
        """How many seed lines the producer put in the chunk (known even when its input is gone)."""
        return int(self.redis.hget(keys.job_key(job_id, "chunk-sizes"), chunk) or 0)

    def chunk_source(self, job_id: str, chunk: int) -> tuple[int, int, bytes]:
        """The chunk's first line, line count and raw lines; LookupError when its input is gone."""
        raw = self.redis.get(keys.job_key(job_id, "chunk", chunk))
        if raw is None:
            raise LookupError(f"job {job_id} has no chunk {chunk} (its input expired or was deleted)")
        return unpack_input(raw)

    def sources(self, job_id: str, chunks: Iterable[int]) -> list[tuple[int, int, bytes] | None]:
        """Per chunk, in one round trip: its first line, line count and raw lines (None when gone)."""
        pipe = self.redis.pipeline(transaction=False)
        for chunk in chunks:
            pipe.get(keys.job_key(job_id, "chunk", chunk))
        return [None if raw is None else unpack_input(raw) for raw in pipe.execute()]

    def outputs(self, job_id: str, chunks: Iterable[int]) -> list[bytes | None]:
        """Per chunk, in one round trip: its stored output (ChunkOutput.pack's bytes), None when none."""
        pipe = self.redis.pipeline(transaction=False)
        for chunk in chunks:
            pipe.get(keys.job_key(job_id, "result", chunk))
        return pipe.execute()

    def output(self, job_id: str, chunk: int) -> ChunkOutput | None:
        raw = self.redis.get(keys.job_key(job_id, "result", chunk))
        return None if raw is None else ChunkOutput.unpack(raw)

    def outcomes(self, job_id: str, first: int, count: int) -> list[bool]:
        """For chunks first .. first+count-1: whether each has an outcome (a result, or failed)."""
        if count <= 0:
            return []
        chunks = list(range(first, first + count))
        pipe = self.redis.pipeline(transaction=False)
        pipe.smismember(keys.job_key(job_id, "done"), chunks)
        pipe.hmget(keys.job_key(job_id, "failed"), chunks)
        done, failed = pipe.execute()
        return [bool(is_done) or reason is not None for is_done, reason in zip(done, failed)]

    def chunk_finished(self, job_id: str, chunk: int) -> bool:
        return bool(self.redis.sismember(keys.job_key(job_id, "done"), chunk)
                    or self.redis.hexists(keys.job_key(job_id, "failed"), chunk))

    def register_ids(self, job_id: str, entries: list[tuple[int, str, bool]]) -> list[tuple[int, int, bool]]:
        """Register a chunk's ids (line, id key, implied) in line order (see REGISTER_IDS); returns
        (line, first line, first implied) for each of its lines whose id an earlier line holds."""
        if not entries:
            return []
        args: list[Any] = [self.ttl]
        for line, key, implied in entries:
            args += (line, key, "1" if implied else "0")
        found = self._register_ids(keys=[keys.job_key(job_id, "ids"), keys.job_key(job_id, "implied-ids"),
                                         keys.job_key(job_id, "retracted"), keys.job_key(job_id)], args=args)
        return [(int(found[index]), int(found[index + 1]), found[index + 2] == b"1") for index in range(0, len(found), 3)]

    def retracted(self, job_id: str) -> dict[int, tuple[str, int, bool, bool]]:
        """Lines whose output a later-registered earlier line made duplicates: line -> (id key,
        first line, first implied, implied). Few or none."""
        found = {}
        for line, raw in self.redis.hgetall(keys.job_key(job_id, "retracted")).items():
            key, first, first_implied, implied = json.loads(raw)
            found[int(line)] = (key, int(first), first_implied == "1", implied == "1")
        return found

    def save_output(self, job_id: str, chunk: int, output: ChunkOutput, words: int, report: ChunkReport) -> bool:
        """Write a chunk's output once, with its seed report; False when it was written already
        (a redelivered task)."""
        args = [*report.counters(), *[value for pair in report.top_unknown for value in pair]]
        return self._chunk_outcome(self._save_result, job_id, chunk, "done", output.pack(), output.count, words, args)

    def fail_chunk(self, job_id: str, chunk: int, error: str, lines: int | None = None) -> bool:
        """Record the chunk failed with its reason (once; works when Redis is out of memory)."""
        lines = self.chunk_lines(job_id, chunk) if lines is None else lines
        return self._chunk_outcome(self._fail_chunk, job_id, chunk, "failed", error, lines, 0, [])

    def _chunk_outcome(self, script, job_id: str, chunk: int, outcome: str, payload: str | bytes, lines: int,
                       words: int, more: list[Any]) -> bool:
        chunk_keys = [keys.job_key(job_id), keys.job_key(job_id, "done"), keys.job_key(job_id, "failed"),
                      keys.job_key(job_id, "result", chunk), keys.job_key(job_id, "leases"), keys.ACTIVE,
                      keys.job_key(job_id, "holders"), keys.job_key(job_id, "unknown-words")]
        first, _status = script(keys=chunk_keys, args=[chunk, outcome, payload, lines, words, self.ttl, now(), *more])
        return bool(first)

    def top_unknown_words(self, job_id: str, count: int = 10) -> list[tuple[str, int]]:
        """The job's most frequent unknown prompt words so far (as the workers reported them: each
        chunk its TOP_UNKNOWN_PER_CHUNK most frequent), the most frequent first, ties by the word."""
        found = self.redis.zrevrange(keys.job_key(job_id, "unknown-words"), 0, 4 * count - 1, withscores=True)
        ranked = sorted(((word.decode(), int(score)) for word, score in found), key=lambda pair: (-pair[1], pair[0]))
        return ranked[:count]

    def failed_chunks(self, job_id: str) -> dict[int, str]:
        return {int(k): v.decode() for k, v in self.redis.hgetall(keys.job_key(job_id, "failed")).items()}

    # -- leases ----------------------------------------------------------------------------------------
    def _attempt_keys(self, job_id: str) -> list[str]:
        return [keys.job_key(job_id), keys.job_key(job_id, "leases"), keys.job_key(job_id, "lapses"),
                keys.job_key(job_id, "done"), keys.job_key(job_id, "failed"), keys.ACTIVE,
                keys.job_key(job_id, "chunk-sizes"), keys.job_key(job_id, "holders"), keys.job_key(job_id, "ends"),
                keys.job_key(job_id, "attempts")]

    def take_lease(self, job_id: str, member: int | str, worker: str, lease_seconds: float,
                   holder: str | None = None) -> str:
        """Start an attempt at a chunk (or 'train'): 'ok', 'finished', 'missing' or the job's final
        status. `holder`: the taking process, "NODE PID" (default: `worker` and this process)."""
        deadline = int((time.time() + lease_seconds) * 1000)
        holder = holder or f"{worker} {os.getpid()}"
        return self._take_lease(keys=self._attempt_keys(job_id),
                                args=[member, deadline, worker, now(), self.ttl, holder]).decode()

    def attempt_ended(self, job_id: str, member: int | str, holder: str, limit: int, reason: str,
                      verb: str = "killed") -> str:
        """The process `holder` ("NODE PID", or "NODE " for any process of a node) died holding the
        attempt at `member`, as `reason` says: the attempt is lost and its lease given back now.
        'redispatch' (the caller sends the work again), 'failed' (lost past `limit` times: recorded
        failed) or 'counted' (the attempt had ended, or its loss was counted already)."""
        args = [member, holder, limit, reason, verb, now(), self.ttl]
        return self._attempt_ended(keys=self._attempt_keys(job_id), args=args).decode()

    def open_attempts(self, holder: str) -> list[tuple[str, str]]:
        """(job, member) of every attempt of a job not yet ended whose holder starts with `holder`
        ("NODE " for any process of a node): what a dead worker held, even the attempt it took
        but had not yet announced (workers.hold)."""
        found = []
        for job_id in self.active():
            for member, held_by in self.redis.hgetall(keys.job_key(job_id, "holders")).items():
                if held_by.decode().startswith(holder):
                    found.append((job_id, member.decode()))
        return found

    def attempts(self, job_id: str) -> dict[str, dict[str, Any]]:
        """Per member taken at least once: {"attempts": times taken, "lost": attempts that ended
        without an outcome, "last_end": how the last lost one ended (or None)}."""
        pipe = self.redis.pipeline(transaction=False)
        for name in ("attempts", "lapses", "ends"):
            pipe.hgetall(keys.job_key(job_id, name))
        taken, lost, ends = pipe.execute()
        return {member.decode(): {"attempts": int(count), "lost": int(lost.get(member, 0)),
                                  "last_end": ends[member].decode() if member in ends else None}
                for member, count in taken.items()}

    def renew_lease(self, job_id: str, member: int | str, lease_seconds: float) -> bool:
        """Push the lease's deadline on; False when it was taken away (the work was dispatched again)."""
        deadline = int((time.time() + lease_seconds) * 1000)
        return bool(self._renew_lease(keys=[keys.job_key(job_id, "leases")], args=[member, deadline]))

    def mark_lapsed(self, job_id: str, member: int | str) -> None:
        """Give the work a lapsed lease again (its re-dispatch could not be sent)."""
        self.redis.zadd(keys.job_key(job_id, "leases"), {member: 0})

    def drop_lease(self, job_id: str, member: int | str) -> None:
        """The attempt ended without an outcome of its own (a training slice done, the next one
        queued): its lease and its open attempt go."""
        pipe = self.redis.pipeline()
        pipe.zrem(keys.job_key(job_id, "leases"), member)
        pipe.hdel(keys.job_key(job_id, "holders"), member)
        pipe.execute()

    def pending_chunks(self, job_id: str, chunks: int) -> list[int]:
        """Chunks (of the first `chunks`) with no outcome yet."""
        done = {int(member) for member in self.redis.smembers(keys.job_key(job_id, "done"))}
        failed = {int(member) for member in self.redis.hkeys(keys.job_key(job_id, "failed"))}
        return [chunk for chunk in range(chunks) if chunk not in done and chunk not in failed]

    def leases(self, job_id: str) -> dict[str, float]:
        """Member -> deadline (Unix seconds) of the leases held now."""
        raw = self.redis.zrange(keys.job_key(job_id, "leases"), 0, -1, withscores=True)
        return {member.decode(): score / 1000 for member, score in raw}

    def lapsed(self, job_id: str) -> list[str]:
        raw = self.redis.zrangebyscore(keys.job_key(job_id, "leases"), "-inf", int(time.time() * 1000))
        return [member.decode() for member in raw]

    def claim_lapsed(self, job_id: str, member: str, limit: int, reason: str) -> str:
        """'redispatch' (the caller sends the work again), 'failed' (over the limit) or 'live'."""
        args = [member, int(time.time() * 1000), limit, now(), self.ttl, reason]
        return self._claim_lapsed(keys=self._attempt_keys(job_id), args=args).decode()

    # -- seed lines that could not be used ----------------------------------------------------------
    def add_input_errors(self, job_id: str, errors: list[dict[str, Any]]) -> None:
        """Bad seed lines the producer found itself (lines too long to send), counted in the job's
        input_errors. Each {"id", "line", "error"}, with "chunk": the chunk the line is in."""
        if errors:
            key = keys.job_key(job_id, "input-errors")
            pipe = self.redis.pipeline()
            pipe.rpush(key, *(json.dumps(error, ensure_ascii=False) for error in errors))
            pipe.expire(key, self.ttl)
            pipe.hincrby(keys.job_key(job_id), "input_errors", len(errors))
            pipe.execute()

    def input_errors(self, job_id: str) -> list[dict[str, Any]]:
        return [json.loads(raw) for raw in self.redis.lrange(keys.job_key(job_id, "input-errors"), 0, -1)]
