"""The network: its two Keras views and the layer names the decoder and the training code use.

Network (the seed's by default): Embedding(embedding_dim, mask_zero) -> LSTM(lstm_units) x
lstm_layers (stacked; 1 = the seed's) -> Dense(vocab). Two views share the same weights:
- the training model returns next-word logits at every position (sparse loss over a whole line);
  with dropout > 0 it drops a fraction of every LSTM layer's inputs and of the top layer's outputs
  (the non-recurrent connections; recurrent_dropout stays 0, so cuDNN stays eligible on GPUs);
- the inference model, saved as model.keras, takes token ids (batch, time), right-padded with 0
  (any length, padding is masked), and returns next-word probabilities (batch, vocab) after the
  last real token: exactly the seed's `model.predict(context)`. It has no dropout.

The model.keras bytes of a network (save_keras_bytes, load_keras_bytes) go into the artifact
that lstmq.shared.artifact packs. Imports Keras: worker side only.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The network's layer names: this module owns them (the decoder and the training code ask here).
INPUT = "token_ids"
EMBEDDING = "embedding"
LSTM = "lstm"                      # the inference view's top LSTM (last state only)
LSTM_SEQUENCE = "lstm_sequence"    # the training view's top LSTM (every position)
LOWER_LSTM = "lstm_layer_{}"       # stacked networks: LSTM layer 1, 2, ... below the top (both views)
OUTPUT_DROPOUT = "output_dropout"  # training view only, when dropout > 0
LOGITS = "next_word_logits"
SOFTMAX = "next_word"


def lower_lstm_names(lstm_layers: int) -> list[str]:
    """The names of the LSTM layers below the top one, bottom first (none for one layer)."""
    return [LOWER_LSTM.format(index) for index in range(1, lstm_layers)]


def build_models(vocab_size: int, embedding_dim: int, lstm_units: int, lstm_layers: int = 1,
                 dropout: float = 0.0):
    """Return (training_model, inference_model). They share the embedding and dense layers; the
    LSTM layers are built twice (the training view's top one returns every position and the
    training view has the dropout), so call copy_to_inference after training. One layer with no
    dropout is the seed's network, with the layer names of every earlier artifact."""
    import keras

    if lstm_layers < 1:
        raise ValueError(f"lstm_layers must be >= 1, got {lstm_layers}")
    token_ids = keras.Input(shape=(None,), dtype="int32", name=INPUT)
    embedding = keras.layers.Embedding(vocab_size, embedding_dim, mask_zero=True, name=EMBEDDING)
    scores = keras.layers.Dense(vocab_size, name=LOGITS)
    softmax = keras.layers.Softmax(name=SOFTMAX)
    lower = lower_lstm_names(lstm_layers)

    # training view: every layer returns every position; dropout on each LSTM's inputs (the
    # LSTM's own input dropout: one mask per sequence, cuDNN-compatible) and on the top's outputs
    hidden = embedding(token_ids)
    for name in [*lower, LSTM_SEQUENCE]:
        hidden = keras.layers.LSTM(lstm_units, return_sequences=True, dropout=dropout, name=name)(hidden)
    if dropout > 0:
        hidden = keras.layers.Dropout(dropout, name=OUTPUT_DROPOUT)(hidden)
    training = keras.Model(token_ids, scores(hidden), name="lstmq_train")

    # inference view: lower layers return every position, the top one its last state; no dropout
    hidden = embedding(token_ids)
    for name in lower:
        hidden = keras.layers.LSTM(lstm_units, return_sequences=True, name=name)(hidden)
    hidden = keras.layers.LSTM(lstm_units, name=LSTM)(hidden)
    inference = keras.Model(token_ids, softmax(scores(hidden)), name="lstmq")
    return training, inference


def copy_to_inference(training, inference) -> None:
    """Set the inference model's weights from a (possibly reloaded) training model, by layer name."""
    by_layer = {layer.name: layer.get_weights() for layer in training.layers}
    by_layer[LSTM] = by_layer.pop(LSTM_SEQUENCE)
    inference.set_weights([weight for layer in inference.layers for weight in by_layer.get(layer.name, [])])


@dataclass(frozen=True)
class DecodingLayers:
    """The inference model's layers that incremental decoding runs one by one. `lstms`: the LSTM
    layers from the bottom (next to the embedding) to the top (next to the logits)."""
    embedding: Any
    lstms: tuple[Any, ...]
    logits: Any
    softmax: Any


def lstm_layer_count(model) -> int:
    """How many LSTM layers a (training or inference) model stacks."""
    names = {layer.name for layer in model.layers}
    count = 1
    while LOWER_LSTM.format(count) in names:
        count += 1
    return count


def decoding_layers(inference_model) -> DecodingLayers:
    embedding, top, logits, softmax = (inference_model.get_layer(name) for name in (EMBEDDING, LSTM, LOGITS, SOFTMAX))
    lower = tuple(inference_model.get_layer(name) for name in lower_lstm_names(lstm_layer_count(inference_model)))
    return DecodingLayers(embedding, (*lower, top), logits, softmax)


def save_keras_bytes(model) -> bytes:
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "model.keras")
        model.save(path)
        return Path(path).read_bytes()


def load_keras_bytes(data: bytes, compile: bool = False):
    import keras

    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "model.keras")
        Path(path).write_bytes(data)
        # safe_mode: a Lambda layer's pickled code in an artifact is refused, never run
        return keras.saving.load_model(path, compile=compile, safe_mode=True)
