"""lstmq-worker: start one Celery worker process per GPU (or one CPU worker) and supervise them.

Each worker is a separate Python process whose environment has CUDA_VISIBLE_DEVICES set before
Python starts, so it sees exactly one GPU, and TF_FORCE_GPU_ALLOW_GROWTH=true so it takes GPU
memory as it needs it. SIGINT/SIGTERM are passed on (Celery's warm shutdown); when one worker
exits, the others are stopped and lstmq-worker exits with its status."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import click

from lstmq.shared.messages import QUEUES


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
                    loglevel: str, prefix: str) -> list[tuple[list[str], dict[str, str]]]:
    base = dict(os.environ)
    base.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    commands = []
    for gpu in gpus if gpus else [None]:
        env = dict(base)
        device = f"gpu{gpu}" if gpu is not None else "cpu"
        env["CUDA_VISIBLE_DEVICES"] = gpu if gpu is not None else "-1"
        env["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"
        env["LSTMQ_DEVICE"] = device
        command = [*module_command("lstmq.worker.run"), "--name", f"{prefix}-{device}@%h", "--device", device,
                   "--queues", queues, "--loglevel", loglevel]
        if broker:
            command += ["--broker", broker]
        if config:
            command += ["--config", config]
        commands.append((command, env))
    return commands


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--gpus", help="GPU indices, one worker each (e.g. 0,1). Default: every GPU nvidia-smi lists, else one CPU worker.")
@click.option("--cpu", is_flag=True, help="Start one CPU worker (GPUs hidden).")
@click.option("--queues", default=",".join(QUEUES), show_default=True, help="Queues to consume.")
@click.option("--broker", help="Redis URL (overrides broker_url / LSTMQ_BROKER_URL).")
@click.option("--config", "config", type=click.Path(dir_okay=False), help="Settings file (YAML).")
@click.option("--loglevel", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.option("--name", "prefix", default="lstmq", show_default=True, help="Node name prefix (NAME-gpu0@host).")
def main(gpus, cpu, queues, broker, config, loglevel, prefix):
    """Start lstmq workers: one Celery worker per GPU, each loading models once and consuming
    the `train` and `generate` queues."""
    if gpus and cpu:
        raise click.UsageError("--gpus and --cpu exclude each other")
    queues = parse_queues(queues)
    chosen = None if cpu else (parse_gpus(gpus) if gpus else visible_gpus())
    from lstmq.shared.config import load_settings
    from lstmq.shared.errors import ConfigError
    try:
        load_settings(config, {"broker_url": broker})   # fail here, once, on a bad setting
    except ConfigError as error:
        raise click.ClickException(str(error)) from None
    workers = []
    for command, env in worker_commands(chosen, queues, broker, config, loglevel.upper(), prefix):
        click.echo(f"lstmq-worker: starting {command[command.index('--name') + 1]} "
                   f"(CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']}, queues {queues})", err=True)
        workers.append(Supervised(command, env))
    sys.exit(supervise(workers))


class Supervised:
    """One worker process, restarted when it dies unexpectedly (Celery's main process can be
    taken down by an undecodable message on the broker, or by the kernel's OOM killer)."""

    MAX_RESTARTS, WINDOW_S = 5, 300.0

    def __init__(self, command: list[str], env: dict[str, str]):
        self.command, self.env = command, env
        self.crashes: list[float] = []
        self.restart_at: float | None = None
        self.process: subprocess.Popen | None = subprocess.Popen(command, env=env)

    @property
    def name(self) -> str:
        return self.command[self.command.index("--name") + 1]


def supervise(workers: list[Supervised]) -> int:
    stopping = False

    def forward(signum, _frame):
        nonlocal stopping
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
        for worker in workers:
            if worker.restart_at is not None and now >= worker.restart_at and not stopping:
                click.echo(f"lstmq-worker: restarting {worker.name}", err=True)
                worker.restart_at = None
                worker.process = subprocess.Popen(worker.command, env=worker.env)
            if worker.process is None or worker.process.poll() is None:
                continue
            code = worker.process.returncode
            worker.process = None
            if stopping:
                continue
            worker.crashes = [t for t in worker.crashes if now - t < Supervised.WINDOW_S] + [now]
            if len(worker.crashes) > Supervised.MAX_RESTARTS:
                click.echo(f"lstmq-worker: {worker.name} exited with status {code} {len(worker.crashes)} times in "
                           f"{Supervised.WINDOW_S:.0f}s; stopping", err=True)
                status = code or 1
                forward(signal.SIGTERM, None)
                continue
            delay = min(2 ** (len(worker.crashes) - 1), 30)
            click.echo(f"lstmq-worker: {worker.name} exited with status {code}; restarting in {delay}s", err=True)
            worker.restart_at = now + delay
        time.sleep(0.2)
    return status


if __name__ == "__main__":
    main()
