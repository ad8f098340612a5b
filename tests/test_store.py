"""The Redis store against a real redis-server: one test group per aggregate."""
import json
import os
import socket
import time

import pytest

from lstmq.shared.config import load_settings
from lstmq.shared.errors import ArtifactCorrupt, InputError, JobBusy, JobNotFound, ModelNotFound
from lstmq.shared.params import Checkpoint
from lstmq.shared.store import JobKind, JobStatus, keys, parse_model_spec
from lstmq.shared.store.clock import iso_utc

SETTINGS = load_settings(environ={})
GENERATION = SETTINGS.generation_params().replace(seed=1)
MODEL = SETTINGS.model_params()


def put(store, job: str, chunk: int, first_line: int, count: int = 1) -> None:
    """A chunk of `count` seed lines "the" from `first_line` on, stored as the producer stores it."""
    store.jobs.put_chunk(job, chunk, b"the\n" * count, first_line, submit_deadline=time.time() + 60)


def save(store, job: str, chunk: int, words: int = 1, valid: int = 1, lines: int = 1) -> bool:
    """A chunk's output as a worker stores it: `valid` output lines, its report, `words` generated."""
    from lstmq.shared.store.chunks import ChunkOutput, ChunkReport

    output = ChunkOutput(chunk + 1, lines, b'{"id": 1}\n' * valid, valid, b"", 0, None)
    return store.jobs.save_output(job, chunk, output, words, ChunkReport(valid=valid, output_lines=valid))


def test_blobs_are_content_addressed(store):
    digest = store.blobs.put(b"hello", ttl=60)
    assert digest == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    assert store.blobs.get(digest) == b"hello"
    assert 0 < store.redis.ttl(keys.blob(digest)) <= 60
    with pytest.raises(LookupError):
        store.blobs.get("0" * 64)
    kept = store.blobs.put(b"artifact")
    assert store.redis.ttl(keys.blob(kept)) == -1    # model artifacts never expire


def test_registry_versions_and_aliases(store):
    first = store.jobs.create(JobKind.TRAIN, MODEL, model_name="m")
    second = store.jobs.create(JobKind.TRAIN, MODEL, model_name="m")
    assert store.registry.register(first, "m", b"artifact-1", {"metrics": {}}) == 1
    assert store.registry.register(first, "m", b"artifact-1", {"metrics": {}}) == 1   # redelivered task
    assert store.registry.register(second, "m", b"artifact-2", {"metrics": {}}) == 2
    assert store.registry.resolve("m") == ("m", 2)
    assert store.registry.resolve("m@1") == ("m", 1)
    assert store.registry.resolve("m@current") == ("m", 2)
    assert store.registry.artifact("m", 1) == b"artifact-1"
    assert store.jobs.get(first).model == "m@1" and store.jobs.get(first).version == 1
    assert list(store.registry.versions("m")) == [1, 2]
    assert store.registry.names() == ["m"]
    assert store.registry.aliases("m") == {"current": 2}
    digest = store.registry.meta("m", 1)["artifact_sha256"]
    store.redis.set(keys.blob(digest), b"tampered")            # the bytes no longer match the registry
    with pytest.raises(ArtifactCorrupt, match="will not be used"):
        store.registry.artifact("m", 1)
    with pytest.raises(ModelNotFound, match="has no version 3"):
        store.registry.resolve("m@3")
    with pytest.raises(ModelNotFound, match="no model named 'other'"):
        store.registry.resolve("other")
    for bad in ("bad name", "m@", "list", "export"):
        with pytest.raises(InputError):
            parse_model_spec(bad)


