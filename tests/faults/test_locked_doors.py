"""Locked doors: a Redis behind TLS, a Redis with a password, a Redis that is not up yet.

- TLS (rediss://): the CLI and a real worker reach a TLS-only redis-server with the CA file in
  LSTMQ_BROKER_TLS_CA_CERTS; without it the certificate check fails with a clear message.
- Passwords: a worker whose Redis refuses its credentials exits 3 at once, and neither the worker
  nor the CLI ever prints the password.
- A worker started before its Redis logs each attempt with backoff and starts once Redis is up.

Every server here is a redis-server of the test's own, on a free loopback port in a temporary
directory; certificates are made with the openssl command."""
from __future__ import annotations

import logging
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from tests.conftest import BIN, clean_env, descendants, kill_tree, lstmq, wait_for
from lstmq.shared.config import load_settings
from tests.devstack import free_port
from lstmq.shared.errors import BrokerUnavailable, ConfigError
from lstmq.shared.messages import celery_config
from lstmq.shared.store import Store
from lstmq.worker import run

PASSWORD = "s3cret-Pass-7781"          # the server's
WRONG = "wrong-Pass-4412"              # what the worker or CLI is given
EXIT_BROKER_REFUSED = 3


# -- servers ----------------------------------------------------------------------------------------
class Server:
    """redis-server with extra arguments, in its own directory; `ready` pings it with `client`."""

    def __init__(self, directory: Path, *extra: str, port: int | None = None):
        self.directory, self.port, self.extra = directory, port or free_port(), extra
        self.process: subprocess.Popen | None = None

    def start(self, client_kwargs: dict, timeout: float = 15) -> Server:
        executable = shutil.which("redis-server")
        if executable is None:
            pytest.skip("redis-server is not installed")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.log = self.directory / "redis.log"
        command = [executable, *self.extra, "--dir", str(self.directory), "--save", "", "--appendonly", "no",
                   "--logfile", str(self.log)]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1, **client_kwargs)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    client.ping()
                    return self
                except redis.exceptions.RedisError:
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"redis-server {' '.join(self.extra)} did not start: {self.output()}")
                    time.sleep(0.05)
        finally:
            client.close()

    def output(self) -> str:
        if self.process is not None and self.process.poll() is None:
            self.stop()
        stdout = self.process.stdout.read() if self.process and self.process.stdout else ""
        log = self.log.read_text()[-2000:] if self.log.exists() else ""
        return f"{stdout[-2000:]}\n{log}"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> dict[str, Path]:
    """A CA, and a server certificate it signed for 127.0.0.1 and localhost."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed: cannot make test certificates")
    directory = tmp_path_factory.mktemp("tls")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
            "-subj", "/CN=lstmq test CA", cwd=directory)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=127.0.0.1", cwd=directory)
    (directory / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
                                          "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.crt", "-days", "2", "-extfile", "server.ext", cwd=directory)
    return {name: directory / f"{name}.crt" for name in ("ca", "server")} | {"key": directory / "server.key"}


@pytest.fixture(scope="module")
def tls_server(certificates, tmp_path_factory):
    """A TLS-only redis-server (no plain port) on 127.0.0.1 (and 127.0.0.2, a name its certificate
    does not hold, where the system offers it); skipped where redis-server was built without TLS."""
    port = free_port()
    server = Server(tmp_path_factory.mktemp("redis-tls"), "--port", "0", "--tls-port", str(port),
                    "--tls-cert-file", str(certificates["server"]), "--tls-key-file", str(certificates["key"]),
                    "--tls-ca-cert-file", str(certificates["ca"]), "--tls-auth-clients", "no",
                    "--bind", "127.0.0.1", "-127.0.0.2", port=port)
    try:
        server.start({"ssl": True, "ssl_ca_certs": str(certificates["ca"])})
    except RuntimeError as error:
        text = str(error)
        if any(sign in text for sign in ("TLS", "tls", "Bad directive")):
            pytest.skip(f"this redis-server cannot serve TLS (built without BUILD_TLS=yes?): {text.strip()[-300:]}")
        raise
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def password_server(tmp_path_factory):
    port = free_port()
    server = Server(tmp_path_factory.mktemp("redis-auth"), "--port", str(port), "--bind", "127.0.0.1",
                    "--requirepass", PASSWORD, port=port)
    server.start({"password": PASSWORD})
    try:
        yield server
    finally:
        server.stop()


def tls_env(ca: Path | None = None, **more: str) -> dict[str, str]:
    env = clean_env()
    if ca is not None:
        env["LSTMQ_BROKER_TLS_CA_CERTS"] = str(ca)
    env.update(more)
    return env


def no_traceback(result: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in result.stdout + result.stderr, result.stdout + result.stderr


# -- TLS: settings reach redis-py and kombu ---------------------------------------------------------------
def test_rediss_settings_reach_redis_py_and_celery(certificates):
    settings = load_settings(None, {"broker_url": "rediss://127.0.0.1:6380/0"},
                             environ={"LSTMQ_BROKER_TLS_CA_CERTS": str(certificates["ca"])})
    tls = celery_config(settings)["broker_use_ssl"]
    assert tls["ssl_cert_reqs"] == ssl.CERT_REQUIRED and tls["ssl_check_hostname"] is True
    assert tls["ssl_ca_certs"] == str(certificates["ca"]) and tls["ssl_certfile"] is None
    store = Store.from_settings(settings)
    pool = store.redis.connection_pool
    assert issubclass(pool.connection_class, redis.SSLConnection)
    assert pool.connection_kwargs["ssl_ca_certs"] == str(certificates["ca"])
    assert pool.connection_kwargs["ssl_cert_reqs"] == "required" and pool.connection_kwargs["ssl_check_hostname"]

    loose = load_settings(None, {"broker_url": "rediss://h/0"}, environ={"LSTMQ_BROKER_TLS_CERT_REQS": "none"})
    assert celery_config(loose)["broker_use_ssl"]["ssl_cert_reqs"] == ssl.CERT_NONE
    assert celery_config(loose)["broker_use_ssl"]["ssl_check_hostname"] is False

    plain = load_settings(None, {"broker_url": "redis://h/0"},
                          environ={"LSTMQ_BROKER_TLS_CA_CERTS": str(certificates["ca"])})
    assert "broker_use_ssl" not in celery_config(plain)       # TLS settings apply to rediss:// only
    assert not issubclass(Store.from_settings(plain).redis.connection_pool.connection_class, redis.SSLConnection)


def test_a_tls_file_that_cannot_be_read_is_a_settings_error(tmp_path):
    settings = load_settings(None, {"broker_url": "rediss://h/0"},
                             environ={"LSTMQ_BROKER_TLS_CA_CERTS": str(tmp_path / "missing.crt")})
    with pytest.raises(ConfigError, match="LSTMQ_BROKER_TLS_CA_CERTS.*missing.crt not found"):
        Store.from_settings(settings)


def test_the_producers_celery_connection_checks_the_certificate(tls_server, certificates):
    """The Dispatcher (kombu's stock transport, which takes a bare rediss:// URL without checking
    anything) gets broker_use_ssl: no CA, no connection; with the CA, a connection."""
    from lstmq.shared.messages import Dispatcher

    url = f"rediss://127.0.0.1:{tls_server.port}/0"
    for environ, works in [({}, False), ({"LSTMQ_BROKER_TLS_CA_CERTS": str(certificates["ca"])}, True)]:
        dispatcher = Dispatcher(load_settings(None, {"broker_url": url}, environ=environ))
        with dispatcher.app.connection_for_write() as connection:
            if works:
                connection.ensure_connection(max_retries=1)
                connection.default_channel.client.ping()
            else:
                with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):
                    connection.ensure_connection(max_retries=1)


# -- TLS: the CLI and a worker against a TLS-only redis-server --------------------------------------
def test_cli_reaches_a_tls_redis_with_the_ca(tls_server, certificates):
    url = f"rediss://127.0.0.1:{tls_server.port}/0"
    result = lstmq("status", "--broker", url, "--json", env=tls_env(certificates["ca"]), timeout=60)
    assert result.stdout.strip().startswith("["), result.stdout
    # the name in the URL may be any the certificate holds
    lstmq("models", "--broker", f"rediss://localhost:{tls_server.port}/0", env=tls_env(certificates["ca"]), timeout=60)


def test_cli_without_the_ca_fails_with_a_certificate_error(tls_server):
    result = lstmq("status", "--broker", f"rediss://127.0.0.1:{tls_server.port}/0", env=tls_env(), check=False,
                   timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "certificate" in result.stderr and "LSTMQ_BROKER_TLS_CA_CERTS" in result.stderr, result.stderr
    no_traceback(result)


def test_cli_checks_the_host_name_unless_told_otherwise(tls_server, certificates):
    url = f"rediss://127.0.0.2:{tls_server.port}/0"     # signed by the CA, but not for this name
    probe = redis.Redis.from_url(url, ssl_cert_reqs="none", socket_connect_timeout=2)
    try:
        probe.ping()
    except redis.exceptions.RedisError:
        pytest.skip("127.0.0.2 is not available on this machine")
    finally:
        probe.close()
    result = lstmq("status", "--broker", url, env=tls_env(certificates["ca"]), check=False, timeout=60)
    assert result.returncode == 1 and "certificate" in result.stderr and "127.0.0.2" in result.stderr, result.stderr
    no_traceback(result)
    lstmq("status", "--broker", url, env=tls_env(certificates["ca"], LSTMQ_BROKER_TLS_CERT_REQS="optional"), timeout=60)


def test_cli_names_a_missing_ca_file(tls_server, tmp_path):
    result = lstmq("status", "--broker", f"rediss://127.0.0.1:{tls_server.port}/0",
                   env=tls_env(tmp_path / "nowhere.crt"), check=False, timeout=60)
    assert result.returncode == 2 and "LSTMQ_BROKER_TLS_CA_CERTS" in result.stderr and "not found" in result.stderr
    no_traceback(result)


def test_cli_with_cert_reqs_none_skips_the_check(tls_server):
    lstmq("status", "--broker", f"rediss://127.0.0.1:{tls_server.port}/0",
          env=tls_env(LSTMQ_BROKER_TLS_CERT_REQS="none"), timeout=60)




class Started:
    """A process group (lstmq-worker or python -m lstmq.worker.run) whose output goes to a file."""

    def __init__(self, command: list[str], env: dict[str, str], log_path: Path, cwd: Path):
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True, cwd=cwd, stdin=subprocess.DEVNULL)

    def text(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> None:
        if self.process.poll() is None:
            family = descendants(self.process.pid)   # lstmq-worker's workers have process groups of their own
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                kill_tree(self.process.pid, family)
                self.process.wait()
        self.log.close()


def run_worker(broker: str, env: dict[str, str], log_path: Path) -> Started:
    """One Celery worker as lstmq-worker starts it: python -P -m lstmq.worker.run."""
    env = {**env, "CUDA_VISIBLE_DEVICES": "-1", "LSTMQ_DEVICE": "cpu"}
    return Started([sys.executable, "-P", "-m", "lstmq.worker.run", "--broker", broker, "--device", "cpu"],
                   env, log_path, cwd=log_path.parent)


def celery_inspect_ping(env: dict[str, str], cwd: Path, timeout: int = 10) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "celery"), "-A", "lstmq.worker.app", "inspect", "ping", "--timeout", str(timeout)],
                          check=False, capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


def test_a_worker_runs_over_tls(tls_server, certificates, small_config, tmp_path):
    url = f"rediss://127.0.0.1:{tls_server.port}/0"
    env = tls_env(certificates["ca"])
    worker = Started([str(BIN / "lstmq-worker"), "--cpu", "--broker", url, "--config", str(small_config)], env,
                     tmp_path / "worker.log", cwd=tmp_path)
    try:
        wait_for(lambda: "ready: TensorFlow" in worker.text() or worker.process.poll() is not None, 180,
                 what="worker not ready", detail=worker.text)
        assert worker.process.poll() is None, worker.text()
        # Celery's own tools reach it through the same settings (LSTMQ_BROKER_URL + the CA)
        ping = celery_inspect_ping({**env, "LSTMQ_BROKER_URL": url}, tmp_path)
        assert ping.returncode == 0 and "pong" in ping.stdout, ping.stdout + ping.stderr
        # without the CA, Celery's own connection is refused too (broker_use_ssl reached kombu)
        unchecked = celery_inspect_ping({**tls_env(), "LSTMQ_BROKER_URL": url}, tmp_path, timeout=5)
        assert "pong" not in unchecked.stdout and "CERTIFICATE_VERIFY_FAILED" in unchecked.stdout + unchecked.stderr
        # and it consumes: a tiny training job over TLS, end to end
        corpus = tmp_path / "tiny.txt"
        corpus.write_text("the door was locked and the key was gone\nthe key was in the door all along\n" * 20)
        result = lstmq("train", corpus, "--model", "tls", "--epochs", "1", "--wait", "--json", "--broker", url,
                       "--config", small_config, env=env, timeout=180)
        assert '"succeeded"' in result.stdout and "tls@1" in result.stdout, result.stdout + result.stderr
        assert "insecure" not in worker.text().lower(), worker.text()   # kombu's warning for rediss:// without options
    finally:
        worker.stop()


def exited(worker: Started, why: str, within: float = 20) -> None:
    """The worker exits by itself within `within` seconds (else it is stopped and the test fails)."""
    try:
        worker.process.wait(within)
    except subprocess.TimeoutExpired:
        worker.stop()
        raise AssertionError(f"the worker did not exit ({why}):\n{worker.text()}") from None
    worker.stop()


def test_a_worker_without_the_ca_exits_at_once_with_a_certificate_error(tls_server, tmp_path):
    url = f"rediss://127.0.0.1:{tls_server.port}/0"
    worker = run_worker(url, tls_env(), tmp_path / "worker.log")
    exited(worker, "no CA for the server's certificate")
    assert worker.process.returncode == EXIT_BROKER_REFUSED, worker.text()
    assert "certificate" in worker.text() and "Traceback" not in worker.text(), worker.text()


# -- passwords ------------------------------------------------------------------------------------
@pytest.mark.parametrize("userinfo, why", [(f":{WRONG}@", "wrong password"), (f"default:{WRONG}@", "WRONGPASS"),
                                           ("", "NOAUTH: no password")])
def test_a_worker_whose_credentials_are_refused_exits_at_once(password_server, tmp_path, userinfo, why):
    url = f"redis://{userinfo}127.0.0.1:{password_server.port}/0"
    started = time.monotonic()
    worker = run_worker(url, clean_env(), tmp_path / "worker.log")
    exited(worker, why)
    text = worker.text()
    assert worker.process.returncode == EXIT_BROKER_REFUSED, text
    assert f"lstmq-worker: Redis at redis://{userinfo.replace(WRONG, '***')}127.0.0.1:{password_server.port}/0 " \
           f"refused the credentials: " in text, text
    assert WRONG not in text and PASSWORD not in text and "Traceback" not in text, text
    assert time.monotonic() - started < 20


def test_lstmq_worker_reports_refused_credentials_without_the_password(password_server, tmp_path):
    """The launcher restarts a worker that exits (up to 5 times in 300 s); each exit says why."""
    url = f"redis://:{WRONG}@127.0.0.1:{password_server.port}/0"
    worker = Started([str(BIN / "lstmq-worker"), "--cpu", "--broker", url], clean_env(), tmp_path / "launcher.log",
                     cwd=tmp_path)
    try:
        wait_for(lambda: "status 3" in worker.text(), 30, what="no exit status 3 reported", detail=worker.text)
        text = worker.text()
        assert "refused the credentials" in text and WRONG not in text and "Traceback" not in text, text
    finally:
        worker.stop()


def test_cli_with_a_wrong_password_says_so_without_the_password(password_server):
    url = f"redis://:{WRONG}@127.0.0.1:{password_server.port}/0"
    for args, env in [(["--broker", url], clean_env()), ([], {**clean_env(), "LSTMQ_BROKER_URL": url})]:
        result = lstmq("status", *args, env=env, check=False, timeout=60)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "refused the credentials" in result.stderr and "redis://:***@127.0.0.1" in result.stderr, result.stderr
        assert WRONG not in result.stdout + result.stderr
        no_traceback(result)
    right = f"redis://:{PASSWORD}@127.0.0.1:{password_server.port}/0"
    lstmq("status", "--broker", right, timeout=60)


# -- a Redis that is not up yet ---------------------------------------------------------------------
def test_backoff_is_1_2_4_up_to_30_seconds():
    delays = run.backoff_delays()
    assert [next(delays) for _ in range(8)] == [1, 2, 4, 8, 16, 30, 30, 30]


def test_wait_for_broker_logs_each_attempt_and_retries(caplog):
    url = f"redis://:{WRONG}@127.0.0.1:{free_port()}/0"      # nothing listens there
    settings = load_settings(None, {"broker_url": url}, environ={})
    slept: list[float] = []

    class Enough(Exception):
        pass

    def sleep(seconds):
        slept.append(seconds)
        if len(slept) == 4:
            raise Enough

    logger = logging.getLogger("lstmq.test.locked_doors")
    with caplog.at_level(logging.INFO, logger=logger.name), pytest.raises(Enough):
        run.wait_for_broker(settings, logger, sleep=sleep)
    assert slept == [1, 2, 4, 8]
    messages = [record.getMessage() for record in caplog.records]
    assert [f"(attempt {n})" in message for n, message in enumerate(messages, 1)] == [True] * 4, messages
    assert all("is unreachable" in message and "redis://:***@127.0.0.1" in message and WRONG not in message
               for message in messages), messages


def test_wait_for_broker_raises_on_refused_credentials(password_server):
    settings = load_settings(None, {"broker_url": f"redis://:{WRONG}@127.0.0.1:{password_server.port}/0"}, environ={})
    with pytest.raises(BrokerUnavailable, match="refused the credentials") as raised:
        run.wait_for_broker(settings, logging.getLogger("lstmq.test.locked_doors"), sleep=lambda _: None)
    assert raised.value.reason == "credentials" and WRONG not in str(raised.value)


def test_a_worker_started_before_its_redis_waits_then_starts(tmp_path):
    port = free_port()
    url = f"redis://:{PASSWORD}@127.0.0.1:{port}/0"
    worker = run_worker(url, clean_env(), tmp_path / "worker.log")
    server = Server(tmp_path / "redis", "--port", str(port), "--bind", "127.0.0.1", "--requirepass", PASSWORD,
                    port=port)
    try:
        wait_for(lambda: "(attempt 2)" in worker.text() or worker.process.poll() is not None, 20,
                 what="no second attempt logged", detail=worker.text)
        assert worker.process.poll() is None, worker.text()
        server.start({"password": PASSWORD})
        wait_for(lambda: "ready: TensorFlow" in worker.text() or worker.process.poll() is not None, 180,
                 what="worker not ready after Redis came up", detail=worker.text)
        assert worker.process.poll() is None, worker.text()
        text = worker.text()
        assert f"Redis at redis://:***@127.0.0.1:{port}/0 is unreachable (attempt 1): " in text, text
        assert "retrying in 1 s" in text and "retrying in 2 s" in text, text
        assert "answers after" in text, text
        assert PASSWORD not in text, text        # nor in Celery's banner and logs
    finally:
        worker.stop()
        server.stop()
