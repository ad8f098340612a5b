"""Development plumbing, in one place, for `make demo`, the tests and the benchmarks: a throwaway
redis-server on a free loopback port, a local stack (that server and one lstmq-worker process
group), and where the development corpus is. Not used by the producer or the workers."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO

import redis

# The team's kit lies beside the checkout: ../shared/data/sherlock.txt (never copied into the repo).
REPOSITORY = Path(__file__).resolve().parents[1]
CORPUS_ENV = "LSTMQ_TEST_CORPUS"
DEFAULT_CORPUS = REPOSITORY.parent / "shared" / "data" / "sherlock.txt"


def corpus_path(environ: Mapping[str, str] | None = None) -> Path:
    """The development corpus: $LSTMQ_TEST_CORPUS, else ../shared/data/sherlock.txt beside the checkout."""
    environ = os.environ if environ is None else environ
    return Path(environ.get(CORPUS_ENV) or DEFAULT_CORPUS)


def tool(name: str) -> str:
    """A console script installed beside this Python (lstmq, lstmq-worker)."""
    return str(Path(sys.executable).with_name(name))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalRedis:
    """redis-server in a temporary directory; `appendonly=True` for durability tests (fsync
    always), so a restart keeps every acknowledged write."""

    def __init__(self, appendonly: bool = False, port: int | None = None, directory: str | None = None,
                 extra: tuple[str, ...] = ()):
        """`extra`: more redis-server arguments (--replicaof HOST PORT for a replica)."""
        self.appendonly, self.extra = appendonly, extra
        self.port = port or free_port()
        self._own_directory = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="lstmq-redis-"))
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> LocalRedis:
        executable = shutil.which("redis-server")
        if executable is None:
            raise RuntimeError("redis-server is not installed (make setup installs it: apt-get install redis-server)")
        command = [executable, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
                   "--save", "", "--logfile", str(self.directory / "redis.log"), "--protected-mode", "yes"]
        command += ["--appendonly", "yes", "--appendfsync", "always"] if self.appendonly else ["--appendonly", "no"]
        command += list(self.extra)
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.ping()
                return self
            except redis.exceptions.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    log = (self.directory / "redis.log")
                    detail = log.read_text()[-2000:] if log.exists() else ""
                    self.stop()
                    raise RuntimeError(f"redis-server did not start on port {self.port}: {detail}") from None
                time.sleep(0.05)
            finally:
                client.close()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def close(self) -> None:
        self.stop()
        if self._own_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> LocalRedis:
        return self.start()

    def __exit__(self, *_exc) -> None:
        self.close()


class LocalSentinels:
    """Redis with Redis Sentinel on free localhost ports: a primary and a replica (append-only file
    on) and three sentinels (redis-server --sentinel) monitoring them as MASTER, with short
    down-after and failover timeouts; `url` is the sentinel:// broker URL (settings: broker_url,
    and sentinel_master MASTER). For the high-availability tests; everything stops on close()."""

    MASTER = "lstmq"

    def __init__(self, down_after_ms: int = 1000, failover_timeout_ms: int = 4000):
        self.down_after_ms, self.failover_timeout_ms = down_after_ms, failover_timeout_ms
        self.servers: list[LocalRedis] = []       # primary first, then replicas (the roles change on failover)
        self.sentinels: list[tuple[int, subprocess.Popen, Path]] = []

    @property
    def url(self) -> str:
        return ";".join(f"sentinel://127.0.0.1:{port}" for port, _process, _directory in self.sentinels) + "/0"

    def start(self, timeout: float = 30.0) -> LocalSentinels:
        try:
            primary = LocalRedis(appendonly=True).start()
            self.servers.append(primary)
            self.add_replica(primary.port)
            executable = shutil.which("redis-server")
            for _ in range(3):
                port = free_port()
                directory = Path(tempfile.mkdtemp(prefix="lstmq-sentinel-"))
                config = directory / "sentinel.conf"   # the sentinel rewrites it: its own copy
                config.write_text(f"port {port}\nbind 127.0.0.1\ndir {directory}\nlogfile {directory / 'sentinel.log'}\n"
                                  f"sentinel monitor {self.MASTER} 127.0.0.1 {primary.port} 2\n"
                                  f"sentinel down-after-milliseconds {self.MASTER} {self.down_after_ms}\n"
                                  f"sentinel failover-timeout {self.MASTER} {self.failover_timeout_ms}\n"
                                  f"sentinel parallel-syncs {self.MASTER} 1\n")
                process = subprocess.Popen([executable, str(config), "--sentinel"], stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL)
                self.sentinels.append((port, process, directory))
            self.wait_until(self._ready, timeout, "the sentinels to see the primary, the replica and each other")
        except BaseException:
            self.close()
            raise
        return self

    def add_replica(self, primary_port: int) -> LocalRedis:
        replica = LocalRedis(appendonly=True, extra=("--replicaof", "127.0.0.1", str(primary_port))).start()
        self.servers.append(replica)
        client = redis.Redis(port=replica.port)
        try:
            self.wait_until(lambda: client.info("replication").get("master_link_status") == "up", 30,
                            "the replica to sync")
        finally:
            client.close()
        return replica

    def sentinel(self, index: int = 0) -> redis.Redis:
        return redis.Redis(port=self.sentinels[index][0], socket_connect_timeout=1, socket_timeout=2,
                           decode_responses=True)

    def primary_port(self) -> int:
        """The primary's port as the sentinels say now."""
        for index in range(len(self.sentinels)):
            client = self.sentinel(index)
            try:
                return int(client.sentinel_get_master_addr_by_name(self.MASTER)[1])
            except redis.exceptions.RedisError:
                continue
            finally:
                client.close()
        raise RuntimeError("no sentinel answers")

    def server(self, port: int) -> LocalRedis:
        return next(server for server in self.servers if server.port == port)

    def _sentinels_agree(self, usable) -> bool:
        """Every sentinel knows the other two and lists a replica that `usable(replica)` accepts."""
        for index in range(len(self.sentinels)):
            client = self.sentinel(index)
            try:
                master = client.sentinel_master(self.MASTER)
                replicas = client.sentinel_slaves(self.MASTER)
            except redis.exceptions.RedisError:
                return False
            finally:
                client.close()
            if int(master.get("num-other-sentinels", 0)) < len(self.sentinels) - 1 or not any(map(usable, replicas)):
                return False
        return True

    def _ready(self) -> bool:
        return self._sentinels_agree(lambda replica: "s_down" not in replica.get("flags", "")
                                     and replica.get("master-link-status") == "ok")

    def in_sync(self) -> bool:
        """Every sentinel knows the other two and lists a replica that is up, and a replica of the
        primary says it is linked and synced (a replica still syncing when its primary is lost
        would take over without the latest writes). The sentinels' own view of the replica's link
        is refreshed only every 10 s: the replica's word is taken for it."""
        if not self._sentinels_agree(lambda replica: not {"s_down", "disconnected"} & set(
                replica.get("flags", "").split(","))):
            return False
        primary = self.primary_port()
        for server in self.servers:
            if server.process is None or server.port == primary:
                continue
            client = redis.Redis(port=server.port, socket_connect_timeout=1, decode_responses=True)
            try:
                info = client.info("replication")
            except redis.exceptions.RedisError:
                continue
            finally:
                client.close()
            if (info.get("role") == "slave" and int(info.get("master_port", 0)) == primary
                    and info.get("master_link_status") == "up" and not int(info.get("master_sync_in_progress", 0))):
                return True
        return False

    def failover(self, timeout: float = 30.0) -> tuple[int, int]:
        """SENTINEL FAILOVER: the replica becomes the primary, the old primary its replica. (old, new) ports."""
        old = self.primary_port()
        client = self.sentinel()
        try:
            client.execute_command("SENTINEL", "FAILOVER", self.MASTER)
        finally:
            client.close()
        self.wait_until(lambda: self.primary_port() != old, timeout, "the failover")
        return old, self.primary_port()

    def kill_primary(self, timeout: float = 60.0) -> tuple[int, int]:
        """SIGKILL the primary's redis-server (its machine is gone: it does not come back); the
        sentinels promote the replica. (old, new) ports."""
        old = self.primary_port()
        victim = self.server(old)
        victim.process.kill()
        victim.process.wait()
        victim.process = None
        self.wait_until(lambda: self.primary_port() != old, timeout, "the sentinels to promote the replica")
        return old, self.primary_port()

    @staticmethod
    def wait_until(condition, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")
            time.sleep(0.1)

    def close(self) -> None:
        for _port, process, directory in self.sentinels:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            shutil.rmtree(directory, ignore_errors=True)
        self.sentinels = []
        for server in self.servers:
            server.close()
        self.servers = []

    def __enter__(self) -> LocalSentinels:
        return self.start()

    def __exit__(self, *_exc) -> None:
        self.close()


class LocalStack:
    """A throwaway redis-server (unless `broker` names one) and one lstmq-worker process group
    logging to `log_path`; both are stopped on leaving, whatever happened (demo, benchmarks)."""

    def __init__(self, log_path: str | Path, broker: str | None = None, worker_args: tuple[str, ...] = ()):
        self.log_path, self.broker, self.worker_args = Path(log_path), broker, worker_args
        self.server: LocalRedis | None = None
        self.worker: subprocess.Popen | None = None
        self.log: IO[str] | None = None

    def __enter__(self) -> LocalStack:
        self.log = open(self.log_path, "w")
        try:
            if not self.broker:
                self.server = LocalRedis().start()
                self.broker = self.server.url
            self.worker = subprocess.Popen([tool("lstmq-worker"), *self.worker_args, "--broker", self.broker],
                                           start_new_session=True, stdout=self.log, stderr=subprocess.STDOUT)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_exc) -> None:
        """Stop what was started; safe to call more than once."""
        if self.worker is not None:
            stop_process_group(self.worker)
            self.worker = None
        if self.server is not None:
            self.server.close()
            self.server = None
        if self.log is not None:
            self.log.close()

    def log_tail(self, lines: int = 30) -> str:
        if self.log is not None and not self.log.closed:
            self.log.flush()
        return "\n".join(self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


def stop_process_group(process: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM to the process group (a warm shutdown), SIGKILL after `timeout` seconds."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def random_model_artifact(text: str, params, seed: int = 0) -> bytes:
    """A network of `params`' size with random weights over `text`'s vocabulary, packed as a model
    artifact (meta as training writes it, less the history): for the tests and benchmarks that
    decode but do not study training. Imports TensorFlow, in the calling process."""
    import keras

    from lstmq.shared.artifact import CONTEXT_FEED, pack_artifact
    from lstmq.shared.store import sha256
    from lstmq.shared.text import Vocabulary
    from lstmq.worker.engine.network import build_models, save_keras_bytes

    vocabulary = Vocabulary.from_text(text, params.max_vocab)
    keras.utils.set_random_seed(seed)
    _, inference = build_models(len(vocabulary), params.embedding_dim, params.lstm_units, params.lstm_layers)
    meta = {"network": {"vocab_size": len(vocabulary), "embedding_dim": params.embedding_dim,
                        "lstm_units": params.lstm_units},
            "context_feed": CONTEXT_FEED, "training": params.to_dict(), "corpus_sha256": sha256(text.encode("utf-8")),
            "metrics": {"epochs_run": 0, "note": f"random weights (seed {seed}), never trained"}}
    return pack_artifact(save_keras_bytes(inference), vocabulary.tokens, meta)


def artifact_variant(artifact: bytes, variant: int) -> bytes:
    """The same model as another artifact (other bytes, so another blob: the registry keeps blobs
    by content), told apart by meta["variant"]."""
    from lstmq.shared.artifact import pack_artifact, read_artifact

    model_bytes, vocabulary, meta = read_artifact(artifact)
    meta.pop("format", None)
    return pack_artifact(model_bytes, vocabulary, {**meta, "variant": variant})


def register_model(store, name: str, artifact: bytes, make_current: bool = True) -> int:
    """Register `artifact` as the next version of `name` straight into the store, the way a
    finished training job does (a succeeded train job record holds it); returns the version."""
    from lstmq.shared.artifact import read_artifact
    from lstmq.shared.messages import JobKind
    from lstmq.shared.params import ModelParams
    from lstmq.shared.store import JobStatus

    _, _, meta = read_artifact(artifact)
    params = ModelParams(**meta["training"])
    job = store.jobs.create(JobKind.TRAIN, params, model_name=name)
    version = store.registry.register(job, name, artifact, meta, make_current)
    store.jobs.finish(job, JobStatus.SUCCEEDED, model=f"{name}@{version}", version=version, epochs_run=0)
    return version
