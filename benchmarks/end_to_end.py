"""End to end: train and generate through the real parts, against the seed's predict loop.

Everything lstmq does for a user runs here as a user runs it: a throwaway redis-server
(tests/devstack.py), one `lstmq-worker --cpu` subprocess, and the `lstmq` CLI in subprocesses:

1. `lstmq train CORPUS --model bench --epochs 1 --wait --json` with the default (seed) network on
   the whole corpus: wall time of the command, the job's worker time and the epoch's seconds;
2. `lstmq generate seeds.txt --model bench -o OUT --json` for --prompts random corpus lines of 3 to
   12 words, --words each, --chunk-size prompts per task: the wall time of the command (submit,
   generate, collect, write OUT) gives the end-to-end words/s; the job record (created ->
   finished) and the worker's log (seconds per chunk) give the worker-side figures;
3. the ceiling, in this process on the same exported model (`lstmq models export bench@1 DIR`,
   `keras.saving.load_model(DIR/model.keras)`): lstmq's Decoder with the default decode_batch_size
   on every prompt, tokenizing and detokenizing included, no Redis or Celery (target: lstmq
   generate end to end >= 0.85 of its words/s; every continuation must be the same);
4. the baseline, on the same model: the seed notebook's loop, one
   `model.predict(context, verbose=0)` per word per prompt (the context padded to 17 tokens with
   zeros on the right, as lstmq's model is masked; a longer one is read whole), for the first
   --baseline-prompts prompts.

The result is a RATIO measured in one run, on whatever machine runs it; wall times are printed
for reading, never checked. The output file is checked (one line per prompt, ids 1..N in order,
the prompts as written; the script fails otherwise), and for how many baseline prompts the seed
loop's greedy words equal lstmq's is printed (a mismatch is a warning).

    python -m benchmarks.end_to_end [--prompts 100000] [--words 7] [--chunk-size N] [--corpus-lines N]
                                    [--baseline-prompts 10] [--epochs 1] [--repeats 1] [--quick]

The corpus is $LSTMQ_TEST_CORPUS, by default ../shared/data/sherlock.txt beside the repository.
Everything it starts (redis-server, the worker's process group) is stopped at the end, also on
failure, Ctrl-C or SIGTERM.
"""
from __future__ import annotations

import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.common import SEED_CONTEXT, StepFailed
from tests import devstack

PROMPT_WORDS = (3, 12)       # prompts are corpus lines of this many words, inclusive
MODEL_NAME = "bench"
# --quick: the smoke test (tests/test_benchmarks.py)
QUICK = {"prompts": 500, "baseline_prompts": 1, "corpus_lines": 300}


def parse_arguments():
    parser = common.argument_parser(__doc__)
    common.add_prompts(parser, 100000, "prompts in the seed file (default 100000)")
    common.add_words(parser)
    common.add_chunk_size(parser)
    parser.add_argument("--gpus", help="run the worker on these GPUs (lstmq-worker --gpus), default: one CPU worker")
    parser.add_argument("--cpu-workers", type=int, default=1,
                        help="CPU worker processes (lstmq-worker --cpu --workers N), each on its share of the cores "
                             "with as many TensorFlow threads (default 1: one worker, every core)")
    parser.add_argument("--corpus-lines", type=int, default=0,
                        help="train on the corpus's first N lines only (default 0: the whole corpus)")
    common.add_quick(parser, "500 prompts, 1 seed-loop prompt, training on 300 corpus lines")
    parser.add_argument("--baseline-prompts", type=int, default=10,
                        help="prompts run through the seed's predict loop (default 10); its words/s is per word")
    parser.add_argument("--epochs", type=int, default=1, help="training epochs on the whole corpus (default 1)")
    common.add_repeats(parser, 1, "timings of the seed loop")
    common.add_worker_log(parser)
    arguments = common.parse(parser, QUICK, positive=("prompts", "words", "baseline_prompts", "epochs", "repeats",
                                                      "cpu_workers"))
    if arguments.baseline_prompts > arguments.prompts:
        parser.error("--baseline-prompts must not exceed --prompts")
    return arguments


def lstmq(*arguments: str, broker: str) -> tuple[float, Any]:
    """Run the lstmq CLI; (wall seconds, its last stdout line parsed as JSON)."""
    completed = common.lstmq(*arguments, broker=broker)
    return completed.seconds, completed.json()


