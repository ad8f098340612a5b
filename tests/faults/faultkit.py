"""Helpers for the fault tests: a stack of real parts (redis-server, lstmq-worker processes, the
CLI), fast failure settings, and bounded waits. Every wait here has a time limit."""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from lstmq.shared.config import load_settings
from lstmq.shared.messages import Dispatcher, JobKind
from lstmq.shared.store import Store, keys
from tests.conftest import (BIN, SMALL_MODEL, SPAWNED, WorkerProcess, clean_env, lstmq,  # noqa: F401
                            read_jsonl, wait_for)   # read_jsonl, wait_for: for the tests
from tests.devstack import register_model

# Small network, quick polls; failure handling at its defaults unless a test says otherwise.
FAULT_SETTINGS = {**SMALL_MODEL, "poll_interval": 0.1}


def write_config(path: Path, **overrides) -> Path:
    path.write_text("".join(f"{key}: {json.dumps(value)}\n" for key, value in {**FAULT_SETTINGS, **overrides}.items()))
    return path


class Stack:
    """One redis-server URL, its store, and the CLI with a config file."""

    def __init__(self, url: str, config: Path):
        self.url, self.config = url, config
        self.store = Store.from_url(url, ttl=3600)

    def cli(self, *args, check=True, **kwargs) -> subprocess.CompletedProcess:
        return lstmq(*args, "--broker", self.url, "--config", self.config, check=check, **kwargs)

    def popen(self, *args, env: dict | None = None) -> subprocess.Popen:
        """The CLI as a background process (its own process group), stdout and stderr piped."""
        process = subprocess.Popen([str(BIN / "lstmq"), *map(str, args), "--broker", self.url, "--config",
                                    str(self.config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env=env or clean_env(), stdin=subprocess.DEVNULL, start_new_session=True)
        SPAWNED.append(process)   # killed after the test if still running (tests/conftest.py)
        return process

    def worker(self, log: Path, *extra: str) -> WorkerProcess:
        worker = WorkerProcess(self.url, log, "--config", str(self.config), *extra)
        worker.wait_ready()
        return worker

    def train(self, corpus: Path, name: str, epochs: int = 1) -> str:
        result = self.cli("train", corpus, "--model", name, "--epochs", str(epochs), "--wait", "--json", timeout=300)
        return json.loads(result.stdout)["model"]

    def register(self, artifact: bytes, name: str) -> str:
        """A model with random weights (the random_artifact fixture) as NAME@VERSION, registered
        straight into the store: for the tests whose subject is not training."""
        return f"{name}@{register_model(self.store, name, artifact)}"

    def submit_by_hand(self, chunks: dict[int, list[str] | None], send: bool = True) -> str:
        """A generate job on self.model stored and dispatched as the producer does (.txt lines),
        where a chunk given None has no stored input (as if it vanished: it had 2 lines); with
        send=False no message is sent."""
        settings = load_settings(self.config, {"broker_url": self.url}, environ={})
        params = settings.generation_params().replace(seed=3, words=4)
        name, version = self.store.registry.resolve(self.model)
        job = self.store.jobs.create(JobKind.GENERATE, params, model_name=name, version=version, model=self.model,
                                      seeds_file="by-hand.txt", seed_format="txt", submit_deadline=time.time() + 60)
        line = 1
        with Dispatcher(settings).chunks(job) as dispatch:
            for chunk, prompts in chunks.items():
                lines = prompts if prompts is not None else ["vanished", "vanished"]
                self.store.jobs.put_chunk(job, chunk, "".join(f"{prompt}\n" for prompt in lines).encode(), line,
                                          time.time() + 60)
                line += len(lines)
                if prompts is None:
                    self.store.redis.delete(keys.job_key(job, "chunk", chunk))
                if send:
                    dispatch(chunk)
        self.store.jobs.finish_submission(job, chunks=len(chunks), lines=line - 1)
        return job

    def status(self, job: str) -> dict:
        return json.loads(self.cli("status", job, "--json").stdout)

    def job(self, job: str):
        return self.store.jobs.get(job)


def seeds_file(path: Path, count: int, template: str = "holmes said that the {i} men were") -> Path:
    path.write_text("\n".join(template.format(i=i) for i in range(count)) + "\n")
    return path


def report(fault: str, seconds: float) -> None:
    """A figure for the record (shown with pytest -s): seconds from the fault to the final state."""
    print(f"\nfault figure: {fault}: final state {seconds:.1f}s after the fault")
