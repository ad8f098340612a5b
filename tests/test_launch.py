"""lstmq-worker's plan: which workers it starts, on which cores, with how many TensorFlow threads."""
import os

from lstmq.worker.launch import cpu_sets, worker_commands


def commands(gpus=None, workers=1, tf_threads=None):
    return worker_commands(gpus, "train,generate", None, None, "INFO", "lstmq", None, workers, tf_threads)


def test_one_cpu_worker_keeps_every_core_and_tensorflows_own_thread_count(monkeypatch):
    monkeypatch.delenv("LSTMQ_TF_THREADS", raising=False)
    (command, env), = commands()
    assert env["LSTMQ_DEVICE"] == "cpu" and "LSTMQ_CPUS" not in env and "LSTMQ_TF_THREADS" not in env
    assert command[command.index("--name") + 1] == "lstmq-cpu@%h"


def test_several_cpu_workers_split_the_cores(monkeypatch):
    monkeypatch.delenv("LSTMQ_TF_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(16)))
    planned = commands(workers=4)
    assert [env["LSTMQ_DEVICE"] for _, env in planned] == ["cpu0", "cpu1", "cpu2", "cpu3"]
    assert [env["LSTMQ_CPUS"] for _, env in planned] == ["0,1,2,3", "4,5,6,7", "8,9,10,11", "12,13,14,15"]
    assert [env["LSTMQ_TF_THREADS"] for _, env in planned] == ["4"] * 4
    assert [command[command.index("--name") + 1] for command, _ in planned] == \
        [f"lstmq-cpu{index}@%h" for index in range(4)]
    assert all(env["LSTMQ_TF_THREADS"] == "1" for _, env in commands(workers=4, tf_threads=1))


def test_core_sets_are_disjoint_and_cover_the_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3, 4})
    assert cpu_sets(2) == [[0, 1, 2], [3, 4]]
    assert cpu_sets(5) == [[0], [1], [2], [3], [4]]
    assert cpu_sets(7) == [[0], [1], [2], [3], [4], [0], [1]]   # more workers than cores: shared


def test_gpu_workers_get_no_core_sets(monkeypatch):
    monkeypatch.delenv("LSTMQ_TF_THREADS", raising=False)
    planned = commands(gpus=["0", "2"])
    assert [env["CUDA_VISIBLE_DEVICES"] for _, env in planned] == ["0", "2"]
    assert all("LSTMQ_CPUS" not in env and "LSTMQ_TF_THREADS" not in env for _, env in planned)


def test_what_the_launcher_puts_in_a_workers_environment_is_no_setting_error(monkeypatch):
    """LSTMQ_DEVICE, LSTMQ_GPU_INDEX, LSTMQ_CPUS are the launcher's, not settings: a worker that
    reads its settings with them in its environment must not fail on them."""
    from lstmq.shared.config import load_settings

    for gpus, workers in ((["0", "3"], 1), (None, 2)):
        for _, env in commands(gpus=gpus, workers=workers):
            settings = load_settings(environ={key: value for key, value in env.items() if key.startswith("LSTMQ_")})
            assert settings.tf_threads == (int(env["LSTMQ_TF_THREADS"]) if "LSTMQ_TF_THREADS" in env else None)


def run_configure_threads(environ):
    """TensorFlow's (inter-op, intra-op) thread counts after configure_threads in a fresh process
    (they can be set only before TensorFlow starts); 0 is TensorFlow's own choice."""
    import subprocess
    import sys

    code = ("import tensorflow as tf\n"
            "from lstmq.shared.config import load_settings\n"
            "from lstmq.worker.runtime import configure_threads\n"
            "gpus = configure_threads(tf, load_settings())\n"
            "print(len(gpus), tf.config.threading.get_inter_op_parallelism_threads(),"
            " tf.config.threading.get_intra_op_parallelism_threads())\n")
    env = {key: value for key, value in os.environ.items() if not key.startswith("LSTMQ_")}
    env.update(environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return tuple(int(value) for value in result.stdout.split()[-3:])


def test_a_cpu_worker_runs_one_inter_op_thread_unless_told_otherwise():
    assert run_configure_threads({}) == (0, 1, 0)   # no GPU; 1 inter-op thread; every core inside ops
    assert run_configure_threads({"LSTMQ_TF_THREADS": "2"}) == (0, 1, 2)
    assert run_configure_threads({"LSTMQ_TF_THREADS": "2", "LSTMQ_TF_INTER_OP_THREADS": "3"}) == (0, 3, 2)
