"""Training memory and epoch time: lstmq's train() against the seed notebook's way.

The seed builds every n-gram prefix of every corpus line, pre-pads them to 17 tokens of context,
turns the labels into a one-hot matrix (examples x vocabulary floats) and fits
Embedding(100) -> LSTM(150) -> Dense(vocab, softmax) with categorical cross-entropy, batch 32.
lstmq (lstmq.worker.engine.training) feeds whole lines with integer labels and a sparse loss, streamed in
length-bucketed batches, so it never holds a one-hot matrix.

Each variant runs in its own subprocess, one after the other, so that each peak resident memory
(VmHWM, read by the child at its end) is its own. The parent prints RATIOS measured
in this run (seed / lstmq, both on the SAME corpus slice); wall times are printed, never checked.

The seed's one-hot matrix grows with examples x vocabulary: about 5.9 GiB of float64 for the whole
corpus (96k examples x 8,201 words x 8 bytes, float64 being what keras.utils.to_categorical returns
under Keras 3), plus the copies that fit() makes. So both variants run on the first --lines lines
(default 3000); lstmq alone also runs on the whole corpus, and the seed's whole-corpus one-hot size
is computed, not run. The seed variant is refused when its estimate exceeds the available memory.

    python -m benchmarks.train_memory [--lines 3000] [--epochs 1] [--no-full-corpus]

The corpus is $LSTMQ_TEST_CORPUS, by default ../shared/data/sherlock.txt beside the repository.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import time

import numpy as np

from benchmarks import common
from benchmarks.common import MIB, SEED_BATCH_SIZE
from tests import devstack

ONE_HOT_BYTES = 8            # float64: keras.utils.to_categorical on a numpy array (Keras 3)
FIT_COPIES = 3               # one-hot matrices alive at once in the worst case (ours, fit()'s, a cast)


# --- the two variants, each run in a child process ------------------------------------------
def run_seed(text: str, epochs: int) -> dict:
    """The notebook's cells 9-17 on `text` (its tokenizer rules via lstmq.shared.text; ids shifted by
    one against Keras' Tokenizer, which changes nothing here)."""
    import keras

    from lstmq.shared.text import Vocabulary

    started = time.monotonic()
    vocabulary = Vocabulary.from_text(text)
    total_words = len(vocabulary)
    sequences = common.seed_sequences(text, vocabulary)
    inputs, labels = sequences[:, :-1], sequences[:, -1]
    labels = np.array(keras.utils.to_categorical(labels, num_classes=total_words))   # the one-hot matrix
    keras.utils.set_random_seed(common.RANDOM_SEED)
    model = common.seed_model(total_words)
    epoch_seconds = []

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch_started = time.monotonic()

        def on_epoch_end(self, epoch, logs=None):
            epoch_seconds.append(time.monotonic() - self.epoch_started)

    history = model.fit(inputs, labels, epochs=epochs, batch_size=SEED_BATCH_SIZE, verbose=0,
                        callbacks=[EpochTimer()])
    return {
        "vocabulary": total_words, "train_examples": len(inputs), "validation_examples": 0,
        "one_hot_mib": round(labels.nbytes / MIB, 1), "one_hot_dtype": str(labels.dtype),
        "loss": round(float(history.history["loss"][-1]), 4),
        "epoch_seconds": [round(seconds, 3) for seconds in epoch_seconds],
        "total_seconds": round(time.monotonic() - started, 3),
    }


def run_lstmq(text: str, epochs: int) -> dict:
    """lstmq.worker.engine.training.train with the default settings but `epochs`."""
    from lstmq.shared.config import load_settings
    from lstmq.shared.artifact import read_artifact
    from lstmq.worker.engine.training import train

    started = time.monotonic()
    params = load_settings().model_params().replace(epochs=epochs)
    result = train(text, params, hashlib.sha256(text.encode("utf-8")).hexdigest())
    return {
        "vocabulary": len(read_artifact(result.artifact)[1]),
        "train_examples": result.metrics["train_targets"],
        "validation_sequences": result.metrics["validation_sequences"],
        "batch_size": params.batch_size, "validation_split": params.validation_split,
        "loss": round(float(result.history[-1]["loss"]), 4),
        "epoch_seconds": [record["seconds"] for record in result.history],
        "total_seconds": round(time.monotonic() - started, 3),
    }


def child(variant: str, lines: int, epochs: int) -> None:
    import tensorflow  # noqa: F401  (imported first, so that its footprint is measured apart)

    after_import = common.current_rss_mib()
    text = common.corpus_text(lines)
    figures = (run_seed if variant == "seed" else run_lstmq)(text, epochs)
    peak = common.peak_rss_mib()
    print(json.dumps({"variant": variant, "lines": lines or len(text.split("\n")), "epochs": epochs,
                      "rss_after_import_mib": round(after_import, 1), "peak_rss_mib": round(peak, 1),
                      "peak_above_import_mib": round(peak - after_import, 1), **figures}))


# --- the parent: runs the children, prints the ratios -----------------------------------------
def seed_estimate(lines: int) -> dict:
    """Examples, vocabulary and one-hot bytes the seed way needs on a slice, without TensorFlow."""
    from lstmq.shared.text import Vocabulary

    text = common.corpus_text(lines)
    vocabulary = Vocabulary.from_text(text)
    examples = sum(max(len(vocabulary.encode(line)[0]) - 1, 0) for line in text.split("\n"))
    return {"examples": examples, "vocabulary": len(vocabulary),
            "one_hot_bytes": examples * len(vocabulary) * ONE_HOT_BYTES}


