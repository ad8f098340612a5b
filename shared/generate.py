"""Batched incremental decoding and sampling. Imports TensorFlow: worker side only.

The seed generates one word per `model.predict` call per prompt, re-reading the whole context
each time. Here the LSTM reads every prompt of a batch once (prefill), then the batch's (h, c)
state is carried and each step emits one word for every row inside one compiled tf.function.
With greedy sampling the words are exactly those of the seed's loop (reference_greedy below).

Sampling is deterministic per row: its random numbers come from a counter-based generator
(numpy's Philox) keyed by (seed, prompt key, sample index), so neither batch composition,
chunking nor the worker changes a result.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lstmq.shared.model import decoding_layers
from lstmq.shared.params import GenerationParams
from lstmq.shared.text import PAD_ID, SPECIAL_TOKENS, Vocabulary, pad_right


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


def row_uniforms(seed: int, key: int, sample: int, steps: int) -> np.ndarray:
    """`steps` uniforms in [0, 1) for one (seed, prompt key, sample): a stateless stream."""
    state = np.random.SeedSequence([seed, key, sample]).generate_state(2, dtype=np.uint64)
    return np.random.Generator(np.random.Philox(key=state)).random(steps)


class Decoder:
    """Generates continuations with an inference model (see shared.model) and its vocabulary."""

    def __init__(self, inference_model, vocabulary: Vocabulary, max_rows: int):
        """`max_rows`: rows (prompt x sample) decoded together in one compiled call (decode_batch_size)."""
        import keras
        import tensorflow as tf

        # TensorFloat-32 (on by default on Ampere and newer GPUs) rounds matmul inputs to 10
        # mantissa bits, with kernels chosen by batch shape: a row's probabilities would then
        # depend on the batch it is decoded in, and so would its samples. Full float32 keeps
        # the per-prompt determinism invariant. A process-wide switch; no effect on CPUs.
        tf.config.experimental.enable_tensor_float_32_execution(False)
        self.vocabulary = vocabulary
        self.max_rows = max_rows
        layers = decoding_layers(inference_model)
        self.embedding, self.scores, self.softmax = layers.embedding, layers.logits, layers.softmax
        source, = layers.lstms   # one layer (stacked networks: issue 8)
        self.lstm = keras.layers.LSTM(source.units, return_state=True, name="decoder_lstm")
        self.lstm.build((None, None, self.embedding.output_dim))
        self.lstm.set_weights(source.get_weights())
        special = np.zeros(len(vocabulary), dtype=bool)
        special[: len(SPECIAL_TOKENS)] = True
        self.special = tf.constant(special)
        self._decode = tf.function(self._decode_graph, reduce_retracing=True, input_signature=[
            tf.TensorSpec((None, None), tf.int32),    # prompt ids, right-padded
            tf.TensorSpec((None,), tf.int32),         # row -> prompt
            tf.TensorSpec((None, None), tf.float32),  # uniforms (rows, steps)
            tf.TensorSpec((None,), tf.float32),       # temperature per row
            tf.TensorSpec((None,), tf.int32),         # top_k per row
            tf.TensorSpec((None,), tf.float32),       # top_p per row
            tf.TensorSpec((), tf.int32),              # steps
        ])

    # -- compiled part -------------------------------------------------------------------------
    def _decode_graph(self, ids, row_prompt, uniforms, temperature, top_k, top_p, steps):
        import tensorflow as tf

        _, h, c = self.lstm(self.embedding(ids), mask=tf.not_equal(ids, PAD_ID))
        h, c = tf.gather(h, row_prompt), tf.gather(c, row_prompt)
        sampling = temperature > 0
        any_sampling = tf.reduce_any(sampling)
        tokens = tf.TensorArray(tf.int32, size=steps)
        logprobs = tf.TensorArray(tf.float32, size=steps)
        for step in tf.range(steps):
            logits = self.scores(h)
            probabilities = self.softmax(logits)
            greedy = tf.argmax(tf.where(self.special, -1.0, probabilities), axis=-1, output_type=tf.int32)
            token = tf.cond(
                any_sampling,
                lambda: tf.where(sampling, self._sample(logits, temperature, top_k, top_p, uniforms[:, step]), greedy),
                lambda: greedy)
            tokens = tokens.write(step, token)
            # the chosen word's log-probability under the model itself (no temperature, no top-k/p)
            logprobs = logprobs.write(step, tf.gather(tf.nn.log_softmax(logits), token[:, None], batch_dims=1)[:, 0])
            # The embedding lookup without the layer call: the same gather, without attaching a mask.
            _, (h, c) = self.lstm.cell(tf.gather(self.embedding.embeddings, token), [h, c])
        return tf.transpose(tokens.stack()), tf.transpose(logprobs.stack())

    def _sample(self, logits, temperature, top_k, top_p, uniform):
        """Inverse-CDF draw among the most likely words, ranked. Only the first K ranks are
        sorted when every sampling row has a top_k (K = the largest); probabilities are always
        those of the whole vocabulary, so a row's draw never depends on the rest of the batch."""
        import tensorflow as tf

        vocab_size = tf.shape(logits)[-1]
        sampling = temperature > 0
        scaled = logits / tf.maximum(temperature, 1e-6)[:, None]
        scaled = tf.where(self.special, tf.constant(-np.inf, logits.dtype), scaled)
        limited = tf.reduce_all(tf.logical_not(sampling) | (top_k > 0))
        ranks_needed = tf.where(limited, tf.minimum(tf.reduce_max(top_k), vocab_size), vocab_size)
        sorted_logits, sorted_ids = tf.math.top_k(scaled, k=tf.maximum(ranks_needed, 1))
        probabilities = tf.exp(sorted_logits - tf.reduce_logsumexp(scaled, axis=-1, keepdims=True))
        ranks = tf.range(tf.shape(sorted_logits)[-1])[None, :]
        keep = (top_k[:, None] <= 0) | (ranks < top_k[:, None])
        keep &= tf.math.cumsum(probabilities, axis=-1, exclusive=True) < top_p[:, None]
        keep &= tf.math.is_finite(sorted_logits)
        cumulative = tf.math.cumsum(tf.where(keep, probabilities, 0.0), axis=-1)
        threshold = uniform[:, None] * cumulative[:, -1:]
        choice = tf.reduce_sum(tf.cast(cumulative <= threshold, tf.int32), axis=-1)
        choice = tf.minimum(choice, tf.maximum(tf.reduce_sum(tf.cast(keep, tf.int32), axis=-1) - 1, 0))
        return tf.gather(sorted_ids, choice, batch_dims=1)

    # -- batching --------------------------------------------------------------------------------
    def generate(self, requests: Sequence[Request]) -> list[list[list[int]]]:
        """Token ids generated for each request: result[request][sample] is a list of `words` ids."""
        return [[ids for ids, _ in samples] for samples in self.generate_scored(requests)]

    def generate_scored(self, requests: Sequence[Request]) -> list[list[tuple[list[int], float]]]:
        """Per request and sample: the token ids and their mean log-probability per word under
        the model (<= 0; natural log)."""
        results: list[list[tuple[list[int], float]]] = [[([], 0.0) for _ in range(request.n)] for request in requests]
        # Group prompts of similar budget and length; all samples of a prompt share one prefill.
        order = sorted(range(len(requests)), key=lambda i: (requests[i].words, len(requests[i].ids)))
        group: list[int] = []
        rows = 0
        for index in order:
            if group and rows + requests[index].n > self.max_rows:
                self._generate_group(requests, group, results)
                group, rows = [], 0
            group.append(index)
            rows += requests[index].n
        if group:
            self._generate_group(requests, group, results)
        return results

    def _generate_group(self, requests, group, results) -> None:
        for request in (requests[i] for i in group):
            if not request.ids:
                raise ValueError("a prompt must have at least one token")
        steps = max(requests[i].words for i in group)
        row_prompt, row_request, row_sample = [], [], []
        uniforms, temperature, top_k, top_p = [], [], [], []
        for position, index in enumerate(group):
            request = requests[index]
            params = request.params
            for sample in range(params.n):
                row_prompt.append(position)
                row_request.append(index)
                row_sample.append(sample)
                temperature.append(params.temperature)
                top_k.append(params.top_k)
                top_p.append(params.top_p)
                uniforms.append(row_uniforms(params.seed, request.key, sample, steps)
                                if params.sampling else np.zeros(steps))
        tokens, logprobs = self._decode(
            pad_right([requests[i].ids for i in group]),
            np.asarray(row_prompt, np.int32), np.asarray(uniforms, np.float32).reshape(len(row_prompt), steps),
            np.asarray(temperature, np.float32), np.asarray(top_k, np.int32), np.asarray(top_p, np.float32),
            np.int32(steps))
        tokens, logprobs = tokens.numpy(), logprobs.numpy()
        for row, (index, sample) in enumerate(zip(row_request, row_sample)):
            words = requests[index].words
            results[index][sample] = (tokens[row, :words].tolist(), float(logprobs[row, :words].mean()))

    def continuations(self, requests: Sequence[Request]) -> list[list[str]]:
        """Generated text for each request and sample."""
        return [[text for text, _ in samples] for samples in self.continuations_scored(requests)]

    def continuations_scored(self, requests: Sequence[Request]) -> list[list[tuple[str, float]]]:
        """Generated text and its mean log-probability per word, for each request and sample."""
        return [[(" ".join(self.vocabulary.decode(ids)), logprob) for ids, logprob in samples]
                for samples in self.generate_scored(requests)]


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