def worker_log_figures(log: Path, job_id: str) -> dict[str, Any]:
    """What the worker logged for the generate job: chunk seconds, model load, duplicates."""
    text = log.read_text(encoding="utf-8", errors="replace")
    chunk_lines = re.findall(rf"job {job_id} chunk (\d+): (\d+) prompts, (\d+) words with \S+ in ([\d.]+)s", text)
    load = re.search(rf"loaded model {MODEL_NAME}@\d+ \(vocab \d+ words\) in ([\d.]+)s", text)
    return {
        "chunks_logged": len(chunk_lines),
        "chunk_seconds": round(sum(float(line[3]) for line in chunk_lines), 3),
        "chunk_words": sum(int(line[2]) for line in chunk_lines),
        "model_load_seconds": float(load.group(1)) if load else None,
        "generate_tasks_received": len(re.findall(r"Task lstmq\.generate\[[^]]+\] received", text)),
        "duplicate_chunks_skipped": len(re.findall(rf"job {job_id} chunk \d+ already written", text)),
    }


def seed_baseline(export_dir: Path, prompts: list[str], words: int, repeats: int) -> dict[str, Any]:
    import keras

    from lstmq.shared.text import Vocabulary
    from tests.oracle import reference_greedy

    started = time.perf_counter()
    model = keras.saving.load_model(export_dir / "model.keras")
    load_seconds = time.perf_counter() - started
    vocabulary = Vocabulary(json.loads((export_dir / "vocab.json").read_text(encoding="utf-8")))
    encoded = [vocabulary.encode(prompt)[0] for prompt in prompts]
    reference_greedy(model, encoded[0], 1, window=SEED_CONTEXT, predict=True)   # warm-up: predict builds its function once
    best, outputs = common.fastest(
        lambda: [reference_greedy(model, ids, words, window=SEED_CONTEXT, predict=True) for ids in encoded], repeats)
    return {"seconds": best, "load_seconds": load_seconds, "words": len(prompts) * words,
            "continuations": [" ".join(vocabulary.decode(ids)) for ids in outputs]}


def seconds_between(start: str, end: str) -> float:
    """Seconds between two of `lstmq status --json`'s timestamps (ISO 8601 UTC)."""
    from datetime import datetime

    return (datetime.fromisoformat(end.replace("Z", "+00:00")) -
            datetime.fromisoformat(start.replace("Z", "+00:00"))).total_seconds()


def in_process_decoder(export_dir: Path, prompts: list[str], words: int) -> dict[str, Any]:
    """The ceiling: the same exported model, lstmq's Decoder in this process (the default
    decode_batch_size of the device, as a worker would take), every prompt tokenized and decoded to text, no Redis and no Celery."""
    import keras

    from lstmq.shared.config import load_settings
    from lstmq.worker.engine.decoder import Decoder, Request
    from lstmq.shared.text import Vocabulary

    import tensorflow as tf

    settings = load_settings()
    rows = settings.decode_batch_size_gpu if tf.config.list_physical_devices("GPU") else settings.decode_batch_size
    model = keras.saving.load_model(export_dir / "model.keras")
    vocabulary = Vocabulary(json.loads((export_dir / "vocab.json").read_text(encoding="utf-8")))
    decoder = Decoder(model, vocabulary, max_rows=rows)
    params = settings.generation_params().replace(words=words, seed=0)
    decoder.continuations_scored([Request(ids=vocabulary.encode(prompts[0])[0], params=params, key=1)])   # trace
    started = time.perf_counter()
    requests = [Request(ids=vocabulary.encode(prompt)[0], params=params, key=number)
                for number, prompt in enumerate(prompts, start=1)]
    outputs = decoder.continuations_scored(requests)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "words": len(prompts) * words, "continuations": [samples[0][0] for samples in outputs]}


