"""Million-prompt jobs, one worker: submission, collection, Redis memory and producer memory.

Everything runs as a user runs it: a throwaway redis-server and one `lstmq-worker --cpu`
(tests/devstack.py's LocalStack), a tiny model trained with `lstmq train` (Embedding(32),
LSTM(48), one epoch on 1,500 corpus lines: the figures here are about lstmq around the model), and
seed files of one corpus word per line. Two jobs, --lines / 10 and --lines prompts, each:

    lstmq generate seeds.txt --model million -o out.jsonl --words 1 --json

run in a child Python that reports its own peak resident memory (VmHWM) when it exits. Measured:

- submission lines/s: the seed lines over the time between the CLI's "submitting" line on stderr
  and its summary of the file (streaming, validation against the model's vocabulary, chunk
  encoding, pipelined writes and the task messages);
- collection lines/s: the finished job written again by lstmq.producer.collect.write_results in
  this process (read, decode, format, write: what `lstmq collect` does after waiting);
- the tail: how long after the job's last chunk finished the `lstmq generate` command ended
  (its output is written while it waits, in input order, so little is left at the end);
- worker prompts/s: the job record's prompts over started -> finished;
- Redis: the server's used_memory, sampled every 20 ms while the job runs, peak minus the
  level before the job (the model and corpus blobs stay), against the raw bytes of the prompts
  and continuations (UTF-8, as in the output); also INFO's used_memory_peak minus that level
  (the same peak, counted by Redis itself), when the job raised it: it is the server's peak since
  it started, which the training run may hold for a small job ("n/a");
- producer peak RSS of `lstmq generate` for both jobs: flat means about the same.

Each output file is checked (one line per prompt, ids 1..N in input order, the prompts as written);
the script fails otherwise. Timings are printed against the targets of issue 8, never asserted:
they depend on the machine and its load.

    python -m benchmarks.million [--lines 1000000] [--words 1] [--chunk-size N] [--quick]

--quick: 20,000 lines (and 2,000), the smoke test in tests/test_million.py.
Everything it starts is stopped at the end, also on failure, Ctrl-C or SIGTERM.
"""
from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.common import RANDOM_SEED, StepFailed
from tests import devstack

MODEL_NAME = "million"
CORPUS_LINES = (60, 1560)          # the slice of the corpus the tiny model is trained on
TINY_MODEL = {"embedding_dim": 32, "lstm_units": 48, "epochs": 1, "batch_size": 32, "early_stopping_patience": 0,
              "poll_interval": 0.2}
MEMORY_SAMPLE_S = 0.02
TARGETS = {"submission": 100_000, "collection": 100_000, "redis_ratio": 2.0, "rss_mb": 300, "tail_s": 5.0}
# --quick: the smoke test (tests/test_million.py)
QUICK = {"lines": 20_000}

# Runs the lstmq CLI and, at exit, writes this process's peak resident memory (kB) to $MILLION_BENCH_RSS_FILE
# (common.proc_kib's figure, read here without importing anything more into the measured process).
RSS_WRAPPER = """
import atexit, os, sys
def report():
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM:'):
            open(os.environ['MILLION_BENCH_RSS_FILE'], 'w').write(line.split()[1])
atexit.register(report)
from lstmq.producer.cli import main
sys.argv = ['lstmq'] + sys.argv[1:]
main()
"""


def parse_arguments():
    parser = common.argument_parser(__doc__)
    parser.add_argument("--lines", type=int, default=1_000_000, help="prompts in the big job (default 1,000,000)")
    common.add_words(parser, 1)
    common.add_chunk_size(parser)
    common.add_quick(parser, "20,000 lines (and 2,000)")
    common.add_worker_log(parser)
    arguments = common.parse(parser, QUICK, positive=("words",))
    if arguments.lines < 10:
        parser.error("--lines must be >= 10")
    return arguments


def run_cli(arguments: list[str], scratch: Path, timeout: float = 3600) -> dict[str, Any]:
    """Run `lstmq ARGUMENTS` in a child Python; its stdout, stderr lines with the time each came,
    exit status, wall seconds, end time and peak RSS (kB)."""
    rss_file = scratch / f"rss-{time.monotonic_ns()}"
    environment = common.child_environment(MILLION_BENCH_RSS_FILE=str(rss_file))
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-c", RSS_WRAPPER, *arguments], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=environment)
    stderr: list[tuple[float, str]] = []

    def read_stderr() -> None:
        for line in process.stderr:
            stderr.append((time.monotonic(), line.rstrip("\n")))

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    stdout = process.stdout.read()
    process.wait(timeout)
    ended_wall, ended = time.time(), time.monotonic()
    reader.join(10)
    rss = int(rss_file.read_text()) if rss_file.exists() else None
    return {"stdout": stdout, "stderr": stderr, "status": process.returncode, "started": started, "ended": ended,
            "ended_wall": ended_wall, "seconds": ended - started, "rss_kb": rss}


