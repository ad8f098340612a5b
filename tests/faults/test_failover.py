"""Fast failover: a whole worker process group SIGKILLed mid-job (an OOM kill, a lost machine).
Its chunk's lease lapses; the other worker's watchdog (or the waiting CLI) dispatches it again;
the job completes well within the bound of the kill, with the same output as an undisturbed run.
A short lease (lease_seconds 6) keeps the test short; the bound scales with it (the default, 30 s,
fails over in about half a minute), and the visibility timeout (3600 s) plays no part."""
from __future__ import annotations

import json
import os
import time

import pytest
from tests.faults.faultkit import Stack, read_jsonl, seeds_file, wait_for, write_config

pytestmark = pytest.mark.integration


LEASE_SECONDS = 6


def test_a_killed_worker_group_is_replaced_within_the_bound(redis_server, random_artifact, tmp_path):
    stack = Stack(redis_server.url, write_config(tmp_path / "settings.yaml", lease_seconds=LEASE_SECONDS))
    first = stack.worker(tmp_path / "first.log", "--name", "first")
    second = None
    try:
        second = stack.worker(tmp_path / "second.log", "--name", "second")
        model = stack.register(random_artifact, "failover")
        seeds = seeds_file(tmp_path / "seeds.txt", 3000)
        job = json.loads(stack.cli("generate", seeds, "--model", model, "--detach", "--json", "--words", "120",
                                   "--chunk-size", "250").stdout)["job"]
        first_node = f"first-cpu@{os.uname().nodename}"
        leased = wait_for(lambda: stack.store.workers.holding(first_node), timeout=60, interval=0.01,
                          what="the first worker at the start of a chunk")
        assert not stack.store.jobs.chunk_finished(job, int(leased[1])) and stack.job(job).chunks_done < 12
        killed_at = time.monotonic()
        first.kill()   # lstmq-worker, its Celery worker and pool process, all at once
        assert first.process.returncode is not None
        out = tmp_path / "out.jsonl"
        collected = stack.cli("collect", job, "-o", out, "--json", timeout=240)
        recovered_in = time.monotonic() - killed_at
        record = stack.job(job)
        assert record.status.value == "succeeded" and record.prompts_done == 3000 and record.chunks_failed == 0
        assert recovered_in < 4 * LEASE_SECONDS + 60, f"the job took {recovered_in:.0f}s after the kill"
        lines = read_jsonl(out)
        assert [line["id"] for line in lines] == list(range(1, 3001))   # every prompt once, in order
        assert json.loads(collected.stdout)["lines"] == 3000
        # the killed worker's chunk went out again through its lapsed lease (not the visibility timeout)
        assert record.lease_lapses >= 1, (leased, second.text()[-3000:])
        assert "dispatched again" in second.text() or "dispatched again" in collected.stderr
        # the same job undisturbed gives the same text
        again = tmp_path / "again.jsonl"
        stack.cli("generate", seeds, "--model", model, "-o", again, "--words", "120", "--chunk-size", "350",
                  "--seed", str(lines[0]["seed"]), timeout=240)
        assert [line["continuation"] for line in read_jsonl(again)] == [line["continuation"] for line in lines]
        print(f"\nfailover: job complete {recovered_in:.1f}s after SIGKILL of the worker group")
    finally:
        first.stop()
        if second is not None:
            second.stop()
