"""The Redis store against a real redis-server."""
import json

import pytest

from lstmq.shared.errors import InputError, JobNotFound, ModelNotFound
from lstmq.shared.store import JobKind, JobStatus, Keys, Store, parse_model_spec


@pytest.fixture
def store(redis_server):
    store = Store.from_url(redis_server.url, ttl=3600)
    store.redis.flushdb()
    yield store
    store.redis.flushdb()


def test_blobs_are_content_addressed(store):
    digest = store.put_blob(b"hello", ttl=60)
    assert digest == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    assert store.get_blob(digest) == b"hello"
    assert 0 < store.redis.ttl(Keys.blob(digest)) <= 60
    with pytest.raises(LookupError):
        store.get_blob("0" * 64)


def test_registry_versions_aliases_and_idempotent_registration(store):
    first = store.create_job(JobKind.TRAIN, {"epochs": 1}, model_name="m")
    second = store.create_job(JobKind.TRAIN, {"epochs": 1}, model_name="m")
    assert store.register_model(first, "m", b"artifact-1", {"metrics": {}}) == 1
    assert store.register_model(first, "m", b"artifact-1", {"metrics": {}}) == 1   # redelivered task
    assert store.register_model(second, "m", b"artifact-2", {"metrics": {}}) == 2
    assert store.resolve_model("m") == ("m", 2)
    assert store.resolve_model("m@1") == ("m", 1)
    assert store.resolve_model("m@current") == ("m", 2)
    assert store.model_artifact("m", 1) == b"artifact-1"
    assert store.job(first)["model"] == "m@1"
    assert list(store.model_versions("m")) == [1, 2]
    assert store.model_names() == ["m"]
    with pytest.raises(ModelNotFound, match="has no version 3"):
        store.resolve_model("m@3")
    with pytest.raises(ModelNotFound, match="no model named 'other'"):
        store.resolve_model("other")
    with pytest.raises(InputError):
        parse_model_spec("bad name")
    with pytest.raises(InputError):
        parse_model_spec("m@")


def test_job_record_and_status(store):
    job = store.create_job(JobKind.GENERATE, {"words": 3}, model_name="m", version=1)
    record = store.job(job)
    assert record["status"] == JobStatus.QUEUED and record["params"] == {"words": 3} and record["version"] == 1
    store.start_job(job, "w1")
    assert store.job(job)["status"] == "running" and store.job(job)["worker"] == "w1"
    assert job in store.job_ids()
    with pytest.raises(JobNotFound):
        store.job("nope")


def test_chunk_results_are_written_once_and_finish_the_job(store):
    job = store.create_job(JobKind.GENERATE, {}, model_name="m", version=1)
    for chunk in range(3):
        store.put_chunk(job, chunk, [{"line": chunk + 1}])
    assert store.save_chunk_result(job, 0, [{"samples": ["a b"]}], words=2)
    assert not store.save_chunk_result(job, 0, [{"samples": ["a b"]}], words=2)   # duplicate delivery
    assert store.fail_chunk(job, 1, "boom", prompts=1)
    assert not store.save_chunk_result(job, 1, [{"samples": ["late"]}], words=2)  # an outcome is final
    assert store.finish_submission(job, chunks=3, prompts=3, input_errors=0, lines=3) == "queued"   # 2 of 3
    assert store.save_chunk_result(job, 2, [{"samples": ["c"]}], words=1)
    record = store.job(job)
    assert record["status"] == "failed"   # one chunk failed
    assert (record["chunks_done"], record["chunks_failed"], record["prompts_done"], record["words_done"]) == (2, 1, 2, 3)
    assert store.chunk_result(job, 1) is None and store.failed_chunks(job) == {1: "boom"}


def test_job_finishes_when_submission_ends_after_the_last_chunk(store):
    job = store.create_job(JobKind.GENERATE, {}, model_name="m", version=1)
    store.put_chunk(job, 0, [{"line": 1}])
    store.save_chunk_result(job, 0, [{"samples": ["x"]}], words=1)
    assert store.job(job)["status"] != "succeeded"    # submission still open
    assert store.finish_submission(job, chunks=1, prompts=1, input_errors=0, lines=1) == "succeeded"


def test_input_errors_checkpoints_and_locks(store):
    job = store.create_job(JobKind.TRAIN, {})
    store.add_input_errors(job, [{"id": 1, "line": 1, "error": "x"}])
    assert store.input_errors(job) == [{"id": 1, "line": 1, "error": "x"}]
    store.save_checkpoint(job, 2, b"weights", [{"epoch": 1}, {"epoch": 2}])
    assert store.load_checkpoint(job) == (2, b"weights", [{"epoch": 1}, {"epoch": 2}])
    assert store.acquire_lock(job, "a", 60) and not store.acquire_lock(job, "b", 60)
    assert not store.refresh_lock(job, "b", 60) and store.refresh_lock(job, "a", 60)
    store.release_lock(job, "b")
    assert not store.acquire_lock(job, "b", 60)
    store.release_lock(job, "a")
    assert store.acquire_lock(job, "b", 60)


def test_every_key_is_under_the_prefix(store):
    job = store.create_job(JobKind.GENERATE, {})
    store.put_chunk(job, 0, [])
    store.save_chunk_result(job, 0, [], 0)
    assert all(key.startswith(b"lstmq:") for key in store.redis.keys("*"))
    assert json.loads(store.redis.get(Keys.chunk_result(job, 0))) == []
