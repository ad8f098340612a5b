"""Shared fixtures. Integration tests start their own redis-server on a free port and real
lstmq-worker processes; nothing talks to the machine's default Redis."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.devstack import CORPUS_ENV, LocalRedis, corpus_path, random_model_artifact

BIN = Path(sys.executable).parent
CORPUS = corpus_path()
# A small network and a slice of the corpus keep the suite fast on 2 cores.
SMALL_MODEL = {"embedding_dim": 32, "lstm_units": 48, "epochs": 2, "batch_size": 32, "early_stopping_patience": 0}


@pytest.fixture(scope="session")
def corpus_text() -> str:
    if not CORPUS.exists():
        pytest.skip(f"corpus {CORPUS} not found (set {CORPUS_ENV})")
    return CORPUS.read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def corpus_slice(corpus_text, tmp_path_factory) -> Path:
    """Lines 60-1560 of the corpus (past the table of contents), as a file."""
    path = tmp_path_factory.mktemp("corpus") / "sherlock-slice.txt"
    path.write_text("\n".join(corpus_text.split("\n")[60:1560]), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_corpus(corpus_text, tmp_path_factory) -> Path:
    """300 lines of the corpus: for the tests that need a training job to run, not to learn."""
    path = tmp_path_factory.mktemp("corpus") / "sherlock-tiny.txt"
    path.write_text("\n".join(corpus_text.split("\n")[60:360]), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def small_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "small.yaml"
    path.write_text("".join(f"{key}: {value}\n" for key, value in {**SMALL_MODEL, "poll_interval": 0.1}.items()))
    return path


@pytest.fixture(scope="session")
def random_artifact(corpus_slice) -> bytes:
    """SMALL_MODEL's network with random weights over the corpus slice's words, as a model artifact:
    for the tests that decode but do not study training (register it with tests.devstack.register_model)."""
    from lstmq.shared.config import load_settings

    params = load_settings(environ={}).model_params().replace(**SMALL_MODEL)
    return random_model_artifact(corpus_slice.read_text(encoding="utf-8"), params)


@pytest.fixture(scope="module")
def process_numerics():
    """The numerics a worker's pool process sets at start (worker.runtime.init_process): full
    float32 matmuls, no TensorFloat-32 on a GPU (no effect on CPUs)."""
    from lstmq.worker.engine.decoder import set_process_numerics

    set_process_numerics()


def native_or_skip(setting: str) -> str:
    """`setting` (a Decoder's native argument), or a skip saying why "on" cannot run here."""
    if setting == "on":
        import tensorflow as tf

        from lstmq.worker.engine.kernels import KernelUnavailable, native_ops

        if tf.config.list_logical_devices("GPU"):
            pytest.skip("the native kernels pick words on the CPU only; this machine's decoder runs on its GPU")
        try:
            native_ops("on")
        except KernelUnavailable as error:
            pytest.skip(f"native kernels unavailable: {error}")
    return setting


@pytest.fixture(params=["on", "off"])
def native(request):
    """A Decoder's native setting: each decoding invariant with the native kernels and without."""
    return native_or_skip(request.param)


@pytest.fixture(scope="module")
def redis_server():
    with LocalRedis() as server:
        yield server


@pytest.fixture
def store(redis_server):
    """A Store on the module's redis-server, emptied before and after the test."""
    from lstmq.shared.store import Store

    store = Store.from_url(redis_server.url, ttl=3600)
    store.redis.flushdb()
    yield store
    store.redis.flushdb()


def clean_env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("LSTMQ_")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return env


def lstmq(*args: str, check: bool = True, timeout: float = 300, env: dict | None = None,
          cwd: Path | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([str(BIN / "lstmq"), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                            env=env or clean_env(), stdin=subprocess.DEVNULL, cwd=cwd)
    if check and result.returncode != 0:
        raise AssertionError(f"lstmq {' '.join(map(str, args))} exited {result.returncode}\n"
                             f"stdout: {result.stdout}\nstderr: {result.stderr}")
    return result


class WorkerProcess:
    """A real `lstmq-worker` (launcher + Celery worker + pool process), logs to a file."""

    def __init__(self, broker: str, log_path: Path, *extra: str, cwd: Path | None = None,
                 env: dict[str, str] | None = None):
        """`env`: variables added to the clean environment (clean_env)."""
        self.broker, self.log_path = broker, log_path
        self.log = open(log_path, "w")
        self.process = subprocess.Popen([str(BIN / "lstmq-worker"), "--cpu", "--broker", broker, *extra],
                                        stdout=self.log, stderr=subprocess.STDOUT, env={**clean_env(), **(env or {})},
                                        start_new_session=True, cwd=cwd)

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "ready: TensorFlow" in self.log_path.read_text():
                return
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited {self.process.returncode}:\n{self.log_path.read_text()}")
            time.sleep(0.2)
        raise AssertionError(f"worker not ready after {timeout}s:\n{self.log_path.read_text()}")

    def text(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> None:
        if self.process.poll() is None:
            family = descendants(self.process.pid)
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(90)
            except subprocess.TimeoutExpired:
                kill_tree(self.process.pid, family)
                self.process.wait()
        self.log.close()

    def kill(self) -> None:
        """SIGKILL lstmq-worker and every process under it at once (an OOM kill of the lot, a lost
        machine). Its workers run in process groups of their own, so killing its group is not enough."""
        kill_tree(self.process.pid, descendants(self.process.pid))
        self.process.wait(30)


def descendants(pid: int) -> list[int]:
    """Every process under `pid` (children first found through /proc/PID/task/PID/children)."""
    found, pending = [], [pid]
    while pending:
        parent = pending.pop()
        try:
            children = [int(child) for child in Path(f"/proc/{parent}/task/{parent}/children").read_text().split()]
        except OSError:
            continue
        found += children
        pending += children
    return found


def kill_tree(pid: int, family: list[int]) -> None:
    for victim in [pid, *family]:
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass


SHADOWING_MODULES = ("worker.py", "config.py", "producer.py", "shared/__init__.py", "lstmq/__init__.py")


@pytest.fixture(scope="session")
def shadowing_dir(tmp_path_factory) -> Path:
    """A directory whose own worker.py, config.py, shared/ and lstmq/ raise on import: where an
    operator might start lstmq-worker or lstmq. Nothing of lstmq's may be shadowed by them."""
    directory = tmp_path_factory.mktemp("shadowing")
    for name in SHADOWING_MODULES:
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"raise ImportError('the working directory\\'s {name} was imported')\n")
    return directory


def wait_for(predicate, timeout: float = 120, interval: float = 0.05, what: str = "the condition",
             detail=None):
    """The predicate's first true value, polled every `interval` s; AssertionError after `timeout` s,
    saying what was awaited and, if given, `detail()` (a worker's log, say)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f"\n{detail()}" if detail else ""))


def read_jsonl(path: Path) -> list[dict]:
    """The JSON lines of a file; none when it does not exist (a job that wrote nothing)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, dead and waiting for its reaper, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def children(pid: int) -> list[int]:
    """The direct children of a process (Linux /proc)."""
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def pool_processes(worker: WorkerProcess) -> list[int]:
    """lstmq-worker -> Celery main process(es) -> their pool processes."""
    return [pool for parent in children(worker.process.pid) for pool in children(parent)]


# CLI processes a test started in the background (tests.faults.faultkit.Stack.popen): whatever the
# test did or failed at, none outlives it.
SPAWNED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _reap_spawned():
    yield
    while SPAWNED:
        process = SPAWNED.pop()
        if process.poll() is None:
            kill_tree(process.pid, descendants(process.pid))
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                pass
