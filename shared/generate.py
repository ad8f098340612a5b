"""Batched incremental decoding and sampling. Imports TensorFlow: worker side only.

The seed generates one word per `model.predict` call per prompt, re-reading the whole context
each time. Here the LSTM layers read every prompt once (prefill), then each row's (h, c) of every
layer is carried and each step emits one word for every row inside one compiled tf.function.
With greedy sampling the words are exactly those of the seed's loop (reference_greedy below).

Continuous batching: the compiled loop keeps up to `max_rows` rows (prompt x sample) in flight.
A row that has its `words` leaves at once and a waiting row takes its slot (its state comes from
the prefill), longest rows first; once nothing waits, finished rows are dropped from the batch.
So lines asking for different numbers of words cost what they ask for, not the longest's.

Per step and row the work is one (units + 1) x vocabulary matmul (the bias rides in the matmul
as a constant-1 input), an argmax directly on the logits (no softmax; through per-block maxima,
which also give the runner-up: the rare rows whose two best words are within float32 rounding of
a tie take the model's own Dense + softmax path, so ties resolve as in the seed's loop), the
chosen word's log-probability as logit - logsumexp, and the LSTM cells (the bottom layer's input
projection x W of every word is a precomputed table). Sampling ranks only the candidates it needs: top_k through
the K largest of per-block maxima, top_p through a bounded candidate set (the full ranking only
when a row's nucleus is larger), plain temperature sampling through per-block sums (no sort).

Sampling is deterministic per row: its uniform for word t is a counter-based hash (SplitMix64) of
(seed, prompt key, sample index, t), computed inside the compiled loop (shared.params.
SAMPLING_STREAM), so neither batch composition, chunking, order nor the worker changes a result.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lstmq.shared.model import DecodingLayers, decoding_layers
from lstmq.shared.params import GenerationParams
from lstmq.shared.text import PAD_ID, SPECIAL_TOKENS, Vocabulary, pad_right

BLOCK = 16                  # vocabulary ids per block: block maxima (top_k) and block sums (sampling)
NUCLEUS_CANDIDATES = 64     # top_p without top_k: ranks examined before falling back to a full sort
ROWS_PER_CALL = 16          # at most max_rows x this many rows per compiled call (bounds memory)
_PLAIN_LOGSUMEXP_BOUND = 60.0   # |logit| bound under which exp(logit) needs no max subtraction
_TIE_TOLERANCE = 1e-6       # runner-up logits this close (relative) to the maximum: softmax argmax

# SplitMix64 (Steele, Lea, Flood 2014): the stream behind shared.params.SAMPLING_STREAM.
_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB


@dataclass(frozen=True)
class Request:
    """One prompt to continue: its token ids, its parameters (seed set) and its key in the random
    stream (from its id, see shared.params.prompt_key)."""
    ids: Sequence[int]
    params: GenerationParams
    key: int

    @property
    def words(self) -> int:
        return self.params.words

    @property
    def n(self) -> int:
        return self.params.n


def _mix(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * np.uint64(_MIX1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(_MIX2)
    return z ^ (z >> np.uint64(31))


def stream_bases(seed, key, sample) -> np.ndarray:
    """The per-row state of the sampling stream (uint64), vectorized over rows."""
    golden = np.uint64(_GOLDEN)
    with np.errstate(over="ignore"):
        state = _mix(np.asarray(seed, np.uint64) + golden)
        state = _mix((state ^ np.asarray(key, np.uint64)) + golden)
        return _mix((state ^ np.asarray(sample, np.uint64)) + golden)


def _uniform_from_bits(bits: np.ndarray) -> np.ndarray:
    return (bits >> np.uint64(40)).astype(np.float32) * np.float32(2.0 ** -24)


def row_uniforms(seed: int, key: int, sample: int, steps: int) -> np.ndarray:
    """The uniforms in [0, 1) (float32) that word 0 .. steps-1 of one (seed, prompt key, sample)
    draw with: a stateless stream, the same numbers the compiled loop computes."""
    base = stream_bases(np.array([seed]), np.array([key]), np.array([sample]))[0]
    with np.errstate(over="ignore"):
        counters = base + (np.arange(1, steps + 1, dtype=np.uint64) * np.uint64(_GOLDEN))
        return _uniform_from_bits(_mix(counters))


@dataclass
class _Rows:
    """The rows (prompt x sample) of one generate call, in request order."""
    first: np.ndarray       # request -> its first row
    words: np.ndarray       # row -> words to generate
    tokens: np.ndarray      # (rows, max words) generated ids
    logprob: np.ndarray     # row -> mean log-probability per word


class Decoder:
    """Generates continuations with an inference model (see shared.model) and its vocabulary."""

    def __init__(self, inference_model, vocabulary: Vocabulary, max_rows: int, layers: DecodingLayers | None = None,
                 native: str = "auto"):
        """`max_rows`: rows (prompt x sample) decoded together in each step (decode_batch_size).
        `layers`: the model's layers in decoding order (default: shared.model.decoding_layers).
        `native`: the native_kernels setting (auto | on | off): whether a decoder on the CPU picks
        its words with lstmq's fused kernel (shared.kernels) instead of TensorFlow's ops."""
        import keras
        import tensorflow as tf

        # TensorFloat-32 (on by default on Ampere and newer GPUs) rounds matmul inputs to 10
        # mantissa bits, with kernels chosen by batch shape: a row's probabilities would then
        # depend on the batch it is decoded in, and so would its samples. Full float32 keeps
        # the per-prompt determinism invariant. A process-wide switch; no effect on CPUs.
        tf.config.experimental.enable_tensor_float_32_execution(False)
        self.vocabulary = vocabulary
        self.max_rows = max(1, int(max_rows))
        self._token_text = np.array(vocabulary.tokens, dtype=object)
        layers = layers or decoding_layers(inference_model)
        self.embedding = layers.embedding
        if not layers.lstms:
            raise ValueError("a decoder needs at least one LSTM layer")

        # Prefill on a GPU: copies of the LSTM layers (bottom first) that return their final
        # state, all but the top one also their sequence for the next layer (masking as in the
        # model). On the CPU the prefill steps the cells below instead (see _prefill_graph).
        self.on_cpu = not tf.config.list_logical_devices("GPU")
        self.lstms = []
        width = self.embedding.output_dim
        for number, source in enumerate([] if self.on_cpu else layers.lstms):
            config = {**source.get_config(), "return_state": True, "name": f"decoder_lstm_{number}",
                      "return_sequences": number < len(layers.lstms) - 1}
            lstm = type(source).from_config(config)
            lstm.build((None, None, width))
            lstm.set_weights(source.get_weights())
            self.lstms.append(lstm)
            width = source.units
        self.units = tuple(source.units for source in layers.lstms)

        # Steps: each layer's cell as plain ops on its weights (the same formula as Keras's
        # LSTMCell: z = x W + h U + b; i, f, c~, o = split(z); c = f c + i tanh(c~); h = o tanh(c)).
        self.cells = []
        embeddings = np.asarray(keras.ops.convert_to_numpy(self.embedding.embeddings), np.float32)
        for number, source in enumerate(layers.lstms):
            weights = source.get_weights()
            kernel, recurrent = weights[0], weights[1]
            bias = weights[2] if len(weights) > 2 else np.zeros(kernel.shape[1], np.float32)
            # the bottom layer's input projection of every word, x W, is a table: a gather per step
            table = tf.matmul(tf.constant(embeddings), tf.constant(kernel)) if number == 0 else None
            self.cells.append((table, tf.constant(kernel), tf.constant(recurrent), tf.constant(bias),
                               source.cell.activation, source.cell.recurrent_activation))

        # Scores: the logits of the real words (ids >= len(SPECIAL_TOKENS)), right-padded to whole
        # blocks with columns that score -1e30; the bias is the last row of the kernel, so one
        # matmul of [h, 1] gives the logits. The special tokens' logits (never chosen) count in the
        # log-probability's normalizer only.
        kernel, *rest = layers.logits.get_weights()
        bias = rest[0] if rest else np.zeros(kernel.shape[1], np.float32)
        special = len(SPECIAL_TOKENS)
        self.special = special
        self.real_words = kernel.shape[1] - special
        self.blocks = -(-self.real_words // BLOCK)
        padded = np.zeros((kernel.shape[0] + 1, self.blocks * BLOCK), np.float32)
        padded[-1, :] = -1e30
        padded[:-1, :self.real_words] = kernel[:, special:]
        padded[-1, :self.real_words] = bias[special:]
        self.word_kernel = tf.constant(padded)
        self.logits_kernel, self.logits_bias = tf.constant(kernel), tf.constant(bias)   # the exact tie path
        self.special_kernel = tf.constant(np.concatenate([kernel[:, :special], bias[None, :special]]).astype(np.float32))
        # exp(logit) without subtracting the maximum is safe when every logit is bounded: the top
        # layer's h = o tanh(c) lies in (-1, 1), so |logit_j| <= sum_k |W_kj| + |b_j|.
        top = layers.lstms[-1]
        bounded = (getattr(top.cell.activation, "__name__", "") == "tanh"
                   and getattr(top.cell.recurrent_activation, "__name__", "") in ("sigmoid", "hard_sigmoid"))
        self.plain_logsumexp = bool(bounded and (np.abs(kernel).sum(0) + np.abs(bias)).max() < _PLAIN_LOGSUMEXP_BOUND)
        # The fused kernel runs on the CPU only: where a GPU decodes, TensorFlow's ops stay on it.
        self.best_word = self.lstm_step = self.sample = self.dense_best = self.dense_sample = None
        if self.on_cpu:
            from lstmq.shared.kernels import native_ops, pack_matrix, pack_panels
            ops = native_ops(native)
            if ops is not None:
                width = int(ops.lstmq_panel_width())
                self.best_word, self.sample = ops.lstmq_best_word, ops.lstmq_sample
                if self.plain_logsumexp:
                    # the logits reduced in registers as they are computed (LstmqDenseBest); in a
                    # step with sampling rows, the draws made from them in the same op (LstmqDenseSample)
                    self.dense_best, self.dense_sample = ops.lstmq_dense_best, ops.lstmq_dense_sample
                    self.panels = tf.constant(pack_panels(kernel, bias, special, width))
                # the fused step computes Keras's default activations only
                standard = all(getattr(activation, "__name__", "") == "tanh" and getattr(recurrent, "__name__", "") == "sigmoid"
                               for *_, activation, recurrent in self.cells)
                if standard:
                    self.lstm_step = ops.lstmq_lstm_step
                    # (the bottom layer's kernel is in its table: an empty one)
                    self.packed_cells = [(tf.constant(np.zeros((0, 0, width), np.float32) if table is not None
                                                      else pack_matrix(cell_kernel.numpy(), width)),
                                          tf.constant(pack_matrix(recurrent.numpy(), width)))
                                         for table, cell_kernel, recurrent, *_ in self.cells]

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
            token, logprob = self._next_words(states[-1][0], any_sampling, slot_temperature, slot_top_k, slot_top_p,
                                              slot_base, slot_pos, scored)
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

    def _next_words(self, h, any_sampling, temperature, top_k, top_p, base, position, scored=True):
        """(token, its log-probability under the model, or 0 unless `scored`) for every row."""
        import tensorflow as tf

        if self.dense_best is None:
            return self._words_from_logits(h, any_sampling, temperature, top_k, top_p, base, position, scored)
        if any_sampling is False:   # a call with greedy rows only
            return self._fused_words(h, temperature, top_k, top_p, base, position, scored, sampling=False)
        return tf.cond(any_sampling,
                       lambda: self._fused_words(h, temperature, top_k, top_p, base, position, scored, sampling=True),
                       lambda: self._fused_words(h, temperature, top_k, top_p, base, position, scored, sampling=False))

    def _fused_words(self, h, temperature, top_k, top_p, base, position, scored, sampling):
        """_words_from_logits with LstmqDenseBest: the logits are reduced in registers as they are
        computed; in a step with sampling rows LstmqDenseSample also draws their words. A greedy
        row gets the same numbers either way: its word's logit is the row maximum (a near-tie row
        recomputed the model's way may take another word within float32 rounding of it, 1e-6
        relative), its normalizer the op's sum of exp(logit)."""
        import tensorflow as tf

        if sampling:   # the draw inside the op, from each row's logits while they are in cache
            greedy, top, near, sumexp, _, choice, chosen = self.dense_sample(
                h, self.panels, temperature, top_k, top_p, base, position, real=self.real_words, scored=scored,
                tolerance=_TIE_TOLERANCE)
            if tf.reduce_any(near):
                greedy = self._softmax_argmax(h, greedy, near)
                choice = tf.where(temperature > 0, choice, greedy)
        else:
            greedy, top, near, sumexp, _ = self.dense_best(h, self.panels, real=self.real_words, scored=scored,
                                                           tolerance=_TIE_TOLERANCE)
            if tf.reduce_any(near):
                greedy = self._softmax_argmax(h, greedy, near)
            chosen, choice = top, greedy
        logprob = chosen - tf.math.log(sumexp) if scored else tf.zeros_like(top)
        return choice + self.special, logprob

    def _words_from_logits(self, h, any_sampling, temperature, top_k, top_p, base, position, scored=True):
        import tensorflow as tf

        with_one = tf.concat([h, tf.ones_like(h[:, :1])], axis=1)
        logits = tf.matmul(with_one, self.word_kernel)   # real words only; bias included
        if self.best_word is not None:
            # one pass per row in cache: first maximum, maximum, near-tie flag, sum of exp(logit - max)
            greedy, maximum, near, sumexp = self.best_word(logits, scored=scored, tolerance=_TIE_TOLERANCE,
                                                           bounded=self.plain_logsumexp)
            top = maximum[:, None]
        else:
            greedy, top, near = self._greedy_blocks(logits)
        # The seed's loop takes the argmax of the softmax, where words whose logits differ by less
        # than float32 rounding tie and the lower id wins: such rows take the model's own path.
        if tf.reduce_any(near):
            greedy = self._softmax_argmax(h, greedy, near)
        # exp(logits): the log-probability's normalizer, shared with sampling at temperature 1
        exponentials = tf.exp(logits) if scored and self.plain_logsumexp and self.best_word is None else None
        if any_sampling:
            choice = self._sample(logits, greedy, top, temperature, top_k, top_p, base, position, exponentials)
        else:
            choice = greedy
        if not scored:
            return choice + self.special, tf.zeros_like(h[:, 0])
        chosen = tf.gather(logits, choice[:, None], batch_dims=1)[:, 0]
        # log p(chosen) = logit - logsumexp over the whole vocabulary (special tokens included)
        special = tf.matmul(with_one, self.special_kernel)
        if self.best_word is not None and self.plain_logsumexp:   # sumexp: sum of exp(logit)
            logprob = chosen - tf.math.log(sumexp + tf.reduce_sum(tf.exp(special), axis=-1))
        elif self.best_word is not None:                           # sumexp: sum of exp(logit - top)
            # relative to the largest of all logits, special tokens included (never overflows)
            most = tf.maximum(top, tf.reduce_max(special, -1, keepdims=True))
            total = sumexp * tf.exp(top[:, 0] - most[:, 0]) + tf.reduce_sum(tf.exp(special - most), axis=-1)
            logprob = chosen - (most[:, 0] + tf.math.log(total))
        elif self.plain_logsumexp:
            total = tf.reduce_sum(exponentials, axis=-1) + tf.reduce_sum(tf.exp(special), axis=-1)
            logprob = chosen - tf.math.log(total)
        else:
            most = tf.maximum(top, tf.reduce_max(special, -1, keepdims=True))
            total = tf.reduce_sum(tf.exp(logits - most), axis=-1) + tf.reduce_sum(tf.exp(special - most), axis=-1)
            logprob = chosen - (most[:, 0] + tf.math.log(total))
        return choice + self.special, logprob

    def _greedy_blocks(self, logits):
        """(first argmax, row maximum (rows, 1), near-tie flag) with TensorFlow's ops: through
        block maxima (first maximum, as tf.argmax), which also give the runner-up."""
        import tensorflow as tf

        cube = tf.reshape(logits, [-1, self.blocks, BLOCK])
        block_max = tf.reduce_max(cube, axis=-1)
        best_block = tf.argmax(block_max, axis=-1, output_type=tf.int32)
        members = tf.gather(cube, best_block, batch_dims=1)
        member = tf.argmax(members, axis=-1, output_type=tf.int32)
        greedy = best_block * BLOCK + member
        top = tf.gather(members, member[:, None], batch_dims=1)   # the row maxima, (rows, 1)
        runner_up = tf.maximum(
            tf.reduce_max(tf.where(tf.one_hot(best_block, self.blocks, on_value=True, off_value=False), -np.inf, block_max), -1),
            tf.reduce_max(tf.where(tf.one_hot(member, BLOCK, on_value=True, off_value=False), -np.inf, members), -1))
        near = runner_up >= top[:, 0] - _TIE_TOLERANCE * (1.0 + tf.abs(top[:, 0]))
        return greedy, top, near

    def _sample(self, logits, greedy, top, temperature, top_k, top_p, base, position, exponentials=None):
        """The chosen real word (index among the real words) of every row: greedy rows keep
        `greedy`. A sampling row draws with its uniform u by inverse CDF over the weights
        exp((logit - max) / temperature) (exp(logit) at temperature 1 when the model's logits
        are bounded, see plain_logsumexp): rows with neither top_k nor top_p over the vocabulary
        in id order (block sums locate the word, no sort); rows with top_k or top_p over the
        words ranked by logit (ties: lower id first), keeping the first top_k ranks and the
        ranks whose preceding probability mass is below top_p. A row's draw depends only on
        its own logits, parameters and uniform, never on the rest of the batch."""
        import tensorflow as tf

        uniform = self._uniforms(base, position)
        if self.sample is not None:   # the same draws in one C++ pass per row (shared/kernels)
            return self.sample(logits, top[:, 0], temperature, top_k, top_p, uniform, greedy,
                               columns=self.real_words, bounded=self.plain_logsumexp)
        sampling = temperature > 0
        inverse = tf.where(sampling, 1.0 / tf.where(sampling, temperature, 1.0), 1.0)
        plain = sampling & (top_k <= 0) & (top_p >= 1.0)
        ranked = sampling & ~plain
        choice = greedy
        if tf.reduce_any(plain):
            choice = tf.where(plain, self._draw_plain(logits, top, inverse, uniform, plain, temperature, exponentials), choice)
        if tf.reduce_any(ranked):
            choice = tf.where(ranked, self._draw_ranked(logits, top, inverse, uniform, top_k, top_p, ranked), choice)
        return choice

    def _softmax_argmax(self, h, greedy, near):
        """`greedy` with the rows `near` recomputed as the inference model does: Dense (matmul,
        then bias), softmax, special tokens excluded, first maximum."""
        import tensorflow as tf

        rows = tf.where(near)
        logits = tf.matmul(tf.gather_nd(h, rows), self.logits_kernel) + self.logits_bias
        probabilities = tf.nn.softmax(logits, axis=-1)[:, self.special:]
        return tf.tensor_scatter_nd_update(greedy, rows, tf.argmax(probabilities, axis=-1, output_type=tf.int32))

    def _uniforms(self, base, position):
        import tensorflow as tf

        u64 = lambda value: tf.constant(value, tf.uint64)   # noqa: E731
        z = base + (tf.cast(position, tf.uint64) + u64(1)) * u64(_GOLDEN)
        z = (z ^ tf.bitwise.right_shift(z, u64(30))) * u64(_MIX1)
        z = (z ^ tf.bitwise.right_shift(z, u64(27))) * u64(_MIX2)
        z = z ^ tf.bitwise.right_shift(z, u64(31))
        return tf.cast(tf.bitwise.right_shift(z, u64(40)), tf.float32) * (2.0 ** -24)

    def _draw_plain(self, logits, top, inverse, uniform, plain, temperature, exponentials):
        import tensorflow as tf

        if self.plain_logsumexp:
            natural = plain & tf.equal(temperature, 1.0)
            exponentials = tf.exp(logits) if exponentials is None else exponentials
            if tf.reduce_all(natural | ~plain):
                weights = exponentials
            else:
                weights = tf.where(natural[:, None], exponentials, tf.exp((logits - top) * inverse[:, None]))
        else:
            weights = tf.exp((logits - top) * inverse[:, None])
        weights = tf.reshape(weights, [-1, self.blocks, BLOCK])
        block_mass = tf.reduce_sum(weights, axis=-1)
        cumulative = tf.cumsum(block_mass, axis=-1)
        threshold = uniform * cumulative[:, -1]
        block = tf.reduce_sum(tf.cast(cumulative <= threshold[:, None], tf.int32), axis=-1)
        block = tf.minimum(block, _last_positive(block_mass))
        before = tf.where(block > 0, tf.gather(cumulative, tf.maximum(block - 1, 0)[:, None], batch_dims=1)[:, 0], 0.0)
        inner = tf.gather(weights, block, batch_dims=1)                      # (rows, BLOCK)
        member = tf.reduce_sum(tf.cast(before[:, None] + tf.cumsum(inner, axis=-1) <= threshold[:, None], tf.int32), -1)
        return block * BLOCK + tf.minimum(member, _last_positive(inner))

    def _candidates(self, logits, count):
        """The `count` largest logits of every row, largest first (ties: lower id first), and
        their word indices. Up to a quarter of the blocks, without ranking the vocabulary: the
        count-th largest block maximum t (a selection, not a sort) bounds them from below, so
        they lie in the `count` blocks whose maximum is above t or, among those equal to t,
        first by id; among those blocks' words the count-th largest value selects exactly
        `count` words the same way, and only those are ranked. Else the whole row is ranked."""
        import tensorflow as tf

        def first(values, bound):
            """Positions (in order) of the `count` largest of every row's values, given the
            count-th largest, `bound`: every value above it, then values equal to it in order."""
            above, ties = values > bound[:, None], tf.equal(values, bound[:, None])
            room = count - tf.reduce_sum(tf.cast(above, tf.int32), axis=-1, keepdims=True)
            chosen = above | (ties & (tf.cumsum(tf.cast(ties, tf.int32), axis=-1) <= room))
            return tf.reshape(tf.cast(tf.where(chosen)[:, 1], tf.int32), [-1, count])

        def blockwise():
            cube = tf.reshape(logits, [-1, self.blocks, BLOCK])
            maxima = tf.reduce_max(cube, axis=-1)
            blocks = first(maxima, tf.raw_ops.NthElement(input=maxima, n=count - 1, reverse=True))   # in id order
            candidates = tf.reshape(tf.gather(cube, blocks, batch_dims=1), [-1, count * BLOCK])
            chosen = first(candidates, tf.raw_ops.NthElement(input=candidates, n=count - 1, reverse=True))
            values, at = tf.math.top_k(tf.gather(candidates, chosen, batch_dims=1), k=count)   # rank count values
            at = tf.gather(chosen, at, batch_dims=1)
            return values, tf.gather(blocks, at // BLOCK, batch_dims=1) * BLOCK + at % BLOCK

        def whole():
            values, ids = tf.math.top_k(logits, k=count)
            return values, ids

        if isinstance(count, int):
            return blockwise() if count * 4 <= self.blocks else whole()
        return tf.cond(count * 4 <= self.blocks, blockwise, whole)

    def _draw_ranked(self, logits, top, inverse, uniform, top_k, top_p, ranked):
        import tensorflow as tf

        nucleus = ranked & (top_p < 1.0)
        # candidates: the largest top_k of the batch; NUCLEUS_CANDIDATES for top_p without top_k
        wanted = tf.where(top_k > 0, top_k, NUCLEUS_CANDIDATES)
        count = tf.clip_by_value(tf.reduce_max(tf.where(ranked, wanted, 1)), 1, self.real_words)
        mass = tf.ones_like(top[:, 0])
        if tf.reduce_any(nucleus):   # the whole vocabulary's mass at the row's temperature
            mass = tf.reduce_sum(tf.exp((logits - top) * inverse[:, None]), axis=-1)
        choice, short = self._ranked_choice(logits, count, top, inverse, uniform, top_k, top_p, nucleus, mass)
        if tf.reduce_any(short):     # some nucleus reaches past the candidates: rank everything
            choice = self._ranked_choice(logits, self.real_words, top, inverse, uniform, top_k, top_p, nucleus, mass)[0]
        return choice

    def _ranked_choice(self, logits, count, top, inverse, uniform, top_k, top_p, nucleus, mass):
        import tensorflow as tf

        values, ids = self._candidates(logits, count)
        weights = tf.exp((values - top) * inverse[:, None])
        rank = tf.range(tf.shape(values)[-1])[None, :]
        keep = (top_k[:, None] <= 0) | (rank < top_k[:, None])
        limit = top_p * mass
        keep &= ~nucleus[:, None] | (tf.cumsum(weights, axis=-1, exclusive=True) < limit[:, None])
        # a nucleus row whose kept ranks may continue past the candidates
        short = nucleus & ((top_k <= 0) | (top_k > count)) & (tf.reduce_sum(weights, axis=-1) < limit)
        cumulative = tf.cumsum(tf.where(keep, weights, 0.0), axis=-1)
        threshold = uniform * cumulative[:, -1]
        choice = tf.reduce_sum(tf.cast(cumulative <= threshold[:, None], tf.int32), axis=-1)
        choice = tf.minimum(choice, tf.maximum(tf.reduce_sum(tf.cast(keep, tf.int32), axis=-1) - 1, 0))
        return tf.gather(ids, choice[:, None], batch_dims=1)[:, 0], short

    # -- batching --------------------------------------------------------------------------------
    def generate(self, requests: Sequence[Request]) -> list[list[list[int]]]:
        """Token ids generated for each request: result[request][sample] is a list of `words` ids."""
        return [[ids for ids, _ in samples] for samples in self._scored(self._decode_rows(requests, scored=False))]

    def generate_scored(self, requests: Sequence[Request]) -> list[list[tuple[list[int], float]]]:
        """Per request and sample: the token ids and their mean log-probability per word under
        the model (<= 0; natural log)."""
        return self._scored(self._decode_rows(requests))

    @staticmethod
    def _scored(decoded: _Rows) -> list[list[tuple[list[int], float]]]:
        tokens = decoded.tokens.tolist()
        logprob = decoded.logprob.tolist()
        words = decoded.words.tolist()
        samples = [(row[:count], value) for row, count, value in zip(tokens, words, logprob)]
        return [samples[start:end] for start, end in zip(decoded.first.tolist(), [*decoded.first[1:].tolist(), len(samples)])]

    def continuations(self, requests: Sequence[Request]) -> list[list[str]]:
        """Generated text for each request and sample."""
        return [[text for text, _ in samples] for samples in self.continuations_scored(requests)]

    def continuations_scored(self, requests: Sequence[Request]) -> list[list[tuple[str, float]]]:
        """Generated text and its mean log-probability per word, for each request and sample."""
        decoded = self._decode_rows(requests)
        if not len(decoded.words):
            return [[] for _ in requests]
        text = self._token_text[decoded.tokens]   # one lookup for every word of every row
        if decoded.words.min() == decoded.words.max():
            texts = [" ".join(row) for row in text.tolist()]
        else:
            texts = [" ".join(row[:count]) for row, count in zip(text.tolist(), decoded.words.tolist())]
        samples = list(zip(texts, decoded.logprob.tolist()))
        return [samples[start:end] for start, end in zip(decoded.first.tolist(), [*decoded.first[1:].tolist(), len(samples)])]

    def _decode_rows(self, requests: Sequence[Request], scored: bool = True) -> _Rows:
        import tensorflow as tf

        count = len(requests)
        lengths = np.fromiter((len(request.ids) for request in requests), np.int64, count)
        if count and lengths.min() == 0:
            raise ValueError("a prompt must have at least one token")
        params = [request.params for request in requests]
        samples = np.fromiter((p.n for p in params), np.int64, count)
        request_words = np.fromiter((p.words for p in params), np.int64, count)
        request_temperature = np.fromiter((p.temperature for p in params), np.float32, count)
        sampling = request_temperature > 0
        # rows: every sample of every request, in request order
        first = np.concatenate([[0], np.cumsum(samples)[:-1]]).astype(np.int64) if count else np.zeros(0, np.int64)
        rows = int(samples.sum())
        row_request = np.repeat(np.arange(count), samples)
        row_sample = np.arange(rows) - np.repeat(first, samples)
        words = request_words[row_request]
        temperature = request_temperature[row_request]
        top_k = np.fromiter((p.top_k for p in params), np.int32, count)[row_request]
        top_p = np.fromiter((p.top_p for p in params), np.float32, count)[row_request]
        seeds = np.fromiter(((p.seed or 0) if p.sampling else 0 for p in params), np.uint64, count)
        keys = np.fromiter((request.key for request in requests), np.uint64, count)
        base = np.where(sampling[row_request], stream_bases(seeds[row_request], keys[row_request], row_sample), np.uint64(0))

        tokens = np.zeros((rows, int(words.max()) if rows else 0), np.int32)
        total = np.zeros(rows, np.float64)
        # Longest rows first (the slots' schedule); calls of at most max_rows x ROWS_PER_CALL rows.
        order = np.lexsort((row_request, -words))
        per_call = self.max_rows * ROWS_PER_CALL
        for start in range(0, rows, per_call):
            call = order[start:start + per_call]
            # prefill each prompt once, prompts of similar length together
            prompts, row_prompt = np.unique(row_request[call], return_inverse=True)
            by_length = prompts[np.argsort(lengths[prompts], kind="stable")]
            position = np.empty(len(prompts), np.int64)
            position[np.searchsorted(prompts, by_length)] = np.arange(len(prompts))
            pieces = [self._prefill(pad_right([requests[i].ids for i in by_length[at:at + self.max_rows]]))
                      for at in range(0, len(by_length), self.max_rows)]
            take = tf.constant(position[row_prompt.reshape(-1)], tf.int32)
            states = tuple((tf.gather(tf.concat([piece[layer][0] for piece in pieces], 0), take),
                            tf.gather(tf.concat([piece[layer][1] for piece in pieces], 0), take))
                           for layer in range(len(self.units)))
            out_row, out_pos, out_token, out_logprob = self._decoders[scored, bool((temperature[call] > 0).any())](
                states, words[call].astype(np.int32), temperature[call], top_k[call], top_p[call], base[call],
                np.int32(min(self.max_rows, len(call))))
            out_row = call[out_row.numpy()]
            out_pos = out_pos.numpy()
            tokens[out_row, out_pos] = out_token.numpy()
            total += np.bincount(out_row, weights=out_logprob.numpy(), minlength=rows)
        return _Rows(first, words, tokens, (total / np.maximum(words, 1)) if rows else total)


def _last_positive(weights):
    """Index of the last positive entry of every row (0 when none)."""
    import tensorflow as tf

    width = tf.shape(weights)[-1]
    return width - 1 - tf.argmax(tf.reverse(weights > 0, axis=[-1]), axis=-1, output_type=tf.int32)


def reference_greedy(inference_model, ids: Sequence[int], words: int, window: int | None = None,
                     predict: bool = False) -> list[int]:
    """The seed notebook's loop, kept as the reference: run the full model on the context, take
    the most likely real word, append, repeat; one full forward pass per word. A context shorter
    than `window` is padded to it, as the seed did; a longer one is read whole, where the seed's
    pad_sequences kept only its last 17 tokens: lstmq models read any length (padding is masked),
    and this reference is the meaning the batched decoder must reproduce. predict=True calls
    `model.predict` as the notebook did (same numbers, slower: benchmarks time the seed's way)."""
    context = list(ids)
    generated = []
    for _ in range(words):
        batch = pad_right([context], max(len(context), window or 0))
        scores = inference_model.predict(batch, verbose=0) if predict else inference_model(batch, training=False)
        probabilities = np.array(scores)[0]
        probabilities[: len(SPECIAL_TOKENS)] = -1.0
        token = int(np.argmax(probabilities))
        generated.append(token)
        context.append(token)
    return generated
