"""Nothing outlives its launcher, and nothing loops for ever. Each test kills what a real fault
kills and checks the final state and the files:
- `kill -9` of lstmq-worker alone (a supervisor's kill, the OOM killer, a crash): every process it
  started is gone within seconds; the work it held comes back through its lease, on another worker.
- (SIGKILL of a Celery main process alone: tests/test_redelivery.py.)
- A chunk whose pool process is killed each time it runs it (what a chunk too big for the
  machine's memory does with the OOM killer): past redispatch_limit lost attempts it is recorded
  failed with how its process died, its prompts go to the errors file, the job ends."""
from __future__ import annotations

import json
import os
import signal
import time

import pytest

from lstmq.shared.store import JobStatus, keys
from tests.conftest import alive, descendants
from tests.faults.faultkit import Stack, read_jsonl, report, seeds_file, wait_for, write_config

pytestmark = pytest.mark.integration
EXIT_FAILED = 1


def test_a_launcher_killed_alone_takes_every_process_it_started(redis_server, random_artifact, tmp_path):
    stack = Stack(redis_server.url, write_config(tmp_path / "settings.yaml", lease_seconds=6))
    model = stack.register(random_artifact, "launcher")
    first = stack.worker(tmp_path / "first.log", "--name", "first")
    second = None
    try:
        second = stack.worker(tmp_path / "second.log", "--name", "second")
        job = json.loads(stack.cli("generate", seeds_file(tmp_path / "seeds.txt", 1500), "--model", model, "--detach",
                                   "--json", "--words", "80", "--chunk-size", "250").stdout)["job"]
        node = f"first-cpu@{os.uname().nodename}"
        wait_for(lambda: stack.store.workers.holding(node), timeout=60, interval=0.01, what="the first worker at work")
        family = descendants(first.process.pid)
        assert len(family) >= 2, family               # its Celery worker and that worker's pool process
        os.kill(first.process.pid, signal.SIGKILL)    # lstmq-worker alone
        killed = time.monotonic()
        first.process.wait(10)
        wait_for(lambda: not any(alive(pid) for pid in family), timeout=15, interval=0.05,
                 what=f"the launcher's processes {family} to die with it")
        report("kill -9 of lstmq-worker alone (until every process it started was gone)", time.monotonic() - killed)
        out = tmp_path / "out.jsonl"
        stack.cli("collect", job, "-o", out, "--timeout", "120", timeout=180)
        report("kill -9 of lstmq-worker alone (to the job's end)", time.monotonic() - killed)
        assert [line["id"] for line in read_jsonl(out)] == list(range(1, 1501))   # every prompt once, in order
        record = stack.job(job)
        assert record.status is JobStatus.SUCCEEDED and record.lease_lapses >= 1   # nobody saw it die: the lease
    finally:
        first.stop()
        if second is not None:
            second.stop()


def test_a_chunk_that_kills_its_worker_every_time_fails_and_the_job_ends(redis_server, random_artifact, tmp_path):
    stack = Stack(redis_server.url, write_config(tmp_path / "settings.yaml", redispatch_limit=2))
    model = stack.register(random_artifact, "oom")
    worker = stack.worker(tmp_path / "worker.log")
    try:
        out = tmp_path / "out.jsonl"
        waiting = stack.popen("generate", seeds_file(tmp_path / "seeds.txt", 90), "--model", model, "-o", out,
                              "--words", "1000", "--chunk-size", "30")   # 30,000 words a chunk: time to kill it mid-work
        job = waiting.stderr.readline().split()[2].rstrip(":")
        kills = []
        deadline = time.monotonic() + 240
        while len(kills) < 3 and time.monotonic() < deadline:   # chunk 1 "needs more memory than there is"
            holder = stack.store.redis.hget(keys.job_key(job, "holders"), "1")
            if holder and int(holder.split()[1]) not in kills:
                pid = int(holder.split()[1])
                try:
                    os.kill(pid, signal.SIGKILL)
                    kills.append(pid)
                except ProcessLookupError:
                    pass
            time.sleep(0.005)
        assert len(kills) == 3, kills
        killed = time.monotonic()
        _, stderr = waiting.communicate(timeout=180)
        report("a chunk whose process is killed every time (from the third kill to the end)", time.monotonic() - killed)
        assert waiting.returncode == EXIT_FAILED, stderr
        reason = "killed its worker 3 times (last: signal 9 (SIGKILL), likely out of memory)"
        record = stack.job(job)
        assert record.status is JobStatus.FAILED and (record.chunks_done, record.chunks_failed) == (2, 1)
        assert stack.store.jobs.failed_chunks(job) == {1: reason}
        assert [line["id"] for line in read_jsonl(out)] == [*range(1, 31), *range(61, 91)]
        errors = read_jsonl(tmp_path / "out.errors.jsonl")
        assert [error["id"] for error in errors] == list(range(31, 61)) and all(reason in e["error"] for e in errors)
        assert f"job {job} chunk 1 killed its worker process (signal 9 (SIGKILL), likely out of memory)" in worker.text()
        status = stack.status(job)
        assert status["attempts"]["1"] == {"attempts": 3, "lost": 3, "last_end": "signal 9 (SIGKILL), likely out of memory"}
        assert f"chunk 1: failed: {reason} [3 attempts]" in stack.cli("status", job).stdout
        assert worker.process.poll() is None           # the worker goes on
    finally:
        worker.stop()
