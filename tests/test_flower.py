"""Flower against a running fleet: a redis-server of our own, a real lstmq-worker, and Flower
started as README says (`celery -A lstmq.worker.app flower`, the broker from LSTMQ_BROKER_URL);
a real `lstmq train` and `lstmq generate` through the CLI, then Flower's HTTP API, fetched over
HTTP, shows the worker and every task of those jobs, succeeded."""
from __future__ import annotations

import ast
import importlib.util
import json
import os
import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import BIN, WorkerProcess, clean_env, lstmq, read_jsonl, wait_for
from tests.devstack import free_port
from lstmq.shared.messages import ROUTES, JobKind

pytestmark = pytest.mark.integration

GENERATE, TRAIN = ROUTES[JobKind.GENERATE].task, ROUTES[JobKind.TRAIN].task   # lstmq.generate, lstmq.train
PROMPTS, WORDS, CHUNK_SIZE = 5, 4, 2
CHUNKS = 3            # 5 prompts in chunks of 2
NODE = f"lstmq-cpu@{os.uname().nodename}"   # lstmq-worker --cpu's Celery node name


class FlowerProcess:
    """`celery -A lstmq.worker.app flower` on a free loopback port, logging to a file. The API
    answers only with FLOWER_UNAUTHENTICATED_API=true (or with authentication configured)."""

    def __init__(self, broker: str, log_path: Path, cwd: Path):
        self.port, self.log_path = free_port(), log_path
        self.log = open(log_path, "w")
        env = {**clean_env(), "LSTMQ_BROKER_URL": broker, "FLOWER_UNAUTHENTICATED_API": "true"}
        self.process = subprocess.Popen([str(BIN / "celery"), "-A", "lstmq.worker.app", "flower",
                                         f"--port={self.port}", "--address=127.0.0.1"],
                                        stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                        stdin=subprocess.DEVNULL, start_new_session=True)

    def get(self, path: str, timeout: float = 10):
        """GET a JSON document from Flower (HTTPError on any status but 2xx)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=timeout) as response:
            assert response.status == 200 and response.headers["Content-Type"].startswith("application/json")
            return json.loads(response.read())

    def healthy(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"flower exited {self.process.returncode}:\n{self.log_path.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthcheck", timeout=2) as response:
                return response.status == 200
        except OSError:   # not listening yet
            return False

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(15)
        self.log.close()


@pytest.fixture(scope="module")
def fleet(redis_server, small_config, tmp_path_factory):
    if importlib.util.find_spec("flower") is None:
        pytest.fail("flower is not installed: it is in the test extra (pip install -e '.[cpu,test]', or make setup)")
    directory = tmp_path_factory.mktemp("flower")
    worker = WorkerProcess(redis_server.url, directory / "worker.log", "--config", str(small_config))
    flower = None
    try:
        flower = FlowerProcess(redis_server.url, directory / "flower.log", directory)   # starts while the worker does
        worker.wait_ready()
        wait_for(flower.healthy, timeout=30, interval=0.2, what=f"flower's /healthcheck (log: {flower.log_path})")
        yield worker, flower
    finally:
        if flower is not None:
            flower.stop()
        worker.stop()


@pytest.fixture(scope="module")
def cli(redis_server, small_config):
    return lambda *args, **kwargs: lstmq(*args, "--broker", redis_server.url, "--config", small_config, **kwargs)


def job_tasks(flower: FlowerProcess, name: str, job: str) -> dict[str, dict]:
    """Flower's tasks called `name` whose kwargs name `job` ({"job": ID[, "chunk": N]}), by task id."""
    tasks = flower.get(f"/api/tasks?taskname={name}")
    return {task_id: task for task_id, task in tasks.items()
            if ast.literal_eval(task["kwargs"] or "{}").get("job") == job}


def succeeded(tasks: dict[str, dict], count: int = 1) -> bool:
    return len(tasks) >= count and all(task["state"] == "SUCCESS" for task in tasks.values())


def test_flower_shows_the_worker_and_every_task_of_a_job(fleet, cli, corpus_slice, tmp_path):
    _, flower = fleet
    # the worker, from its events (heartbeats): Flower's event receiver is up before any task runs
    alive = wait_for(lambda: flower.get("/api/workers?status=1").get(NODE), timeout=30, interval=0.5,
                     what=f"{NODE} alive in flower's /api/workers?status=1 (log: {flower.log_path})")
    assert alive is True
    # ... and from a fresh inspect: its queues and lstmq's tasks
    workers = flower.get("/api/workers?refresh=1", timeout=20)
    assert NODE in workers, workers.keys()
    assert {GENERATE, TRAIN} <= set(workers[NODE]["registered"])
    assert {queue["name"] for queue in workers[NODE]["active_queues"]} == {"train", "generate"}
    assert workers[NODE]["stats"]["pid"] > 0

    trained = json.loads(cli("train", corpus_slice, "--model", "flower", "--epochs", "1", "--wait", "--json").stdout)
    assert trained["status"] == "succeeded"
    seeds = tmp_path / "seeds.txt"
    seeds.write_text("".join(f"holmes said that the {i} men were\n" for i in range(PROMPTS)))
    out = tmp_path / "out.jsonl"
    summary = json.loads(cli("generate", seeds, "--model", trained["model"], "-o", out, "--words", str(WORDS),
                             "--chunk-size", str(CHUNK_SIZE), "--json").stdout)
    assert summary["status"] == "succeeded" and len(read_jsonl(out)) == PROMPTS
    job = summary["job"]
    status = json.loads(cli("status", job, "--json").stdout)
    assert status["chunks"] == status["chunks_done"] == CHUNKS

    # the worker sends task-succeeded just after the result the CLI saw: wait for Flower to have it
    tasks = wait_for(lambda: (lambda found: found if succeeded(found, CHUNKS) else None)(
                         job_tasks(flower, GENERATE, job)), timeout=30, interval=0.2,
                     what=f"{CHUNKS} {GENERATE} tasks of job {job} succeeded in flower")
    assert len(tasks) == CHUNKS   # one task per chunk, none sent again
    assert sorted(ast.literal_eval(task["kwargs"])["chunk"] for task in tasks.values()) == list(range(CHUNKS))
    for task_id, task in tasks.items():
        assert task["uuid"] == task_id and task["name"] == GENERATE and task["state"] == "SUCCESS"
        assert task["worker"] == NODE
        assert task["received"] <= task["started"] <= task["succeeded"] and task["runtime"] > 0
        assert flower.get(f"/api/task/info/{task_id}")["state"] == "SUCCESS"
    results = [ast.literal_eval(task["result"]) for task in tasks.values()]   # what each chunk task returned
    assert sum(result["prompts"] for result in results) == PROMPTS
    assert sum(result["words"] for result in results) == PROMPTS * WORDS
    # the training job's task(s) (training runs in slices: one task or more), all succeeded
    training = wait_for(lambda: (lambda found: found if succeeded(found) else None)(
                            job_tasks(flower, TRAIN, trained["job"])), timeout=30, interval=0.2,
                        what=f"the {TRAIN} task of job {trained['job']} in flower")
    assert all(task["worker"] == NODE for task in training.values())
    assert {GENERATE, TRAIN} <= set(flower.get("/api/task/types")["task-types"])