def test_job_record_is_typed(store):
    job = store.jobs.create(JobKind.GENERATE, GENERATION, model_name="m", version=1, model="m@1")
    record = store.jobs.get(job)
    assert record.kind is JobKind.GENERATE and record.status is JobStatus.QUEUED
    assert record.params == GENERATION and record.version == 1 and record.started is None
    assert record.progress().done == 0 and record.progress().total is None   # submission still open
    assert store.jobs.take_lease(job, 0, "w1", 30) == "ok"
    record = store.jobs.get(job)
    assert record.status is JobStatus.RUNNING and record.worker == "w1" and record.started >= record.created
    assert job in store.jobs.recent()
    data = record.to_json()
    assert data["kind"] == "generate" and data["params"]["seed"] == 1 and "finished" not in data
    assert data["created"] == iso_utc(record.created) and data["created"].endswith("Z")
    json.dumps(data)   # JSON-ready
    with pytest.raises(JobNotFound):
        store.jobs.get("nope")


def test_training_progress_counts_the_running_epoch(store):
    job = store.jobs.create(JobKind.TRAIN, MODEL.replace(epochs=4), model_name="m", epochs=4)
    store.training.add_epoch(job, {"epoch": 1, "epochs": 4, "loss": 2.5, "seconds": 1.0})
    store.jobs.update(job, step=5, steps=10, epoch_running=2)
    progress = store.jobs.get(job).progress()
    assert (progress.done, progress.total, progress.unit, progress.fraction) == (1.5, 4, "epoch", 1.5 / 4)
    assert store.jobs.get(job).loss == 2.5
    assert store.training.history(job) == [{"epoch": 1, "epochs": 4, "loss": 2.5, "seconds": 1.0}]


def test_nothing_reopens_a_finished_job(store):
    job = store.jobs.create(JobKind.TRAIN, MODEL, model_name="m")
    assert store.jobs.finish(job, JobStatus.FAILED, error="boom") is JobStatus.FAILED
    assert store.jobs.take_lease(job, "train", "late", 30) == "failed"
    assert store.jobs.finish(job, JobStatus.SUCCEEDED) is JobStatus.FAILED     # a final state stays
    assert store.jobs.cancel(job) is JobStatus.FAILED
    record = store.jobs.get(job)
    assert record.status is JobStatus.FAILED and record.error == "boom" and record.finished is not None
    assert job not in store.jobs.active()


def test_chunk_results_are_written_once_and_finish_the_job(store):
    job = store.jobs.create(JobKind.GENERATE, GENERATION, model_name="m", version=1)
    for chunk in range(3):
        put(store, job, chunk, chunk + 1)
    assert save(store, job, 0, words=2)
    assert not save(store, job, 0, words=2)   # duplicate delivery
    assert store.jobs.fail_chunk(job, 1, "boom", lines=1)
    assert not save(store, job, 1, words=2)  # an outcome is final
    assert store.jobs.finish_submission(job, chunks=3, lines=3) is JobStatus.QUEUED
    assert save(store, job, 2, words=1)
    record = store.jobs.get(job)
    assert record.status is JobStatus.FAILED   # one chunk failed
    assert (record.chunks_done, record.chunks_failed, record.prompts_done, record.words_done) == (2, 1, 2, 3)
    assert (record.progress().done, record.progress().total) == (3, 3)
    assert store.jobs.output(job, 1) is None and store.jobs.failed_chunks(job) == {1: "boom"}


def test_job_finishes_when_submission_ends_after_the_last_chunk(store):
    job = store.jobs.create(JobKind.GENERATE, GENERATION, model_name="m", version=1)
    put(store, job, 0, 1)
    save(store, job, 0, words=1)
    assert store.jobs.get(job).status is not JobStatus.SUCCEEDED    # submission still open
    assert store.jobs.finish_submission(job, chunks=1, lines=1) is JobStatus.SUCCEEDED
    assert store.jobs.get(job).submitted


