"""Word selection: each row's next word from the top LSTM layer's output h, and its log-probability.

Per step and row the work is one (units + 1) x vocabulary matmul (the bias rides in the matmul
as a constant-1 input), an argmax directly on the logits (no softmax; through per-block maxima,
which also give the runner-up: the rare rows whose two best words are within float32 rounding of
a tie take the model's own Dense + softmax path, so ties resolve as in the seed's loop), and the
chosen word's log-probability as logit - logsumexp. Sampling ranks only the candidates it needs:
top_k through the K largest of per-block maxima, top_p through a bounded candidate set (the full
ranking only when a row's nucleus is larger), plain temperature sampling through per-block sums
(no sort). A row's draw depends only on its own logits, parameters and uniform (stream.py).

Four variants of one meaning, by what the CPU kernels offer (worker.engine.kernels): the logits
reduced in registers as they are computed (LstmqDenseBest / LstmqDenseSample), the logits
reduced by one C++ pass per row (LstmqBestWord / LstmqSample), or TensorFlow's ops alone (GPUs,
native_kernels off)."""
from __future__ import annotations

import numpy as np

from lstmq.shared.text import SPECIAL_TOKENS
from lstmq.worker.engine.stream import tf_uniforms

BLOCK = 16                  # vocabulary ids per block: block maxima (top_k) and block sums (sampling)
NUCLEUS_CANDIDATES = 64     # top_p without top_k: ranks examined before falling back to a full sort
PLAIN_LOGSUMEXP_BOUND = 60.0   # |logit| bound under which exp(logit) needs no max subtraction
TIE_TOLERANCE = 1e-6        # runner-up logits this close (relative) to the maximum: softmax argmax


class WordSelection:
    """The output layer's weights in the shapes each selection path wants, and the compiled
    selection itself (next_words, called inside the decoder's tf.function)."""

    def __init__(self, logits_layer, top_lstm, ops=None):
        """`logits_layer`: the model's Dense layer over the vocabulary; `top_lstm`: its top LSTM
        layer (its activations bound the logits); `ops`: the loaded native kernels (CPU), or None."""
        import tensorflow as tf

        # Scores: the logits of the real words (ids >= len(SPECIAL_TOKENS)), right-padded to whole
        # blocks with columns that score -1e30; the bias is the last row of the kernel, so one
        # matmul of [h, 1] gives the logits. The special tokens' logits (never chosen) count in the
        # log-probability's normalizer only.
        kernel, *rest = logits_layer.get_weights()
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
        top = top_lstm
        bounded = (getattr(top.cell.activation, "__name__", "") == "tanh"
                   and getattr(top.cell.recurrent_activation, "__name__", "") in ("sigmoid", "hard_sigmoid"))
        self.plain_logsumexp = bool(bounded and (np.abs(kernel).sum(0) + np.abs(bias)).max() < PLAIN_LOGSUMEXP_BOUND)
        # The native kernels (CPU only: where a GPU decodes, TensorFlow's ops stay on it)
        self.best_word = self.sample = self.dense_best = self.dense_sample = self.panels = None
        if ops is not None:
            from lstmq.worker.engine.kernels import pack_panels

            self.best_word, self.sample = ops.lstmq_best_word, ops.lstmq_sample
            if self.plain_logsumexp:
                # the logits reduced in registers as they are computed (LstmqDenseBest); in a
                # step with sampling rows, the draws made from them in the same op (LstmqDenseSample)
                self.dense_best, self.dense_sample = ops.lstmq_dense_best, ops.lstmq_dense_sample
                self.panels = tf.constant(pack_panels(kernel, bias, special, int(ops.lstmq_panel_width())))

    def next_words(self, h, any_sampling, temperature, top_k, top_p, base, position, scored=True):
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
                tolerance=TIE_TOLERANCE)
            if tf.reduce_any(near):
                greedy = self._softmax_argmax(h, greedy, near)
                choice = tf.where(temperature > 0, choice, greedy)
        else:
            greedy, top, near, sumexp, _ = self.dense_best(h, self.panels, real=self.real_words, scored=scored,
                                                           tolerance=TIE_TOLERANCE)
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
            greedy, maximum, near, sumexp = self.best_word(logits, scored=scored, tolerance=TIE_TOLERANCE,
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
        near = runner_up >= top[:, 0] - TIE_TOLERANCE * (1.0 + tf.abs(top[:, 0]))
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

        uniform = tf_uniforms(base, position)
        if self.sample is not None:   # the same draws in one C++ pass per row (worker.engine.kernels)
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


def _last_positive(weights):
    """Index of the last positive entry of every row (0 when none)."""
    import tensorflow as tf

    width = tf.shape(weights)[-1]
    return width - 1 - tf.argmax(tf.reverse(weights > 0, axis=[-1]), axis=-1, output_type=tf.int32)
