"""Undecodable entries on the task queues: raw bytes that are not UTF-8, not JSON, or JSON that is
not a kombu message, pushed straight onto the `generate` and `train` lists. kombu's Redis
transport would raise on them out of the Celery event loop and take the worker down; the workers'
transport (lstmq.worker.transport) moves each to lstmq:dead-letter:<queue>, logs it at ERROR with
the queue and its first 200 bytes, and goes on consuming: the Celery worker is never restarted.

Its own redis-server, with a password (which no log line may show), and its own lstmq-worker.
Every wait is bounded."""
from __future__ import annotations

import logging
import os
import signal

import pytest
import redis

from tests.conftest import WorkerProcess, children, lstmq, read_jsonl, wait_for
from tests.devstack import LocalRedis

pytestmark = pytest.mark.integration

PASSWORD = "dead-Letter-Pass-6620"

ENTRIES = {
    "generate": [
        b"this is not a celery message",
        b'{"job": "not-a-kombu-message", "chunk": 0}',                 # JSON, but not a kombu message
        b"\xff\xfe not \xc3\x28 UTF-8 \x80",                             # invalid UTF-8
        b"BIG:" + b"y" * 400 + b":TAIL",                                 # the log shows its first 200 bytes only
    ],
    "train": [
        b"{not json",
        b'["a", "list"]',
        b"\x80\x81\x82\x83",
        b'{"properties": {"delivery_tag": "t"}, "body": "e30="}',        # kombu-like, no delivery_info
    ],
}




def holds_at_least(client: redis.Redis, key: str, count: int):
    return lambda: client.llen(key) >= count




@pytest.fixture(scope="module")
def server():
    """A redis-server that asks for a password; yields (its URL with the password, a client)."""
    with LocalRedis() as local:
        redis.Redis(port=local.port).config_set("requirepass", PASSWORD)
        client = redis.Redis(port=local.port, password=PASSWORD)
        try:
            yield f"redis://:{PASSWORD}@127.0.0.1:{local.port}/0", client
        finally:
            client.close()


@pytest.fixture(scope="module")
def worker(server, small_config, tmp_path_factory):
    url, _client = server
    process = WorkerProcess(url, tmp_path_factory.mktemp("bad-entry") / "worker.log", "--config", str(small_config))
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def test_undecodable_entries_are_dead_lettered_and_the_worker_goes_on(server, worker, small_config, tiny_corpus,
                                                                      tmp_path):
    from lstmq.worker.transport import EXCERPT_BYTES, dead_letter_key

    url, client = server
    celery_main = children(worker.process.pid)
    assert len(celery_main) == 1, celery_main
    for queue, entries in ENTRIES.items():
        for entry in entries:
            client.lpush(queue, entry)

    # each list's entries come off in the order pushed and are LPUSHed: the dead-letter list is newest first
    for queue, entries in ENTRIES.items():
        wait_for(holds_at_least(client, dead_letter_key(queue), len(entries)), 60,
                 what=f"{len(entries)} entries on {dead_letter_key(queue)}", detail=worker.text)
        assert client.lrange(dead_letter_key(queue), 0, -1) == list(reversed(entries))
        assert client.llen(queue) == 0

    text = worker.text()
    lines = text.splitlines()
    for queue, entries in ENTRIES.items():
        for entry in entries:
            excerpt = repr(entry[:EXCERPT_BYTES])
            logged = [line for line in lines if excerpt in line]
            assert len(logged) == 1, (excerpt, text)
            assert "ERROR/MainProcess" in logged[0] and f"undecodable entry on queue {queue!r}" in logged[0], logged
            assert f"moved to the dead-letter list {dead_letter_key(queue)}" in logged[0], logged
    assert ":TAIL" not in text and repr(ENTRIES["generate"][3][:EXCERPT_BYTES]) + "..." in text
    assert PASSWORD not in text

    # the worker consumes on: a model trained and a generate job run after the bad entries
    cli = lambda *args, **kwargs: lstmq(*args, "--broker", url, "--config", small_config, **kwargs)
    cli("train", tiny_corpus, "--model", "m", "--epochs", "1", "--wait", timeout=300)
    seeds = tmp_path / "seeds.txt"
    seeds.write_text("after the bad queue entries\n")
    out = tmp_path / "out.jsonl"
    cli("generate", seeds, "--model", "m@1", "-o", out, timeout=120)
    lines = read_jsonl(out)
    assert len(lines) == 1 and lines[0]["model"] == "m@1" and lines[0]["continuation"]

    # ...and its Celery worker was never taken down nor restarted
    text = worker.text()
    assert worker.process.poll() is None
    assert children(worker.process.pid) == celery_main
    assert "restarting" not in text and "Unrecoverable error" not in text, text
    assert PASSWORD not in text


