"""Losing the Redis machine, with Redis Sentinel: a primary, a replica and three sentinels on
localhost ports (tests/devstack.py's LocalSentinels, down-after 1 s), and a worker and the CLI
pointed at the sentinels (sentinel:// broker_url, sentinel_master). A forced failover (SENTINEL
FAILOVER) and the primary SIGKILLed (its machine lost: it never comes back), each in the middle
of a generate job a CLI waits on and in the middle of training: the job ends succeeded, every
prompt once in input order, the registry intact, and the waiting CLI says Redis failed over.
A wrong set-up is a clear error at start."""
from __future__ import annotations

import json
import time

import pytest
from tests.faults.faultkit import Stack, read_jsonl, report, seeds_file, wait_for, write_config

from tests.conftest import BIN, WorkerProcess, clean_env, lstmq
from tests.devstack import LocalSentinels

pytestmark = pytest.mark.integration
PROMPTS = 3000


class SentinelStack(Stack):
    """Stack (faultkit) against Redis Sentinel: the CLI and the worker get the sentinel:// URL and
    LSTMQ_SENTINEL_MASTER; the store follows the primary."""

    def __init__(self, sentinels: LocalSentinels, config):
        from lstmq.shared.config import load_settings
        from lstmq.shared.store import Store

        self.sentinels, self.url, self.config = sentinels, sentinels.url, config
        self.env = {**clean_env(), "LSTMQ_SENTINEL_MASTER": LocalSentinels.MASTER}
        self.store = Store.from_settings(load_settings(config, {"broker_url": self.url,
                                                                "sentinel_master": LocalSentinels.MASTER}))

    def cli(self, *args, check=True, **kwargs):
        return lstmq(*args, "--broker", self.url, "--config", self.config, check=check, env=self.env, **kwargs)

    def popen(self, *args, env=None):
        return super().popen(*args, env=env or self.env)

    def job(self, job):
        """The job's record; read again while this test's own client finds no primary (a failover)."""
        import redis

        deadline = time.monotonic() + 30
        while True:
            try:
                return self.store.jobs.get(job)
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def worker(self, log, *extra):
        worker = WorkerProcess(self.url, log, "--config", str(self.config), *extra,
                               env={"LSTMQ_SENTINEL_MASTER": LocalSentinels.MASTER})
        worker.wait_ready()
        return worker


@pytest.fixture(scope="module")
def sentinel_stack(tmp_path_factory, random_artifact):
    directory = tmp_path_factory.mktemp("sentinel")
    with LocalSentinels() as sentinels:
        stack = SentinelStack(sentinels, write_config(directory / "settings.yaml", train_slice_seconds=10,
                                                      lease_seconds=10))
        stack.model = stack.register(random_artifact, "ha")
        worker = stack.worker(directory / "worker.log")
        stack.worker_process = worker
        try:
            yield stack
        finally:
            worker.stop()


@pytest.fixture
def stack(sentinel_stack):
    """The module's stack, with a replica to fail over to (a killed primary never comes back: a new
    replica of the new primary takes its place, as an operator would add one)."""
    sentinels = sentinel_stack.sentinels
    if not any(server.process is not None and server.port != sentinels.primary_port() for server in sentinels.servers):
        sentinels.add_replica(sentinels.primary_port())
    return sentinel_stack


def in_sync(stack: SentinelStack) -> None:
    """Wait until a replica is in sync and every sentinel has seen it so (their view refreshes
    every 10 s): a replica promoted before it synced would take over without the latest writes."""
    stack.sentinels.wait_until(stack.sentinels.in_sync, 60, "a replica in sync, seen by every sentinel")


def inject(stack: SentinelStack, fault: str) -> tuple[int, int]:
    """`failover` (SENTINEL FAILOVER) or `kill` (SIGKILL the primary's redis-server: its machine
    is gone). (old, new) primary ports."""
    return stack.sentinels.failover() if fault == "failover" else stack.sentinels.kill_primary()


@pytest.mark.parametrize("fault", ["failover", "kill"])
def test_a_generate_job_survives_losing_the_primary(stack, tmp_path, fault):
    """A job a CLI waits on, the fault after two chunks: the job succeeds, every prompt once in
    input order, the registry intact, and the CLI says that Redis failed over. (One fault a job:
    a result the switch lost comes back when its lease lapses, which a second fault would race.)"""
    models_before = json.loads(stack.cli("models", "--json").stdout)
    seeds = seeds_file(tmp_path / "seeds.txt", PROMPTS)
    out = tmp_path / "out.jsonl"
    in_sync(stack)
    waiting = stack.popen("generate", seeds, "--model", stack.model, "-o", out, "--words", "300", "--chunk-size", "100")
    first = waiting.stderr.readline()
    job = first.split()[2].rstrip(":")
    try:
        wait_for(lambda: stack.job(job).chunks_done >= 2, timeout=120, interval=0.02, what="two chunks")
        assert stack.job(job).chunks_done < PROMPTS // 100, "the job finished before the fault could be injected"
        started, done_at_fault = time.monotonic(), stack.job(job).chunks_done
        old, new = inject(stack, fault)
        wait_for(lambda: stack.job(job).chunks_done > done_at_fault + 1, timeout=120, interval=0.02, what="work again")
        report(f"Redis Sentinel: {fault} mid-generate (fault to the next chunk done)", time.monotonic() - started)
    except BaseException:
        waiting.kill()
        raise AssertionError(f"{first}{waiting.communicate()[1]}") from None
    try:
        _, stderr = waiting.communicate(timeout=300)
    finally:   # never left running, whatever failed
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
    report(f"Redis Sentinel: {fault} mid-generate (fault to the job's end)", time.monotonic() - started)
    assert waiting.returncode == 0, stderr
    assert f"Redis failed over: the primary is now 127.0.0.1:{new} (was 127.0.0.1:{old})" in stderr, stderr
    assert [line["id"] for line in read_jsonl(out)] == list(range(1, PROMPTS + 1))   # every prompt once, in order
    record = stack.job(job)
    assert record.status.value == "succeeded" and (record.prompts_done, record.chunks_failed) == (PROMPTS, 0)
    assert json.loads(stack.cli("models", "--json").stdout) == models_before          # the registry is intact