def test_input_errors_and_checkpoints(store):
    job = store.jobs.create(JobKind.TRAIN, MODEL)
    store.jobs.add_input_errors(job, [{"id": 1, "line": 1, "error": "x"}])
    assert store.jobs.input_errors(job) == [{"id": 1, "line": 1, "error": "x"}]
    store.training.save_checkpoint(job, 1, b"weights-1", [{"epoch": 1}], best=b"best-1")
    store.training.save_checkpoint(job, 2, b"weights-2", [{"epoch": 1}, {"epoch": 2}])   # epoch 2 was no better
    assert store.training.load_checkpoint(job) == Checkpoint(2, b"weights-2", [{"epoch": 1}, {"epoch": 2}], b"best-1")
    store.training.drop_checkpoint(job)
    assert store.training.load_checkpoint(job) is None


def test_lock_primitives(store):
    job = store.jobs.create(JobKind.TRAIN, MODEL)
    training = store.training
    assert training.acquire_lock(job, "a", 60) and not training.acquire_lock(job, "b", 60)
    assert not training.refresh_lock(job, "b", 60) and training.refresh_lock(job, "a", 60)
    training.release_lock(job, "b")
    assert not training.acquire_lock(job, "b", 60)
    training.release_lock(job, "a")
    assert training.acquire_lock(job, "b", 60)


def test_training_lock_context_manager(store):
    job = store.jobs.create(JobKind.TRAIN, MODEL)
    with store.training.lock(job) as held:
        assert store.training.lock_holder(job) == held.owner
        with pytest.raises(JobBusy):   # a live holder (this process) keeps it
            with store.training.lock(job):
                pass
    assert store.training.lock_holder(job) is None
    # a lock left by a dead process on this host is taken over at once
    store.training.acquire_lock(job, f"{socket.gethostname()}:{2**22 + 12345}:dead")
    assert not os.path.exists(f"/proc/{2**22 + 12345}")
    with store.training.lock(job) as held:
        assert store.training.lock_holder(job) == held.owner


def test_every_key_is_under_the_prefix(store):
    job = store.jobs.create(JobKind.GENERATE, GENERATION)
    put(store, job, 0, 1, 0)
    store.jobs.take_lease(job, 0, "w", 30)
    save(store, job, 0, words=0, valid=0)
    store.workers.heartbeat("w", {"queues": ["generate"]}, ttl=5)
    assert all(key.startswith(b"lstmq:") for key in store.redis.keys("*"))
    assert store.jobs.output(job, 0).out == b""
    assert keys.job_key("j") == "lstmq:job:j" and keys.job_key("j", "chunk", 3) == "lstmq:job:j:chunk:3"


def test_a_lapsed_lease_is_claimed_once_and_fails_after_the_limit(store):
    job = store.jobs.create(JobKind.GENERATE, GENERATION, model_name="m", version=1)
    put(store, job, 0, 1, 2)
    store.jobs.finish_submission(job, chunks=1, lines=2)
    assert store.jobs.take_lease(job, 0, "w1", lease_seconds=60) == "ok"
    assert store.jobs.lapsed(job) == [] and store.jobs.claim_lapsed(job, "0", 1, "lost") == "live"
    assert store.jobs.take_lease(job, 0, "w1", lease_seconds=-1) == "ok"     # a deadline in the past: lapsed
    assert store.jobs.lapsed(job) == ["0"]
    assert store.jobs.claim_lapsed(job, "0", 1, "lost") == "redispatch"
    assert store.jobs.claim_lapsed(job, "0", 1, "lost") == "live"            # whoever noticed second: nothing
    assert not store.jobs.renew_lease(job, 0, 60)                          # the old worker learns it lost it
    store.jobs.take_lease(job, 0, "w2", lease_seconds=-1)
    assert store.jobs.claim_lapsed(job, "0", 1, "lost") == "failed"          # second lapse, limit 1
    record = store.jobs.get(job)
    assert record.status is JobStatus.FAILED and (record.chunks_failed, record.lines_failed) == (1, 2)
    assert record.lease_lapses == 2 and store.jobs.failed_chunks(job) == {0: "lost its worker 2 times (last: lost)"}
    assert job not in store.jobs.active()


