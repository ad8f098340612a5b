"""Every job reaches a final state, and every prompt ends in OUT.jsonl once or in
OUT.errors.jsonl with its reason: chunk failures (missing input, Redis out of memory), cancel
and rm, an interrupted submission, waiting with no worker and --timeout. One real worker and a
model (random weights) for the module; each test checks the final state, the output and the errors."""
from __future__ import annotations

import json
import signal
import time

import pytest
from lstmq.shared.config import load_settings
from lstmq.shared.messages import JobKind
from lstmq.shared.store import JobStatus, keys
from tests.devstack import LocalRedis
from tests.faults.faultkit import Stack, read_jsonl, report, seeds_file, wait_for, write_config

pytestmark = pytest.mark.integration

EXIT_FAILED, EXIT_USAGE, EXIT_PARTIAL, EXIT_TIMEOUT, EXIT_CANCELLED = 1, 2, 3, 4, 5


@pytest.fixture(scope="module")
def stack(redis_server, tmp_path_factory, random_artifact):
    directory = tmp_path_factory.mktemp("job-ends")
    stack = Stack(redis_server.url, write_config(directory / "settings.yaml", submission_timeout=5, lease_seconds=15))
    worker = stack.worker(directory / "worker.log")
    stack.worker_process = worker
    try:
        stack.model = stack.register(random_artifact, "ends")
        yield stack
    finally:
        worker.stop()


def test_a_chunk_whose_input_vanished_fails_with_its_reason(stack, tmp_path):
    started = time.monotonic()
    job = stack.submit_by_hand({0: ["the door was open"], 1: None, 2: ["holmes said"]})
    out = tmp_path / "out.jsonl"
    result = stack.cli("collect", job, "-o", out, "--timeout", "120", check=False)
    report("chunk input vanished (from submission)", time.monotonic() - started)
    assert result.returncode == EXIT_FAILED, result.stderr
    assert "chunk 1: its input is gone" in result.stderr
    assert [line["prompt"] for line in read_jsonl(out)] == ["the door was open", "holmes said"]
    errors = read_jsonl(tmp_path / "out.errors.jsonl")
    assert errors == [{"id": None, "line": None, "chunk": 1, "lines": 2,
                       "error": errors[0]["error"]}] and "its input is gone" in errors[0]["error"]
    record = stack.status(job)
    assert record["status"] == "failed" and record["chunks_failed"] == 1 and "1" in record["failed_chunks"]
    assert "chunk 1: failed: " in stack.cli("status", job).stdout


def test_redis_out_of_memory_fails_the_chunk_and_the_cli_says_so(stack, tmp_path):
    seeds = seeds_file(tmp_path / "seeds.txt", 200)
    # sampled words: results are stored compressed, and greedy loops would compress to almost nothing
    job = json.loads(stack.cli("generate", seeds, "--model", stack.model, "--detach", "--json", "--words", "1000",
                               "--temperature", "1", "--seed", "7", "--chunk-size", "200").stdout)["job"]
    used = stack.store.redis.info("memory")["used_memory"]
    stack.store.redis.config_set("maxmemory", used + 256 * 1024)   # no room for 200 x 1000 words of results
    started = time.monotonic()
    try:
        result = stack.cli("collect", job, "-o", tmp_path / "out.jsonl", "--timeout", "120", check=False)
    finally:
        stack.store.redis.config_set("maxmemory", 0)
    report("Redis out of memory (from maxmemory set)", time.monotonic() - started)
    assert result.returncode == EXIT_FAILED, result.stdout + result.stderr
    assert "Redis is out of memory (maxmemory" in result.stderr
    errors = read_jsonl(tmp_path / "out.errors.jsonl")
    assert [error["id"] for error in errors] == list(range(1, 201))
    assert all("Redis is out of memory" in error["error"] for error in errors)
    assert read_jsonl(tmp_path / "out.jsonl") == []
    assert stack.job(job).status is JobStatus.FAILED


