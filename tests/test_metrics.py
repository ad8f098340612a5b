"""Prometheus metrics: `lstmq-worker --metrics-port PORT` serves them from the pool process that
runs the tasks; a real worker trains and generates, and its /metrics page, fetched over HTTP,
counts exactly that work. Worker i of several GPUs gets PORT + i."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import BIN, WorkerProcess, clean_env, lstmq, pool_processes, read_jsonl, wait_for
from tests.devstack import free_port
from lstmq.worker.launch import worker_commands

EPOCHS = 2            # SMALL_MODEL's epochs (tests/conftest.py)
PROMPTS, WORDS, CHUNK_SIZE = 5, 4, 2
CHUNKS = 3            # 5 prompts in chunks of 2


def commands(gpus, port):
    return worker_commands(gpus, "train,generate", None, None, "INFO", "lstmq", port)


def test_the_launcher_gives_worker_i_port_plus_i(monkeypatch):
    monkeypatch.setenv("LSTMQ_METRICS_PORT", "1234")   # the launcher's own value never reaches a worker as is
    several = commands(["0", "1", "3"], 19100)
    assert [env["LSTMQ_METRICS_PORT"] for _, env in several] == ["19100", "19101", "19102"]
    assert [env["CUDA_VISIBLE_DEVICES"] for _, env in several] == ["0", "1", "3"]
    assert [env["LSTMQ_GPU_INDEX"] for _, env in several] == ["0", "1", "3"]   # what `lstmq workers` shows
    assert "LSTMQ_GPU_INDEX" not in commands(None, None)[0][1]
    assert all("19100" not in " ".join(command) for command, _ in several)   # the environment, not argv
    assert [env["LSTMQ_METRICS_PORT"] for _, env in commands(None, 19100)] == ["19100"]   # one CPU worker
    assert all("LSTMQ_METRICS_PORT" not in env for _, env in commands(["0", "1"], None))   # off


def test_a_metrics_port_out_of_range_is_a_usage_error():
    result = subprocess.run([str(BIN / "lstmq-worker"), "--cpu", "--metrics-port", "70000"], capture_output=True,
                            text=True, env=clean_env(), stdin=subprocess.DEVNULL, timeout=60)
    assert result.returncode == 2 and "--metrics-port" in result.stderr, result.stderr


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """GET /metrics over HTTP: {(sample name, sorted labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200 and response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode("utf-8")
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels` (KeyError: no such sample)."""
    found = [v for (sample, sample_labels), v in samples.items()
             if sample == name and set(labels.items()) <= set(sample_labels)]
    if not found:
        raise KeyError(f"no sample {name}{labels} in {sorted(key for key in samples if key[0].startswith('lstmq'))}")
    return sum(found)


def try_scrape(port: int) -> dict | None:
    try:
        return scrape(port)
    except OSError:   # not bound yet (a pool process starting)
        return None



@pytest.fixture(scope="module")
def metrics_worker(redis_server, small_config, tmp_path_factory):
    port = free_port()
    worker = WorkerProcess(redis_server.url, tmp_path_factory.mktemp("metrics") / "worker.log",
                           "--config", str(small_config), "--metrics-port", str(port))
    try:
        worker.wait_ready()
        before = wait_for(lambda: try_scrape(port), timeout=30, interval=0.2, what="a first scrape")
        yield worker, port, before
    finally:
        worker.stop()


@pytest.fixture(scope="module")
def cli(redis_server, small_config):
    return lambda *args, **kwargs: lstmq(*args, "--broker", redis_server.url, "--config", small_config, **kwargs)


@pytest.fixture(scope="module")
def trained(metrics_worker, cli, corpus_slice):
    return json.loads(cli("train", corpus_slice, "--model", "metrics", "--wait", "--json", timeout=300).stdout)


@pytest.mark.integration
def test_a_scrape_counts_the_work_the_worker_did(metrics_worker, cli, trained, tmp_path):
    worker, port, before = metrics_worker
    assert f":{port}/metrics" in wait_for(lambda: "serving Prometheus metrics at" in worker.text() and worker.text(),
                                          timeout=30, what="the metrics server's log line")
    launched = [line for line in worker.text().splitlines() if line.startswith("lstmq-worker: starting")]
    assert launched and f"metrics http://{os.uname().nodename}:{port}/metrics" in launched[0], launched

    for name in ("lstmq_prompts_generated_total", "lstmq_words_generated_total", "lstmq_models_loaded",
                 "lstmq_train_epoch_seconds_count"):
        assert value(before, name, device="cpu") == 0, name
    for outcome in ("done", "failed", "skipped"):
        assert value(before, "lstmq_chunks_total", device="cpu", outcome=outcome) == 0
        assert value(before, "lstmq_chunk_seconds_count", outcome=outcome) == 0

    assert trained["status"] == "succeeded" and trained["epochs_run"] == EPOCHS
    seeds = tmp_path / "seeds.txt"
    seeds.write_text("".join(f"holmes said that the {i} men were\n" for i in range(PROMPTS)))
    out = tmp_path / "out.jsonl"
    cli("generate", seeds, "--model", trained["model"], "-o", out, "--words", str(WORDS), "--chunk-size", str(CHUNK_SIZE),
        timeout=300)
    assert len(read_jsonl(out)) == PROMPTS

    # the CLI may see the last result a moment before the task that wrote it has counted it
    samples = wait_for(lambda: (lambda s: s if s and value(s, "lstmq_chunks_total", outcome="done") >= CHUNKS
                                else None)(try_scrape(port)), timeout=30, interval=0.2, what="the chunks counted")
    assert value(samples, "lstmq_prompts_generated_total", device="cpu") == PROMPTS
    assert value(samples, "lstmq_words_generated_total", device="cpu") == PROMPTS * WORDS
    assert value(samples, "lstmq_chunks_total", device="cpu", outcome="done") == CHUNKS
    assert value(samples, "lstmq_worker_decoding", device="cpu", decoding="native") == 1   # lstmq workers says the same
    assert value(samples, "lstmq_chunks_total", outcome="failed") == 0
    assert value(samples, "lstmq_chunks_total", outcome="skipped") == 0
    assert value(samples, "lstmq_chunk_seconds_count", outcome="done") == CHUNKS
    assert value(samples, "lstmq_chunk_seconds_count") == CHUNKS
    assert value(samples, "lstmq_chunk_seconds_bucket", outcome="done", le="+Inf") == CHUNKS
    assert value(samples, "lstmq_chunk_seconds_sum", outcome="done") > 0
    assert value(samples, "lstmq_models_loaded", device="cpu") == 1
    assert value(samples, "lstmq_train_epoch_seconds_count", device="cpu") == EPOCHS
    assert value(samples, "lstmq_train_epoch_seconds_sum") > 0
    assert value(samples, "process_resident_memory_bytes") > 0   # the pool process's own, with TensorFlow


@pytest.mark.integration
def test_a_pool_process_started_again_serves_on_the_same_port(metrics_worker, cli, trained, tmp_path):
    worker, port, _ = metrics_worker
    victims = pool_processes(worker)
    assert victims
    before = worker.text().count("serving Prometheus metrics at")
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: worker.text().count("serving Prometheus metrics at") > before, timeout=120, interval=0.2,
             what="the new pool process to serve its metrics")
    assert set(pool_processes(worker)).isdisjoint(victims)
    assert "cannot serve Prometheus metrics" not in worker.text()
    samples = wait_for(lambda: try_scrape(port), timeout=30, interval=0.2, what="a scrape of the new pool process")
    assert value(samples, "lstmq_chunks_total", outcome="done") == 0   # a new process: counters start again
    assert value(samples, "lstmq_models_loaded") == 0
    # and it counts what it does
    seeds = tmp_path / "seeds.txt"
    seeds.write_text("the door was\nshe said that\n")
    cli("generate", seeds, "--model", trained["model"], "-o", tmp_path / "out.jsonl", "--words", "3", timeout=300)
    samples = wait_for(lambda: (lambda s: s if s and value(s, "lstmq_chunks_total", outcome="done") >= 1
                                else None)(try_scrape(port)), timeout=30, interval=0.2, what="the chunk counted")
    assert value(samples, "lstmq_prompts_generated_total") == 2 and value(samples, "lstmq_words_generated_total") == 6
    assert value(samples, "lstmq_models_loaded") == 1
    # a message that cannot run is counted apart from the chunks
    from celery import Celery

    app = Celery(broker=worker.broker)
    app.conf.task_serializer = "json"
    app.send_task("lstmq.generate", kwargs={"job": "no-such-job", "chunk": 0}, queue="generate")
    samples = wait_for(lambda: (lambda s: s if s and value(s, "lstmq_chunks_total", outcome="rejected") >= 1
                                else None)(try_scrape(port)), timeout=30, interval=0.2, what="the rejection counted")
    assert value(samples, "lstmq_chunks_total", outcome="rejected") == 1
    assert value(samples, "lstmq_chunks_total", outcome="done") == 1


def test_a_port_still_held_is_retried_until_it_is_free():
    """A pool process whose port is still held (by an orphaned pool process of a killed worker)
    keeps running its tasks and binds as soon as the port is free."""
    from lstmq.worker import metrics

    metrics.setup("cpu", lambda: 0)
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        assert metrics.serve(port, addr="127.0.0.1", sleep=lambda _: time.sleep(0.05)) is False
        assert not metrics.STATE.bound.wait(0.3)
    finally:
        holder.close()
    assert metrics.STATE.bound.wait(10), "never bound once the port was free"
    assert value(scrape(port), "lstmq_chunks_total", device="cpu", outcome="done") == 0