def cli_json(result: dict[str, Any], what: str) -> dict[str, Any]:
    if result["status"] != 0:
        text = "\n".join([line for _, line in result["stderr"][-40:]] + result["stdout"].splitlines()[-5:])
        raise StepFailed(f"`lstmq {what}` exited with status {result['status']}:\n{text}")
    return json.loads(result["stdout"].strip().splitlines()[-1])


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


def run_job(store, broker: list[str], directory: Path, words_pool: list[str], lines: int, arguments,
            big: bool) -> dict[str, Any]:
    """Write a seed file of `lines` one-word prompts, run `lstmq generate` on it, measure."""
    from lstmq.producer.collect import write_results

    rng = random.Random(RANDOM_SEED + lines)
    seeds = directory / f"seeds-{lines}.txt"
    with seeds.open("w", encoding="utf-8") as stream:
        for start in range(0, lines, 100_000):
            stream.write("".join(word + "\n" for word in rng.choices(words_pool, k=min(100_000, lines - start))))
    output = directory / f"out-{lines}.jsonl"
    options = ["--words", str(arguments.words), *(["--chunk-size", str(arguments.chunk_size)] if arguments.chunk_size
                                                  else [])]
    memory = store.redis.info("memory")
    baseline, peak_before = int(memory["used_memory"]), int(memory["used_memory_peak"])
    with MemorySampler(store.redis) as sampler:
        result = run_cli(["generate", str(seeds), "--model", MODEL_NAME, "-o", str(output), "--json", *options,
                          *broker], directory)
    summary = cli_json(result, "generate")
    peak_info = int(store.redis.info("memory")["used_memory_peak"])
    stamps = [stamp for stamp, line in result["stderr"] if re.match(r"lstmq: job \w+: submitting", line)]
    described = [stamp for stamp, line in result["stderr"] if re.match(r"lstmq: job \w+: \d+ valid line", line)]
    if not stamps or not described:
        raise StepFailed("`lstmq generate` did not say when the submission started and ended:\n" +
                         "\n".join(line for _, line in result["stderr"][:20]))
    submit_seconds = described[0] - stamps[0]
    record = store.jobs.get(summary["job"])
    raw = common.check_output(output, lines).raw_bytes
    again = directory / f"again-{lines}.jsonl"
    started = time.perf_counter()
    written = write_results(store, summary["job"], again)
    collect_seconds = time.perf_counter() - started
    if written.lines != lines or again.stat().st_size != output.stat().st_size:
        raise StepFailed(f"collecting job {summary['job']} again wrote {written.lines} lines, expected {lines}")
    again.unlink()
    figures = {
        "lines": lines, "job": summary["job"], "chunks": record.chunks,
        "submission_seconds": round(submit_seconds, 3), "submission_lines_per_s": round(lines / submit_seconds),
        "collection_seconds": round(collect_seconds, 3), "collection_lines_per_s": round(lines / collect_seconds),
        "generate_wall_seconds": round(result["seconds"], 2),
        "tail_seconds": round(result["ended_wall"] - record.finished, 2),
        "worker_seconds": round(record.finished - record.started, 2),
        "worker_prompts_per_s": round(record.prompts_done / (record.finished - record.started)),
        "raw_bytes": raw, "redis_before": baseline, "redis_peak_sampled": sampler.peak,
        "redis_job_peak": sampler.peak - baseline,
        "redis_ratio": round((sampler.peak - baseline) / raw, 2),
        "redis_used_memory_peak": peak_info,
        # INFO's peak is the server's since it started: it tells about this job only when the job raised it
        "redis_info_ratio": round((peak_info - baseline) / raw, 2) if peak_info > peak_before else None,
        "producer_rss_mb": round(result["rss_kb"] / 1024, 1) if result["rss_kb"] else None,
        "output_bytes": output.stat().st_size,
    }
    output.unlink()
    seeds.unlink()
    return figures


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
    words_pool = [word for line in lines for word in words(line)]   # corpus frequencies, all in the vocabulary
    config = directory / "tiny.yaml"
    config.write_text("".join(f"{key}: {value}\n" for key, value in TINY_MODEL.items()))
    log_path = Path(arguments.worker_log) if arguments.worker_log else directory / "worker.log"
    small = max(arguments.lines // 10, 1)
    print(f"million: jobs of {small:,} and {arguments.lines:,} one-word prompts, {arguments.words} word(s) each; "
          f"one lstmq-worker --cpu; {os.cpu_count()} CPUs", flush=True)
    stack = devstack.LocalStack(log_path, worker_args=("--cpu", "--config", str(config)))
    jobs: list[dict[str, Any]] = []
    with scratch, common.reported("million", stack):
        stack.__enter__()
        broker = ["--broker", stack.broker, "--config", str(config)]
        ready = common.wait_for_worker(stack.worker, log_path)
        store = Store.from_url(stack.broker, 3600)
        trained = cli_json(run_cli(["train", str(corpus_slice), "--model", MODEL_NAME, "--wait", "--json", *broker],
                                   directory), "train")
        print(f"worker ready in {ready:.1f}s; trained {trained['model']} in one epoch", flush=True)
        for count in (small, arguments.lines):
            figures = run_job(store, broker, directory, words_pool, count, arguments, big=count == arguments.lines)
            jobs.append(figures)
            print(f"job of {count:,} lines: " + json.dumps(figures), flush=True)
            cli_json(run_cli(["rm", figures["job"], "--json", *broker], directory), "rm")
    print_table(jobs)
    print(json.dumps({"benchmark": "million", "words": arguments.words, "chunk_size": arguments.chunk_size,
                      "targets": TARGETS, "jobs": jobs}))
    return 0


def print_table(jobs: list[dict[str, Any]]) -> None:
    small, big = jobs
    flat = big["producer_rss_mb"] / small["producer_rss_mb"] if small["producer_rss_mb"] else float("nan")
    rows = [
        ("submission, lines/s", f"{big['submission_lines_per_s']:,}", f">= {TARGETS['submission']:,}",
         big["submission_lines_per_s"] >= TARGETS["submission"]),
        ("collection, lines/s", f"{big['collection_lines_per_s']:,}", f">= {TARGETS['collection']:,}",
         big["collection_lines_per_s"] >= TARGETS["collection"]),
        ("wait after the last chunk, s", f"{big['tail_seconds']:.2f}", f"<= {TARGETS['tail_s']:.0f}",
         big["tail_seconds"] <= TARGETS["tail_s"]),
        ("Redis job peak / raw bytes (sampled)", f"{big['redis_ratio']:.2f}", f"<= {TARGETS['redis_ratio']:.0f}",
         big["redis_ratio"] <= TARGETS["redis_ratio"]),
        ("Redis used_memory_peak - before / raw",
         "n/a" if big["redis_info_ratio"] is None else f"{big['redis_info_ratio']:.2f}", f"<= {TARGETS['redis_ratio']:.0f}",
         None if big["redis_info_ratio"] is None else big["redis_info_ratio"] <= TARGETS["redis_ratio"]),
        (f"producer peak RSS at {small['lines']:,} lines, MB", f"{small['producer_rss_mb']}",
         f"<= {TARGETS['rss_mb']}", small["producer_rss_mb"] <= TARGETS["rss_mb"]),
        (f"producer peak RSS at {big['lines']:,} lines, MB", f"{big['producer_rss_mb']}",
         f"<= {TARGETS['rss_mb']}", big["producer_rss_mb"] <= TARGETS["rss_mb"]),
        ("RSS ratio big / small job (flat = about 1)", f"{flat:.2f}", "about 1", flat <= 1.25),
        ("worker, prompts/s (for reading)", f"{big['worker_prompts_per_s']:,}", "-", None),
    ]
    common.print_table([["figure", "measured", "target", "met"]]
                       + [[name, value, target, "-" if met is None else ("yes" if met else "NO")]
                          for name, value, target, met in rows], left=1)
    print(f"(the big job: {big['lines']:,} prompts, {big['chunks']} chunks, raw prompts + continuations "
          f"{big['raw_bytes']:,} bytes, Redis peak {big['redis_job_peak']:,} bytes above the "
          f"{big['redis_before']:,} before it; `lstmq generate` {big['generate_wall_seconds']}s wall, "
          f"the worker {big['worker_seconds']}s)")
    if big["lines"] < 100_000:
        print("(a small job: the fixed cost of a job in Redis (its record, a Celery message per chunk of about "
              "1 kB) weighs on the Redis ratio; the targets are for 1,000,000 lines)")


if __name__ == "__main__":
    sys.exit(main())
