"""Generation throughput: lstmq's batched incremental decoder against the seed notebook's loop.

The seed generates one word per full forward pass of the model per prompt (it re-reads the whole
context for every word). lstmq's Decoder reads each prompt once, then carries the LSTM state and
emits one word for every row of a batch per step inside one compiled tf.function.

Both run in this process on the same network (the seed's size: the vocabulary of the whole corpus,
about 8,201 ids, Embedding(100) -> LSTM(150) -> Dense(vocab)), trained first for --trained-epochs
(1) with lstmq's own training (about 11 s an epoch on 2 cores): the weights matter to the decoder's
speed. Untrained (--trained-epochs 0) the logits lie so close together that in about 60% of the
steps at 256 rows some row's two best words are within float32 rounding of each other, and the
decoder recomputes that row the model's own way (a matmul over the whole vocabulary); a model
trained for two epochs had no such row in 30,720 (rows x steps). The result is a RATIO measured in
one run, on whatever machine runs it; wall times are printed for reading, never checked.

    python -m benchmarks.decode_throughput [--prompts 256] [--words 7] [--batch-sizes 1,32,256,1024]
                                           [--baseline-prompts 8] [--repeats 5] [--sampling]
                                           [--bound-batch-sizes 256,1024,4096] [--bound-words 30]
                                           [--mixed] [--quick]

The dense bound: per generated word, one (batch x lstm_units).(lstm_units x vocabulary) matmul
and an argmax, timed in a compiled loop in this process, interleaved with the decoder's timings
at the same batch size (a full batch of prompts, --bound-words words each, prefill included);
the table prints decoder/bound ratios for greedy (with and without the log-probabilities, and with
TensorFlow's ops only: native_kernels off) and for sampling (top_k 50; top_k 50 with top_p 0.9; plain temperature). --mixed compares lines asking for 1 to 59
words (mean about 30) with the same prompts at 30 words each: about the same total words. --quick:
small sizes (QUICK below), random weights, every table. The script exits 1 when greedy output
differs from the seed loop's.

The corpus is $LSTMQ_TEST_CORPUS, by default ../shared/data/sherlock.txt beside the repository.
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable

import numpy as np

from benchmarks import common
from benchmarks.common import EMBEDDING_DIM, LSTM_UNITS, RANDOM_SEED, SEED_CONTEXT
from tests import devstack

PROMPT_WORDS = (5, 15)       # prompts are corpus lines of this many words, inclusive
# --quick: small sizes, every table, random weights (the smoke test: tests/test_benchmarks.py)
QUICK = {"prompts": 16, "baseline_prompts": 1, "repeats": 1, "batch_sizes": "32", "bound_batch_sizes": "64",
         "bound_words": 4, "sampling": True, "mixed": True, "mixed_batch_size": 32, "trained_epochs": 0}


def parse_arguments():
    parser = common.argument_parser(__doc__)
    common.add_prompts(parser, 256, "prompts decoded per timing (default 256)")
    common.add_words(parser)
    parser.add_argument("--batch-sizes", default="1,32,256,1024",
                        help="comma-separated decoder batch sizes, rows per compiled call (default 1,32,256,1024)")
    parser.add_argument("--baseline-prompts", type=int, default=8,
                        help="prompts run through the seed's slow loop (default 8); its words/s is per word")
    common.add_repeats(parser, 5)
    parser.add_argument("--sampling", action="store_true",
                        help="also time sampling (temperature 1.0, top_k 50) at each batch size")
    parser.add_argument("--no-predict-baseline", action="store_true",
                        help="skip the second baseline, the seed's literal model.predict() per word")
    parser.add_argument("--bound-batch-sizes", default="256,1024,4096",
                        help="batch sizes of the decoder/dense-bound table (default 256,1024,4096; empty: skip)")
    parser.add_argument("--bound-words", type=int, default=30,
                        help="words per prompt in the decoder/dense-bound table (default 30)")
    parser.add_argument("--mixed", action="store_true",
                        help="also time mixed lengths (1..59 words) against a uniform 30 words, same prompts")
    parser.add_argument("--mixed-batch-size", type=int, default=1024, help="decoder batch size for --mixed (default 1024)")
    parser.add_argument("--trained-epochs", type=int, default=1,
                        help="train the network this many epochs on the corpus first (default 1; 0: random weights)")
    common.add_quick(parser, "16 prompts, 1 repeat, random weights, every table")
    arguments = common.parse(parser, QUICK, lists=("batch_sizes", "bound_batch_sizes"),
                             positive=("prompts", "words", "baseline_prompts", "repeats", "bound_words",
                                       "mixed_batch_size", "batch_sizes"))
    if arguments.trained_epochs < 0:
        parser.error("--trained-epochs must be >= 0")
    return arguments


def trained_model(text: str, epochs: int):
    """(vocabulary, inference model, description) of the seed's network trained `epochs` epochs
    on `text` with lstmq's training and its default settings."""
    import hashlib

    from lstmq.shared.config import load_settings
    from lstmq.shared.artifact import read_artifact
    from lstmq.worker.engine.network import load_keras_bytes
    from lstmq.shared.text import Vocabulary
    from lstmq.worker.engine.training import train

    params = load_settings(environ={}).model_params().replace(
        embedding_dim=EMBEDDING_DIM, lstm_units=LSTM_UNITS, lstm_layers=1, max_vocab=0, epochs=epochs,
        early_stopping_patience=0, shuffle_seed=RANDOM_SEED)
    started = time.perf_counter()
    result = train(text, params, hashlib.sha256(text.encode("utf-8")).hexdigest(), samples_each_epoch=False)
    model_bytes, tokens, _ = read_artifact(result.artifact)
    seconds = time.perf_counter() - started
    return (Vocabulary(tokens), load_keras_bytes(model_bytes),
            f"trained {epochs} epoch(s) in {seconds:.0f} s (validation perplexity {result.metrics['val_perplexity']:.0f})")


