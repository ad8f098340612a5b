"""lstmq-worker: start one Celery worker process per GPU (or one CPU worker) and supervise them.

Each worker is a separate Python process whose environment has CUDA_VISIBLE_DEVICES set before
Python starts, so it sees exactly one GPU, and TF_FORCE_GPU_ALLOW_GROWTH=true so it takes GPU
memory as it needs it. The broker URL reaches the workers through their environment
(LSTMQ_BROKER_URL), never their command line, where `ps` would show its password. With a
metrics port (--metrics-port or the metrics_port setting), worker i serves Prometheus metrics on
PORT + i (LSTMQ_METRICS_PORT in its environment; see worker.metrics).

Stopping: SIGINT/SIGTERM are passed on (Celery's warm shutdown: the current chunk finishes). A
worker still busy shutdown_timeout seconds later is killed, and the chunk or training slice it
held is given back at once (dispatched again; its checkpoint keeps finished epochs); then
lstmq-worker exits 0.

A worker that dies unasked is restarted (after 1, 2, 4... s); one that dies more than
MAX_RESTARTS times in WINDOW_S stops them all, and lstmq-worker exits with that worker's status
(128 + N for signal N, as a shell reports it). A worker that exits 2 (bad settings) or 3 (Redis
refused its credentials or certificate, or may evict keys) is not restarted: restarting cannot
help, so lstmq-worker stops and exits with that status at once. How each worker ended is reported
as it is: "exited with status N" or "was killed by signal SIGNAME (N)"."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import click
import kombu.exceptions
import redis

from lstmq.shared.messages import QUEUES
from lstmq.worker.lifetime import PARENT_ENV


def visible_gpus() -> list[str]:
    """GPU indices from nvidia-smi, without importing TensorFlow; [] when there is none."""
    try:
        output = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in output.splitlines() if line.strip().isdigit()]


def parse_gpus(value: str) -> list[str]:
    gpus = [part.strip() for part in value.split(",") if part.strip()]
    if not gpus or not all(gpu.isdigit() for gpu in gpus):
        raise click.BadParameter(f"expected GPU indices like 0,1, got {value!r}", param_hint="--gpus")
    if len(set(gpus)) != len(gpus):
        raise click.BadParameter(f"GPU listed twice in {value!r}", param_hint="--gpus")
    return gpus


def parse_queues(value: str) -> str:
    queues = [part.strip() for part in value.split(",") if part.strip()]
    unknown = [queue for queue in queues if queue not in QUEUES]
    if not queues or unknown:
        raise click.BadParameter(f"queues are {', '.join(QUEUES)}; got {value!r}", param_hint="--queues")
    return ",".join(queues)


def module_command(module: str) -> list[str]:
    """`python -m MODULE` without the current directory on sys.path, so that a `worker.py`,
    `config.py` or `lstmq/` in the directory where an operator starts lstmq-worker is never
    imported instead of lstmq's (-P on Python 3.11+; the same by hand on 3.10)."""
    if sys.version_info >= (3, 11):
        return [sys.executable, "-P", "-m", module]
    return [sys.executable, "-c", f"import runpy, sys; del sys.path[0]; runpy.run_module({module!r}, "
                                  f"run_name='__main__', alter_sys=True)"]