def test_a_lapsed_training_lease_fails_the_job_after_the_limit(store):
    job = store.jobs.create(JobKind.TRAIN, MODEL, model_name="m")
    store.jobs.take_lease(job, "train", "w1", lease_seconds=-1)
    assert store.jobs.claim_lapsed(job, "train", 0, "lost") == "failed"
    assert store.jobs.get(job).status is JobStatus.FAILED and store.jobs.get(job).error == "lost its worker 1 times (last: lost)"


def test_cancel_skips_pending_chunks_and_keeps_what_was_done(store):
    job = store.jobs.create(JobKind.GENERATE, GENERATION, model_name="m", version=1)
    for chunk in range(2):
        put(store, job, chunk, chunk + 1)
    store.jobs.finish_submission(job, chunks=2, lines=2)
    store.jobs.take_lease(job, 0, "w", 30)
    assert store.jobs.cancel(job) is JobStatus.CANCELLED
    assert save(store, job, 0, words=1)    # the running chunk finishes
    assert store.jobs.take_lease(job, 1, "w", 30) == "cancelled"            # the pending one is skipped
    record = store.jobs.get(job)
    assert record.status is JobStatus.CANCELLED and record.chunks_done == 1 and job not in store.jobs.active()
    with pytest.raises(JobNotFound):
        store.jobs.cancel("nope")


def test_remove_deletes_every_key_of_an_ended_job(store):
    job = store.jobs.create(JobKind.GENERATE, GENERATION, model_name="m", version=1)
    put(store, job, 0, 1)
    store.jobs.add_input_errors(job, [{"id": 2, "line": 2, "error": "x"}])
    with pytest.raises(InputError, match="cancel it first"):
        store.jobs.remove(job)
    store.jobs.finish_submission(job, chunks=1, lines=2)
    save(store, job, 0, words=1)
    other = store.jobs.create(JobKind.TRAIN, MODEL, model_name="m")
    assert store.jobs.remove(job) >= 4
    assert [key for key in store.redis.keys("*") if job.encode() in key] == []
    assert job not in store.jobs.recent() and store.jobs.get(other).id == other
    with pytest.raises(JobNotFound):
        store.jobs.get(job)


def test_every_job_key_expires(store):
    job = store.jobs.create(JobKind.GENERATE, GENERATION, model_name="m", version=1)
    put(store, job, 0, 1)
    store.jobs.add_input_errors(job, [{"id": 2, "line": 2, "error": "x"}])
    store.jobs.take_lease(job, 0, "w", 30)
    save(store, job, 0, words=1)
    store.jobs.take_lease(job, 1, "w", 30)
    job_keys = [key for key in store.redis.keys("*") if job.encode() in key and key != keys.JOBS.encode()]
    assert len(job_keys) >= 5
    assert all(0 < store.redis.ttl(key) <= 3600 for key in job_keys), {key: store.redis.ttl(key) for key in job_keys}


def test_an_interrupted_submission_fails_the_job(store):
    job = store.jobs.create(JobKind.GENERATE, GENERATION, model_name="m", version=1, submit_deadline=time.time() + 60)
    put(store, job, 0, 1)
    assert not store.jobs.fail_lapsed_submission(job)
    store.jobs.keep_submitting(job, lines=9, submit_deadline=time.time() - 1)   # the producer went quiet
    assert store.jobs.fail_lapsed_submission(job)
    record = store.jobs.get(job)
    assert record.status is JobStatus.FAILED and record.error.startswith("submission interrupted after 9 lines")
    assert store.jobs.take_lease(job, 0, "w", 30) == "failed"               # its chunks are skipped