def choose_prompts(text: str, vocabulary, count: int) -> list[list[int]]:
    """Token ids of `count` random corpus lines of 5 to 15 words (drawn with replacement)."""
    return [vocabulary.encode(line)[0] for line in common.corpus_prompts(text, count, PROMPT_WORDS)]


def main() -> None:
    arguments = parse_arguments()
    import keras
    import tensorflow as tf

    from lstmq.shared.config import load_settings
    from lstmq.worker.engine.decoder import Decoder, Request
    from tests.oracle import reference_greedy
    from lstmq.worker.engine.network import build_models
    from lstmq.shared.text import Vocabulary
    from lstmq.worker.runtime import configure_threads

    configure_threads(tf, load_settings())   # TensorFlow's threads as a worker sets them (tf_threads, tf_inter_op_threads)

    path = devstack.corpus_path()
    text = path.read_text(encoding="utf-8")
    if arguments.trained_epochs:
        vocabulary, inference_model, weights = trained_model(text, arguments.trained_epochs)
    else:
        vocabulary = Vocabulary.from_text(text)
        keras.utils.set_random_seed(RANDOM_SEED)
        _, inference_model = build_models(len(vocabulary), EMBEDDING_DIM, LSTM_UNITS)
        weights = "random weights"
    keras.utils.set_random_seed(RANDOM_SEED)
    prompts = choose_prompts(text, vocabulary, arguments.prompts)
    baseline_prompts = prompts[: arguments.baseline_prompts]
    words = arguments.words
    print(f"corpus {path} ({len(text):,} characters), vocabulary {len(vocabulary):,} ids, "
          f"network Embedding({EMBEDDING_DIM}) -> LSTM({LSTM_UNITS}) -> Dense({len(vocabulary)}), {weights}")
    print(f"{len(prompts)} prompts of {PROMPT_WORDS[0]}-{PROMPT_WORDS[1]} words, {words} words each; "
          f"seed baselines on the first {len(baseline_prompts)}; fastest of {arguments.repeats} timings; "
          f"TensorFlow {tf.__version__} on {platform.machine()}, {os.cpu_count()} CPUs", flush=True)

    # --- baselines: one full forward pass per word per prompt -------------------------------
    def run_reference():
        return [reference_greedy(inference_model, ids, words, window=SEED_CONTEXT) for ids in baseline_prompts]

    reference_greedy(inference_model, baseline_prompts[0], 1, window=SEED_CONTEXT)  # warm-up
    seconds, reference_outputs = common.fastest(run_reference, arguments.repeats)
    baseline_words = len(baseline_prompts) * words
    seed_loop_rate = baseline_words / seconds   # words per second
    print(f"seed loop (model call per word):  {seed_loop_rate:10.1f} words/s  "
          f"({baseline_words} words in {seconds:.3f} s)", flush=True)

    predict_rate = None
    if not arguments.no_predict_baseline:
        def run_predict():
            return [reference_greedy(inference_model, ids, words, window=SEED_CONTEXT, predict=True) for ids in baseline_prompts]

        reference_greedy(inference_model, baseline_prompts[0], 1, window=SEED_CONTEXT, predict=True)  # warm-up (traces predict)
        seconds, predict_outputs = common.fastest(run_predict, arguments.repeats)
        predict_rate = baseline_words / seconds
        predict_matches = sum(a == b for a, b in zip(predict_outputs, reference_outputs))
        print(f"seed predict() per word:          {predict_rate:10.1f} words/s  "
              f"({baseline_words} words in {seconds:.3f} s; "
              f"same words as the loop for {predict_matches}/{len(baseline_prompts)} prompts)", flush=True)

    # --- lstmq's decoder at each batch size --------------------------------------------------
    modes = [("greedy", {"temperature": 0.0})]
    if arguments.sampling:
        modes.append(("sampling", {"temperature": 1.0, "top_k": 50, "seed": 0}))
    rows = []
    for batch_size in arguments.batch_sizes:
        decoder = Decoder(inference_model, vocabulary, max_rows=batch_size)
        for mode, sampling_parameters in modes:
            params = load_settings(environ={}).generation_params().replace(words=words, seed=0).replace(**sampling_parameters)
            requests = [Request(ids=ids, params=params, key=index) for index, ids in enumerate(prompts)]
            decoder.generate(requests[:batch_size])   # warm-up: traces the tf.function once
            seconds, outputs = common.fastest(lambda: decoder.generate(requests), arguments.repeats)
            rate = len(prompts) * words / seconds   # words per second
            matches = None
            if mode == "greedy":
                matches = sum(outputs[index][0] == reference_outputs[index] for index in range(len(baseline_prompts)))
            rows.append({
                "mode": mode, "batch_size": batch_size, "rows_per_call": min(batch_size, len(prompts)),
                "seconds": round(seconds, 4), "words_per_second": round(rate, 1),
                "ratio_vs_seed_loop": round(rate / seed_loop_rate, 2),
                "ratio_vs_seed_predict": round(rate / predict_rate, 2) if predict_rate else None,
                "greedy_matches": matches,
            })
            print(f"  decoder {mode:8} batch {batch_size:5}: {rate:10.1f} words/s", flush=True)

    print_table(rows, len(baseline_prompts), predict_rate is not None)

    bound_rows = [measure_bound(arguments, text, vocabulary, inference_model, batch_size)
                  for batch_size in arguments.bound_batch_sizes]
    if bound_rows:
        print_bound_table(bound_rows, arguments.bound_words)
    mixed_rows = []
    if arguments.mixed:
        batch_size = arguments.mixed_batch_size
        mixed_rows = [measure_mixed(arguments, text, vocabulary, inference_model, batch_size, count)
                      for count in (4 * batch_size, batch_size)]
        print_mixed_table(mixed_rows)
    print(json.dumps({
        "benchmark": "decode_throughput", "prompts": len(prompts), "words": words,
        "baseline_prompts": len(baseline_prompts), "vocabulary": len(vocabulary), "weights": weights,
        "seed_loop_words_per_second": round(seed_loop_rate, 1),
        "seed_predict_words_per_second": round(predict_rate, 1) if predict_rate else None,
        "decoder": rows, "bound": bound_rows, "mixed": mixed_rows,
    }))
    failures = [row for row in rows if row["greedy_matches"] is not None and row["greedy_matches"] < len(baseline_prompts)]
    failures += [row for row in bound_rows if not row["greedy_ids_equal_scored"]]
    if failures:
        print(f"FAILED: greedy output differs from the seed loop's (or between generate and generate_scored) "
              f"in {len(failures)} measurement(s)", file=sys.stderr)
        sys.exit(1)


