"""Work whose messages are lost (Celery's queue purged, a write Redis refused, the last second
of an append-only file) is not left waiting for ever: a job idle for two lease periods, with
work left, no lease and an empty queue, has that work dispatched again."""
from __future__ import annotations

import json
import time

import pytest
from tests.faults.faultkit import Stack, read_jsonl, report, seeds_file, write_config

from lstmq.shared.store import keys

pytestmark = pytest.mark.integration


def test_a_purged_queue_does_not_leave_the_job_running(redis_server, random_artifact, tmp_path):
    stack = Stack(redis_server.url, write_config(tmp_path / "settings.yaml", lease_seconds=5))
    model = stack.register(random_artifact, "orphans")   # no worker yet: the queue keeps every message
    seeds = seeds_file(tmp_path / "seeds.txt", 300)
    job = json.loads(stack.cli("generate", seeds, "--model", model, "--detach", "--json", "--words", "5",
                               "--chunk-size", "100").stdout)["job"]
    queue = keys.celery_queue("generate")
    assert stack.store.redis.llen(queue) == 3
    stack.store.redis.delete(queue)          # celery -A lstmq.worker.app purge, in effect
    worker = stack.worker(tmp_path / "second.log")
    started = time.monotonic()
    try:
        out = tmp_path / "out.jsonl"
        result = stack.cli("collect", job, "-o", out, "--timeout", "90", timeout=120)
        report("queue purged (lease_seconds 5; from a worker being ready)", time.monotonic() - started)
        assert [line["id"] for line in read_jsonl(out)] == list(range(1, 301))
        record = stack.job(job)
        assert record.status.value == "succeeded" and record.lease_lapses == 3
        assert "dispatched again" in worker.text() + result.stderr
    finally:
        worker.stop()
