"""Million-line jobs (issue 18): the producer alone, each way; Redis memory; producer memory from
100,000 to 10,000,000 lines; end to end against the worker alone; several workers fed by one producer.

Everything runs as a user runs it: a throwaway redis-server and one `lstmq-worker --cpu`
(tests/devstack.py's LocalStack), a tiny model trained with `lstmq train` (Embedding(32), LSTM(48),
one epoch on 1,500 corpus lines: the figures here are about lstmq around the model), and seed files
of realistic prompts: 3 to 12 words each (uniformly), drawn with corpus frequencies from the words
of those 1,500 lines (every word in the model's vocabulary), a fixed random seed per file. Jobs of
--lines / 10 ("small") and --lines ("big") lines, and of --rss-lines when given. For each job:

1. submission: `lstmq generate SEEDS --model million --words W --detach --json` runs while the
   worker is paused (SIGSTOP to every process group of the lstmq-worker tree: the supervisor's and
   each Celery worker's, which lstmq-worker starts in sessions of their own; SIGCONT after, also on
   failure), so the producer runs alone with Redis. The command runs in a child Python that writes,
   when it exits, its own CPU time (os.times(): user + system) and peak resident memory (VmHWM).
   Measured: the command's wall time (start of the child to its exit) and CPU time;
2. the job: the worker is continued and runs it, the producer idle (this process polls the job
   record every 0.1 s). Worker prompts/s: the record's prompts_done over finished - started;
3. collection: once the job has finished, `lstmq collect JOB -o OUT --json` in the same kind of
   child, the worker paused again: wall time, CPU time, peak RSS. OUT is checked (one line per seed
   line, ids 1..N in input order, each prompt the seed line as written; the script fails otherwise);
4. Redis: the server's used_memory sampled every 20 ms from before the submission to the job's end,
   peak minus the level before the job (the model and corpus blobs stay), against the raw bytes of
   the prompts and continuations (UTF-8, as in OUT); also INFO's used_memory_peak minus that level
   (the same peak, counted by Redis), when the job raised it: it is the server's peak since it
   started, which the training run may hold for a small job ("n/a"). Then the job is removed.

Figures, against the targets of issue 18 (for the big job):
- submission and collection lines/s and CPU microseconds per line, each for the whole command
  (lines / wall, CPU / lines) and marginal: (big - small) lines over (big - small) seconds or CPU
  seconds, which cancels the fixed cost of a command (Python start-up, imports, connecting):
  >= 1,000,000 lines/s, <= 1 us of CPU per line;
- Redis job peak / raw bytes <= 2;
- producer peak RSS, submission and collection, at every job size, and largest / smallest: flat
  means <= 1.25 (the 10,000,000-line job only with --rss-lines 10000000: 10 to 20 minutes more on
  2 cores, mostly the worker's);
- end to end: `lstmq generate SEEDS --model M -o OUT --json` (attached: it submits, waits and
  writes OUT as chunks finish) on the big seed file with the worker running: big lines / its wall
  time, over the worker's own prompts/s on the same file, model and words with the producer
  detached and idle (step 2 of a job as above): >= 0.95. On a shared 2-core machine the worker's
  rate swings by up to a third from one job to the next (its chunks' own decoding time, not the
  gaps between them), so both run --repeats times (default 2), interleaved, and the fastest of
  each is kept; the big job above is the first detached run. For reading beside it, the same
  figure within one attached job (free of that noise, but blind to the producer slowing the
  worker down): the job's worker time (finished - started) over the command's wall time. By
  default the tiny model and --words (15,000 to 25,000 prompts/s on 2 cores: a job of 1,000,000
  lines lasts about a minute, a command's start-up about 1% of it); --e2e-model default instead
  registers a network of the default size (Embedding(100), LSTM(150), the whole corpus's
  vocabulary) with random weights and uses --e2e-words (default 7): it warms the worker (small
  jobs of small chunks on the small seed file, until the worker logged that it loaded the model),
  then runs its own detached and attached jobs (about 2,000 prompts/s on 2 cores: some 8 minutes
  a job of 1,000,000 lines);
- three workers on one machine fed by one producer: the single worker is stopped, `lstmq-worker
  --cpu --workers 3` started on the same Redis, warmed (until each of the three logged that it
  loaded the model), and the end-to-end figure measured again the same way, with its own detached
  runs for the workers' rate. Only with os.cpu_count() >= 4 (or --three-workers on): else the row
  says n/a and a line says why.

Timings are printed against the targets, never asserted: they depend on the machine and its load.
A table (figure, measured, target, met), then one JSON line with every figure.

    python -m benchmarks.million [--lines 1000000] [--rss-lines N] [--words 1] [--chunk-size N]
                                 [--e2e-model tiny|default] [--e2e-words N] [--repeats 2]
                                 [--three-workers auto|on|off] [--quick]

--quick: 20,000 lines (and 2,000), one end-to-end run: the smoke test in tests/test_million.py.
Everything it starts is stopped at the end, also on failure, Ctrl-C or SIGTERM.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.common import RANDOM_SEED, StepFailed
from tests import devstack

MODEL_NAME = "million"
E2E_MODEL_NAME = "million-e2e"     # --e2e-model default
CORPUS_LINES = (60, 1560)          # the slice of the corpus the tiny model is trained on
TINY_MODEL = {"embedding_dim": 32, "lstm_units": 48, "epochs": 1, "batch_size": 32, "early_stopping_patience": 0,
              "poll_interval": 0.2}
PROMPT_WORDS = (3, 12)             # words per prompt, inclusive
SEED_BLOCK_LINES = 200_000         # seed files are written this many lines at a time
MEMORY_SAMPLE_S = 0.02
POLL_S = 0.1                       # how often this process reads a running job's record
THREE_WORKERS, THREE_WORKERS_MIN_CPUS = 3, 4
WARM_ROUNDS = 5                    # warm-up jobs at most, until every worker has loaded the model
TARGETS = {"lines_per_s": 1_000_000, "cpu_us_per_line": 1.0, "redis_ratio": 2.0, "rss_flat": 1.25,
           "end_to_end": 0.95}
# --quick: the smoke test (tests/test_million.py)
QUICK = {"lines": 20_000, "rss_lines": 0, "repeats": 1}

# Runs the lstmq CLI and, at exit, writes this process's CPU seconds (user + system) and peak resident
# memory (VmHWM, kB) to $MILLION_BENCH_REPORT_FILE as JSON (nothing more imported into the measured process).
RSS_WRAPPER = """
import atexit, os, sys
def report():
    times = os.times()
    peak = [line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM:')]
    open(os.environ['MILLION_BENCH_REPORT_FILE'], 'w').write(
        '{"cpu_s": %r, "rss_kb": %s}' % (times.user + times.system, peak[0] if peak else 'null'))
atexit.register(report)
from lstmq.producer.cli import main
sys.argv = ['lstmq'] + sys.argv[1:]
main()
"""


def parse_arguments():
    parser = common.argument_parser(__doc__)
    parser.add_argument("--lines", type=int, default=1_000_000,
                        help="seed lines of the big job (default 1,000,000); the small job has a tenth")
    parser.add_argument("--rss-lines", type=int, default=0,
                        help="add a job of this many lines (e.g. 10000000) for the memory figures (default: none)")
    common.add_words(parser, 1)
    common.add_chunk_size(parser)
    parser.add_argument("--e2e-model", choices=("tiny", "default"), default="tiny",
                        help="the end-to-end figure on the tiny model (default, the big job's worker rate) or on a "
                             "network of the default size with random weights (its own detached and attached big jobs)")
    parser.add_argument("--e2e-words", type=int,
                        help="words per prompt for the end-to-end figure (default: --words with the tiny model, "
                             "7 with --e2e-model default)")
    parser.add_argument("--three-workers", choices=("auto", "on", "off"), default="auto",
                        help=f"{THREE_WORKERS} workers fed by one producer: auto runs it with "
                             f"os.cpu_count() >= {THREE_WORKERS_MIN_CPUS} (default auto)")
    common.add_repeats(parser, 2, "end-to-end runs, attached and detached each (the big job is the first detached "
                                  "one where it can be)")
    common.add_quick(parser, "20,000 lines (and 2,000), one end-to-end run")
    common.add_worker_log(parser)
    arguments = common.parse(parser, QUICK, positive=("words", "repeats"))
    if arguments.lines < 10:
        parser.error("--lines must be >= 10")
    if arguments.rss_lines and arguments.rss_lines <= arguments.lines:
        parser.error("--rss-lines must be more than --lines")
    if arguments.e2e_words is None:
        arguments.e2e_words = arguments.words if arguments.e2e_model == "tiny" else 7
    if arguments.e2e_words < 1:
        parser.error("--e2e-words must be >= 1")
    return arguments


# --- child processes --------------------------------------------------------------------------------
def run_cli(arguments: list[str], scratch: Path, timeout: float = 7200) -> dict[str, Any]:
    """Run `lstmq ARGUMENTS` in a child Python; its stdout, stderr lines with the time each came,
    exit status, wall seconds, end time, CPU seconds and peak RSS (kB). The child is killed if this
    process stops waiting for it (an error, Ctrl-C, SIGTERM)."""
    report_file = scratch / f"report-{time.monotonic_ns()}"
    environment = common.child_environment(MILLION_BENCH_REPORT_FILE=str(report_file))
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-c", RSS_WRAPPER, *map(str, arguments)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=environment)
    stderr: list[tuple[float, str]] = []
    try:
        def read_stderr() -> None:
            for line in process.stderr:
                stderr.append((time.monotonic(), line.rstrip("\n")))

        reader = threading.Thread(target=read_stderr, daemon=True)
        reader.start()
        stdout = process.stdout.read()
        process.wait(timeout)
        ended_wall, ended = time.time(), time.monotonic()
        reader.join(10)
    except BaseException:
        process.kill()
        process.wait()
        raise
    report = json.loads(report_file.read_text()) if report_file.exists() else {}
    report_file.unlink(missing_ok=True)
    return {"stdout": stdout, "stderr": stderr, "status": process.returncode, "started": started, "ended": ended,
            "ended_wall": ended_wall, "seconds": ended - started, "cpu_s": report.get("cpu_s"),
            "rss_kb": report.get("rss_kb")}


def cli_json(result: dict[str, Any], what: str) -> dict[str, Any]:
    if result["status"] != 0:
        text = "\n".join([line for _, line in result["stderr"][-40:]] + result["stdout"].splitlines()[-5:])
        raise StepFailed(f"`lstmq {what}` exited with status {result['status']}:\n{text}")
    return json.loads(result["stdout"].strip().splitlines()[-1])


def process_table() -> dict[int, tuple[int, int]]:
    """Every process: pid -> (parent pid, process group), from /proc/PID/stat."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path("/proc", entry, "stat").read_text()
        except OSError:      # gone meanwhile
            continue
        fields = text[text.rindex(")") + 2:].split()   # after "pid (comm) ": state, ppid, pgrp, ...
        table[int(entry)] = (int(fields[1]), int(fields[2]))
    return table


def worker_groups(worker: subprocess.Popen) -> list[int]:
    """The process groups of an lstmq-worker tree: the supervisor's own (it is a session leader)
    and those of the processes below it (each Celery worker is a session of its own, its pool in it)."""
    table = process_table()
    below, frontier = set(), [worker.pid]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, _group) in table.items():
            if ppid == parent and pid not in below:
                below.add(pid)
                frontier.append(pid)
    return [worker.pid] + sorted({table[pid][1] for pid in below} - {worker.pid})


