"""Fit the network on a corpus: integer labels and a sparse loss (no one-hot matrix), a streaming
tf.data pipeline of length-bucketed batches, a held-out validation split, per-epoch loss and
validation perplexity, per-epoch checkpoints to resume from; stacked LSTM layers, dropout and
gradient clipping as ModelParams ask. Imports TensorFlow: worker side only."""
from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol

import numpy as np

from lstmq.worker.engine import network as model_module

from lstmq.shared import artifact as artifact_module
from lstmq.shared.errors import CorpusError
from lstmq.shared.params import Checkpoint, ModelParams
from lstmq.shared.text import FILTERS, PAD_ID, SPECIAL_TOKENS, UNK_ID, Vocabulary, training_sequences

BUCKET_POOL_BATCHES = 50   # batches pooled and sorted by length, to cut padding without losing shuffling
MIN_SEQUENCES = 2


class Checkpoints(Protocol):
    """Where per-epoch checkpoints go (the Redis store implements it): the latest epoch's model
    (with its optimizer state) and, for early stopping, the model of the best validation epoch."""

    def load(self) -> Checkpoint | None: ...
    def save(self, epoch: int, model_bytes: bytes, history: list[dict[str, Any]], best: bytes | None) -> None: ...


@dataclass
class TrainResult:
    """`finished`: the training is complete and `artifact` holds the model. Otherwise it stopped
    after an epoch (`stopped`: 'slice' when its time was up, 'cancelled') and resumes from the
    last checkpoint."""
    artifact: bytes | None
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped: str | None = None

    @property
    def finished(self) -> bool:
        return self.stopped is None