def run_child(variant: str, lines: int, epochs: int) -> dict:
    print(f"running {variant} on {'the whole corpus' if not lines else f'the first {lines} lines'} ...", flush=True)
    return common.run_child("benchmarks.train_memory", "--child", variant, "--lines", lines, "--epochs", epochs)


def epoch_seconds(report: dict) -> float:
    return sum(report["epoch_seconds"]) / len(report["epoch_seconds"])


def print_table(reports: list[dict]) -> None:
    header = ["variant", "lines", "examples", "vocab", "peak RSS MiB", "above import MiB",
              "epoch s", "examples/s"]
    rows = [header]
    for report in reports:
        seconds = epoch_seconds(report)
        rows.append([report["variant"], str(report["lines"]), str(report["train_examples"]),
                     str(report["vocabulary"]), f"{report['peak_rss_mib']:.0f}",
                     f"{report['peak_above_import_mib']:.0f}", f"{seconds:.1f}",
                     f"{report['train_examples'] / seconds:.0f}"])
    common.print_table(rows)


def parse_arguments() -> argparse.Namespace:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--lines", type=int, default=3000,
                        help="corpus lines both variants train on, 0 = all (default 3000: the seed's one-hot "
                             "matrix for the whole corpus needs many GiB)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per variant (default 1)")
    parser.add_argument("--no-full-corpus", action="store_true",
                        help="skip the extra lstmq run on the whole corpus")
    parser.add_argument("--force", action="store_true",
                        help="run the seed variant even when its one-hot estimate exceeds available memory")
    parser.add_argument("--child", choices=("seed", "lstmq"), help=argparse.SUPPRESS)
    arguments = common.parse(parser, positive=("epochs",))
    if arguments.lines < 0:
        parser.error("--lines must be >= 0")
    return arguments


def main() -> None:
    arguments = parse_arguments()
    if arguments.child:
        child(arguments.child, arguments.lines, arguments.epochs)
        return

    total_lines = len(common.corpus_text(0).split("\n"))
    estimate = seed_estimate(arguments.lines)
    needed = estimate["one_hot_bytes"] * FIT_COPIES
    print(f"corpus {devstack.corpus_path()} ({total_lines} lines); slice: first {arguments.lines or total_lines} lines, "
          f"{estimate['examples']} seed examples x {estimate['vocabulary']} words = "
          f"{estimate['one_hot_bytes'] / MIB:,.0f} MiB of one-hot labels (float64); "
          f"{arguments.epochs} epoch(s); {os.cpu_count()} CPUs", flush=True)
    if needed > common.available_memory_bytes() and not arguments.force:
        raise SystemExit(f"the seed variant would need about {needed / 2**30:.1f} GiB ({FIT_COPIES} copies of its "
                         f"one-hot matrix), more than the {common.available_memory_bytes() / 2**30:.1f} GiB available: "
                         f"use a smaller --lines, or --force")

    seed = run_child("seed", arguments.lines, arguments.epochs)
    lstmq = run_child("lstmq", arguments.lines, arguments.epochs)
    reports = [seed, lstmq]
    if not arguments.no_full_corpus and arguments.lines and arguments.lines < total_lines:
        reports.append(run_child("lstmq", 0, arguments.epochs))
    print_table(reports)

    ratios = {
        "peak_rss": round(seed["peak_rss_mib"] / lstmq["peak_rss_mib"], 2),
        "peak_above_import": round(seed["peak_above_import_mib"] / max(lstmq["peak_above_import_mib"], 1.0), 2),
        "epoch_seconds": round(epoch_seconds(seed) / epoch_seconds(lstmq), 2),
        "examples_per_second": round((lstmq["train_examples"] / epoch_seconds(lstmq))
                                     / (seed["train_examples"] / epoch_seconds(seed)), 2),
    }
    full = seed_estimate(0)
    print(f"\nsame slice ({seed['lines']} lines), seed / lstmq: peak RSS x{ratios['peak_rss']} "
          f"(above the TensorFlow import x{ratios['peak_above_import']}), "
          f"epoch time x{ratios['epoch_seconds']}, examples/s (lstmq / seed) x{ratios['examples_per_second']}")
    print(f"seed one-hot labels on this slice: {seed['one_hot_mib']:,.0f} MiB {seed['one_hot_dtype']}; "
          f"on the whole corpus: {full['examples']} x {full['vocabulary']} = "
          f"{full['one_hot_bytes'] / 2**30:.1f} GiB (computed, not run)")
    print(f"note: lstmq's epoch trains on {1 - lstmq['validation_split']:.0%} of the lines and includes a "
          f"validation pass over the rest (validation_split {lstmq['validation_split']}); the seed trains on "
          f"all of them with no validation. examples = next-word targets.")
    print(json.dumps({"benchmark": "train_memory", "slice_lines": seed["lines"], "ratios_seed_over_lstmq": ratios,
                      "seed_full_corpus_one_hot_bytes": full["one_hot_bytes"], "runs": reports}))


if __name__ == "__main__":
    main()