# The decoder modes of the bound table: (name, generation parameters, scored).
NATIVE_OFF = "greedy, TF ops only"   # a decoder with native_kernels off
BOUND_MODES = [
    ("greedy", {"temperature": 0.0}, True),
    ("greedy ids only", {"temperature": 0.0}, False),
    (NATIVE_OFF, {"temperature": 0.0}, True),
    ("top_k 50", {"temperature": 1.0, "top_k": 50}, True),
    ("top_k 50 top_p 0.9", {"temperature": 1.0, "top_k": 50, "top_p": 0.9}, True),
    ("temperature 1", {"temperature": 1.0}, True),
]


def dense_bound(inference_model, batch_size: int, steps: int) -> Callable[[], object]:
    """The dense bound for `batch_size` rows and `steps` words: per word one (batch x units).(units
    x vocabulary) matmul with the model's output kernel and an argmax, in a compiled loop (each
    step depends on the previous one's argmax, so nothing is hoisted)."""
    import tensorflow as tf

    from lstmq.worker.engine.network import decoding_layers

    kernel = tf.constant(decoding_layers(inference_model).logits.get_weights()[0])
    rng = np.random.default_rng(RANDOM_SEED)
    start = tf.constant(rng.uniform(-1, 1, (batch_size, kernel.shape[0])).astype(np.float32))

    @tf.function
    def run(h):
        tokens = tf.TensorArray(tf.int32, size=steps)
        for step in tf.range(steps):
            token = tf.argmax(tf.matmul(h, kernel), axis=-1, output_type=tf.int32)
            tokens = tokens.write(step, token)
            h = h + tf.cast(token[:, None] % 2, tf.float32) * 1e-3
        return tokens.stack()

    run(start)   # trace
    return lambda: run(start).numpy()


