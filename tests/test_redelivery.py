"""A worker killed outright (SIGKILL of the Celery main process and its pool, the launcher
spared): nothing acknowledges or rejects its messages. lstmq-worker restarts the dead worker, and
the chunks it held come back through their lapsed leases (lease_seconds 6 here), taken once and
dispatched again; the broker's own redelivery of the unacknowledged messages (after the
visibility timeout, found by kombu's restore scan about every 100 s) is the slower backup, and a
late duplicate is skipped. The test asserts that the leases brought the work back. Its own
module: its own redis-server, and no other worker to pick up the work."""
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


def test_a_worker_killed_outright_is_restarted_and_its_chunks_come_back_through_their_leases(redis_server, small_config, random_artifact,
                                                                           tmp_path):
    config = tmp_path / "fast-redelivery.yaml"
    config.write_text(small_config.read_text() + "lease_seconds: 6\n")
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
        collected = cli("collect", job, "-o", out, timeout=400)
        assert [line["id"] for line in read_jsonl(out)] == list(range(1, 4001))
        record = status(cli, job)
        assert (record["prompts_done"], record["chunks_done"], record.get("chunks_failed", 0)) == (4000, 40, 0)
        wait_for(lambda: "restarting lstmq-cpu" in worker.text(), timeout=60)
        # the lapsed leases brought the killed worker's chunks back (not the broker's redelivery)
        assert record.get("lease_lapses", 0) >= 1, record
        assert "dispatched again" in worker.text() + collected.stderr
    finally:
        worker.stop()
