"""The test oracle: the seed notebook\'s generation loop, against which the batched decoder is checked."""
from __future__ import annotations

import weakref
from collections.abc import Sequence

import numpy as np

from lstmq.shared.text import SPECIAL_TOKENS, pad_right


def seed_step(inference_model, context: Sequence[int], window: int | None = None, predict: bool = False) -> np.ndarray:
    """One step of the seed's loop: the full model on the context (padded to `window` when
    shorter), its probabilities with the special tokens' set to -1 (never chosen)."""
    batch = pad_right([context], max(len(context), window or 0))
    scores = inference_model.predict(batch, verbose=0) if predict else inference_model(batch, training=False)
    probabilities = np.array(scores)[0]
    probabilities[: len(SPECIAL_TOKENS)] = -1.0
    return probabilities


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
        token = int(np.argmax(seed_step(inference_model, context, window, predict)))
        generated.append(token)
        context.append(token)
    return generated


# A relative gap between the best and the second best word's probability below which the fast
# path's choice is not trusted and the seed's own step decides. Float32 rounding differences
# between a compiled batched call and the seed's eager single-prompt call (none at all on the
# CPUs this was checked on: the probabilities were equal to the bit) are ~1e-6 relative.
NEAR_TIE = 1e-3

_compiled: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def compiled_model(inference_model):
    """The inference model as one compiled tf.function of right-padded ids (batch, time) of any
    shape (model.predict's kind of call, without its per-call overhead), one per model."""
    import tensorflow as tf

    function = _compiled.get(inference_model)
    if function is None:
        model = weakref.ref(inference_model)
        function = tf.function(lambda ids: model()(ids, training=False), reduce_retracing=True,
                               input_signature=[tf.TensorSpec((None, None), tf.int32)])
        _compiled[inference_model] = function
    return function


def probabilities(inference_model, contexts: Sequence[Sequence[int]], window: int | None = None) -> np.ndarray:
    """The model's next-word probabilities after each context, float32 (rows, vocabulary): each
    context padded as the seed pads it (to `window`, else read whole), contexts of the same
    padded length in one compiled call."""
    function = compiled_model(inference_model)
    result: list = [None] * len(contexts)
    by_width: dict[int, list[int]] = {}
    for row, context in enumerate(contexts):
        by_width.setdefault(max(len(context), window or 0), []).append(row)
    for width, rows in by_width.items():
        scores = np.asarray(function(pad_right([contexts[row] for row in rows], width)))
        for index, row in enumerate(rows):
            result[row] = scores[index]
    return np.stack(result) if result else np.zeros((0, 0), np.float32)


def reference_greedy_many(inference_model, prompts: Sequence[Sequence[int]], words: int | Sequence[int],
                          window: int | None = None) -> list[list[int]]:
    """Exactly `[reference_greedy(inference_model, p, w, window) for p, w in zip(prompts, words)]`,
    fast: each step runs every prompt that still wants a word in compiled calls, the prompts of
    the same padded length together (the seed's padding, as in seed_step). Wherever the best real
    word is within NEAR_TIE of the second (ties included), that word is decided by the seed's own
    step (seed_step, eager, one prompt), so a rounding difference between the two kinds of call
    can never change a word; by induction every context is the seed loop's."""
    counts = [words] * len(prompts) if isinstance(words, int) else list(words)
    assert len(counts) == len(prompts)
    contexts = [list(prompt) for prompt in prompts]
    generated: list[list[int]] = [[] for _ in prompts]
    for step in range(max(counts, default=0)):
        rows = [row for row, count in enumerate(counts) if count > step]
        scores = probabilities(inference_model, [contexts[row] for row in rows], window)
        scores[:, : len(SPECIAL_TOKENS)] = -1.0
        for row, row_scores in zip(rows, scores):
            second, best = np.partition(row_scores, -2)[-2:]
            if best - second <= NEAR_TIE * best:
                row_scores = seed_step(inference_model, contexts[row], window)
            token = int(np.argmax(row_scores))
            generated[row].append(token)
            contexts[row].append(token)
    return generated


def mean_log_probability(inference_model, prompt: Sequence[int], ids: Sequence[int]) -> float:
    """The mean of log(model(context)[word]) over the generated words, each context the prompt
    and the words before (read whole, no padding); float64 logs of the model's float32 numbers."""
    contexts = [list(prompt) + list(ids[:index]) for index in range(len(ids))]
    scores = np.asarray(probabilities(inference_model, contexts), np.float64)
    chosen = scores[np.arange(len(ids)), list(ids)]
    return float(np.mean(np.log(np.maximum(chosen, 1e-300))))
