"""A Celery worker killed outright (SIGKILL of its main process alone, as the OOM killer does; the
launcher spared): nothing acknowledges or rejects its messages, and its pool process goes with it
within seconds (worker.lifetime). lstmq-worker sees its worker die,
gives back at once the chunk it held (recorded as a lost attempt, with the signal), and starts the
worker again; the job completes with every prompt once. The test asserts that this, not a lapsed
lease (lease_seconds 600 here) nor the broker's redelivery (after the visibility timeout, found by
kombu's restore scan about every 100 s), brought the work back. Its own module: its own
redis-server, and no other worker to pick up the work."""
from __future__ import annotations

import json
import os
import signal
import time

import pytest

from lstmq.shared.store import Store
from tests.conftest import WorkerProcess, alive, children, lstmq, read_jsonl, wait_for
from tests.faults.faultkit import report
from tests.devstack import register_model
from tests.test_crashes import status

pytestmark = pytest.mark.integration


def test_a_worker_killed_outright_is_restarted_and_its_chunk_given_back_at_once(redis_server, small_config, random_artifact,
                                                                           tmp_path):
    config = tmp_path / "fast-redelivery.yaml"
    config.write_text(small_config.read_text() + "lease_seconds: 600\n")
    worker = WorkerProcess(redis_server.url, tmp_path / "worker.log", "--config", str(config))
    cli = lambda *args, **kwargs: lstmq(*args, "--broker", redis_server.url, "--config", config, **kwargs)
    try:
        worker.wait_ready()
        register_model(Store.from_url(redis_server.url, ttl=3600), "killed", random_artifact)
        seeds = tmp_path / "seeds.txt"
        seeds.write_text("\n".join(f"the {i} men were" for i in range(2000)) + "\n")
        job = json.loads(cli("generate", seeds, "--model", "killed", "--detach", "--json", "--words", "600",
                             "--chunk-size", "100").stdout)["job"]
        node = f"lstmq-cpu@{os.uname().nodename}"
        store = Store.from_url(redis_server.url, ttl=3600)
        wait_for(lambda: store.workers.holding(node), timeout=120, interval=0.01, what="a chunk at work")
        assert store.jobs.get(job).chunks_done < 20, "the job finished before the worker could be killed"
        (celery_main,) = children(worker.process.pid)
        pool = children(celery_main)
        os.kill(celery_main, signal.SIGKILL)
        killed = time.monotonic()
        wait_for(lambda: not any(alive(pid) for pid in pool), timeout=15, interval=0.05, what="its pool process to die")
        out = tmp_path / "out.jsonl"
        cli("collect", job, "-o", out, timeout=400)
        report("SIGKILL of a Celery worker's main process alone (to the job's end, lease_seconds 600)",
               time.monotonic() - killed)
        assert [line["id"] for line in read_jsonl(out)] == list(range(1, 2001))
        record = status(cli, job)
        assert (record["prompts_done"], record["chunks_done"], record.get("chunks_failed", 0)) == (2000, 20, 0)
        wait_for(lambda: "restarting lstmq-cpu" in worker.text(), timeout=60)
        # lstmq-worker gave the killed worker's chunk back (no lease lapsed, nothing waited for the broker)
        assert record.get("lease_lapses", 0) == 0, record
        lost = {member: entry for member, entry in record["attempts"].items() if entry["lost"]}
        assert len(lost) == 1 and next(iter(lost.values()))["last_end"].endswith("was killed by signal SIGKILL (9)")
        assert f"chunk {next(iter(lost))}: dispatched again" in worker.text(), worker.text()[-3000:]
    finally:
        worker.stop()
