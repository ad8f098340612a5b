"""Redis stopped and started again (append-only file on) in the middle of training and in the
middle of a generate job that a CLI waits on: workers and the waiting CLI reconnect, nothing is
lost, every prompt comes out once, the registry is intact. Training also runs here in slices
(train_slice_seconds), each a task of its own that queues the next."""
from __future__ import annotations

import json
import time

import pytest
from tests.faults.faultkit import Stack, read_jsonl, report, seeds_file, wait_for, write_config

from tests.devstack import LocalRedis

pytestmark = pytest.mark.integration
DOWN_SECONDS = 4


@pytest.fixture(scope="module")
def durable_redis():
    with LocalRedis(appendonly=True) as server:
        yield server


@pytest.fixture(scope="module")
def stack(durable_redis, tmp_path_factory):
    directory = tmp_path_factory.mktemp("restart")
    stack = Stack(durable_redis.url, write_config(directory / "settings.yaml", train_slice_seconds=10))
    worker = stack.worker(directory / "worker.log")
    stack.worker_process = worker
    try:
        yield stack
    finally:
        worker.stop()


def restart(server: LocalRedis) -> None:
    server.stop()
    time.sleep(DOWN_SECONDS)
    server.start()


def test_training_in_slices_survives_a_redis_restart(stack, durable_redis, corpus_slice):
    job = json.loads(stack.cli("train", corpus_slice, "--model", "durable", "--epochs", "12", "--detach", "--json").stdout)["job"]
    wait_for(lambda: stack.job(job).epoch >= 2, timeout=120, what="two epochs")
    restart(durable_redis)
    restarted = time.monotonic()
    waited = stack.cli("wait", job, "--json", "--timeout", "300", timeout=400)
    report(f"Redis down {DOWN_SECONDS} s mid-training (from its restart)", time.monotonic() - restarted)
    record = json.loads(waited.stdout)
    assert record["status"] == "succeeded" and record["model"] == "durable@1" and record["epochs_run"] == 12
    assert record["slices"] >= 1            # at least one slice ended and queued the next
    history = stack.status(job)["history"]
    assert [entry["epoch"] for entry in history] == list(range(1, 13))
    assert "next slice queued" in stack.worker_process.text()


def test_a_generate_job_survives_a_redis_restart(stack, durable_redis, tmp_path):
    models_before = json.loads(stack.cli("models", "--json").stdout)
    assert [row["name"] for row in models_before] == ["durable"]
    seeds = seeds_file(tmp_path / "seeds.txt", 4000)
    out = tmp_path / "out.jsonl"
    waiting = stack.popen("generate", seeds, "--model", "durable", "-o", out, "--words", "150", "--chunk-size", "100")
    line = waiting.stderr.readline()
    job = line.split()[2].rstrip(":")
    wait_for(lambda: stack.job(job).chunks_done >= 2, timeout=120, interval=0.02, what="two chunks")
    assert stack.job(job).chunks_done < 40, "the job finished before the fault could be injected"
    restart(durable_redis)
    restarted = time.monotonic()
    _, stderr = waiting.communicate(timeout=300)
    report(f"Redis down {DOWN_SECONDS} s mid-generate (from its restart)", time.monotonic() - restarted)
    assert waiting.returncode == 0, stderr
    assert "is unreachable" in stderr and "Redis is back" in stderr
    assert [line["id"] for line in read_jsonl(out)] == list(range(1, 4001))   # every prompt once, in order
    record = stack.job(job)
    assert record.status.value == "succeeded" and (record.prompts_done, record.chunks_failed) == (4000, 0)
    assert json.loads(stack.cli("models", "--json").stdout) == models_before   # the registry is intact
