"""Training speed and quality: held-out perplexity after EQUAL WALL TIME, lstmq against the seed.

Every variant trains on the same training lines of the first --lines corpus lines for --seconds
of training (data preparation, evaluation and the first step, which traces the training
function, are not counted), and is scored at fractions of that time on the SAME held-out lines:
lstmq's own validation split (validation_split, shuffle_seed of the default settings), so the
seed's figure is comparable with lstmq's `val_perplexity`.

- seed: the notebook's recipe (benchmarks/train_memory.py's `run_seed`): every prefix of two or
  more tokens of every training sequence, pre-padded to 17 tokens of context, one-hot labels,
  Sequential Embedding(100) -> LSTM(150) -> Dense(softmax), categorical cross-entropy, Adam 0.001,
  batch 32 (shuffled);
- lstmq: lstmq.worker.engine.network.build_models + lstmq.worker.engine.training's optimizer and
  length-bucketed tf.data batches of whole lines, sparse loss (what `train()` runs), at each batch
  size / learning rate / clip / layers / dropout given by --variants.

Held-out perplexity = exp(mean negative log-likelihood over every next-word target of the held-out
lines), each target predicted from the same words before it in both variants. Also printed: the
median and largest global gradient norm on a few training batches at each scoring point (what
gradient clipping would act on) and the CPU seconds each variant got (the machine may be shared:
compare cpu/wall between variants before trusting a wall-time comparison).

--full-corpus adds the one whole-corpus measurement, each in its own subprocess: lstmq's train()
with the default settings for one epoch (seconds per epoch and peak RSS), and the seed recipe for
one epoch on the whole corpus with its one-hot labels made per batch (the whole matrix, ~5.9 GiB
of float64, plus fit()'s copies does not fit in memory: see train_memory.py; the network, loss,
batch and examples are the seed's, only where the one-hot rows live differs).

    python -m benchmarks.train_speed [--lines 0] [--seconds 150] [--variants seed default bs=16:lr=0.001:clip=0]
    python -m benchmarks.train_speed --quick          # a smoke run: small slice, short budget, 2 variants
    python -m benchmarks.train_speed --full-corpus --variants   # only the whole-corpus epochs

Ratios and tables are printed; nothing is asserted about time. The last line is JSON.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import time

import numpy as np

from benchmarks import common
from benchmarks.common import RANDOM_SEED, SEED_BATCH_SIZE, SEED_CONTEXT

CHECKPOINTS = (1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 1.0)   # fractions of --seconds at which every variant is scored
ONE_HOT_IN_MEMORY_BYTES = 2 << 30   # the seed's one-hot matrix as the notebook holds it, up to this size
GRADIENT_BATCHES = 4   # training batches whose gradient norm is measured at each scoring point (--gradient-batches)
# --quick: the smoke test (tests/test_benchmarks.py): the seed against the default settings, briefly
QUICK = {"lines": 300, "seconds": 1.5, "variants": ["seed", "default"], "gradient_batches": 1}
# the former default (16 lines, 0.001), the measured alternatives, and the default settings
DEFAULT_VARIANTS = ["seed", "bs=16:lr=0.001:clip=0", "bs=16:lr=0.003:clip=0", "bs=32:lr=0.006:clip=0",
                    "bs=64:lr=0.012:clip=0", "default"]
KEYS = {"bs": ("batch_size", int), "lr": ("learning_rate", float), "clip": ("clipnorm", float),
        "layers": ("lstm_layers", int), "dropout": ("dropout", float)}


def default_params():
    from lstmq.shared.config import load_settings
    return load_settings(environ={}).model_params()


def parse_variant(spec: str, defaults) -> dict:
    """'seed', 'default' (the default settings), or 'bs=64:lr=0.002:clip=1:layers=2:dropout=0.2'
    (keys not named: the default settings')."""
    if spec == "seed":
        return {"name": "seed"}
    changes = {}
    for part in filter(None, [] if spec == "default" else spec.split(":")):
        key, _, value = part.partition("=")
        if key not in KEYS or not value:
            raise SystemExit(f"--variants: {spec!r}: expected seed or {'/'.join(KEYS)}=VALUE joined by ':'")
        field, kind = KEYS[key]
        changes[field] = kind(value)
    params = defaults.replace(**changes)
    name = (f"lstmq bs={params.batch_size} lr={params.learning_rate:g}"
            + (f" clip={params.clipnorm:g}" if params.clipnorm else "")
            + (f" layers={params.lstm_layers}" if params.lstm_layers > 1 else "")
            + (f" dropout={params.dropout:g}" if params.dropout else ""))
    return {"name": name, "params": params}


# --- data shared by every variant --------------------------------------------------------------
class Data:
    """The slice's vocabulary, lstmq's training and held-out sequences, and the seed's examples."""

    def __init__(self, text: str, params):
        from lstmq.worker.engine.training import prepare

        started = time.monotonic()
        self.vocabulary, self.training, self.validation = prepare(text, params)
        self.vocab_size = len(self.vocabulary)
        self.held_out_targets = self.validation.target_count()
        # every (context, target) of the held-out sequences, as the seed feeds them: pre-padded to 17
        self.held_out_seed = self.seed_matrix(self.validation)
        self.seconds = time.monotonic() - started

    @staticmethod
    def seed_matrix(batches) -> np.ndarray:
        """Every prefix of two or more tokens of every sequence, pre-padded to 17 + 1 tokens."""
        rows = []
        for start, length in zip(batches.starts, batches.lengths):
            sequence = batches.tokens[start:start + length]
            for end in range(2, length + 1):
                prefix = sequence[max(0, end - SEED_CONTEXT - 1):end]
                rows.append(np.concatenate([np.zeros(SEED_CONTEXT + 1 - len(prefix), np.int32), prefix]))
        return np.stack(rows).astype(np.int32)


def lstmq_held_out_nll(training_model, data: Data) -> float:
    """Mean negative log-likelihood per held-out target (logits of the training view)."""
    import tensorflow as tf
    from lstmq.shared.text import PAD_ID

    total, count = 0.0, 0
    for indices in data.validation.batch_order(256, None):
        inputs, targets = data.validation.batch(indices)
        logits = training_model(inputs, training=False)
        nll = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=logits).numpy()
        real = targets != PAD_ID
        total += float(nll[real].sum())
        count += int(real.sum())
    assert count == data.held_out_targets
    return total / count