@contextlib.contextmanager
def paused(worker: subprocess.Popen):
    """The whole lstmq-worker tree stopped (SIGSTOP), and continued (SIGCONT) on leaving, whatever happened."""
    stopped: list[int] = []
    try:
        for group in worker_groups(worker):
            os.killpg(group, signal.SIGSTOP)
            stopped.append(group)
        yield
    finally:
        for group in reversed(stopped):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGCONT)


def wait_for_workers(worker: subprocess.Popen, log: Path, count: int, timeout: float = common.WORKER_READY_TIMEOUT_S
                     ) -> float:
    """Seconds until `count` worker processes logged that they are ready (their pool imported TensorFlow)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if worker.poll() is not None:
            raise StepFailed(f"lstmq-worker exited with status {worker.returncode} before it was ready")
        if len(re.findall(r"ready: TensorFlow", log.read_text(encoding="utf-8", errors="replace"))) >= count:
            return time.monotonic() - started
        time.sleep(0.2)
    raise StepFailed(f"{count} lstmq-worker process(es) were not ready after {timeout:.0f}s")


class MemorySampler:
    """The Redis server's used_memory, sampled every MEMORY_SAMPLE_S in a thread: its maximum."""

    def __init__(self, client):
        self.client, self.peak, self.stopped = client, 0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stopped.wait(MEMORY_SAMPLE_S):
            self.peak = max(self.peak, int(self.client.info("memory")["used_memory"]))

    def __enter__(self) -> MemorySampler:
        self.thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.stopped.set()
        self.thread.join(5)