def test_cancel_ends_the_job_and_collect_returns_what_was_produced(stack, tmp_path):
    seeds = seeds_file(tmp_path / "seeds.txt", 6000)
    job = json.loads(stack.cli("generate", seeds, "--model", stack.model, "--detach", "--json", "--words", "150",
                               "--chunk-size", "100").stdout)["job"]
    wait_for(lambda: stack.job(job).chunks_done >= 1, timeout=60, interval=0.02, what="a first chunk")
    cancelled = json.loads(stack.cli("cancel", job, "--json").stdout)
    assert cancelled == {"job": job, "status": "cancelled"}
    started = time.monotonic()
    out = tmp_path / "out.jsonl"
    result = stack.cli("collect", job, "-o", out, "--json", check=False)
    assert result.returncode == EXIT_CANCELLED and time.monotonic() - started < 20
    report("lstmq cancel (from the cancel to collect's exit)", time.monotonic() - started)
    summary = json.loads(result.stdout)
    assert summary["exit_status"] == EXIT_CANCELLED and summary["error"].startswith("cancelled")
    produced, errors = read_jsonl(out), read_jsonl(tmp_path / "out.errors.jsonl")
    assert produced and errors and len(produced) + len(errors) == 6000
    assert sorted([line["id"] for line in produced] + [error["id"] for error in errors]) == list(range(1, 6001))
    assert all(error["error"].startswith("cancelled") for error in errors)
    time.sleep(2)   # a chunk that was running finishes; nothing else runs
    record = stack.job(job)
    assert record.status is JobStatus.CANCELLED and record.chunks_done <= len(produced) // 100 + 1
    assert stack.cli("cancel", job).stdout.strip() == f"job {job}: cancelled"   # idempotent
    removed = json.loads(stack.cli("rm", job, "--json").stdout)
    assert removed[0]["job"] == job and removed[0]["keys"] >= 3
    assert [key for key in stack.store.redis.keys("*") if job.encode() in key] == []
    gone = stack.cli("status", job, check=False)
    assert gone.returncode == EXIT_FAILED and "no job" in gone.stderr


def test_cancel_a_training_job(stack, corpus_slice):
    job = json.loads(stack.cli("train", corpus_slice, "--model", "cancelled", "--epochs", "50", "--detach", "--json").stdout)["job"]
    wait_for(lambda: stack.job(job).status is JobStatus.RUNNING, timeout=60, what="training to start")
    cancelled_at = time.monotonic()
    assert json.loads(stack.cli("cancel", job, "--json").stdout)["status"] == "cancelled"
    waited = stack.cli("wait", job, "--timeout", "60", check=False)
    assert waited.returncode == EXIT_CANCELLED and f"job {job}: cancelled" in waited.stdout
    wait_for(lambda: f"train job {job} was cancelled" in stack.worker_process.text(), timeout=60,
             what="the worker to stop training")
    report("training cancelled (until the worker stopped)", time.monotonic() - cancelled_at)
    assert "cancelled" not in stack.store.registry.names()
    assert stack.store.training.load_checkpoint(job) is None
    assert stack.cli("rm", job).stdout.startswith(f"job {job}: removed")


def test_an_interrupted_submission_fails_the_job_within_the_timeout(stack, tmp_path):
    seeds = seeds_file(tmp_path / "big.txt", 200_000)
    producer = stack.popen("generate", seeds, "--model", stack.model, "-o", tmp_path / "out.jsonl", "--words", "2",
                           "--chunk-size", "500")
    line = producer.stderr.readline()        # printed before the first chunk is sent
    assert line.startswith("lstmq: job "), line
    job = line.split()[2].rstrip(":")
    wait_for(lambda: stack.job(job).chunks_sent >= 2, timeout=60, interval=0.01, what="two chunks sent")
    producer.send_signal(signal.SIGKILL)
    producer.wait(10)
    killed = time.monotonic()
    record = wait_for(lambda: (lambda r: r if r["status"] == "failed" else None)(stack.status(job)), timeout=60,
                      what="the job to fail")
    assert time.monotonic() - killed < 5 + 15
    report("producer SIGKILLed mid-submission (submission_timeout 5 s)", time.monotonic() - killed)
    assert record["error"].startswith("submission interrupted after ") and not record.get("submitted")
    lines_read = int(record["error"].split()[3])
    assert 1000 <= lines_read < 200_000
    out = tmp_path / "after.jsonl"
    result = stack.cli("collect", job, "-o", out, check=False)
    assert result.returncode == EXIT_FAILED and "submission interrupted" in result.stderr
    produced, errors = read_jsonl(out), read_jsonl(tmp_path / "after.errors.jsonl")
    sent = stack.job(job).chunks_sent * 500
    assert len(produced) + len(errors) == sent     # every prompt that was sent is in one of the two files
    assert all(error["error"].startswith("cancelled: submission interrupted") for error in errors)