def test_a_killed_worker_is_reported_with_its_signal(server, small_config, tmp_path):
    """lstmq-worker reports how a worker ended: a signal by its name, never as "status 0"."""
    url, _client = server
    worker = WorkerProcess(url, tmp_path / "worker.log", "--config", str(small_config))
    try:
        worker.wait_ready()
        (celery_main,) = children(worker.process.pid)
        pool = children(celery_main)
        for pid in (celery_main, *pool):
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: "restarting lstmq-cpu" in worker.text(), 30, what="the restart", detail=worker.text)
        text = worker.text()
        assert "was killed by signal SIGKILL (9); restarting in 1s" in text, text
        assert "status 0" not in text and "status -9" not in text, text
    finally:
        worker.stop()


def test_how_a_worker_ended_is_described_and_passed_on():
    from lstmq.worker.launch import describe_exit, exit_status

    assert describe_exit(-9) == "was killed by signal SIGKILL (9)"
    assert describe_exit(-15) == "was killed by signal SIGTERM (15)"
    assert describe_exit(3) == "exited with status 3"
    assert describe_exit(0) == "exited with status 0 without being asked to stop"
    assert [exit_status(code) for code in (-9, -15, 3, 1, 0)] == [137, 143, 3, 1, 1]


# -- the transport in this process: no worker ------------------------------------------------------
def test_the_transport_sets_an_entry_aside_and_delivers_the_next(server, caplog):
    from kombu import Connection

    from lstmq.worker.transport import broker_transport, dead_letter_key

    url, client = server
    queue = "dead-letter-in-process"
    client.delete(queue, dead_letter_key(queue))
    with Connection(url) as stock:                       # the producer's (stock) transport
        stock.SimpleQueue(queue).put({"n": 1})
    client.rpush(queue, b"\x00garbage")                  # BRPOP takes it before the message
    # the hazard is real: the stock transport raises on it
    with Connection(url) as stock:
        simple = stock.SimpleQueue(queue)
        with pytest.raises(ValueError):
            simple.get(timeout=10)
    client.rpush(queue, b"\x00garbage")
    assert broker_transport(url) == "lstmq.worker.transport:Transport"
    with caplog.at_level(logging.ERROR, logger="lstmq.worker.transport"), \
            Connection(url, transport=broker_transport(url)) as conn:
        assert conn.as_uri() == url.replace(PASSWORD, "**")   # shown as redis://, like the stock transport
        simple = conn.SimpleQueue(queue)
        message = simple.get(timeout=10)
        assert message.payload == {"n": 1}
        message.ack()
    assert client.lrange(dead_letter_key(queue), 0, -1) == [b"\x00garbage"]
    records = [record for record in caplog.records if record.name == "lstmq.worker.transport"]
    assert len(records) == 1 and records[0].levelno == logging.ERROR
    assert f"queue {queue!r}" in records[0].getMessage() and r"b'\x00garbage'" in records[0].getMessage()


def test_the_stock_transport_with_a_warning_when_kombu_changed(server, monkeypatch, caplog):
    from kombu import Connection
    from kombu.transport import redis as kombu_redis

    from lstmq.worker import transport

    url, client = server
    monkeypatch.delattr(kombu_redis.Channel, "_brpop_read")
    reason = transport._hookable()
    assert reason == "kombu's Redis Channel has no _brpop_read"
    monkeypatch.undo()
    assert transport._hookable() is None
    monkeypatch.setattr(transport, "UNHOOKABLE", reason)
    monkeypatch.setattr(transport, "_warned", False)
    queue = "dead-letter-fallback"
    client.delete(queue)
    with Connection(url) as stock:
        stock.SimpleQueue(queue).put({"n": 2})
    with caplog.at_level(logging.WARNING, logger="lstmq.worker.transport"), \
            Connection(url, transport=transport.broker_transport(url)) as conn:
        simple = conn.SimpleQueue(queue)
        assert not simple.channel.Client.__name__.startswith("Screening")
        message = simple.get(timeout=10)
        assert message.payload == {"n": 2}
        message.ack()
    warnings = [record.getMessage() for record in caplog.records if record.name == "lstmq.worker.transport"]
    assert len(warnings) == 1 and "NOT dead-lettered" in warnings[0] and reason in warnings[0], warnings