class SequenceBatches:
    """Sequences kept as one flat int32 array plus offsets; batches are cut on the fly."""

    def __init__(self, sequences: list[list[int]]):
        self.lengths = np.array([len(sequence) for sequence in sequences], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)
        self.tokens = np.fromiter((token for sequence in sequences for token in sequence), dtype=np.int32,
                                  count=int(self.lengths.sum()))

    def __len__(self) -> int:
        return len(self.lengths)

    def target_count(self) -> int:
        return int((self.lengths - 1).sum())

    def batch(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(inputs, targets), right-padded with PAD_ID to the longest sequence in the batch."""
        width = int(self.lengths[indices].max()) - 1
        inputs = np.full((len(indices), width), PAD_ID, dtype=np.int32)
        targets = np.full((len(indices), width), PAD_ID, dtype=np.int32)
        for row, index in enumerate(indices):
            start, length = self.starts[index], self.lengths[index]
            sequence = self.tokens[start:start + length]
            inputs[row, :length - 1] = sequence[:-1]
            targets[row, :length - 1] = sequence[1:]
        return inputs, targets

    def batch_order(self, batch_size: int, rng: np.random.Generator | None) -> list[np.ndarray]:
        """Index batches. With rng: shuffled, then sorted by length within pools of batches."""
        if rng is None:
            order = np.argsort(self.lengths, kind="stable")
            return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        order = rng.permutation(len(self))
        pool = batch_size * BUCKET_POOL_BATCHES
        batches = []
        for begin in range(0, len(order), pool):
            members = order[begin:begin + pool]
            members = members[np.argsort(self.lengths[members], kind="stable")]
            batches.extend(members[i:i + batch_size] for i in range(0, len(members), batch_size))
        rng.shuffle(batches)
        return batches

    def dataset(self, batch_size: int, seed: int | None):
        import tensorflow as tf

        epoch_counter = iter(range(1 << 62))

        def generate():
            rng = None if seed is None else np.random.default_rng([seed, next(epoch_counter)])
            for indices in self.batch_order(batch_size, rng):
                yield self.batch(indices)

        signature = (tf.TensorSpec((None, None), tf.int32), tf.TensorSpec((None, None), tf.int32))
        batches = math.ceil(len(self) / batch_size)
        return (tf.data.Dataset.from_generator(generate, output_signature=signature)
                .apply(tf.data.experimental.assert_cardinality(batches)).prefetch(tf.data.AUTOTUNE))


def split_sequences(sequences: list[list[int]], validation_split: float, seed: int):
    """Hold out whole corpus lines (never a prefix of a training line) for validation."""
    order = np.random.default_rng(seed).permutation(len(sequences))
    held_out = int(round(len(sequences) * validation_split))
    if validation_split > 0:
        held_out = min(max(held_out, 1), len(sequences) - 1)
    validation = [sequences[i] for i in sorted(order[:held_out])]
    training = [sequences[i] for i in sorted(order[held_out:])]
    return training, validation


def make_optimizer(name: str, learning_rate: float, clipnorm: float = 0.0):
    """The optimizer; clipnorm > 0 scales each step's gradients down to that global norm (all
    variables together, Keras' global_clipnorm) when they exceed it."""
    import keras

    classes = {"adam": keras.optimizers.Adam, "sgd": keras.optimizers.SGD, "rmsprop": keras.optimizers.RMSprop}
    return classes[name](learning_rate=learning_rate, global_clipnorm=clipnorm if clipnorm > 0 else None)


def prepare(text: str, params: ModelParams):
    vocabulary = Vocabulary.from_text(text, params.max_vocab)
    sequences = training_sequences(text, vocabulary, params.context_window)
    if len(sequences) < MIN_SEQUENCES:
        raise CorpusError(f"corpus has {len(sequences)} line(s) with two or more words; "
                          f"training needs at least {MIN_SEQUENCES}")
    training, validation = split_sequences(sequences, params.validation_split, params.shuffle_seed)
    return vocabulary, SequenceBatches(training), (SequenceBatches(validation) if validation else None)


def train(text: str, params: ModelParams, corpus_sha256: str,
          progress: Callable[[dict[str, Any]], None] | None = None,
          checkpoints: Checkpoints | None = None,
          slice_seconds: float | None = None,
          cancelled: Callable[[], bool] | None = None,
          samples_each_epoch: bool = True) -> TrainResult:
    """Train the network on `text` with the network and training parameters `params`.

    With `checkpoints`, each epoch is saved and a later call resumes after the last saved epoch.
    `slice_seconds`: stop after the epoch that passes this much time (resume with another call).
    `cancelled()`: asked every second or so; True stops training after the current batch.
    `samples_each_epoch`: each epoch's record carries continuations of a held-out line's first
    words at SAMPLE_TEMPERATURES, to read beside the loss.
    Early stopping (early_stopping_patience) counts across resumed calls and restores the best
    validation epoch's weights when it stops the training."""
    import keras
    import tensorflow as tf

    started = time.monotonic()
    vocabulary, training_batches, validation_batches = prepare(text, params)
    keras.utils.set_random_seed(params.shuffle_seed)
    training_model, inference_model = model_module.build_models(
        len(vocabulary), params.embedding_dim, params.lstm_units, params.lstm_layers, params.dropout)
    history: list[dict[str, Any]] = []
    initial_epoch = 0
    resumed = checkpoints.load() if checkpoints else None
    best_bytes = resumed.best if resumed else None
    if resumed:
        initial_epoch, history = resumed.epoch, list(resumed.history)
        training_model = model_module.load_keras_bytes(resumed.model, compile=True)
    else:
        training_model.compile(optimizer=make_optimizer(params.optimizer, params.learning_rate, params.clipnorm),
                               loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    steps = math.ceil(len(training_batches) / params.batch_size)
    epochs = params.epochs
    patience = params.early_stopping_patience if validation_batches is not None else 0
    sample_prompt = first_words(validation_batches or training_batches) if samples_each_epoch else None

    class Report(keras.callbacks.Callback):
        last_batch_report = 0.0
        stopped: str | None = None

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch_started = time.monotonic()

        def on_train_batch_end(self, batch, logs=None):
            now = time.monotonic()
            if now - self.last_batch_report < 1.0:
                return
            self.last_batch_report = now
            if progress:
                progress({"event": "batch", "epoch": len(history) + 1, "step": batch + 1, "steps": steps,
                          "loss": float(logs.get("loss", math.nan)) if logs else None})
            if cancelled and cancelled():
                self.stop("cancelled")

        def on_epoch_end(self, epoch, logs=None):
            nonlocal best_bytes
            if self.stopped == "cancelled":
                return   # a partial epoch: neither recorded nor saved
            logs = logs or {}
            record = {"epoch": epoch + 1, "epochs": epochs, "loss": float(logs["loss"]),
                      "seconds": round(time.monotonic() - self.epoch_started, 3)}
            if "val_loss" in logs:
                record["val_loss"] = float(logs["val_loss"])
                record["val_perplexity"] = float(math.exp(min(logs["val_loss"], 700.0)))
            if sample_prompt:
                model_module.copy_to_inference(self.model, inference_model)
                record["samples"] = epoch_samples(inference_model, vocabulary, sample_prompt, epoch + 1)
            history.append(record)
            best_epoch = best_validation_epoch(history)
            improved = patience > 0 and best_epoch == record["epoch"]
            if improved:
                best_bytes = model_module.save_keras_bytes(self.model)
            if checkpoints:
                checkpoints.save(epoch + 1, model_module.save_keras_bytes(self.model), history,
                                 best_bytes if improved else None)
            if progress:
                progress({"event": "epoch", **record})
            if patience > 0 and best_epoch is not None and record["epoch"] - best_epoch >= patience:
                self.stop("early")
            elif slice_seconds is not None and time.monotonic() - started >= slice_seconds and epoch + 1 < epochs:
                self.stop("slice")

        def stop(self, reason: str) -> None:
            self.stopped = reason
            self.model.stop_training = True

    report = Report()
    if initial_epoch < epochs and not early_stopped(history, patience):
        training_model.fit(
            training_batches.dataset(params.batch_size, params.shuffle_seed),
            validation_data=validation_batches.dataset(params.batch_size, None) if validation_batches else None,
            epochs=epochs, initial_epoch=initial_epoch, verbose=0, shuffle=False, callbacks=[report])
    if report.stopped in ("slice", "cancelled"):
        return TrainResult(artifact=None, metrics={"epochs_run": len(history)}, history=history,
                           stopped=report.stopped)
    if early_stopped(history, patience) and best_bytes is not None:
        training_model.set_weights(model_module.load_keras_bytes(best_bytes).get_weights())
    model_module.copy_to_inference(training_model, inference_model)

    best = min(history, key=lambda r: r.get("val_loss", r["loss"])) if history else {}
    metrics = {
        "epochs_run": len(history), "best_epoch": best.get("epoch"), "loss": best.get("loss"),
        "val_loss": best.get("val_loss"), "val_perplexity": best.get("val_perplexity"),
        "train_sequences": len(training_batches), "train_targets": training_batches.target_count(),
        "validation_sequences": len(validation_batches) if validation_batches else 0,
        "seconds": round(time.monotonic() - started, 3),
    }
    meta = {
        "network": {"vocab_size": len(vocabulary), "embedding_dim": params.embedding_dim,
                    "lstm_units": params.lstm_units,
                    "layers": ["Embedding(mask_zero)", *["LSTM"] * params.lstm_layers, "Dense", "Softmax"]},
        "context_feed": artifact_module.CONTEXT_FEED,
        "tokenizer": {"lower": True, "filters": FILTERS, "split": " ", "pad_id": PAD_ID, "unk_id": UNK_ID,
                      "order": "count descending, ties by first appearance (Keras Tokenizer)"},
        "training": params.to_dict(),
        "corpus_sha256": corpus_sha256,
        "metrics": metrics,
        "history": history,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__, "python": platform.python_version()},
    }
    artifact = artifact_module.pack_artifact(model_module.save_keras_bytes(inference_model), vocabulary.tokens, meta)
    return TrainResult(artifact=artifact, metrics=metrics, history=history)



def best_validation_epoch(history: list[dict[str, Any]]) -> int | None:
    """The epoch with the lowest validation loss (the first of equals), None without validation."""
    scored = [record for record in history if "val_loss" in record]
    return min(scored, key=lambda record: record["val_loss"])["epoch"] if scored else None


def early_stopped(history: list[dict[str, Any]], patience: int) -> bool:
    """Whether `patience` epochs have passed without a better validation loss."""
    best = best_validation_epoch(history)
    return patience > 0 and best is not None and bool(history) and history[-1]["epoch"] - best >= patience


SAMPLE_TEMPERATURES = (0.2, 0.5, 1.0)
SAMPLE_PROMPT_WORDS, SAMPLE_WORDS = 3, 8


def first_words(batches: SequenceBatches) -> list[int] | None:
    """The first words of the first sequence with enough of them (a held-out line if any)."""
    for start, length in zip(batches.starts, batches.lengths):
        if length > SAMPLE_PROMPT_WORDS:
            return batches.tokens[start:start + SAMPLE_PROMPT_WORDS].tolist()
    return None


def epoch_samples(inference_model, vocabulary: Vocabulary, prompt: list[int], epoch: int) -> list[dict[str, Any]]:
    """The prompt continued at each of SAMPLE_TEMPERATURES with the seed's plain loop (the model on
    the whole context, one word at a time): a few dozen forward passes, seeded by the epoch."""
    samples = []
    for temperature in SAMPLE_TEMPERATURES:
        rng = np.random.default_rng([epoch, int(temperature * 1000)])
        context = list(prompt)
        for _ in range(SAMPLE_WORDS):
            probabilities = np.asarray(inference_model(np.asarray([context], np.int32), training=False), np.float64)[0]
            probabilities[: len(SPECIAL_TOKENS)] = 0.0
            scaled = np.exp(np.log(np.maximum(probabilities, 1e-300)) / temperature)
            context.append(int(rng.choice(len(scaled), p=scaled / scaled.sum())))
        samples.append({"temperature": temperature, "prompt": " ".join(vocabulary.decode(prompt)),
                        "text": " ".join(vocabulary.decode(context[len(prompt):]))})
    return samples
