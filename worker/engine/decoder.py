"""The decoder: batched incremental decoding and sampling. Imports TensorFlow: worker side only.

The seed generates one word per `model.predict` call per prompt, re-reading the whole context
each time. Here the LSTM layers read every prompt once (prefill), then each row's (h, c) of every
layer is carried and each step emits one word for every row inside one compiled tf.function.
With greedy sampling the words are exactly those of the seed's loop (tests/oracle.py).

Continuous batching: the compiled loop keeps up to `max_rows` rows (prompt x sample) in flight.
A row that has its `words` leaves at once and a waiting row takes its slot (its state comes from
the prefill), longest rows first; once nothing waits, finished rows are dropped from the batch.
So lines asking for different numbers of words cost what they ask for, not the longest's.

Per step: the LSTM cells (the bottom layer's input projection x W of every word is a
precomputed table), then the next word of every row (selection.py), whose sampling uniforms come
from a stateless stream (stream.py). Host-side batching of requests into calls: batching.py.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from lstmq.shared.text import PAD_ID, Vocabulary
from lstmq.worker.engine import batching
from lstmq.worker.engine.batching import Request
from lstmq.worker.engine.network import DecodingLayers, decoding_layers
from lstmq.worker.engine.selection import WordSelection


def set_process_numerics() -> None:
    """The numerics decoding relies on, set once per process before any decoder runs (a worker's
    pool process does it at start: worker.runtime.init_process). TensorFloat-32 (on by default on
    Ampere and newer GPUs) rounds matmul inputs to 10 mantissa bits, with kernels chosen by batch
    shape: a row's probabilities would then depend on the batch it is decoded in, and so would its
    samples. Full float32 keeps the per-prompt determinism invariant. A process-wide switch, so it
    belongs to the process, not to a decoder; no effect on CPUs."""
    import tensorflow as tf

    tf.config.experimental.enable_tensor_float_32_execution(False)


class Decoder:
    """Generates continuations with an inference model (see worker.engine.network) and its vocabulary.
    Per-prompt determinism on a GPU needs set_process_numerics() called once in the process."""

    def __init__(self, inference_model, vocabulary: Vocabulary, max_rows: int, layers: DecodingLayers | None = None,
                 native: str = "auto"):
        """`max_rows`: rows (prompt x sample) decoded together in each step (decode_batch_size).
        `layers`: the model's layers in decoding order (default: network.decoding_layers).
        `native`: the native_kernels setting (auto | on | off): whether a decoder on the CPU picks
        its words with lstmq's fused kernels (worker.engine.kernels) instead of TensorFlow's ops."""
        import tensorflow as tf

        self.vocabulary = vocabulary
        self.max_rows = max(1, int(max_rows))
        self.token_text = np.array(vocabulary.tokens, dtype=object)
        layers = layers or decoding_layers(inference_model)
        self.embedding = layers.embedding
        if not layers.lstms:
            raise ValueError("a decoder needs at least one LSTM layer")
        self.on_cpu = not tf.config.list_logical_devices("GPU")
        ops = None
        if self.on_cpu:
            from lstmq.worker.engine.kernels import native_ops
            ops = native_ops(native)
        self.units = tuple(source.units for source in layers.lstms)
        self.lstms = [] if self.on_cpu else prefill_layers(layers)
        self.cells = cell_weights(layers)
        self.lstm_step, self.packed_cells = fused_cells(ops, self.cells)
        self.selection = WordSelection(layers.logits, layers.lstms[-1], ops)
        self._compile()

    @property
    def native(self) -> bool:
        """Whether lstmq's native kernels pick the words (else TensorFlow's ops)."""
        return self.selection.best_word is not None

    @property
    def plain_logsumexp(self) -> bool:
        return self.selection.plain_logsumexp

    def _compile(self) -> None:
        import tensorflow as tf

        state_specs = tuple((tf.TensorSpec((None, units), tf.float32), tf.TensorSpec((None, units), tf.float32))
                            for units in self.units)
        self._prefill = tf.function(self._prefill_graph, reduce_retracing=True, input_signature=[
            tf.TensorSpec((None, None), tf.int32)])   # prompt ids, right-padded
        decode_signature = [
            state_specs,                              # (h, c) per layer per row, after its prompt
            tf.TensorSpec((None,), tf.int32),         # words per row (rows longest first)
            tf.TensorSpec((None,), tf.float32),       # temperature per row
            tf.TensorSpec((None,), tf.int32),         # top_k per row
            tf.TensorSpec((None,), tf.float32),       # top_p per row
            tf.TensorSpec((None,), tf.uint64),        # sampling stream state per row
            tf.TensorSpec((), tf.int32),              # rows in flight (slots)
        ]
        # with and without the log-probabilities (generate() returns none: it skips their cost), and
        # for calls with sampling rows or greedy rows only (no per-step test for sampling rows)
        self._decoders = {(scored, sampling): tf.function(
            functools.partial(self._decode_graph, scored=scored, sampling=sampling),
            reduce_retracing=True, input_signature=decode_signature)
            for scored in (True, False) for sampling in (True, False)}

    def tracing_count(self) -> int:
        """How many graphs the decoder's compiled functions have traced so far (one per new kind
        of call: scored or not, with sampling rows or not)."""
        return self._prefill.experimental_get_tracing_count() + sum(
            function.experimental_get_tracing_count() for function in self._decoders.values())

    # -- what callers use --------------------------------------------------------------------------
    def generate(self, requests: Sequence[Request]) -> list[list[list[int]]]:
        """Token ids generated for each request: result[request][sample] is a list of `words` ids."""
        return [[ids for ids, _ in samples] for samples in batching.scored_ids(batching.decode_rows(self, requests, scored=False))]

    def generate_scored(self, requests: Sequence[Request]) -> list[list[tuple[list[int], float]]]:
        """Per request and sample: the token ids and their mean log-probability per word under
        the model (<= 0; natural log)."""
        return batching.scored_ids(batching.decode_rows(self, requests))

    def continuations(self, requests: Sequence[Request]) -> list[list[str]]:
        """Generated text for each request and sample."""
        return [[text for text, _ in samples] for samples in self.continuations_scored(requests)]

    def continuations_scored(self, requests: Sequence[Request]) -> list[list[tuple[str, float]]]:
        """Generated text and its mean log-probability per word, for each request and sample."""
        return batching.scored_texts(batching.decode_rows(self, requests), self.token_text, len(requests))

    # -- compiled part -------------------------------------------------------------------------
    def _prefill_graph(self, ids):
        """Every row's (h, c) per layer after its prompt. On a GPU, Keras's LSTM layers read the
        prompts (cuDNN). On the CPU, the decoding step's cells do, one token at a time: the bottom
        layer's input projection is a row of the table instead of a matmul per token; a padded
        position leaves a row's state as it was (the model's masking)."""
        import tensorflow as tf

        if not self.on_cpu:
            mask = tf.not_equal(ids, PAD_ID)
            sequence, states = self.embedding(ids), []
            for lstm in self.lstms:
                sequence, h, c = lstm(sequence, mask=mask)
                states.append((h, c))
            return tuple(states)
        rows = tf.shape(ids)[0]
        states = tuple((tf.zeros([rows, units]), tf.zeros([rows, units])) for units in self.units)
        for position in tf.range(tf.shape(ids)[1]):
            states = self._cells(ids[:, position], states, masked=True)
        return states

    def _cells(self, token, states, masked=False):
        """One step of every LSTM layer, bottom first, on the chosen tokens (with `masked`, rows
        whose token is padding keep their state: the model's masking, for the prefill)."""
        import tensorflow as tf

        new_states, x = [], None
        keep = tf.not_equal(token, PAD_ID)[:, None] if masked and self.lstm_step is None else None
        for number, ((table, kernel, recurrent, bias, activation, recurrent_activation), (h0, c0)) in enumerate(
                zip(self.cells, states)):
            if self.lstm_step is not None:   # the bottom layer's x W is its token's row of the table
                packed_kernel, packed_recurrent = self.packed_cells[number]
                h, c = self.lstm_step(x if table is None else table, token, h0, c0, packed_kernel, packed_recurrent,
                                      bias, project=table is None, masked=masked)
            else:
                projected = tf.matmul(x, kernel) if table is None else tf.gather(table, token)
                z = projected + tf.matmul(h0, recurrent) + bias   # Keras's order of additions
                z_i, z_f, z_c, z_o = tf.split(z, 4, axis=1)
                c = recurrent_activation(z_f) * c0 + recurrent_activation(z_i) * activation(z_c)
                h = recurrent_activation(z_o) * activation(c)
                if keep is not None:   # (the fused step keeps a padded row's state itself)
                    h, c = tf.where(keep, h, h0), tf.where(keep, c, c0)
            new_states.append((h, c))
            x = h
        return tuple(new_states)

    def _decode_graph(self, states0, words, temperature, top_k, top_p, base, slots, scored=True, sampling=True):
        import tensorflow as tf

        rows = tf.shape(words)[0]
        # Per-row parameters; entry `rows` is an empty slot's (never decoded: dropped at once).
        sentinel = lambda values, fill: tf.concat([values, tf.fill([1], fill)], 0)   # noqa: E731
        row_params = (sentinel(words, tf.constant(0, tf.int32)), sentinel(temperature, tf.constant(0.0)),
                      sentinel(top_k, tf.constant(0, tf.int32)), sentinel(top_p, tf.constant(1.0)),
                      sentinel(base, tf.constant(0, tf.uint64)))
        slot_row = tf.range(slots)
        slot_pos = tf.zeros([slots], tf.int32)
        # the slots' parameters, gathered when rows enter (not every step)
        params = tuple(tf.gather(values, slot_row) for values in row_params)
        any_sampling = tf.reduce_any(params[1] > 0) if sampling else False
        states = tuple((h[:slots], c[:slots]) for h, c in states0)
        waiting = slots
        out_row = tf.TensorArray(tf.int32, size=0, dynamic_size=True, infer_shape=False, element_shape=[None])
        out_pos = tf.TensorArray(tf.int32, size=0, dynamic_size=True, infer_shape=False, element_shape=[None])
        out_token = tf.TensorArray(tf.int32, size=0, dynamic_size=True, infer_shape=False, element_shape=[None])
        out_logprob = tf.TensorArray(tf.float32, size=0, dynamic_size=True, infer_shape=False, element_shape=[None])
        step = 0
        while tf.size(slot_row) > 0:
            slot_words, slot_temperature, slot_top_k, slot_top_p, slot_base = params
            token, logprob = self.selection.next_words(states[-1][0], any_sampling, slot_temperature, slot_top_k,
                                                       slot_top_p, slot_base, slot_pos, scored)
            out_row = out_row.write(step, slot_row)
            out_pos = out_pos.write(step, slot_pos)
            out_token = out_token.write(step, token)
            out_logprob = out_logprob.write(step, logprob)
            states = self._cells(token, states)
            slot_pos = slot_pos + 1
            finished = slot_pos >= slot_words
            if tf.reduce_any(finished):
                # refill finished slots with waiting rows, in order; the rest become empty
                arriving = waiting + tf.cumsum(tf.cast(finished, tf.int32), exclusive=True)
                slot_row = tf.where(finished, tf.minimum(arriving, rows), slot_row)
                slot_pos = tf.where(finished, 0, slot_pos)
                params = tuple(tf.where(finished, tf.gather(values, slot_row), current)
                               for values, current in zip(row_params, params))
                taken = tf.minimum(arriving, rows - 1)
                states = tuple((tf.where(finished[:, None], tf.gather(h0, taken), h),
                                tf.where(finished[:, None], tf.gather(c0, taken), c))
                               for (h0, c0), (h, c) in zip(states0, states))
                waiting = tf.minimum(waiting + tf.reduce_sum(tf.cast(finished, tf.int32)), rows)
                if waiting >= rows:   # nothing waits: drop the empty slots
                    keep = tf.reshape(tf.where(slot_row < rows), [-1])
                    slot_row, slot_pos = tf.gather(slot_row, keep), tf.gather(slot_pos, keep)
                    params = tuple(tf.gather(values, keep) for values in params)
                    states = tuple((tf.gather(h, keep), tf.gather(c, keep)) for h, c in states)
                any_sampling = tf.reduce_any(params[1] > 0) if sampling else False
            step += 1
        return out_row.concat(), out_pos.concat(), out_token.concat(), out_logprob.concat()


def prefill_layers(layers: DecodingLayers) -> list:
    """For the prefill on a GPU: copies of the LSTM layers (bottom first) that return their final
    state, all but the top one also their sequence for the next layer (masking as in the model).
    On the CPU the prefill steps the cells instead (see Decoder._prefill_graph)."""
    lstms = []
    width = layers.embedding.output_dim
    for number, source in enumerate(layers.lstms):
        config = {**source.get_config(), "return_state": True, "name": f"decoder_lstm_{number}",
                  "return_sequences": number < len(layers.lstms) - 1}
        lstm = type(source).from_config(config)
        lstm.build((None, None, width))
        lstm.set_weights(source.get_weights())
        lstms.append(lstm)
        width = source.units
    return lstms


def cell_weights(layers: DecodingLayers) -> list[tuple]:
    """Each layer's cell as plain ops on its weights (the same formula as Keras's LSTMCell:
    z = x W + h U + b; i, f, c~, o = split(z); c = f c + i tanh(c~); h = o tanh(c)): per layer
    (table, kernel, recurrent kernel, bias, activation, recurrent activation). The bottom layer's
    input projection of every word, x W, is a table (a gather per step); the others' table is None."""
    import keras
    import tensorflow as tf

    cells = []
    embeddings = np.asarray(keras.ops.convert_to_numpy(layers.embedding.embeddings), np.float32)
    for number, source in enumerate(layers.lstms):
        weights = source.get_weights()
        kernel, recurrent = weights[0], weights[1]
        bias = weights[2] if len(weights) > 2 else np.zeros(kernel.shape[1], np.float32)
        table = tf.matmul(tf.constant(embeddings), tf.constant(kernel)) if number == 0 else None
        cells.append((table, tf.constant(kernel), tf.constant(recurrent), tf.constant(bias),
                      source.cell.activation, source.cell.recurrent_activation))
    return cells


def fused_cells(ops, cells: list[tuple]) -> tuple:
    """(LstmqLstmStep, each layer's (kernel, recurrent kernel) packed for it), or (None, None)
    without the native kernels, or where a layer's activations are not Keras's defaults (the
    fused step computes tanh and sigmoid only)."""
    import tensorflow as tf

    from lstmq.worker.engine.kernels import pack_matrix

    standard = all(getattr(activation, "__name__", "") == "tanh" and getattr(recurrent, "__name__", "") == "sigmoid"
                   for *_, activation, recurrent in cells)
    if ops is None or not standard:
        return None, None
    width = int(ops.lstmq_panel_width())
    # (the bottom layer's kernel is in its table: an empty one)
    packed = [(tf.constant(np.zeros((0, 0, width), np.float32) if table is not None
                           else pack_matrix(cell_kernel.numpy(), width)),
               tf.constant(pack_matrix(recurrent.numpy(), width)))
              for table, cell_kernel, recurrent, *_ in cells]
    return ops.lstmq_lstm_step, packed