def measure_bound(arguments, text, vocabulary, inference_model, batch_size: int) -> dict:
    """Decoder words/s against the dense bound at one batch size: a full batch of prompts,
    --bound-words each; bound and decoder timings interleaved, fastest of --repeats each."""
    from lstmq.shared.config import load_settings
    from lstmq.worker.engine.decoder import Decoder, Request

    words = arguments.bound_words
    prompts = choose_prompts(text, vocabulary, batch_size)
    decoder = Decoder(inference_model, vocabulary, max_rows=batch_size)
    plain = Decoder(inference_model, vocabulary, max_rows=batch_size, native="off")
    defaults = load_settings(environ={}).generation_params().replace(words=words, seed=0)
    runs = {"bound": dense_bound(inference_model, batch_size, words)}
    for name, changes, scored in BOUND_MODES:
        requests = [Request(ids=ids, params=defaults.replace(**changes), key=index) for index, ids in enumerate(prompts)]
        chosen = plain if name == NATIVE_OFF else decoder
        call = chosen.generate_scored if scored else chosen.generate
        runs[name] = (lambda call=call, requests=requests: call(requests))
    outputs = {name: run() for name, run in runs.items()}   # warm-up: traces every path once
    best = common.interleaved_fastest(runs, arguments.repeats)
    rates = {name: batch_size * words / seconds for name, seconds in best.items()}
    row = {"batch_size": batch_size, "words": words, "bound_words_per_second": round(rates["bound"], 1),
           "native_kernels": decoder.native,
           "greedy_ids_equal_scored":
               [[ids for ids, _ in samples] for samples in outputs["greedy"]] == outputs["greedy ids only"]
               and [[ids for ids, _ in samples] for samples in outputs[NATIVE_OFF]] == outputs["greedy ids only"]}
    for name, _, _ in BOUND_MODES:
        row[name] = {"words_per_second": round(rates[name], 1), "ratio_to_bound": round(rates[name] / rates["bound"], 3)}
    row["logprob_cost"] = round(1 - rates["greedy"] / rates["greedy ids only"], 3)
    print(f"  bound batch {batch_size:5} (native kernels {'on' if row['native_kernels'] else 'off'}): "
          f"{rates['bound']:10.1f} words/s; "
          + ", ".join(f"{name} {rates[name] / rates['bound']:.3f}" for name, _, _ in BOUND_MODES), flush=True)
    return row