def test_a_chunk_failure_is_recorded_when_redis_is_out_of_memory(store):
    from lstmq.shared.store.health import is_out_of_memory, out_of_memory

    job = store.jobs.create(JobKind.GENERATE, GENERATION, model_name="m", version=1)
    put(store, job, 0, 1)
    store.jobs.finish_submission(job, chunks=1, lines=1)
    store.redis.config_set("maxmemory", 1)   # every write is refused now (noeviction)
    try:
        with pytest.raises(Exception) as refused:
            save(store, job, 0, valid=100)
        assert is_out_of_memory(refused.value)
        error = out_of_memory(store.redis, refused.value)
        assert str(error).startswith("Redis is out of memory (maxmemory")
        assert store.jobs.fail_chunk(job, 0, str(error), lines=1)       # allow-oom: recorded anyway
    finally:
        store.redis.config_set("maxmemory", 0)
    record = store.jobs.get(job)
    assert record.status is JobStatus.FAILED and "out of memory" in store.jobs.failed_chunks(job)[0]


def test_eviction_policies_other_than_noeviction_are_refused(store):
    from lstmq.shared.errors import BrokerUnavailable
    from lstmq.shared.store.health import check_eviction_policy

    assert check_eviction_policy(store.redis, allow_eviction=False) == "noeviction"
    store.redis.config_set("maxmemory-policy", "allkeys-lru")
    try:
        with pytest.raises(BrokerUnavailable, match="maxmemory-policy is 'allkeys-lru'"):
            check_eviction_policy(store.redis, allow_eviction=False)
        assert check_eviction_policy(store.redis, allow_eviction=True) == "allkeys-lru"
    finally:
        store.redis.config_set("maxmemory-policy", "noeviction")


def test_live_workers_and_their_queues(store):
    store.workers.heartbeat("a", {"queues": ["generate"]}, ttl=30)
    store.workers.heartbeat("b", {"queues": ["train"]}, ttl=0.2)
    assert {worker["name"] for worker in store.workers.consuming("generate")} == {"a"}
    time.sleep(0.3)
    assert [worker["name"] for worker in store.workers.live()] == ["a"] and not store.workers.consuming("train")
    assert store.redis.zcard(keys.WORKERS) == 2       # live() only reads; the watchdog prunes
    assert store.workers.prune() == 1 and store.redis.zcard(keys.WORKERS) == 1


# -- chunks in Redis: the stored form of tests/test_chunks.py, written once, read back ----------
def test_chunk_inputs_and_outputs_are_stored_packed(store):
    from lstmq.shared.store.chunks import INPUT_FORMAT, ChunkOutput, ChunkReport

    job = store.jobs.create(JobKind.GENERATE, GENERATION, model_name="m", version=1)
    data = "".join(f"holmes said «{i}» to the door\n" for i in range(500)).encode()
    store.jobs.put_chunk(job, 0, data, 11, submit_deadline=time.time() + 60)
    raw = store.redis.get(keys.job_key(job, "chunk", 0))
    assert raw[:1] == INPUT_FORMAT and len(raw) < len(data) / 3
    assert store.jobs.chunk_source(job, 0) == (11, 500, data)     # what a worker reads: the bytes as sent
    assert store.jobs.chunk_lines(job, 0) == 500 and store.jobs.get(job).lines == 510
    out = "".join(json.dumps({"id": i, "continuation": "the door"}) + "\n" for i in range(500)).encode()
    err = b'{"id": 3, "line": 3, "error": "prompt has no words"}\n'
    report = ChunkReport(valid=499, invalid=1, prompt_words=2000, unknown_words=3, prompts_with_unknown=2,
                         words_to_generate=3493, output_lines=500, top_unknown=[("zz", 2), ("yy", 1)])
    assert store.jobs.save_output(job, 0, ChunkOutput(11, 500, out, 500, err, 1, None), 3493, report)
    assert len(store.redis.get(keys.job_key(job, "result", 0))) < len(out) / 3
    stored = store.jobs.output(job, 0)
    assert (stored.first_line, stored.count, stored.out, stored.lines, stored.err, stored.errors) == (
        11, 500, out, 500, err, 1)
    record = store.jobs.get(job)
    assert (record.prompts, record.input_errors, record.prompts_done, record.lines_done) == (499, 1, 499, 500)
    assert record.seed_report(store.jobs.top_unknown_words(job)) == {
        "lines_valid": 499, "lines_invalid": 1, "prompts_with_unknown_words": 2, "unknown_word_rate": 0.0015,
        "top_unknown_words": [["zz", 2], ["yy", 1]], "words_to_generate": 3493, "complete": False}