def worker_commands(gpus: list[str] | None, queues: str, broker: str | None, config: str | None,
                    loglevel: str, prefix: str, metrics_port: int | None = None, cpu_workers: int = 1,
                    tf_threads: int | None = None) -> list[tuple[list[str], dict[str, str]]]:
    """Each worker's command line and environment: one per GPU in `gpus`, else `cpu_workers` CPU
    workers. With `metrics_port`, worker i serves its Prometheus metrics on metrics_port + i
    (LSTMQ_METRICS_PORT). Several CPU workers share the machine's cores: each gets its own set
    (LSTMQ_CPUS, applied by worker.run) and, unless `tf_threads` says otherwise, as many
    TensorFlow threads as it has cores (LSTMQ_TF_THREADS)."""
    base = dict(os.environ)
    base.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for own in ("LSTMQ_METRICS_PORT", "LSTMQ_GPU_INDEX", "LSTMQ_CPUS", PARENT_ENV):   # set per worker below
        base.pop(own, None)
    if tf_threads is not None:
        base["LSTMQ_TF_THREADS"] = str(tf_threads)
    slots = list(gpus) if gpus else [None] * cpu_workers
    core_sets = cpu_sets(cpu_workers) if not gpus and cpu_workers > 1 else []
    commands = []
    for index, gpu in enumerate(slots):
        env = dict(base)
        if metrics_port is not None:
            env["LSTMQ_METRICS_PORT"] = str(metrics_port + index)
        device = f"gpu{gpu}" if gpu is not None else ("cpu" if len(slots) == 1 else f"cpu{index}")
        env["CUDA_VISIBLE_DEVICES"] = gpu if gpu is not None else "-1"
        env["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"
        env["LSTMQ_DEVICE"] = device
        if gpu is not None:
            env["LSTMQ_GPU_INDEX"] = gpu        # the machine's index (inside the worker it is GPU 0)
        if core_sets:
            env["LSTMQ_CPUS"] = ",".join(map(str, core_sets[index]))
            env.setdefault("LSTMQ_TF_THREADS", str(len(core_sets[index])))
        if broker:
            env["LSTMQ_BROKER_URL"] = broker     # not on the command line: `ps` shows that to everyone
        env[PARENT_ENV] = str(os.getpid())       # the worker dies with this process (worker.lifetime)
        command = [*module_command("lstmq.worker.run"), "--name", f"{prefix}-{device}@%h", "--device", device,
                   "--queues", queues, "--loglevel", loglevel]
        if config:
            command += ["--config", config]
        commands.append((command, env))
    return commands


def cpu_sets(workers: int) -> list[list[int]]:
    """The cores this process may use, split into `workers` disjoint sets (as even as can be);
    with fewer cores than workers, the sets are single cores, shared round robin."""
    cores = sorted(os.sched_getaffinity(0))
    if workers >= len(cores):
        return [[cores[index % len(cores)]] for index in range(workers)]
    size, extra = divmod(len(cores), workers)
    sets, start = [], 0
    for index in range(workers):
        end = start + size + (1 if index < extra else 0)
        sets.append(cores[start:end])
        start = end
    return sets


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lstmq", prog_name="lstmq-worker")
@click.option("--gpus", help="GPU indices, one worker each (e.g. 0,1). Default: every GPU nvidia-smi lists, else one CPU worker.")
@click.option("--cpu", is_flag=True, help="Start CPU workers only (GPUs hidden): one, or --workers N.")
@click.option("--workers", "cpu_workers", type=click.IntRange(1, 1024), default=1, show_default=True,
              help="CPU workers to start (without GPUs, or with --cpu), each on its own share of the cores.")
@click.option("--tf-threads", type=click.IntRange(1, 1024), metavar="N",
              help="TensorFlow threads per worker (overrides tf_threads / LSTMQ_TF_THREADS; default with "
                   "--workers N: that worker's cores).")
@click.option("--queues", default=",".join(QUEUES), show_default=True, help="Queues to consume.")
@click.option("-b", "--broker", help="Redis URL (overrides broker_url / LSTMQ_BROKER_URL).")
@click.option("--config", "config", type=click.Path(dir_okay=False),
              help="Settings file (YAML); else $LSTMQ_CONFIG, ~/.config/lstmq/config.yaml, /etc/lstmq/config.yaml.")
@click.option("--loglevel", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.option("--name", "prefix", default="lstmq", show_default=True, help="Node name prefix (NAME-gpu0@host).")
@click.option("--metrics-port", type=click.IntRange(1, 65535), metavar="PORT",
              help="Serve Prometheus metrics at http://HOST:PORT/metrics (overrides metrics_port / "
                   "LSTMQ_METRICS_PORT); the worker of the i-th GPU listed uses PORT + i.")
def main(gpus, cpu, cpu_workers, tf_threads, queues, broker, config, loglevel, prefix, metrics_port):
    """Start lstmq workers: one Celery worker per GPU, each loading models once and consuming
    the `train` and `generate` queues."""
    if gpus and cpu:
        raise click.UsageError("--gpus and --cpu exclude each other")
    queues = parse_queues(queues)
    present = visible_gpus()
    chosen = None if cpu else (parse_gpus(gpus) if gpus else present)
    if chosen and cpu_workers > 1:
        raise click.UsageError("--workers N starts CPU workers: give --cpu (GPU workers are one per GPU)")
    missing = [gpu for gpu in chosen or [] if gpu not in present]
    if missing:
        found = f"nvidia-smi lists GPU {', '.join(present)}" if present else "nvidia-smi finds no GPU"
        raise click.UsageError(f"no GPU {', '.join(missing)} on this machine ({found}); use --gpus with "
                               f"those indices, or --cpu")
    from lstmq.shared.config import load_settings
    from lstmq.shared.errors import ConfigError
    from lstmq.shared.redact import redact
    try:
        # fail here, once, on a bad setting
        settings = load_settings(config, {"broker_url": broker, "metrics_port": metrics_port, "tf_threads": tf_threads})
    except ConfigError as error:
        raise click.ClickException(redact(str(error), broker)) from None
    port = settings.metrics_port
    count = len(chosen) if chosen else cpu_workers
    if port is not None and port + count - 1 > 65535:
        raise click.UsageError(f"metrics port {port} + {count - 1} (one port per worker) is above 65535")
    workers = []
    for command, env in worker_commands(chosen, queues, broker, config, loglevel.upper(), prefix, port,
                                        cpu_workers, tf_threads):
        served = f", metrics {metrics_url(int(env['LSTMQ_METRICS_PORT']))}" if port is not None else ""
        cores = f", cores {env['LSTMQ_CPUS']}" if "LSTMQ_CPUS" in env else ""
        threads = f", {env['LSTMQ_TF_THREADS']} TensorFlow threads" if "LSTMQ_TF_THREADS" in env else ""
        click.echo(f"lstmq-worker: starting {command[command.index('--name') + 1]} "
                   f"(CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']}{cores}{threads}, queues {queues}{served})",
                   err=True)
        workers.append(Supervised(command, env))
    sys.exit(supervise(workers, settings.shutdown_timeout,
                       lambda names, reason, verb="killed": give_back(settings, names, reason, verb)))


def metrics_url(port: int) -> str:
    """Where a worker serves its metrics (it listens on every interface of this host)."""
    return f"http://{os.uname().nodename}:{port}/metrics"


def give_back(settings, names: list[str], reason: str, verb: str = "killed") -> None:
    """The Celery workers `names` (node names) died, or were killed, holding work: each attempt is
    lost, as `reason` says, and the work is dispatched again at once (or, lost past
    redispatch_limit times, recorded failed); not after its lease lapses."""
    from lstmq.shared.messages import Dispatcher, JobKind
    from lstmq.shared.store import Store
    from lstmq.shared.store.jobs import TRAIN

    store, dispatcher = Store.from_settings(settings), Dispatcher(settings)
    try:
        for name in names:
            held = set(store.jobs.open_attempts(f"{name} "))
            announced = store.workers.holding(name)
            if announced is not None:
                held.add(announced)
            for job, member in sorted(held):
                what = "training" if member == TRAIN else f"chunk {member}"
                outcome = store.jobs.attempt_ended(job, member, f"{name} ", settings.redispatch_limit,
                                                   f"its worker {name} {reason}", verb)
                if outcome == "redispatch":
                    if member == TRAIN:
                        dispatcher.train(job)
                    else:
                        dispatcher.send(JobKind.GENERATE, job=job, chunk=int(member))
                    click.echo(f"lstmq-worker: {name} {reason}; job {job}: {what}: dispatched again", err=True)
                elif outcome == "failed":
                    click.echo(f"lstmq-worker: {name} {reason}; job {job}: {what}: lost its worker too often, "
                               f"recorded failed", err=True)
            store.workers.release(name)
            store.workers.leave(name)
    finally:
        store.redis.close()


def describe_exit(code: int) -> str:
    """How a worker process ended, from Popen.returncode (negative: killed by that signal)."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "an unknown signal"
        return f"was killed by signal {name} ({-code})"
    if code == 0:
        return "exited with status 0 without being asked to stop"
    return f"exited with status {code}"


def exit_status(code: int) -> int:
    """lstmq-worker's own exit status for a worker that died: its status, 128 + N for signal N,
    and 1 for a status 0 (it died although nobody asked it to stop)."""
    if code < 0:
        return 128 - code
    return code or 1


class Supervised:
    """One worker process, restarted when it dies unexpectedly (the kernel's OOM killer, a crash
    in native code, a Celery "Unrecoverable error"); an undecodable queue entry no longer takes it
    down (worker/transport.py sets such entries aside)."""

    MAX_RESTARTS, WINDOW_S = 5, 300.0

    def __init__(self, command: list[str], env: dict[str, str]):
        self.command, self.env = command, env
        self.crashes: list[float] = []
        self.restart_at: float | None = None
        self.process: subprocess.Popen | None = self.start()

    def start(self) -> subprocess.Popen:
        # its own process group: a stop that runs out of time kills the worker with its pool
        return subprocess.Popen(self.command, env=self.env, start_new_session=True)

    @property
    def name(self) -> str:
        return self.command[self.command.index("--name") + 1]

    @property
    def node(self) -> str:
        """The Celery node name, as the worker itself spells it (%h: this host)."""
        return self.name.replace("%h", os.uname().nodename)


FINAL_EXITS = (2, 3)   # bad settings; Redis refused the credentials or certificate, or may evict keys


def supervise(workers: list[Supervised], shutdown_timeout: float = 60.0,
              give_back=lambda names, reason, verb="killed": None) -> int:
    """Run the workers until they stop; returns lstmq-worker's exit status. `give_back(names,
    reason, verb)`: hand back at once the work that dead (or killed) workers held."""

    def hand_back(names: list[str], reason: str, verb: str = "killed") -> None:
        try:
            give_back(names, reason, verb)
        except (redis.exceptions.RedisError, kombu.exceptions.KombuError) as error:
            # Redis away: the lease lapses and another worker takes the work
            click.echo(f"lstmq-worker: could not give the work back ({error}); its lease will lapse "
                       f"and another worker will take it", err=True)

    stopping = False
    stop_deadline = None

    def forward(signum, _frame):
        nonlocal stopping, stop_deadline
        if not stopping:
            stop_deadline = time.monotonic() + shutdown_timeout
        stopping = True
        for worker in workers:
            worker.restart_at = None
            if worker.process is not None and worker.process.poll() is None:
                worker.process.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    status = 0
    while any(worker.process is not None or worker.restart_at is not None for worker in workers):
        now = time.monotonic()
        if stopping and stop_deadline is not None and now >= stop_deadline:
            busy = [worker for worker in workers if worker.process is not None and worker.process.poll() is None]
            for worker in busy:
                click.echo(f"lstmq-worker: {worker.name} still busy {shutdown_timeout:g}s after the stop; "
                           f"killing it and giving its work back", err=True)
                try:
                    os.killpg(worker.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                worker.process.wait()
            if busy:
                hand_back([worker.node for worker in busy], f"was still busy {shutdown_timeout:g}s after the stop",
                          verb="lost")
            stop_deadline = None
        for worker in workers:
            if worker.restart_at is not None and now >= worker.restart_at and not stopping:
                click.echo(f"lstmq-worker: restarting {worker.name}", err=True)
                worker.restart_at = None
                worker.process = worker.start()
            if worker.process is None or worker.process.poll() is None:
                continue
            code = worker.process.returncode
            worker.process = None
            if code != 0 and code not in FINAL_EXITS:   # died holding work, maybe: out again now, not at lease lapse
                hand_back([worker.node], describe_exit(code), verb="killed" if code < 0 else "lost")
            if stopping:
                continue
            if code in FINAL_EXITS:
                click.echo(f"lstmq-worker: {worker.name} {describe_exit(code)}; restarting cannot help; stopping",
                           err=True)
                status = code
                forward(signal.SIGTERM, None)
                continue
            worker.crashes = [t for t in worker.crashes if now - t < Supervised.WINDOW_S] + [now]
            if len(worker.crashes) > Supervised.MAX_RESTARTS:
                click.echo(f"lstmq-worker: {worker.name} {describe_exit(code)}; it died {len(worker.crashes)} times "
                           f"in {Supervised.WINDOW_S:.0f}s; stopping", err=True)
                status = exit_status(code)
                forward(signal.SIGTERM, None)
                continue
            delay = min(2 ** (len(worker.crashes) - 1), 30)
            click.echo(f"lstmq-worker: {worker.name} {describe_exit(code)}; restarting in {delay}s", err=True)
            worker.restart_at = now + delay
        time.sleep(0.2)
    return status


if __name__ == "__main__":
    main()
