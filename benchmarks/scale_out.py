"""Scale-out: N CPU workers on N cores against one worker, through the real parts.

Each configuration runs `lstmq-worker --cpu --workers N --tf-threads T` (real Celery workers, each
on its own share of the cores) on N of the machine's cores (the launcher's CPU affinity: one
worker on one core, not a single-thread worker beside a free core for its host thread and Celery
process), against one throwaway redis-server, and `lstmq generate` of the
same prompts with the seed-size network (the whole corpus's vocabulary, random weights,
registered as bench@1). Throughput is the job's own: generated words over the time from its first
chunk's start to its end (the job record), so that submission and collection are not counted. By
default the job is submitted with --detach and collected once it has ended: on a machine whose
every core runs a worker, a producer writing the output meanwhile takes its CPU time from the
workers (on 2 cores, about 6 us per line of a 7-word job, some 5 % of both cores at two workers'
pace), which a fleet's producer on its own machine does not. `--producer attached` measures that.
Every worker is warmed up first (jobs of many small chunks, until each worker's heartbeat says it
has loaded the model; heartbeats come every third of lease_seconds, --lease-seconds).

The result is a RATIO measured in one run: N workers' words/s over one worker's (target >= 0.9 N),
each with the same TensorFlow threads per worker; one worker with every core is printed too (unless
--no-reference). The producer and redis-server may use every core (with N = all cores, they share
the workers'). --quick: 1,024 prompts in chunks of 256, --lease-seconds 6, --no-reference.

    python -m benchmarks.scale_out [--prompts 65536] [--words 7] [--workers 1,2] [--tf-threads 1]
                                    [--producer detached|attached] [--lease-seconds N] [--no-reference]
                                    [--quick]

The corpus is $LSTMQ_TEST_CORPUS, by default ../shared/data/sherlock.txt beside the repository.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path

from benchmarks import common
from benchmarks.worker_overhead import corpus_prompts, register_random_model
from tests import devstack

# --quick: the smoke test (tests/test_benchmarks.py)
# (heartbeats every 2 s instead of 10, which say when every worker has loaded the model; no reference run)
QUICK = {"prompts": 1024, "chunk_size": 256, "lease_seconds": 6, "no_reference": True}


def parse_arguments():
    parser = common.argument_parser(__doc__)
    common.add_prompts(parser, 65536, "prompts per timed job (default 65536: a job of seconds, where the first "
                                      "chunks' slower start weighs little)")
    common.add_words(parser)
    parser.add_argument("--workers", default="1,2", help="worker counts to compare, the first is the baseline")
    parser.add_argument("--tf-threads", type=int, default=1, help="TensorFlow threads per worker (default 1)")
    common.add_chunk_size(parser, 1024)
    parser.add_argument("--producer", choices=("detached", "attached"), default="detached",
                        help="detached (default): `lstmq generate --detach`, then `lstmq collect` once the job has "
                             "ended, so that collecting does not share the workers' cores while they are timed; "
                             "attached: `lstmq generate` waits and writes the output beside the workers")
    parser.add_argument("--lease-seconds", type=int,
                        help="the workers' lease_seconds (default: the setting's); they say every third of it that "
                             "they are alive and which models they loaded, which the warm-up waits for")
    parser.add_argument("--no-reference", action="store_true",
                        help="skip the reference run, one worker with TensorFlow's own thread count")
    common.add_quick(parser, "1,024 prompts, chunks of 256, lease_seconds 6, no reference run")
    return common.parse(parser, QUICK, lists=("workers",), positive=("workers", "prompts", "words", "tf_threads",
                                                                     "chunk_size"))


def lstmq(broker: str, *args) -> common.Completed:
    return common.lstmq(*args, broker=broker, timeout=900)


def run_configuration(broker, store, directory: Path, workers: int, threads: int | None, seeds: Path,
                      warm: Path, lease_seconds: int, arguments, while_starting=None) -> dict:
    """Start the workers, warm them up, time one job; `while_starting` is called once the workers
    are starting (the model's registration, while they import TensorFlow)."""
    log = directory / f"worker-{workers}-{threads}.log"
    args = ["--cpu", "--workers", str(workers)] + (["--tf-threads", str(threads)] if threads else [])
    cores = sorted(os.sched_getaffinity(0))
    with contextlib.ExitStack() as exits:
        # N workers of T threads on N x T cores (the reference, TensorFlow's own threads: every core); the launcher
        # inherits this process's affinity, which is restored at once for the producer
        os.sched_setaffinity(0, cores[:workers * threads] if threads else cores)
        try:
            stack = exits.enter_context(devstack.LocalStack(log, broker=broker, worker_args=tuple(args)))
        finally:
            os.sched_setaffinity(0, cores)
        if while_starting:
            while_starting()
        deadline = time.monotonic() + 300
        while len(store.workers.live()) < workers:
            if stack.worker.poll() is not None:   # lstmq-worker gave up (its log says why): no use waiting
                raise common.StepFailed(f"lstmq-worker exited with status {stack.worker.returncode}:\n"
                                        f"{stack.log_tail()}")
            if time.monotonic() > deadline:
                raise common.StepFailed(f"{workers} worker(s) did not come up:\n{stack.log_tail()}")
            time.sleep(0.5)
        while True:   # warm every worker: each must have loaded the model (its heartbeat says so)
            lstmq(broker, "generate", warm, "--model", "bench@1", "-o", directory / "warm.jsonl", "--chunk-size", 16,
                  "--words", arguments.words)
            beats = time.monotonic() + lease_seconds / 3 + 5   # a heartbeat comes every lease_seconds / 3
            while time.monotonic() < beats and not all(worker.get("models") for worker in store.workers.live()):
                time.sleep(0.5)
            if all(worker.get("models") for worker in store.workers.live()):
                break
            if time.monotonic() > deadline:
                raise common.StepFailed(f"not every worker loaded the model:\n{stack.log_tail()}")
        out = directory / f"out-{workers}-{threads}.jsonl"
        started = time.perf_counter()
        job_options = ("--model", "bench@1", "--words", arguments.words, "--chunk-size", arguments.chunk_size, "--json")
        if arguments.producer == "attached":
            job = lstmq(broker, "generate", seeds, "-o", out, *job_options).json()["job"]
        else:   # submit, wait for the job's end here (a read of its record every 0.2 s), then collect
            job = lstmq(broker, "generate", seeds, "--detach", *job_options).json()["job"]
            while not store.jobs.get(job).status.finished:
                if time.perf_counter() - started > 900:
                    raise common.StepFailed(f"job {job} did not finish in 900 s:\n{stack.log_tail()}")
                time.sleep(0.2)
            lstmq(broker, "collect", job, "-o", out)
        wall = time.perf_counter() - started
        record = store.jobs.get(job)
        common.check_output(out, arguments.prompts)
        seconds = record.finished - record.started
        return {"workers": workers, "threads": threads, "words": record.words_done, "seconds": seconds,
                "words_per_s": record.words_done / seconds, "wall": wall}


def main() -> None:
    arguments = parse_arguments()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from lstmq.shared.config import load_settings
    from lstmq.shared.store import Store

    if arguments.lease_seconds:   # the workers' and the CLI's (the settings' environment variable)
        os.environ["LSTMQ_LEASE_SECONDS"] = str(arguments.lease_seconds)
    text = common.corpus_text()
    cores = len(os.sched_getaffinity(0))
    print(f"{cores} cores; {arguments.prompts:,} prompts x {arguments.words} words, chunks of {arguments.chunk_size}; "
          f"workers {arguments.workers} with {arguments.tf_threads} TensorFlow thread(s) each"
          + ("" if arguments.no_reference else ", and 1 worker with TensorFlow's own thread count")
          + f"; producer {arguments.producer}", flush=True)
    results = []
    with common.reported("scale_out"), tempfile.TemporaryDirectory() as temporary, devstack.LocalRedis() as server:
        directory = Path(temporary)
        settings = load_settings(overrides={"broker_url": server.url})
        store = Store.from_settings(settings)
        seeds = common.write_lines(directory / "seeds.txt", corpus_prompts(text, arguments.prompts))
        warm = common.write_lines(directory / "warm.txt", corpus_prompts(text, 256))
        for workers in arguments.workers:
            # the first workers start while the model is registered here (TensorFlow imported in both)
            register = (lambda: register_random_model(store, text)) if not results else None
            results.append(run_configuration(server.url, store, directory, workers, arguments.tf_threads, seeds, warm,
                                             settings.lease_seconds, arguments, while_starting=register))
            print(f"  {workers} worker(s) x {arguments.tf_threads} thread(s): "
                  f"{results[-1]['words_per_s']:,.0f} words/s", flush=True)
        if not arguments.no_reference:
            results.append(run_configuration(server.url, store, directory, 1, None, seeds, warm, settings.lease_seconds,
                                             arguments))
    baseline = results[0]["words_per_s"]
    rows = [["workers", "TF threads each", "job seconds", "words/s", "ratio to 1 worker", "target"]]
    for result in results:
        ratio = result["words_per_s"] / baseline
        target = f">= {0.9 * result['workers']:.1f}" if result["threads"] == arguments.tf_threads else "(reference)"
        rows.append([str(result["workers"]), str(result["threads"] or "TF's own"), f"{result['seconds']:.2f}",
                     f"{result['words_per_s']:,.0f}", f"{ratio:.2f}", target])
    common.print_table(rows)


if __name__ == "__main__":
    main()