def test_a_file_with_no_usable_line_is_an_error(stack, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n   \n")
    result = stack.cli("generate", empty, "--model", stack.model, "-o", tmp_path / "out.jsonl", check=False)
    assert result.returncode == EXIT_USAGE and "no prompt in the file" in result.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": 3}\nnot json\n')
    result = stack.cli("generate", bad, "--model", stack.model, "-o", tmp_path / "bad-out.jsonl", check=False)
    assert result.returncode == EXIT_USAGE and "no usable line (2 bad line(s))" in result.stderr
    assert len(read_jsonl(tmp_path / "bad-out.errors.jsonl")) == 2
    job = result.stderr.split("lstmq: job ")[1].split(":")[0]
    assert stack.status(job)["status"] == "failed"


def test_waiting_with_no_worker_says_so_and_times_out(stack, tmp_path):
    with LocalRedis() as lonely:     # a broker no worker consumes
        other = Stack(lonely.url, stack.config)
        name, version = stack.store.registry.resolve(stack.model)
        meta = stack.store.registry.meta(name, version)
        owner = other.store.jobs.create(JobKind.TRAIN, load_settings(environ={}).model_params(), model_name=name)
        other.store.registry.register(owner, name, stack.store.registry.artifact(name, version), meta)
        seeds = seeds_file(tmp_path / "seeds.txt", 10)
        started = time.monotonic()
        result = other.cli("generate", seeds, "--model", name, "-o", tmp_path / "out.jsonl", "--timeout", "14",
                           check=False)
        assert result.returncode == EXIT_TIMEOUT and 14 <= time.monotonic() - started < 60
        assert "no live lstmq-worker consumes the 'generate' queue" in result.stderr
        assert "did not end within 14s" in result.stderr
        job = result.stderr.split("lstmq: job ")[1].split(":")[0]
        waited = other.cli("wait", job, "--timeout", "1", check=False)
        assert waited.returncode == EXIT_TIMEOUT
        assert other.status(job)["status"] == "queued"


def test_a_worker_keeps_a_job_data_as_long_as_its_submitter_said(stack, tmp_path):
    """result_ttl is fixed in the job at submission: the worker (its own result_ttl the default,
    a day) keeps what it writes for the job as long as the submitter's setting (2 hours) says."""
    submitter = Stack(stack.url, write_config(tmp_path / "two-hours.yaml", result_ttl=7200))
    seeds = seeds_file(tmp_path / "seeds.txt", 30)
    out = tmp_path / "out.jsonl"
    waited = json.loads(submitter.cli("generate", seeds, "--model", stack.model, "-o", out, "--words", "3",
                                      "--chunk-size", "10", "--json").stdout)
    assert waited["status"] == "succeeded" and [line["id"] for line in read_jsonl(out)] == list(range(1, 31))
    job = waited["job"]
    assert stack.status(job)["result_ttl"] == 7200
    assert load_settings(stack.config, environ={}).result_ttl != 7200    # the worker's own setting differs
    written_by_the_worker = [keys.job_key(job, "result", chunk) for chunk in range(3)] + [keys.job_key(job, "done")]
    assert all(3600 < stack.store.redis.ttl(key) <= 7200 for key in written_by_the_worker), \
        [stack.store.redis.ttl(key) for key in written_by_the_worker]