def test_a_chunk_of_an_earlier_lstmq_is_refused_with_a_reason(store):
    """Chunks an lstmq before 0.3 stored (msgpack columns) are not read: the README says to
    collect such jobs before upgrading; one met anyway is an error that says what it is."""
    job = store.jobs.create(JobKind.GENERATE, GENERATION, model_name="m", version=1)
    store.redis.set(keys.job_key(job, "chunk", 0), b"\x02" + b"x" * 20)
    with pytest.raises(ValueError, match="an lstmq before 0.3 stored columns"):
        store.jobs.chunk_source(job, 0)


def test_ids_are_registered_and_the_first_line_holds_each(store):
    """A .jsonl job's ids, registered chunk by chunk in any order: the lowest line holds an id; a
    later line is a duplicate, whether its chunk ran first (retracted) or second (told at once);
    an implied id (a line's number) clashes with the same integer id."""
    from lstmq.shared.seeds import id_key

    job = store.jobs.create(JobKind.GENERATE, GENERATION, model_name="m", version=1)
    store.redis.hset(keys.job_key(job), mapping={"prompts": 10, "input_errors": 0})
    # chunk 1 (lines 6-10) runs first: "a" on 7, the integer 3 on 8, line 9 with no id
    assert store.jobs.register_ids(job, [(7, id_key("a"), False), (8, id_key(3), False), (9, id_key(9), True)]) == []
    # chunk 0 (lines 1-5): "a" on 2 (so 7 was the duplicate), line 3 with no id (so 8 was), 9 on 4
    assert store.jobs.register_ids(job, [(2, id_key("a"), False), (3, id_key(3), True), (4, id_key(9), False),
                                         (5, id_key("a"), False)]) == [(5, 2, False)]
    assert store.jobs.retracted(job) == {7: (id_key("a"), 2, False, False), 8: (id_key(3), 3, True, False),
                                         9: (id_key(9), 4, False, True)}
    record = store.jobs.get(job)
    assert (record.prompts, record.input_errors) == (7, 3)
    # chunk 1 runs again (its worker died): its lines are duplicates now, told to it; the retractions go
    assert store.jobs.register_ids(job, [(7, id_key("a"), False), (8, id_key(3), False), (9, id_key(9), True)]) == [
        (7, 2, False), (8, 3, True), (9, 4, False)]
    assert store.jobs.retracted(job) == {}
    assert (store.jobs.get(job).prompts, store.jobs.get(job).input_errors) == (10, 0)
    # and chunk 0 again: its own registrations, no change
    assert store.jobs.register_ids(job, [(2, id_key("a"), False), (3, id_key(3), True), (4, id_key(9), False)]) == []
    assert all(0 < store.redis.ttl(keys.job_key(job, part)) <= 3600 for part in ("ids", "implied-ids"))


def test_a_job_keeps_the_result_ttl_it_was_submitted_with(store):
    """What a worker writes for a job expires after the job's result_ttl, not the worker's."""
    from lstmq.shared.store import Store

    job = store.jobs.create(JobKind.GENERATE, GENERATION, model_name="m", version=1)   # ttl 3600
    assert store.jobs.get(job).result_ttl == 3600
    put(store, job, 0, 1)
    worker_store = Store(store.redis, ttl=60)
    assert worker_store.jobs.take_lease(job, 0, "w", 30) == "ok"
    assert worker_store.for_job(store.jobs.get(job)).ttl == 3600
    save(worker_store, job, 0, words=1)
    assert 60 < store.redis.ttl(keys.job_key(job, "result", 0)) <= 3600
    assert 60 < store.redis.ttl(keys.job_key(job, "done")) <= 3600