def seed_held_out_nll(model, data: Data) -> float:
    inputs, targets = data.held_out_seed[:, :-1], data.held_out_seed[:, -1]
    probabilities = np.concatenate([np.asarray(model(inputs[i:i + 1024], training=False))
                                    for i in range(0, len(inputs), 1024)])
    assert len(targets) == data.held_out_targets
    return float(-np.log(np.maximum(probabilities[np.arange(len(targets)), targets], 1e-30)).mean())


def gradient_norms(model, loss, batches) -> list[float]:
    """The global gradient norm (all variables together) on each of a few training batches."""
    import tensorflow as tf

    norms = []
    for inputs, labels in batches:
        with tf.GradientTape() as tape:
            value = loss(labels, model(inputs, training=True))
        gradients = tape.gradient(value, model.trainable_variables)
        norms.append(float(tf.linalg.global_norm([tf.convert_to_tensor(g) for g in gradients if g is not None])))
    return norms


def budget_callback(keras, seconds: float, score, gradient_probe):
    """Stops fit() after `seconds` of training; scores the model at CHECKPOINTS, clock paused."""

    class Budget(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.points, self.trained, self.cpu, self.steps = [], 0.0, 0.0, 0
            self.first_step_seconds = 0.0
            self.next = 0

        def on_train_begin(self, logs=None):
            self.mark, self.cpu_mark = time.monotonic(), time.process_time()
            self.epoch_ends = []

        def on_epoch_end(self, epoch, logs=None):
            # what early stopping keeps is an epoch's end: score each one too (clock paused)
            if self.next < len(CHECKPOINTS):
                self.epoch_ends.append({"epoch": epoch + 1, "trained_seconds": round(self.trained, 2),
                                        "perplexity": round(math.exp(score()), 2)})
            self.mark, self.cpu_mark = time.monotonic(), time.process_time()

        def on_train_batch_end(self, batch, logs=None):
            now, cpu = time.monotonic(), time.process_time()
            if self.steps == 0:   # the first step traces the training function: a one-time cost, not counted
                self.first_step_seconds = round(now - self.mark, 2)
            else:
                self.trained += now - self.mark
                self.cpu += cpu - self.cpu_mark
            self.steps += 1
            while self.next < len(CHECKPOINTS) and self.trained >= CHECKPOINTS[self.next] * seconds:
                norms = gradient_probe()
                self.points.append({"at_seconds": round(CHECKPOINTS[self.next] * seconds, 2),
                                    "trained_seconds": round(self.trained, 2), "steps": self.steps,
                                    "perplexity": round(math.exp(score()), 2),
                                    "gradient_norm_median": round(float(np.median(norms)), 3),
                                    "gradient_norm_max": round(float(np.max(norms)), 3)})
                self.next += 1
            if self.next >= len(CHECKPOINTS):
                self.model.stop_training = True
            self.mark, self.cpu_mark = time.monotonic(), time.process_time()

    return Budget()


def OneHotBatches(keras, sequences: np.ndarray, vocab_size: int):   # noqa: N802 (builds a class instance)
    """The seed's (inputs, one-hot labels), shuffled every epoch, batch 32; one-hot rows made per
    batch, so the whole corpus fits in memory (the matrix alone would be ~5.9 GiB)."""

    class Batches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.epoch = 0
            self.on_epoch_end()

        def __len__(self):
            return math.ceil(len(sequences) / SEED_BATCH_SIZE)

        def __getitem__(self, index):
            rows = sequences[self.order[index * SEED_BATCH_SIZE:(index + 1) * SEED_BATCH_SIZE]]
            return rows[:, :-1], keras.utils.to_categorical(rows[:, -1], num_classes=vocab_size)

        def on_epoch_end(self):
            self.order = np.random.default_rng([RANDOM_SEED, self.epoch]).permutation(len(sequences))
            self.epoch += 1

    return Batches()


def run_seed(data: Data, seconds: float, gradient_batches: int = GRADIENT_BATCHES) -> dict:
    import keras
    import tensorflow as tf

    started = time.monotonic()
    examples = Data.seed_matrix(data.training)
    inputs = examples[:, :-1]
    in_memory = len(examples) * data.vocab_size * 8 <= ONE_HOT_IN_MEMORY_BYTES
    if in_memory:
        # the one-hot matrix, as the notebook holds it
        labels = np.array(keras.utils.to_categorical(examples[:, -1], num_classes=data.vocab_size))
        feed = {"x": inputs, "y": labels, "batch_size": SEED_BATCH_SIZE, "shuffle": True}
    else:   # the same examples, batches and one-hot rows, made per batch (see full_seed)
        feed = {"x": OneHotBatches(keras, examples, data.vocab_size)}
    keras.utils.set_random_seed(RANDOM_SEED)
    loss = keras.losses.CategoricalCrossentropy()
    model = common.seed_model(data.vocab_size, loss=loss, metrics=None)
    probe_rows = np.random.default_rng(0).choice(len(inputs), (gradient_batches, SEED_BATCH_SIZE))
    probe = [(tf.constant(inputs[rows]), tf.constant(keras.utils.to_categorical(examples[rows, -1], data.vocab_size)))
             for rows in probe_rows]
    budget = budget_callback(keras, seconds, lambda: seed_held_out_nll(model, data),
                             lambda: gradient_norms(model, loss, probe))
    prepared = time.monotonic() - started
    model.fit(**feed, epochs=100_000, verbose=0, callbacks=[budget])
    steps_per_epoch = math.ceil(len(inputs) / SEED_BATCH_SIZE)
    return {"train_targets": len(inputs), "steps_per_epoch": steps_per_epoch, "prepare_seconds": round(prepared, 2),
            "one_hot": "in memory" if in_memory else "per batch",
            "epochs": round(budget.steps / steps_per_epoch, 2), "cpu_seconds": round(budget.cpu, 2),
            "first_step_seconds": budget.first_step_seconds,
            "trained_seconds": round(budget.trained, 2), "points": budget.points,
            "epoch_ends": budget.epoch_ends}


def run_lstmq(data: Data, params, seconds: float, gradient_batches: int = GRADIENT_BATCHES) -> dict:
    import keras
    import tensorflow as tf

    from lstmq.worker.engine import network as model_module
    from lstmq.worker.engine.training import make_optimizer

    started = time.monotonic()
    keras.utils.set_random_seed(params.shuffle_seed)
    training_model, _ = model_module.build_models(data.vocab_size, params.embedding_dim, params.lstm_units,
                                                  params.lstm_layers, params.dropout)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    training_model.compile(optimizer=make_optimizer(params.optimizer, params.learning_rate, params.clipnorm),
                           loss=loss)
    order = data.training.batch_order(params.batch_size, np.random.default_rng(0))
    probe = [tuple(tf.constant(part) for part in data.training.batch(indices)) for indices in order[:gradient_batches]]
    budget = budget_callback(keras, seconds, lambda: lstmq_held_out_nll(training_model, data),
                             lambda: gradient_norms(training_model, loss, probe))
    prepared = time.monotonic() - started
    training_model.fit(data.training.dataset(params.batch_size, params.shuffle_seed), epochs=100_000, verbose=0,
                       shuffle=False, callbacks=[budget])
    steps_per_epoch = math.ceil(len(data.training) / params.batch_size)
    return {"train_targets": data.training.target_count(), "steps_per_epoch": steps_per_epoch,
            "prepare_seconds": round(prepared, 2), "epochs": round(budget.steps / steps_per_epoch, 2),
            "cpu_seconds": round(budget.cpu, 2),
            "first_step_seconds": budget.first_step_seconds, "trained_seconds": round(budget.trained, 2),
            "points": budget.points, "epoch_ends": budget.epoch_ends}


def equal_time(arguments) -> list[dict]:
    import keras

    defaults = default_params()
    text = common.corpus_text(arguments.lines)
    data = Data(text, defaults)
    print(f"slice: first {arguments.lines or 'all'} lines: {len(data.training)} training sequences "
          f"({data.training.target_count()} targets), {len(data.validation)} held-out sequences "
          f"({data.held_out_targets} targets), vocabulary {data.vocab_size}; {arguments.seconds:g} s of training "
          f"per variant, scored at {', '.join(f'{f:.0%}' for f in CHECKPOINTS)}; {os.cpu_count()} CPUs", flush=True)
    variants = [parse_variant(spec, defaults) for spec in arguments.variants]
    reports = []
    for variant in variants:
        keras.backend.clear_session()
        figures = (run_seed(data, arguments.seconds, arguments.gradient_batches) if variant["name"] == "seed"
                   else run_lstmq(data, variant["params"], arguments.seconds, arguments.gradient_batches))
        report = {"variant": variant["name"], **figures}
        print(f"  {report['variant']}: held-out perplexity {report['points'][-1]['perplexity']} after "
              f"{report['trained_seconds']} s ({report['epochs']} epochs)", flush=True)
        reports.append(report)
    return reports


def best_epoch_end(report: dict, by_seconds: float) -> float | None:
    """The lowest held-out perplexity of an epoch's end reached within `by_seconds` of training:
    the model early stopping would hand over at that time."""
    scores = [end["perplexity"] for end in report["epoch_ends"] if end["trained_seconds"] <= by_seconds + 1e-6]
    return min(scores) if scores else None


def print_equal_time(reports: list[dict], seconds: float) -> dict:
    header = ["variant", "steps/epoch", "epochs", "cpu/wall",
              *[f"ppl@{f * seconds:.3g}s" for f in CHECKPOINTS], "best", "|grad| med", "|grad| max"]
    rows = [header]
    for report in reports:
        points = report["points"]
        rows.append([report["variant"], str(report["steps_per_epoch"]), f"{report['epochs']:.2f}",
                     f"{report['cpu_seconds'] / max(report['trained_seconds'], 1e-9):.2f}",
                     *[f"{point['perplexity']:.1f}" for point in points],
                     f"{min(point['perplexity'] for point in points):.1f}",
                     f"{np.median([p['gradient_norm_median'] for p in points]):.2f}",
                     f"{max(p['gradient_norm_max'] for p in points):.2f}"])
    common.print_table(rows)
    print("\nbest held-out perplexity of an epoch's end reached by then (what early stopping keeps; '-': no epoch "
          "finished yet):")
    rows = [["variant", "epoch s", *[f"by {f * seconds:.3g}s" for f in CHECKPOINTS]]]
    for report in reports:
        bests = [best_epoch_end(report, f * seconds) for f in CHECKPOINTS]
        rows.append([report["variant"], f"{report['trained_seconds'] / max(report['epochs'], 1e-9):.1f}",
                     *["-" if best is None else f"{best:.1f}" for best in bests]])
    common.print_table(rows)
    seed = next((report for report in reports if report["variant"] == "seed"), None)
    ratios = {}
    if seed:
        print("\nheld-out perplexity after equal training time, seed / variant (> 1: the variant is better); "
              "best: the lowest of each within the budget (what early stopping keeps):")
        for report in reports:
            if report is seed:
                continue
            ratio = [round(s["perplexity"] / v["perplexity"], 2) for s, v in zip(seed["points"], report["points"])]
            best = round(min(point["perplexity"] for point in seed["points"])
                         / min(point["perplexity"] for point in report["points"]), 2)
            kept = best_epoch_end(report, seconds)
            # the seed has no early stopping: its model at each point against lstmq's best epoch by then
            delivered = [None if best_epoch_end(report, f * seconds) is None
                         else round(s["perplexity"] / best_epoch_end(report, f * seconds), 2)
                         for f, s in zip(CHECKPOINTS, seed["points"])]
            ratios[report["variant"]] = {"at_each_point": ratio, "best_within_budget": best,
                                         "seed_now_over_best_epoch_by_then": delivered,
                                         "best_epoch_end": kept}
            print(f"  {report['variant']:<34} " + "  ".join(f"x{r:.2f}" for r in ratio) + f"   best x{best:.2f}")
            print(f"  {'  (seed now / its best epoch by then)':<34} "
                  + "  ".join("  -  " if r is None else f"x{r:.2f}" for r in delivered))
    return ratios


# --- the whole corpus: one epoch each, in its own process ----------------------------------------
def full_lstmq() -> dict:
    import tensorflow  # noqa: F401
    from lstmq.worker.engine.training import train

    text = common.corpus_text(0)
    params = default_params().replace(epochs=1)
    started = time.monotonic()
    result = train(text, params, hashlib.sha256(text.encode()).hexdigest(), samples_each_epoch=False)
    return {"variant": f"lstmq bs={params.batch_size} lr={params.learning_rate:g}",
            "epoch_seconds": result.history[0]["seconds"], "train_targets": result.metrics["train_targets"],
            "val_perplexity": round(result.metrics["val_perplexity"], 2),
            "total_seconds": round(time.monotonic() - started, 2), "peak_rss_mib": round(common.peak_rss_mib(), 1)}


def full_seed() -> dict:
    import keras

    from lstmq.shared.text import Vocabulary

    text = common.corpus_text(0)
    vocabulary = Vocabulary.from_text(text)
    total_words = len(vocabulary)
    sequences = common.seed_sequences(text, vocabulary)

    keras.utils.set_random_seed(RANDOM_SEED)
    model = common.seed_model(total_words)
    started = time.monotonic()
    model.fit(OneHotBatches(keras, sequences, total_words), epochs=1, verbose=0)
    return {"variant": "seed (one-hot per batch)", "epoch_seconds": round(time.monotonic() - started, 2),
            "train_targets": len(sequences), "peak_rss_mib": round(common.peak_rss_mib(), 1)}


def run_child(variant: str) -> dict:
    print(f"running {variant} for one epoch on the whole corpus ...", flush=True)
    return common.run_child("benchmarks.train_speed", "--child", variant)


def print_full(reports: list[dict]) -> dict:
    rows = [["variant (whole corpus, 1 epoch)", "targets", "epoch s", "targets/s", "peak RSS MiB"]]
    for report in reports:
        rows.append([report["variant"], str(report["train_targets"]), f"{report['epoch_seconds']:.1f}",
                     f"{report['train_targets'] / report['epoch_seconds']:.0f}", f"{report['peak_rss_mib']:.0f}"])
    common.print_table(rows)
    seed = next((r for r in reports if r["variant"].startswith("seed")), None)
    lstmq = next((r for r in reports if r["variant"].startswith("lstmq")), None)
    ratios = {}
    if seed and lstmq:
        ratios = {"epoch_seconds_seed_over_lstmq": round(seed["epoch_seconds"] / lstmq["epoch_seconds"], 2)}
        print(f"\nseconds per epoch on the whole corpus, seed / lstmq: x{ratios['epoch_seconds_seed_over_lstmq']} "
              f"(lstmq's epoch trains on {1 - default_params().validation_split:.0%} of the lines and includes "
              f"its validation pass)")
    if lstmq:
        print(f"lstmq peak RSS on the whole corpus: {lstmq['peak_rss_mib']:.0f} MiB "
              f"({'within' if lstmq['peak_rss_mib'] <= 1536 else 'OVER'} the 1.5 GiB budget)")
    return ratios


def parse_arguments():
    parser = common.argument_parser(__doc__)
    parser.add_argument("--lines", type=int, default=0,
                        help="corpus lines of the slice, 0 = all (default: all; a small slice overfits within seconds)")
    parser.add_argument("--seconds", type=float, default=150.0, help="training seconds per variant (default 150)")
    parser.add_argument("--variants", nargs="*", default=DEFAULT_VARIANTS,
                        help="seed, default, or bs=N[:lr=X][:clip=X][:layers=N][:dropout=X] (others: the default "
                             "settings)")
    parser.add_argument("--full-corpus", action="store_true",
                        help="also time one epoch of lstmq (default settings) and of the seed on the whole corpus")
    common.add_quick(parser, f"{QUICK['lines']} lines, {QUICK['seconds']:g} s, {' '.join(QUICK['variants'])}, "
                             f"{QUICK['gradient_batches']} gradient batch")
    parser.add_argument("--gradient-batches", type=int, default=GRADIENT_BATCHES,
                        help=f"training batches whose global gradient norm is measured at each scoring point "
                             f"(default {GRADIENT_BATCHES})")
    parser.add_argument("--child", choices=("seed", "lstmq"), help=argparse.SUPPRESS)
    arguments = common.parse(parser, QUICK, positive=("gradient_batches",))
    if arguments.lines < 0 or arguments.seconds <= 0:
        parser.error("--lines must be >= 0 and --seconds > 0")
    return arguments


def main() -> None:
    arguments = parse_arguments()
    if arguments.child:
        print(json.dumps(full_seed() if arguments.child == "seed" else full_lstmq()))
        return
    summary: dict = {"benchmark": "train_speed"}
    if arguments.variants:
        summary.update(lines=arguments.lines, seconds=arguments.seconds)
        reports = equal_time(arguments)
        summary["ratios_seed_over_variant_perplexity"] = print_equal_time(reports, arguments.seconds)
        summary["equal_time"] = reports
    if arguments.full_corpus:
        full = [run_child("seed"), run_child("lstmq")]
        summary["full_corpus_ratios"] = print_full(full)
        summary["full_corpus"] = full
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
