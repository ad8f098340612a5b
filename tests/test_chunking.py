"""Prompts per chunk by device kind (producer.submit.chunk_size_for), against a real redis-server."""
from lstmq.producer.submit import chunk_size_for
from lstmq.shared.config import load_settings


def beat(store, name, **info):
    store.workers.heartbeat(name, {"queues": ["train", "generate"], **info}, ttl=30)


def test_cpu_workers_get_chunk_size_and_a_gpu_worker_chunk_size_gpu(store):
    settings = load_settings(environ={})
    assert chunk_size_for(store, settings) == settings.chunk_size          # nobody consumes yet
    beat(store, "lstmq-cpu@a", device="cpu", gpu_index=None)
    assert chunk_size_for(store, settings) == settings.chunk_size
    beat(store, "lstmq-gpu1@b", device="gpu1", gpu_index=1)
    assert chunk_size_for(store, settings) == settings.chunk_size_gpu > settings.chunk_size


def test_a_chosen_chunk_size_is_kept_whatever_the_workers(store):
    beat(store, "lstmq-gpu0@b", device="gpu0", gpu_index=0)
    assert chunk_size_for(store, load_settings(overrides={"chunk_size": 300}, environ={})) == 300
    assert chunk_size_for(store, load_settings(environ={"LSTMQ_CHUNK_SIZE": "500"})) == 500