def print_bound_table(rows: list[dict], words: int) -> None:
    header = ["batch", "bound words/s", *(f"{name} /bound" for name, _, _ in BOUND_MODES), "logprob cost"]
    lines = [header]
    for row in rows:
        lines.append([str(row["batch_size"]), f"{row['bound_words_per_second']:.0f}",
                      *(f"{row[name]['ratio_to_bound']:.3f}" for name, _, _ in BOUND_MODES),
                      f"{100 * row['logprob_cost']:.1f}%"])
    common.print_table(lines)
    print(f"(a full batch of prompts, {words} words each, prefill included; bound: one (batch x units).(units x "
          f"vocabulary) matmul + argmax per word; sampling at temperature 1.0; logprob cost: 1 - greedy/greedy ids only)")


MIXED_WORDS = (1, 59)     # mixed lengths: every length in this range equally often (mean 30)


def measure_mixed(arguments, text, vocabulary, inference_model, batch_size: int, count: int) -> dict:
    """Greedy words/s of `count` prompts asking for 1..59 words against the same prompts at 30
    words each (about the same total), interleaved, fastest of --repeats each."""
    from lstmq.shared.config import load_settings
    from lstmq.worker.engine.decoder import Decoder, Request

    prompts = choose_prompts(text, vocabulary, count)
    low, high = MIXED_WORDS
    lengths = np.resize(np.arange(low, high + 1), count)
    np.random.default_rng(RANDOM_SEED).shuffle(lengths)
    uniform = (low + high) // 2
    defaults = load_settings(environ={}).generation_params().replace(seed=0, temperature=0.0)
    decoder = Decoder(inference_model, vocabulary, max_rows=batch_size)
    mixed_requests = [Request(ids=ids, params=defaults.replace(words=int(w)), key=i)
                      for i, (ids, w) in enumerate(zip(prompts, lengths))]
    uniform_requests = [Request(ids=ids, params=defaults.replace(words=uniform), key=i) for i, ids in enumerate(prompts)]
    runs = {"uniform": lambda: decoder.generate_scored(uniform_requests),
            "mixed": lambda: decoder.generate_scored(mixed_requests)}
    for run in runs.values():
        run()   # warm-up
    best = common.interleaved_fastest(runs, arguments.repeats)
    mixed_words, uniform_words = int(lengths.sum()), uniform * count
    row = {"batch_size": batch_size, "prompts": count, "mixed_words": mixed_words, "uniform_words": uniform_words,
           "mixed_words_per_second": round(mixed_words / best["mixed"], 1),
           "uniform_words_per_second": round(uniform_words / best["uniform"], 1)}
    row["ratio"] = round(row["mixed_words_per_second"] / row["uniform_words_per_second"], 3)
    print(f"  mixed batch {batch_size:5}, {count} prompts: mixed/uniform {row['ratio']:.3f}", flush=True)
    return row


def print_mixed_table(rows: list[dict]) -> None:
    lines = [["batch", "prompts", "words", "uniform words/s", "mixed words/s", "mixed/uniform"]]
    for row in rows:
        lines.append([str(row["batch_size"]), str(row["prompts"]), str(row["mixed_words"]),
                      f"{row['uniform_words_per_second']:.0f}", f"{row['mixed_words_per_second']:.0f}", f"{row['ratio']:.3f}"])
    common.print_table(lines)
    print(f"(greedy, with log-probabilities; mixed: every length {MIXED_WORDS[0]}..{MIXED_WORDS[1]} equally often, "
          f"uniform: {(MIXED_WORDS[0] + MIXED_WORDS[1]) // 2} words each; words/s counts requested words only)")


def print_table(rows: list[dict], baseline_prompts: int, with_predict: bool) -> None:
    header = ["mode", "batch", "rows/call", "words/s", "x seed loop"]
    if with_predict:
        header.append("x seed predict()")
    header.append(f"greedy = seed (of {baseline_prompts})")
    lines = [header]
    for row in rows:
        line = [row["mode"], str(row["batch_size"]), str(row["rows_per_call"]),
                f"{row['words_per_second']:.1f}", f"{row['ratio_vs_seed_loop']:.2f}"]
        if with_predict:
            line.append(f"{row['ratio_vs_seed_predict']:.2f}")
        line.append("-" if row["greedy_matches"] is None else str(row["greedy_matches"]))
        lines.append(line)
    common.print_table(lines)
    print("(rows/call: a batch size above --prompts decodes all prompts in one call; "
          "the seed's ratios compare with its greedy loop, it had no sampling)")


if __name__ == "__main__":
    main()
