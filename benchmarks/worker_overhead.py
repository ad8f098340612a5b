"""Host overhead per prompt: a worker's task time minus its decoder time, per chunk size.

A generate task does more than decode: it takes the chunk's lease, reads the chunk's raw seed
lines from Redis, parses and checks each line (a .jsonl chunk's ids registered with the job's),
tokenizes each prompt, turns the generated ids into text, writes the output lines as finished
JSONL, and stores them compressed with the chunk's share of the seed report. Both seed formats
are timed: .txt lines, and .jsonl lines {"id", "prompt"}. This benchmark runs that code (lstmq.worker.jobs.chunks.run_generate_chunk, as a
worker's task runs it) in this process against a throwaway redis-server (tests/devstack.py), with
the seed-size network (the whole corpus's vocabulary, Embedding(100) -> LSTM(150) -> Dense(vocab),
random weights), and times the decoder's own calls inside it. Host time per prompt = (task seconds
- decoder seconds) / prompts; the target is <= 10 us at chunk sizes >= 4,096. The last columns run
the same prompts through the decoder alone (Decoder.continuations_scored, the in-process ceiling):
task words/s over decoder words/s.

    python -m benchmarks.worker_overhead [--chunk-sizes 1024,4096,16384] [--chunks 3] [--words 7]
                                         [--formats txt,jsonl] [--quick]

The corpus is $LSTMQ_TEST_CORPUS, by default ../shared/data/sherlock.txt beside the repository.
"""
from __future__ import annotations

import os
import time

from benchmarks import common
from benchmarks.common import RANDOM_SEED
from tests import devstack

# --quick: the smoke test (tests/test_benchmarks.py)
QUICK = {"chunk_sizes": "256,1024", "chunks": 1}


def parse_arguments():
    parser = common.argument_parser(__doc__)
    parser.add_argument("--chunk-sizes", default="1024,4096,16384", help="prompts per chunk (default 1024,4096,16384)")
    parser.add_argument("--chunks", type=int, default=3, help="chunks timed per size; the fastest counts (default 3)")
    common.add_words(parser)
    parser.add_argument("--formats", default="txt,jsonl", help="seed formats timed (default txt,jsonl)")
    common.add_quick(parser, "chunk sizes 256,1024, 1 chunk each")
    arguments = common.parse(parser, QUICK, lists=("chunk_sizes",), positive=("chunk_sizes", "chunks", "words"))
    arguments.formats = [fmt.strip() for fmt in arguments.formats.split(",") if fmt.strip()]
    if not arguments.formats or set(arguments.formats) - {"txt", "jsonl"}:
        parser.error("--formats takes txt, jsonl or both")
    return arguments


def register_random_model(store, text: str) -> tuple[str, int]:
    """The seed-size network (the default settings') with random weights over the corpus's whole
    vocabulary, registered as bench@1 straight into the store (scale_out's model too)."""
    from lstmq.shared.config import load_settings

    artifact = devstack.random_model_artifact(text, load_settings().model_params(), seed=RANDOM_SEED)
    return "bench", devstack.register_model(store, "bench", artifact)


def corpus_prompts(text: str, count: int) -> list[str]:
    """`count` random corpus lines of 5 to 15 words (scale_out's prompts too)."""
    return common.corpus_prompts(text, count, (5, 15))


class TimedDecoder:
    """Wraps a Decoder: adds up the seconds spent in its calls."""

    def __init__(self, decoder):
        self.decoder, self.seconds = decoder, 0.0

    def __getattr__(self, name):
        attribute = getattr(self.decoder, name)
        if not callable(attribute) or name not in ("continuations_scored", "generate_scored", "generate"):
            return attribute

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return attribute(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started
        return timed


def main() -> None:
    arguments = parse_arguments()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    import json

    from lstmq.shared.config import load_settings
    from lstmq.worker.jobs.chunks import ChunkPlan, ParsedChunk, run_generate_chunk
    from lstmq.shared.messages import JobKind
    from lstmq.shared.store import Store
    from lstmq.worker.runtime import ModelCache

    text = common.corpus_text()
    rows = []
    with devstack.LocalRedis() as server:
        settings = load_settings(overrides={"broker_url": server.url})
        store = Store.from_settings(settings)
        name, version = register_random_model(store, text)
        cache = ModelCache(store, 2, settings.decode_batch_size)
        loaded = cache.get(name, version)
        timed = TimedDecoder(loaded.decoder)
        loaded.decoder = timed
        params = settings.generation_params().replace(words=arguments.words, seed=0)
        print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs; decode_batch_size {settings.decode_batch_size}; "
              f"{arguments.words} words per prompt; fastest of {arguments.chunks} chunks per size", flush=True)
        for fmt in arguments.formats:
            for size in arguments.chunk_sizes:
                job = store.jobs.create(JobKind.GENERATE, params, model_name=name, version=version,
                                        model=f"{name}@{version}", seeds_file=f"bench.{fmt}", seed_format=fmt)
                for chunk in range(arguments.chunks + 1):
                    first = size * chunk + 1
                    prompts = corpus_prompts(text, size)
                    lines = prompts if fmt == "txt" else [json.dumps({"id": f"p{first + i}", "prompt": prompt})
                                                          for i, prompt in enumerate(prompts)]
                    store.jobs.put_chunk(job, chunk, "".join(line + "\n" for line in lines).encode(), first,
                                         time.time() + 600)
                store.jobs.finish_submission(job, arguments.chunks + 1, size * (arguments.chunks + 1))
                run_generate_chunk(store, cache, job, 0, "bench", settings)   # warm-up (traces the decoder)
                best = None
                for chunk in range(1, arguments.chunks + 1):
                    timed.seconds = 0.0
                    started = time.perf_counter()
                    outcome = run_generate_chunk(store, cache, job, chunk, "bench", settings)
                    task = time.perf_counter() - started
                    assert outcome.get("prompts") == size, outcome
                    if best is None or task < best[0]:
                        best = (task, timed.seconds)
                task, decode = best
                first, _count, data = store.jobs.chunk_source(job, 1)
                parsed = ParsedChunk.parse(store.jobs.get(job), first, data, settings, None)
                requests, _ = ChunkPlan(parsed.input, loaded.decoder.vocabulary, settings).prepare(0, size)
                alone, _ = common.fastest(lambda: timed.decoder.continuations_scored(requests), 2)
                words = size * arguments.words
                rows.append([fmt, f"{size:,}", f"{task:.3f}", f"{decode:.3f}", f"{(task - decode) / size * 1e6:.1f}",
                             f"{words / task:,.0f}", f"{words / alone:,.0f}", f"{alone / task:.2f}"])
    common.print_table([["format", "chunk", "task s", "decoder s", "host us/prompt", "task words/s", "decoder-only words/s",
                         "task/decoder-only"], *rows])
    print("\ntarget: host us/prompt <= 10 at chunk sizes >= 4,096")


if __name__ == "__main__":
    main()
