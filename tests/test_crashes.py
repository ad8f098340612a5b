"""Killed workers: the pool process dies mid-job (OOM killer, segfault) and the work comes back;
every prompt still appears exactly once, and training resumes from its last checkpoint."""
from __future__ import annotations

import json
import os
import signal

import pytest

from tests.conftest import WorkerProcess, lstmq, pool_processes, read_jsonl, wait_for

pytestmark = pytest.mark.integration



@pytest.fixture(scope="module")
def setup(redis_server, small_config, corpus_slice, tmp_path_factory):
    worker = WorkerProcess(redis_server.url, tmp_path_factory.mktemp("crash") / "worker.log", "--config", str(small_config))
    worker.wait_ready()
    cli = lambda *args, **kwargs: lstmq(*args, "--broker", redis_server.url, "--config", small_config, **kwargs)
    try:
        yield worker, cli
    finally:
        worker.stop()


def status(cli, job):
    return json.loads(cli("status", job, "--json").stdout)


def chunks_done_soon(redis_url: str, job: str, timeout: float = 120) -> int:
    """Wait (polling Redis directly, every 20 ms) until a chunk of the job is done; return how many
    are. A fault injected then lands mid-job, which the caller checks against the job's chunks."""
    from lstmq.shared.store import Store

    store = Store.from_url(redis_url, ttl=3600)
    return wait_for(lambda: store.jobs.get(job).chunks_done, timeout=timeout, interval=0.02)


def test_training_resumes_after_its_process_is_killed(setup, corpus_slice):
    worker, cli = setup
    job = json.loads(cli("train", corpus_slice, "--model", "crash", "--epochs", "5", "--detach", "--json").stdout)["job"]
    wait_for(lambda: status(cli, job).get("epoch", 0) >= 2)
    victims = pool_processes(worker)
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    record = wait_for(lambda: (lambda r: r if r["status"] in ("succeeded", "failed") else None)(status(cli, job)), timeout=240)
    assert record["status"] == "succeeded", record
    assert record["epochs_run"] == 5 and record["model"] == "crash@1"
    assert "resuming from the checkpoint after epoch" in worker.text()
    assert pool_processes(worker) and not set(pool_processes(worker)) & set(victims)


def test_generate_chunks_come_back_after_the_process_is_killed(setup, tmp_path):
    worker, cli = setup
    seeds = tmp_path / "seeds.txt"
    seeds.write_text("\n".join(f"holmes said that the {i} men were" for i in range(1200)) + "\n")
    job = json.loads(cli("generate", seeds, "--model", "crash@1", "--detach", "--json", "--words", "150",
                         "--chunk-size", "150").stdout)["job"]
    assert chunks_done_soon(worker.broker, job) < 8, "the job finished before the fault could be injected"
    for pid in pool_processes(worker):
        os.kill(pid, signal.SIGKILL)
    out = tmp_path / "out.jsonl"
    cli("collect", job, "-o", out, timeout=300)
    lines = read_jsonl(out)
    assert [line["id"] for line in lines] == list(range(1, 1201))   # each prompt once, in order
    record = status(cli, job)
    assert (record["chunks_done"], record["prompts_done"], record.get("prompts_failed", 0)) == (8, 1200, 0)
    # the same job again, undisturbed, gives the same text
    again = tmp_path / "again.jsonl"
    cli("generate", seeds, "--model", "crash@1", "-o", again, "--words", "150", "--chunk-size", "400", timeout=300)
    assert [line["continuation"] for line in read_jsonl(again)] == [line["continuation"] for line in lines]