def main() -> int:
    arguments = parse_arguments()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    corpus = devstack.corpus_path()
    text = corpus.read_text(encoding="utf-8")
    prompts = common.corpus_prompts(text, arguments.prompts, PROMPT_WORDS)
    words = arguments.words
    print(f"corpus {corpus} ({len(text):,} characters); {len(prompts):,} prompts of "
          f"{PROMPT_WORDS[0]}-{PROMPT_WORDS[1]} words, {words} words each, chunks of "
          f"{arguments.chunk_size or 'the default size'}; "
          f"seed loop on the first {arguments.baseline_prompts}; {platform.machine()}, {os.cpu_count()} CPUs",
          flush=True)

    scratch = tempfile.TemporaryDirectory(prefix="lstmq-bench-")
    directory = Path(scratch.name)
    log_path = Path(arguments.worker_log) if arguments.worker_log else directory / "worker.log"
    stack = devstack.LocalStack(log_path, worker_args=("--gpus", arguments.gpus) if arguments.gpus
                                else ("--cpu", "--workers", str(arguments.cpu_workers)))
    with scratch, common.reported("end_to_end", stack):
        stack_started = time.monotonic()
        stack.__enter__()
        broker = stack.broker
        # TensorFlow imported here while the worker starts; the in-process baselines take its threads as a worker sets them
        import tensorflow as tf

        from lstmq.shared.config import load_settings
        from lstmq.worker.runtime import configure_threads

        configure_threads(tf, load_settings())
        common.wait_for_worker(stack.worker, log_path, r"\] worker .*: ready: TensorFlow")
        ready_seconds = time.monotonic() - stack_started
        print(f"redis-server on {stack.broker}; lstmq-worker --cpu ready in {ready_seconds:.1f}s "
              f"(log: {log_path})", flush=True)

        # --- 1. training ---------------------------------------------------------------------
        training_corpus = corpus
        if arguments.corpus_lines:
            training_corpus = directory / "corpus.txt"
            training_corpus.write_text("\n".join(text.split("\n")[: arguments.corpus_lines]), encoding="utf-8")
        train_wall, trained = lstmq("train", str(training_corpus), "--model", MODEL_NAME, "--epochs",
                                    str(arguments.epochs), "--wait", "--json", broker=broker)
        _, train_record = lstmq("status", trained["job"], "--json", broker=broker)
        model = trained["model"]
        export_dir = directory / "export"
        lstmq("models", "export", model, str(export_dir), "--json", broker=broker)
        meta = json.loads((export_dir / "meta.json").read_text(encoding="utf-8"))
        history, vocab_size = meta.get("history", []), meta["network"]["vocab_size"]
        epoch_seconds = [record["seconds"] for record in history]
        train_job_seconds = seconds_between(train_record["started"], train_record["finished"])
        print(f"train {model}: {trained['epochs_run']} epoch(s) in {train_wall:.1f}s wall "
              f"(job on the worker {train_job_seconds:.1f}s; epoch seconds {epoch_seconds}); "
              f"loss {trained['loss']:.4f}, val perplexity {trained['val_perplexity']:.1f}", flush=True)

        # --- 2. generation -------------------------------------------------------------------
        seeds = common.write_lines(directory / "seeds.txt", prompts)
        output = directory / "out.jsonl"
        # a running worker has loaded the model and traced its decoder: a small job first, as in production
        warm = common.write_lines(directory / "warm.txt", prompts[:64])
        lstmq("generate", str(warm), "--model", MODEL_NAME, "-o", str(directory / "warm.jsonl"), "--words", str(words),
              "--json", broker=broker)
        chunking = ["--chunk-size", str(arguments.chunk_size)] if arguments.chunk_size else []
        generate_wall, generated = lstmq("generate", str(seeds), "--model", MODEL_NAME, "-o", str(output),
                                         "--words", str(words), *chunking, "--json", broker=broker)
        _, job = lstmq("status", generated["job"], "--json", broker=broker)
        records = common.check_output(output, len(prompts), prompts, keep=True).records
        total_words = len(prompts) * words
        if generated["words"] != total_words or job.get("words_done") != total_words:
            raise StepFailed(f"generate reported {generated['words']} words (job record {job.get('words_done')}), "
                             f"expected {total_words}")
        logged = worker_log_figures(log_path, generated["job"])
        end_to_end_rate = total_words / generate_wall
        job_seconds = seconds_between(job["created"], job["finished"])
        job_rate = job["words_done"] / job_seconds
        decode_rate = logged["chunk_words"] / logged["chunk_seconds"] if logged["chunk_seconds"] else None
        print(f"generate: {len(records):,} lines, ids 1..{len(records)} in order; {total_words:,} words in "
              f"{generate_wall:.1f}s wall (job record created -> finished {job_seconds:.1f}s, "
              f"{job.get('chunks')} chunks)", flush=True)

        # --- 3. the seed's loop on the same weights, in this process ---------------------------
        baseline_prompts = prompts[: arguments.baseline_prompts]
        baseline = seed_baseline(export_dir, baseline_prompts, words, arguments.repeats)
        seed_rate = baseline["words"] / baseline["seconds"]
        matches = sum(a == record["continuation"]
                      for a, record in zip(baseline["continuations"], records[: len(baseline_prompts)]))
        print(f"seed predict loop: {baseline['words']} words in {baseline['seconds']:.2f}s "
              f"(load_model {baseline['load_seconds']:.2f}s); same words as lstmq for "
              f"{matches}/{len(baseline_prompts)} prompts", flush=True)
        ceiling = in_process_decoder(export_dir, prompts, words)
        ceiling_rate = ceiling["words"] / ceiling["seconds"]
        same = sum(a == record["continuation"] for a, record in zip(ceiling["continuations"], records))
        print(f"in-process decoder on the exported model: {ceiling['words']:,} words in {ceiling['seconds']:.2f}s; "
              f"same words as lstmq generate for {same:,}/{len(records):,} prompts", flush=True)
        if same != len(records):
            raise StepFailed(f"lstmq generate and the in-process decoder differ on {len(records) - same} prompts")
        if matches != len(baseline_prompts):   # reported, not fatal: a near-tie can flip an argmax
            print(f"end_to_end: WARNING: the seed loop's greedy words differ from lstmq's for "
                  f"{len(baseline_prompts) - matches} of {len(baseline_prompts)} prompts", file=sys.stderr)

    rows = [
        ("lstmq end to end (lstmq generate wall)", generate_wall, end_to_end_rate),
        ("lstmq job record (created -> finished)", job_seconds, job_rate),
    ]
    if decode_rate:
        rows.append(("lstmq worker chunks (sum of chunk times)", logged["chunk_seconds"], decode_rate))
    rows.append(("in-process decoder, same exported model", ceiling["seconds"], ceiling_rate))
    rows.append(("seed model.predict per word", baseline["seconds"], seed_rate))
    print_table(rows, seed_rate, len(prompts), len(baseline_prompts), words)
    print(f"lstmq generate end to end / in-process decoder: {end_to_end_rate / ceiling_rate:.2f} (target >= 0.85); "
          f"job record / in-process decoder: {job_rate / ceiling_rate:.2f}")
    print(json.dumps({
        "benchmark": "end_to_end", "prompts": len(prompts), "words": words, "chunk_size": arguments.chunk_size,
        "baseline_prompts": len(baseline_prompts), "model": model, "vocabulary": vocab_size,
        "worker_ready_seconds": round(ready_seconds, 2),
        "train": {"epochs": trained["epochs_run"], "wall_seconds": round(train_wall, 2),
                  "job_seconds": round(train_job_seconds, 2), "epoch_seconds": epoch_seconds,
                  "loss": trained["loss"], "val_perplexity": trained["val_perplexity"]},
        "generate": {"wall_seconds": round(generate_wall, 2), "words_per_second": round(end_to_end_rate, 1),
                     "job_seconds": round(job_seconds, 2), "job_words_per_second": round(job_rate, 1),
                     "chunks": job.get("chunks"), **logged,
                     "chunk_words_per_second": round(decode_rate, 1) if decode_rate else None},
        "seed_predict": {"seconds": round(baseline["seconds"], 3), "words_per_second": round(seed_rate, 1),
                         "load_seconds": round(baseline["load_seconds"], 2), "same_words": matches},
        "in_process_decoder": {"seconds": round(ceiling["seconds"], 3), "words_per_second": round(ceiling_rate, 1)},
        "ratio_end_to_end_vs_in_process_decoder": round(end_to_end_rate / ceiling_rate, 3),
        "ratio_end_to_end_vs_seed_predict": round(end_to_end_rate / seed_rate, 1),
        "ratio_job_vs_seed_predict": round(job_rate / seed_rate, 1),
        "ratio_chunks_vs_seed_predict": round(decode_rate / seed_rate, 1) if decode_rate else None,
    }))
    return 0


def print_table(rows: list[tuple[str, float, float]], seed_rate: float, prompts: int, baseline_prompts: int,
                words: int) -> None:
    common.print_table([["what", "seconds", "words/s", "x seed predict()"]]
                       + [[name, f"{seconds:.2f}", f"{rate:.1f}", f"{rate / seed_rate:.1f}"] for name, seconds, rate in rows],
                       left=1)
    print(f"(lstmq rows: {prompts:,} prompts x {words} words; the seed row: {baseline_prompts} prompts x {words} "
          f"words, one predict() per word)")


if __name__ == "__main__":
    sys.exit(main())
