"""A worker killed outright (SIGKILL of the Celery main process and its pool): nothing
acknowledges or rejects its message, so Redis hands it out again after the visibility timeout
(kombu looks for such messages every ~100 s, so allow that much more), and lstmq-worker restarts
the dead worker. Its own module: its own redis-server, and no other worker to pick up the work.
Leases are set far longer than the test, so the test knows which mechanism brought the work back:
the broker's redelivery, not lstmq's lease recovery (tests/faults/test_failover.py has that one)."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from lstmq.shared.store import Store
from tests.conftest import WorkerProcess, lstmq, pool_processes, read_jsonl, wait_for
from tests.devstack import register_model
from tests.test_crashes import chunks_done_soon, status

pytestmark = pytest.mark.integration


def test_a_worker_killed_outright_is_restarted_and_its_message_redelivered(redis_server, small_config, random_artifact,
                                                                           tmp_path):
    config = tmp_path / "fast-redelivery.yaml"
    config.write_text(small_config.read_text() + "visibility_timeout: 10\nlease_seconds: 900\n")
    worker = WorkerProcess(redis_server.url, tmp_path / "worker.log", "--config", str(config))
    cli = lambda *args, **kwargs: lstmq(*args, "--broker", redis_server.url, "--config", config, **kwargs)
    try:
        worker.wait_ready()
        register_model(Store.from_url(redis_server.url, ttl=3600), "killed", random_artifact)
        seeds = tmp_path / "seeds.txt"
        seeds.write_text("\n".join(f"the {i} men were" for i in range(4000)) + "\n")
        job = json.loads(cli("generate", seeds, "--model", "killed", "--detach", "--json", "--words", "200",
                             "--chunk-size", "100").stdout)["job"]
        assert chunks_done_soon(redis_server.url, job) < 40, "the job finished before the worker could be killed"
        main_processes = Path(f"/proc/{worker.process.pid}/task/{worker.process.pid}/children").read_text().split()
        for pid in [*main_processes, *map(str, pool_processes(worker))]:
            os.kill(int(pid), signal.SIGKILL)
        out = tmp_path / "out.jsonl"
        cli("collect", job, "-o", out, timeout=400)
        assert [line["id"] for line in read_jsonl(out)] == list(range(1, 4001))
        record = status(cli, job)
        assert (record["prompts_done"], record["chunks_done"], record.get("chunks_failed", 0)) == (4000, 40, 0)
        wait_for(lambda: "restarting lstmq-cpu" in worker.text(), timeout=60)
        # the broker brought the killed worker's message back (it is received again), not a lapsed lease
        assert record.get("lease_lapses", 0) == 0 and "dispatched again" not in worker.text()
        received = [line for line in worker.text().splitlines() if "Task lstmq.generate[" in line and "received" in line]
        assert len(received) > 40, f"{len(received)} generate tasks received for 40 chunks: nothing was redelivered"
    finally:
        worker.stop()
