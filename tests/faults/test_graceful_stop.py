"""SIGTERM to lstmq-worker: the current chunk finishes, or, past shutdown_timeout, the worker is
killed and its chunk given back at once; lstmq-worker exits 0 and nothing is lost."""
from __future__ import annotations

import json
import os
import signal
import time

import pytest
from tests.faults.faultkit import Stack, read_jsonl, report, seeds_file, wait_for, write_config

pytestmark = pytest.mark.integration


def test_a_stop_past_the_bound_gives_the_chunk_back(redis_server, random_artifact, tmp_path):
    # one chunk far longer than shutdown_timeout on any machine: 3,000 prompts x 1,000 words in
    # calls of 64 rows (47,000 small steps; 1,500 prompts in calls of 1,024 rows took 3.2 s on a fast CPU)
    stack = Stack(redis_server.url, write_config(tmp_path / "settings.yaml", shutdown_timeout=3, decode_batch_size=64))
    worker = stack.worker(tmp_path / "first.log")
    try:
        model = stack.register(random_artifact, "stop")
        seeds = seeds_file(tmp_path / "seeds.txt", 3000)
        job = json.loads(stack.cli("generate", seeds, "--model", model, "--detach", "--json", "--words", "1000",
                                   "--chunk-size", "3000").stdout)["job"]
        wait_for(lambda: stack.store.jobs.leases(job), timeout=60, interval=0.02, what="the chunk in work")
        stopped = time.monotonic()
        os.kill(worker.process.pid, signal.SIGTERM)
        assert worker.process.wait(60) == 0
        assert time.monotonic() - stopped < 3 + 15
        report("SIGTERM, chunk longer than shutdown_timeout 3 s (to lstmq-worker's exit 0)", time.monotonic() - stopped)
        log = worker.text()
        assert "still busy 3s after the stop; killing it and giving its work back" in log
        assert f"job {job}: chunk 0: " in log and "dispatched again" in log
        assert stack.job(job).chunks_done == 0
    finally:
        worker.stop()
    replacement = stack.worker(tmp_path / "second.log")
    try:
        out = tmp_path / "out.jsonl"
        stack.cli("collect", job, "-o", out, "--timeout", "240", timeout=300)
        assert [line["id"] for line in read_jsonl(out)] == list(range(1, 3001))
        # given back by lstmq-worker at once (no lease lapsed), one attempt lost
        attempts = stack.store.jobs.attempts(job)["0"]
        assert stack.job(job).lease_lapses == 0 and (attempts["attempts"], attempts["lost"]) == (2, 1)
        assert attempts["last_end"].endswith("was still busy 3s after the stop")
    finally:
        replacement.stop()


def test_a_stop_within_the_bound_finishes_the_chunk(redis_server, random_artifact, tmp_path):
    stack = Stack(redis_server.url, write_config(tmp_path / "settings.yaml"))
    worker = stack.worker(tmp_path / "worker.log")
    try:
        model = stack.register(random_artifact, "finish")
        seeds = seeds_file(tmp_path / "seeds.txt", 400)
        job = json.loads(stack.cli("generate", seeds, "--model", model, "--detach", "--json", "--words", "600",
                                   "--chunk-size", "400").stdout)["job"]
        wait_for(lambda: stack.store.jobs.leases(job), timeout=60, interval=0.02, what="the chunk in work")
        os.kill(worker.process.pid, signal.SIGTERM)
        assert worker.process.wait(120) == 0
        record = stack.job(job)
        assert record.status.value == "succeeded" and record.prompts_done == 400 and record.lease_lapses == 0
        assert "giving its work back" not in worker.text()
    finally:
        worker.stop()