# --- the run ------------------------------------------------------------------------------------------
@dataclass
class Bench:
    arguments: Any
    directory: Path
    store: Any
    broker: str
    worker: subprocess.Popen
    pool: list[str]                                   # the prompts' words, with corpus frequencies
    seed_files: dict[int, Path] = field(default_factory=dict)

    def seeds(self, lines: int) -> Path:
        """A seed file of `lines` prompts (written once)."""
        if lines not in self.seed_files:
            self.seed_files[lines] = write_seeds(self.directory / f"seeds-{lines}.txt", self.pool, lines,
                                                 RANDOM_SEED + lines)
        return self.seed_files[lines]

    def generate(self, seeds: Path, model: str, words: int, *options: str, chunk_size: int | None = None
                 ) -> dict[str, Any]:
        chunk_size = chunk_size or self.arguments.chunk_size
        chunking = ["--chunk-size", str(chunk_size)] if chunk_size else []
        return run_cli(["generate", seeds, "--model", model, "--words", words, *chunking, "--json", *options,
                        "--broker", self.broker], self.directory)

    def submit(self, seeds: Path, model: str, words: int, alone: bool = True, chunk_size: int | None = None
               ) -> tuple[dict[str, Any], dict[str, Any]]:
        """`lstmq generate --detach` (the worker paused while it runs when `alone`): the run and its summary."""
        with paused(self.worker) if alone else contextlib.nullcontext():
            result = self.generate(seeds, model, words, "--detach", chunk_size=chunk_size)
            summary = cli_json(result, "generate --detach")
            if alone and self.store.jobs.get(summary["job"]).started is not None:
                raise StepFailed(f"job {summary['job']} started while it was submitted: the worker was not paused")
        said = [line for _, line in result["stderr"]]
        if not any(re.match(r"lstmq: job \w+: submitting ", line) for line in said) or not any(
                re.match(r"lstmq: job \w+: [\d,]+ lines in [\d,]+ chunk\(s\) sent", line) for line in said):
            raise StepFailed("`lstmq generate --detach` did not say when the job was made and when it was sent:\n"
                             + "\n".join(said[:20]))
        return result, summary

    def finished(self, job: str, lines: int):
        """The job's record once it has ended (polled); StepFailed unless it succeeded with every line a prompt."""
        from lstmq.shared.store import JobStatus

        deadline = time.monotonic() + 300 + lines / 500
        while True:
            record = self.store.jobs.get(job)
            if record.status.finished:
                break
            if self.worker.poll() is not None:
                raise StepFailed(f"lstmq-worker exited with status {self.worker.returncode} during job {job}")
            if time.monotonic() > deadline:
                raise StepFailed(f"job {job} did not finish in time: {record.lines_done:,} of {lines:,} lines done")
            time.sleep(POLL_S)
        if record.status is not JobStatus.SUCCEEDED:
            raise StepFailed(f"job {job} {record.status.value}: {record.error}")
        if record.lines != lines or record.prompts != lines or record.prompts_done != lines:
            raise StepFailed(f"job {job}: {record.lines:,} lines, {record.prompts:,} prompts found, "
                             f"{record.prompts_done:,} done; expected {lines:,} of each")
        return record

    def remove(self, job: str) -> None:
        self.store.jobs.remove(job)

    def warm(self, model: str, words: int, workers: int, log: Path) -> None:
        """Small jobs of small chunks until each of the `workers` worker processes logged that it loaded
        `model` (it traces its decoder then too), at most WARM_ROUNDS of them."""
        small = max(self.arguments.lines // 10, 1)
        spec = model if "@" in model else f"{model}@"
        for _ in range(WARM_ROUNDS):
            _, summary = self.submit(self.seeds(small), model, words, alone=False,
                                     chunk_size=max(-(-small // (4 * workers)), 1))
            self.finished(summary["job"], small)
            self.remove(summary["job"])
            if log.read_text(encoding="utf-8", errors="replace").count(f"loaded model {spec}") >= workers:
                return
        print(f"million: WARNING: fewer than {workers} worker(s) logged loading {model} after {WARM_ROUNDS} "
              f"warm-up jobs", file=sys.stderr)


def write_seeds(path: Path, pool: list[str], lines: int, seed: int) -> Path:
    """`lines` prompts of PROMPT_WORDS words each (uniformly), words drawn from `pool` (so with its frequencies)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    spaced = np.array([word + " " for word in pool], dtype=object)
    ended = np.array([word + "\n" for word in pool], dtype=object)
    with path.open("w", encoding="utf-8") as stream:
        for start in range(0, lines, SEED_BLOCK_LINES):
            lengths = rng.integers(PROMPT_WORDS[0], PROMPT_WORDS[1] + 1, size=min(SEED_BLOCK_LINES, lines - start))
            picks = rng.integers(0, len(pool), size=int(lengths.sum()))
            tokens = spaced[picks]
            last = np.cumsum(lengths) - 1
            tokens[last] = ended[picks[last]]
            stream.write("".join(tokens.tolist()))
    return path


def check_output(output: Path, seeds: Path, lines: int) -> int:
    """OUT has one line per seed line, ids 1..N in input order, each prompt the seed line as written;
    StepFailed otherwise. Returns the UTF-8 bytes of its prompts and continuations."""
    raw = count = 0
    with output.open(encoding="utf-8") as results, seeds.open(encoding="utf-8") as prompts:
        for count, line in enumerate(results, start=1):
            record, prompt = json.loads(line), prompts.readline().rstrip("\n")
            if record["id"] != count or record["prompt"] != prompt:
                raise StepFailed(f"{output.name}: line {count} is id {record['id']!r}, prompt {record['prompt']!r}; "
                                 f"expected id {count}, prompt {prompt!r}")
            raw += len(record["prompt"].encode()) + len(record["continuation"].encode())
    if count != lines:
        raise StepFailed(f"{output.name}: {count:,} lines, expected {lines:,}")
    return raw


def megabytes(kb: int | None) -> float | None:
    return round(kb / 1024, 1) if kb else None


def sized_job(bench: Bench, lines: int) -> dict[str, Any]:
    """Submit alone, run, collect alone, check; the figures of one job size."""
    seeds = bench.seeds(lines)
    memory = bench.store.redis.info("memory")
    baseline, peak_before = int(memory["used_memory"]), int(memory["used_memory_peak"])
    with MemorySampler(bench.store.redis) as sampler:
        submitted, summary = bench.submit(seeds, MODEL_NAME, bench.arguments.words)
        job = summary["job"]
        record = bench.finished(job, lines)
    peak_info = int(bench.store.redis.info("memory")["used_memory_peak"])
    output = bench.directory / f"out-{lines}.jsonl"
    with paused(bench.worker):
        collected = run_cli(["collect", job, "-o", output, "--json", "--broker", bench.broker], bench.directory)
    written = cli_json(collected, "collect")
    if written["lines"] != lines or written["status"] != "succeeded":
        raise StepFailed(f"`lstmq collect {job}` wrote {written['lines']} lines ({written['status']}), expected {lines}")
    raw = check_output(output, seeds, lines)
    figures = {
        "lines": lines, "job": job, "chunks": record.chunks, "seed_bytes": seeds.stat().st_size,
        "submission_seconds": round(submitted["seconds"], 3), "submission_cpu_s": round(submitted["cpu_s"], 3),
        "submission_rss_mb": megabytes(submitted["rss_kb"]),
        "collection_seconds": round(collected["seconds"], 3), "collection_cpu_s": round(collected["cpu_s"], 3),
        "collection_rss_mb": megabytes(collected["rss_kb"]),
        "worker_seconds": round(record.finished - record.started, 2),
        "worker_prompts_per_s": round(record.prompts_done / (record.finished - record.started)),
        "raw_bytes": raw, "output_bytes": output.stat().st_size, "redis_before": baseline,
        "redis_peak_sampled": sampler.peak, "redis_job_peak": sampler.peak - baseline,
        "redis_ratio": round((sampler.peak - baseline) / raw, 3),
        "redis_used_memory_peak": peak_info,
        # INFO's peak is the server's since it started: it tells about this job only when the job raised it
        "redis_info_ratio": round((peak_info - baseline) / raw, 3) if peak_info > peak_before else None,
    }
    output.unlink()
    bench.remove(job)
    return figures


def end_to_end(bench: Bench, lines: int, model: str, words: int, alone_rates: tuple[float, ...] = (),
               warm: tuple[int, Path] | None = None) -> dict[str, Any]:
    """`lstmq generate -o OUT` on the big seed file, attached, against the workers' own prompts/s on the
    same file, model and words (a detached job, the workers paused while it is submitted), --repeats
    times each, interleaved (a noisy machine's slow spells fall on both alike), the fastest of each
    kept. `alone_rates`: such rates measured already (the big job's). `warm`: (workers, their log):
    small jobs first, until every worker has loaded the model and traced its decoder."""
    seeds = bench.seeds(lines)
    if warm:
        bench.warm(model, words, *warm)
    alone, runs = list(alone_rates), []
    output = bench.directory / "end-to-end.jsonl"
    for repeat in range(bench.arguments.repeats):
        if len(alone) <= repeat:
            _, summary = bench.submit(seeds, model, words)
            record = bench.finished(summary["job"], lines)
            alone.append(record.prompts_done / (record.finished - record.started))
            bench.remove(summary["job"])
        result = bench.generate(seeds, model, words, "-o", output)
        summary = cli_json(result, "generate -o")
        record = bench.finished(summary["job"], lines)
        check_output(output, seeds, lines)
        output.unlink()
        bench.remove(summary["job"])
        busy = record.finished - record.started
        runs.append({"job": summary["job"], "seconds": round(result["seconds"], 2),
                     "lines_per_s": round(lines / result["seconds"]), "worker_seconds": round(busy, 2),
                     # how much of the command's wall time the workers spent on its job (start-up, tail excluded)
                     "busy_ratio": round(busy / result["seconds"], 3),
                     # how long after the job's last chunk finished the command ended (OUT's rest, the rename)
                     "tail_seconds": round(result["ended_wall"] - record.finished, 2),
                     "cpu_s": round(result["cpu_s"], 2), "rss_mb": megabytes(result["rss_kb"])})
    best = max(runs, key=lambda run: run["lines_per_s"])
    return {"lines": lines, "model": model, "words": words, "repeats": bench.arguments.repeats,
            "worker_prompts_per_s": round(max(alone)), "worker_rates": [round(rate) for rate in alone],
            "generate_lines_per_s": best["lines_per_s"], "ratio": round(best["lines_per_s"] / max(alone), 3),
            "best": best, "runs": runs}


def register_default_model(bench: Bench) -> str:
    """A network of the default size with random weights over the whole corpus, registered as E2E_MODEL_NAME."""
    from lstmq.shared.config import load_settings

    artifact = devstack.random_model_artifact(common.corpus_text(), load_settings(environ={}).model_params(),
                                              seed=RANDOM_SEED)
    version = devstack.register_model(bench.store, E2E_MODEL_NAME, artifact)
    return f"{E2E_MODEL_NAME}@{version}"


def three_workers(bench: Bench, stack: devstack.LocalStack, log_path: Path, model: str, words: int) -> dict[str, Any]:
    """The single worker stopped, `lstmq-worker --cpu --workers 3` on the same Redis: the end-to-end figure again."""
    devstack.stop_process_group(stack.worker)
    stack.worker = None
    many = devstack.LocalStack(log_path, broker=stack.broker,
                               worker_args=("--cpu", "--workers", str(THREE_WORKERS)))
    try:
        many.__enter__()
        bench.worker = many.worker
        ready = wait_for_workers(many.worker, log_path, THREE_WORKERS)
        print(f"{THREE_WORKERS} workers ready in {ready:.1f}s", flush=True)
        return {"workers": THREE_WORKERS, **end_to_end(bench, bench.arguments.lines, model, words,
                                                       warm=(THREE_WORKERS, log_path))}
    finally:
        many.__exit__()


def main() -> int:
    arguments = parse_arguments()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from lstmq.shared.store import Store
    from lstmq.shared.text import words

    corpus = devstack.corpus_path()
    lines = corpus.read_text(encoding="utf-8").split("\n")[CORPUS_LINES[0]:CORPUS_LINES[1]]
    scratch = tempfile.TemporaryDirectory(prefix="lstmq-million-")
    directory = Path(scratch.name)
    corpus_slice = directory / "corpus.txt"
    corpus_slice.write_text("\n".join(lines), encoding="utf-8")
    pool = [word for line in lines for word in words(line)]   # corpus frequencies, all in the vocabulary
    config = directory / "tiny.yaml"
    config.write_text("".join(f"{key}: {value}\n" for key, value in TINY_MODEL.items()))
    log_path = Path(arguments.worker_log) if arguments.worker_log else directory / "worker.log"
    small = max(arguments.lines // 10, 1)
    sizes = [small, arguments.lines] + ([arguments.rss_lines] if arguments.rss_lines else [])
    cpus = os.cpu_count() or 1
    run_three = arguments.three_workers == "on" or (arguments.three_workers == "auto" and cpus >= THREE_WORKERS_MIN_CPUS)
    print(f"million: jobs of {', '.join(f'{size:,}' for size in sizes)} prompts of {PROMPT_WORDS[0]}-{PROMPT_WORDS[1]} "
          f"words, {arguments.words} word(s) each; end to end on the {arguments.e2e_model} model, "
          f"{arguments.e2e_words} word(s) each; one lstmq-worker --cpu; {cpus} CPUs", flush=True)
    stack = devstack.LocalStack(log_path, worker_args=("--cpu",))
    jobs: list[dict[str, Any]] = []
    with scratch, common.reported("million", stack):
        stack.__enter__()
        ready = wait_for_workers(stack.worker, log_path, 1)
        store = Store.from_url(stack.broker, 3600)
        trained = cli_json(run_cli(["train", corpus_slice, "--model", MODEL_NAME, "--json", "--broker",
                                    stack.broker, "--config", config], directory), "train")
        print(f"worker ready in {ready:.1f}s; trained {trained['model']} in one epoch", flush=True)
        bench = Bench(arguments, directory, store, stack.broker, stack.worker, pool)
        for size in sizes:
            figures = sized_job(bench, size)
            jobs.append(figures)
            print(f"job of {size:,} lines: " + json.dumps(figures), flush=True)
            if size > arguments.lines:
                bench.seed_files.pop(size).unlink()
        big = next(job for job in jobs if job["lines"] == arguments.lines)
        if arguments.e2e_model == "tiny" and arguments.e2e_words == arguments.words:
            e2e_model = MODEL_NAME
            e2e = end_to_end(bench, arguments.lines, e2e_model, arguments.words, (big["worker_prompts_per_s"],))
        else:
            e2e_model = register_default_model(bench) if arguments.e2e_model == "default" else MODEL_NAME
            e2e = end_to_end(bench, arguments.lines, e2e_model, arguments.e2e_words, warm=(1, log_path))
        print("end to end: " + json.dumps(e2e), flush=True)
        if run_three:
            three: dict[str, Any] = three_workers(bench, stack, directory / "workers.log", e2e_model,
                                                  arguments.e2e_words)
            print(f"{THREE_WORKERS} workers, end to end: " + json.dumps(three), flush=True)
        else:
            three = {"skipped": f"os.cpu_count() = {cpus} < {THREE_WORKERS_MIN_CPUS}"}
    print_table(jobs, arguments.lines, e2e, three)
    print(json.dumps({"benchmark": "million", "words": arguments.words, "chunk_size": arguments.chunk_size,
                      "cpus": cpus, "targets": TARGETS, "jobs": jobs, "end_to_end": e2e, "three_workers": three}))
    return 0


# --- the table --------------------------------------------------------------------------------------
def producer_rows(what: str, small: dict[str, Any], big: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    """Lines/s and CPU us/line of `what` (submission, collection): the big job's whole command, and marginal."""
    lines, extra = big["lines"], big["lines"] - small["lines"]
    seconds, cpu = big[f"{what}_seconds"], big[f"{what}_cpu_s"]
    extra_seconds, extra_cpu = seconds - small[f"{what}_seconds"], cpu - small[f"{what}_cpu_s"]
    rate_target, cpu_target = TARGETS["lines_per_s"], TARGETS["cpu_us_per_line"]
    rows = []
    # marginal: n/a where the bigger job took no more time than the smaller one (noise over too little work)
    for how, rate, cpu_us in (("whole command", lines / seconds, cpu / lines * 1e6),
                              ("marginal", extra / extra_seconds if extra_seconds > 0 else None,
                               extra_cpu / extra * 1e6 if extra_cpu > 0 else None)):
        rows.append((f"{what}, lines/s ({how})", "n/a" if rate is None else f"{round(rate):,}", f">= {rate_target:,}",
                     None if rate is None else rate >= rate_target))
        rows.append((f"{what}, CPU us/line ({how})", "n/a" if cpu_us is None else f"{cpu_us:.2f}", f"<= {cpu_target:g}",
                     None if cpu_us is None else cpu_us <= cpu_target))
    return rows


def rss_rows(what: str, jobs: list[dict[str, Any]]) -> list[tuple[str, str, str, bool | None]]:
    rows: list[tuple[str, str, str, bool | None]] = [
        (f"{what} peak RSS at {job['lines']:,} lines, MB", f"{job[f'{what}_rss_mb']}", "-", None) for job in jobs]
    smallest, largest = jobs[0][f"{what}_rss_mb"], jobs[-1][f"{what}_rss_mb"]
    ratio = largest / smallest if smallest and largest else None
    rows.append((f"{what} RSS {jobs[-1]['lines']:,} / {jobs[0]['lines']:,} lines", "n/a" if ratio is None
                 else f"{ratio:.2f}", f"<= {TARGETS['rss_flat']}", None if ratio is None else ratio <= TARGETS["rss_flat"]))
    return rows


def print_table(jobs: list[dict[str, Any]], big_lines: int, e2e: dict[str, Any], three: dict[str, Any]) -> None:
    small, big = jobs[0], next(job for job in jobs if job["lines"] == big_lines)
    redis = TARGETS["redis_ratio"]
    rows = [
        *producer_rows("submission", small, big),
        *producer_rows("collection", small, big),
        ("Redis job peak / raw bytes (sampled)", f"{big['redis_ratio']:.2f}", f"<= {redis:g}", big["redis_ratio"] <= redis),
        ("Redis used_memory_peak - before / raw",
         "n/a" if big["redis_info_ratio"] is None else f"{big['redis_info_ratio']:.2f}", f"<= {redis:g}",
         None if big["redis_info_ratio"] is None else big["redis_info_ratio"] <= redis),
        *rss_rows("submission", jobs),
        *rss_rows("collection", jobs),
        ("end to end / worker alone, lines/s", f"{e2e['ratio']:.3f}", f">= {TARGETS['end_to_end']}",
         e2e["ratio"] >= TARGETS["end_to_end"]),
        ("worker alone, prompts/s (for reading)", f"{e2e['worker_prompts_per_s']:,}", "-", None),
        ("end to end (lstmq generate -o), lines/s", f"{e2e['generate_lines_per_s']:,}", "-", None),
        ("end to end: worker busy / command wall", f"{e2e['best']['busy_ratio']:.3f}", "-", None),
        (f"{THREE_WORKERS} workers: end to end / workers alone",
         "n/a" if "skipped" in three else f"{three['ratio']:.3f}", f">= {TARGETS['end_to_end']}",
         None if "skipped" in three else three["ratio"] >= TARGETS["end_to_end"]),
    ]
    common.print_table([["figure", "measured", "target", "met"]]
                       + [[name, value, target, "-" if met is None else ("yes" if met else "NO")]
                          for name, value, target, met in rows], left=1)
    print(f"(the big job: {big['lines']:,} prompts, {big['chunks']} chunks, {big['seed_bytes']:,} seed bytes; "
          f"submission {big['submission_seconds']}s wall, {big['submission_cpu_s']}s CPU; collection "
          f"{big['collection_seconds']}s wall, {big['collection_cpu_s']}s CPU; raw prompts + continuations "
          f"{big['raw_bytes']:,} bytes, Redis peak {big['redis_job_peak']:,} bytes above the {big['redis_before']:,} "
          f"before it; the worker alone {big['worker_seconds']}s, {big['worker_prompts_per_s']:,} prompts/s)")
    best = e2e["best"]
    alone = ", ".join(f"{rate:,}" for rate in e2e["worker_rates"])
    walls = ", ".join(f"{run['seconds']}s" for run in e2e["runs"])
    print(f"(end to end: {e2e['model']}, {e2e['words']} word(s) per prompt, the fastest of {e2e['repeats']} of each; "
          f"the worker alone: {alone} prompts/s; `lstmq generate -o`: {walls} wall; the fastest "
          f"{best['cpu_s']}s CPU, peak RSS {best['rss_mb']} MB, the worker busy {best['worker_seconds']}s of it, "
          f"ended {best['tail_seconds']}s after the job's last chunk)")
    if "skipped" in three:
        print(f"({THREE_WORKERS} workers fed by one producer: skipped, {three['skipped']}; "
              f"--three-workers on runs it anyway)")
    if big["lines"] < 100_000:
        print("(small jobs: the fixed cost of a command (Python start-up, imports) and of a job in Redis weigh on "
              "every figure; the targets are for 1,000,000 lines)")


if __name__ == "__main__":
    sys.exit(main())