def test_every_attempt_counts_and_a_chunk_that_kills_its_workers_fails(store):
    """Each take is an attempt; a process that dies holding one (its Celery main process or
    lstmq-worker says how) loses it once, gives its lease back at once, and past the limit the
    chunk is recorded failed with the last cause; the job goes on to its final state."""
    job = store.jobs.create(JobKind.GENERATE, GENERATION, model_name="m", version=1)
    put(store, job, 0, 1, 2)
    store.jobs.finish_submission(job, chunks=1, lines=2)
    oom = "signal 9 (SIGKILL), likely out of memory"
    for attempt in (1, 2):
        assert store.jobs.take_lease(job, 0, "w@h", 30, holder=f"w@h {100 + attempt}") == "ok"
        assert store.jobs.attempt_ended(job, 0, "w@h 999", 1, oom) == "counted"     # not that process's attempt
        assert store.jobs.attempt_ended(job, 0, f"w@h {100 + attempt}", 1, oom) == ("redispatch" if attempt == 1
                                                                                      else "failed")
        assert store.jobs.attempt_ended(job, 0, f"w@h {100 + attempt}", 1, oom) == "counted"   # once
        assert store.jobs.leases(job) == {}                                          # given back at once
    record = store.jobs.get(job)
    assert record.status is JobStatus.FAILED and (record.chunks_failed, record.lines_failed) == (1, 2)
    assert store.jobs.failed_chunks(job) == {0: f"killed its worker 2 times (last: {oom})"}
    assert store.jobs.attempts(job) == {"0": {"attempts": 2, "lost": 2, "last_end": oom}}
    assert store.jobs.take_lease(job, 0, "w@h", 30) == "failed"


def test_an_attempt_that_ends_with_an_outcome_is_not_lost(store):
    job = store.jobs.create(JobKind.GENERATE, GENERATION, model_name="m", version=1)
    put(store, job, 0, 1)
    assert store.jobs.take_lease(job, 0, "w@h", 30, holder="w@h 7") == "ok"
    save(store, job, 0, words=1)
    assert store.jobs.attempt_ended(job, 0, "w@h ", 3, "signal 15 (SIGTERM)") == "counted"   # any process of w@h
    assert store.jobs.attempts(job) == {"0": {"attempts": 1, "lost": 0, "last_end": None}}
    # a training slice that ends well (the next one queued) closes its attempt too
    train = store.jobs.create(JobKind.TRAIN, MODEL, model_name="t")
    assert store.jobs.take_lease(train, "train", "w@h", 30, holder="w@h 7") == "ok"
    store.jobs.drop_lease(train, "train")
    assert store.jobs.attempt_ended(train, "train", "w@h 7", 0, "signal 9 (SIGKILL)") == "counted"
    assert store.jobs.get(train).status is JobStatus.RUNNING


def test_a_training_job_whose_slices_kill_their_workers_fails(store):
    job = store.jobs.create(JobKind.TRAIN, MODEL, model_name="t")
    for attempt in range(3):
        assert store.jobs.take_lease(job, "train", "w@h", 30, holder=f"w@h {attempt}") == "ok"
        outcome = store.jobs.attempt_ended(job, "train", f"w@h {attempt}", 2, "signal 9 (SIGKILL), likely out of memory")
        assert outcome == ("redispatch" if attempt < 2 else "failed")
    record = store.jobs.get(job)
    assert record.status is JobStatus.FAILED
    assert record.error == "killed its worker 3 times (last: signal 9 (SIGKILL), likely out of memory)"
    assert store.jobs.take_lease(job, "train", "w@h", 30) == "failed"
