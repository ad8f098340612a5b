"""lstmq's Redis never evicts: a maxmemory-policy other than noeviction is refused by the CLI
and by a starting worker, naming the policy; allow_eviction accepts it, at the user's risk."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest
from tests.conftest import BIN, clean_env, lstmq

from tests.devstack import LocalRedis

pytestmark = pytest.mark.integration


@pytest.fixture
def evicting_redis():
    with LocalRedis() as server:
        import redis
        redis.Redis.from_url(server.url).config_set("maxmemory-policy", "allkeys-lru")
        yield server


def test_the_cli_refuses_an_evicting_redis(evicting_redis):
    refused = lstmq("status", "--broker", evicting_redis.url, check=False)
    assert refused.returncode == 1
    assert "maxmemory-policy is 'allkeys-lru'" in refused.stderr and "noeviction" in refused.stderr
    accepted = lstmq("status", "--broker", evicting_redis.url, env={**clean_env(), "LSTMQ_ALLOW_EVICTION": "true"})
    assert accepted.returncode == 0


def test_a_starting_worker_refuses_an_evicting_redis(evicting_redis):
    worker = subprocess.run([sys.executable, "-P", "-m", "lstmq.worker.run", "--broker", evicting_redis.url,
                             "--device", "cpu"], capture_output=True, text=True, env=clean_env(), timeout=60)
    assert worker.returncode == 3, worker.stderr
    assert "maxmemory-policy is 'allkeys-lru'" in worker.stderr


def test_lstmq_worker_stops_at_once_when_restarting_cannot_help(evicting_redis):
    started = time.monotonic()
    launcher = subprocess.run([str(BIN / "lstmq-worker"), "--cpu", "--broker", evicting_redis.url],
                              capture_output=True, text=True, env=clean_env(), timeout=120)
    assert launcher.returncode == 3, launcher.stderr
    assert "restarting cannot help; stopping" in launcher.stderr and "restarting in" not in launcher.stderr
    assert time.monotonic() - started < 60
