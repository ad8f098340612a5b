"""The watchdog never stops, and read commands never write.

- A recovery pass that fails with something other than a lost connection (here: Redis answers
  WRONGTYPE for the index of active jobs) is logged; heartbeats go on, `lstmq workers` marks the
  watchdog stale, and once Redis is sane again recovery takes over a lapsed lease and the job
  completes: its output file holds every prompt.
- `lstmq status` (and the other read commands) change nothing in Redis, not even for a job whose
  producer died mid-submission; a watchdog pass is what fails that job."""
from __future__ import annotations

import json
import time

import pytest

from lstmq.shared.config import load_settings
from lstmq.shared.messages import Dispatcher, JobKind
from lstmq.shared.store import JobStatus, Store, keys
from lstmq.worker.runtime import Watchdog
from tests.devstack import LocalRedis
from tests.faults.faultkit import Stack, read_jsonl, report, wait_for, write_config

pytestmark = pytest.mark.integration
LEASE_SECONDS = 5   # a watchdog pass every 1.7 s


def test_a_failing_recovery_pass_neither_stops_heartbeats_nor_later_recovery(redis_server, random_artifact, tmp_path):
    stack = Stack(redis_server.url, write_config(tmp_path / "settings.yaml", lease_seconds=LEASE_SECONDS))
    stack.model = stack.register(random_artifact, "watched")
    worker = stack.worker(tmp_path / "worker.log")
    try:
        # a job whose only chunk was taken by a worker that vanished, its message never sent:
        # only recovery can bring it to an end
        job = stack.submit_by_hand({0: ["the door was open", "holmes said"]}, send=False)
        assert stack.store.jobs.take_lease(job, 0, "vanished-worker", lease_seconds=-1) == "ok"
        index = stack.store.redis.zrange(keys.ACTIVE, 0, -1, withscores=True)
        stack.store.redis.delete(keys.ACTIVE)
        stack.store.redis.set(keys.ACTIVE, "not a sorted set")      # every recovery pass now fails
        wait_for(lambda: worker.text().count("watchdog: recovery failed") >= 3, timeout=30,
                 what="three failed recovery passes", detail=worker.text)
        assert "WRONGTYPE" in worker.text()
        live = json.loads(stack.cli("workers", "--json").stdout)
        assert len(live) == 1 and time.time() - _seconds(live[0]["last_heartbeat"]) < 2 * LEASE_SECONDS
        wait_for(lambda: json.loads(stack.cli("workers", "--json").stdout)[0]["watchdog_stale"], timeout=30,
                 what="the watchdog to show as stale")
        assert "watchdog stale" in stack.cli("workers").stdout
        stalled = stack.job(job)                                       # nothing recovered it meanwhile
        assert stalled.status is JobStatus.RUNNING and stalled.chunks_done == 0 and stalled.lease_lapses == 0
        # Redis sane again: the next pass takes over the lapsed lease, the job completes
        stack.store.redis.delete(keys.ACTIVE)
        stack.store.redis.zadd(keys.ACTIVE, {member: score for member, score in index})
        repaired_at = time.monotonic()
        wait_for(lambda: f"job {job}: chunk 0: " in worker.text() and stack.job(job).status.finished, timeout=30,
                 what="the watchdog to dispatch the chunk again and the job to end", detail=worker.text)
        report("recovery failing for a while (from the repair)", time.monotonic() - repaired_at)
        out = tmp_path / "out.jsonl"
        stack.cli("collect", job, "-o", out, "--timeout", "60", timeout=90)
        assert [line["prompt"] for line in read_jsonl(out)] == ["the door was open", "holmes said"]
        record = stack.job(job)
        assert record.status is JobStatus.SUCCEEDED and record.lease_lapses == 1
        assert f"job {job}: chunk 0: " in worker.text() and "dispatched again" in worker.text()
        assert not json.loads(stack.cli("workers", "--json").stdout)[0]["watchdog_stale"]
        assert worker.process.poll() is None
    finally:
        worker.stop()


def _seconds(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def snapshot(client) -> dict[bytes, bytes]:
    """Every key with its serialized value (DUMP): equal snapshots, equal data."""
    return {key: client.dump(key) for key in sorted(client.keys("*"))}


def test_read_commands_write_nothing_and_a_watchdog_pass_fails_the_lapsed_submission(random_artifact, tmp_path):
    with LocalRedis() as server:   # no worker: nothing else writes
        stack = Stack(server.url, write_config(tmp_path / "settings.yaml", submission_timeout=5))
        stack.model = stack.register(random_artifact, "readonly")
        store = stack.store
        settings = load_settings(stack.config, {"broker_url": server.url}, environ={})
        job = store.jobs.create(JobKind.GENERATE, settings.generation_params().replace(seed=1), model_name="readonly",
                                version=1, model="readonly@1", submit_deadline=time.time() - 1)   # its producer died
        old = store.jobs.create(JobKind.GENERATE, settings.generation_params().replace(seed=1), model_name="readonly",
                                version=1, model="readonly@1")
        store.redis.zadd(keys.JOBS, {old: time.time() - 10 * settings.result_ttl})   # past result_ttl in the index
        store.redis.zadd(keys.ACTIVE, {old: time.time() - 10 * settings.result_ttl})
        before = snapshot(store.redis)
        for command in (["status"], ["status", "--json"], ["status", job], ["status", job, "--json"], ["workers"],
                        ["workers", "--json"], ["queues"], ["models"], ["models", "show", "readonly"]):
            stack.cli(*command)
        assert snapshot(store.redis) == before
        assert store.jobs.get(job).status is JobStatus.QUEUED
        # a watchdog pass (what every worker runs every lease_seconds / 3) fails it, and prunes the index
        watchdog = Watchdog(store, Dispatcher(settings), settings, "test-watchdog", info=dict)
        assert watchdog.run_once()
        record = store.jobs.get(job)
        assert record.status is JobStatus.FAILED and record.error.startswith("submission interrupted")
        assert store.redis.zscore(keys.JOBS, old) is None and store.redis.zscore(keys.ACTIVE, old) is None
        assert store.workers.live()[0]["watchdog_last_pass"] is None   # sent before the pass that went well
        Store.from_url(server.url, ttl=3600).redis.close()