def test_training_survives_a_failover_and_then_losing_the_primary(stack, corpus_slice):
    """One training job in slices: a forced failover after its second epoch, the new primary
    killed after its fourth. It succeeds with every epoch in its history, registered beside
    the models that were there."""
    models_before = json.loads(stack.cli("models", "--json").stdout)
    in_sync(stack)
    job = json.loads(stack.cli("train", corpus_slice, "--model", "trained", "--epochs", "8", "--detach",
                               "--json").stdout)["job"]
    faults = []
    for fault, after in (("failover", 2), ("kill", 5)):
        wait_for(lambda: stack.job(job).epoch >= after, timeout=180, what=f"{after} epochs")
        in_sync(stack)
        started, epoch_at_fault = time.monotonic(), stack.job(job).epoch
        assert epoch_at_fault < 8, "the job finished before the fault could be injected"
        inject(stack, fault)
        faults.append((fault, started))
        wait_for(lambda: stack.job(job).epoch > epoch_at_fault, timeout=180, interval=0.05, what="an epoch recorded")
        report(f"Redis Sentinel: {fault} mid-training (fault to the next epoch recorded)", time.monotonic() - started)
    waited = stack.cli("wait", job, "--json", "--timeout", "300", timeout=400)
    for fault, started in faults:
        report(f"Redis Sentinel: {fault} mid-training (fault to the job's end)", time.monotonic() - started)
    record = json.loads(waited.stdout)
    assert record["status"] == "succeeded" and record["model"] == "trained@1" and record["epochs_run"] == 8
    assert [entry["epoch"] for entry in stack.status(job)["history"]] == list(range(1, 9))
    models = {model["name"]: model for model in json.loads(stack.cli("models", "--json").stdout)}
    assert all(models[model["name"]] == model for model in models_before)    # the registry: every model kept
    assert models["trained"]["current"] == 1


def test_a_wrong_sentinel_set_up_is_a_clear_error_at_start(tmp_path):
    """A wrong primary name, or no sentinel answering: the worker exits 3 at once and the CLI 1,
    each saying what is wrong, passwords masked (the sentinels' and the primary's)."""
    import subprocess

    with LocalSentinels() as sentinels:
        url = sentinels.url.replace("sentinel://", "sentinel://:primary-secret@", 1)
        wrong = {**clean_env(), "LSTMQ_SENTINEL_MASTER": "nosuch", "LSTMQ_SENTINEL_PASSWORD": "sentinel-secret"}
        result = lstmq("status", "--broker", url, env=wrong, check=False)
        assert result.returncode == 1 and "monitor no primary named 'nosuch' (they monitor: lstmq)" in result.stderr
        started = time.monotonic()
        worker = subprocess.run([str(BIN / "lstmq-worker"), "--cpu", "--broker", url], env=wrong, capture_output=True,
                                text=True, timeout=120)
        assert worker.returncode == 3, worker.stdout + worker.stderr
        assert "monitor no primary named 'nosuch'" in worker.stderr and time.monotonic() - started < 60
        for text in (result.stderr, worker.stdout, worker.stderr):
            assert "primary-secret" not in text and "sentinel-secret" not in text
    nobody = f"sentinel://:primary-secret@127.0.0.1:{_free_port()};sentinel://127.0.0.1:{_free_port()}/0"
    env = {**clean_env(), "LSTMQ_SENTINEL_MASTER": "lstmq"}
    result = lstmq("status", "--broker", nobody, env=env, check=False)
    assert result.returncode == 1 and "no Redis Sentinel answers at sentinel://:***@127.0.0.1:" in result.stderr
    worker = subprocess.run([str(BIN / "lstmq-worker"), "--cpu", "--broker", nobody], env=env, capture_output=True,
                            text=True, timeout=120)
    assert worker.returncode == 3 and "no Redis Sentinel answers" in worker.stderr
    assert "primary-secret" not in result.stderr + worker.stderr + worker.stdout
    missing = lstmq("status", "--broker", nobody, env=clean_env(), check=False)   # no sentinel_master: a usage error
    assert missing.returncode == 2 and "set sentinel_master (LSTMQ_SENTINEL_MASTER)" in missing.stderr


def _free_port() -> int:
    from tests.devstack import free_port
    return free_port()
