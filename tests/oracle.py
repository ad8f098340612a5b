"""The test oracle: the seed notebook\'s generation loop, against which the batched decoder is checked."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lstmq.shared.text import SPECIAL_TOKENS, pad_right


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
