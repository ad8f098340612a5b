"""Host batching: from requests (a prompt\'s ids, its parameters, its stream key) to the decoder\'s
compiled calls and back. Every sample of every request is a row; rows are decoded longest first,
in calls of at most max_rows x ROWS_PER_CALL rows, each prompt prefilled once per call, prompts of
similar length together; the generated ids come back per request and sample."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lstmq.shared.params import GenerationParams
from lstmq.shared.text import pad_right
from lstmq.worker.engine.stream import stream_bases

ROWS_PER_CALL = 16          # at most max_rows x this many rows per compiled call (bounds memory)


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


@dataclass
class Rows:
    """The rows (prompt x sample) of one generate call, in request order."""
    first: np.ndarray       # request -> its first row
    words: np.ndarray       # row -> words to generate
    tokens: np.ndarray      # (rows, max words) generated ids
    logprob: np.ndarray     # row -> mean log-probability per word


def decode_rows(decoder, requests: Sequence[Request], scored: bool = True) -> Rows:
    """Decode every sample of every request with `decoder` (a Decoder): rows longest first, in
    calls of at most max_rows x ROWS_PER_CALL rows, each prompt prefilled once per call."""
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
    per_call = decoder.max_rows * ROWS_PER_CALL
    for start in range(0, rows, per_call):
        call = order[start:start + per_call]
        # prefill each prompt once, prompts of similar length together
        prompts, row_prompt = np.unique(row_request[call], return_inverse=True)
        by_length = prompts[np.argsort(lengths[prompts], kind="stable")]
        position = np.empty(len(prompts), np.int64)
        position[np.searchsorted(prompts, by_length)] = np.arange(len(prompts))
        pieces = [decoder._prefill(pad_right([requests[i].ids for i in by_length[at:at + decoder.max_rows]]))
                  for at in range(0, len(by_length), decoder.max_rows)]
        take = tf.constant(position[row_prompt.reshape(-1)], tf.int32)
        states = tuple((tf.gather(tf.concat([piece[layer][0] for piece in pieces], 0), take),
                        tf.gather(tf.concat([piece[layer][1] for piece in pieces], 0), take))
                       for layer in range(len(decoder.units)))
        out_row, out_pos, out_token, out_logprob = decoder._decoders[scored, bool((temperature[call] > 0).any())](
            states, words[call].astype(np.int32), temperature[call], top_k[call], top_p[call], base[call],
            np.int32(min(decoder.max_rows, len(call))))
        out_row = call[out_row.numpy()]
        out_pos = out_pos.numpy()
        tokens[out_row, out_pos] = out_token.numpy()
        total += np.bincount(out_row, weights=out_logprob.numpy(), minlength=rows)
    return Rows(first, words, tokens, (total / np.maximum(words, 1)) if rows else total)


def _per_request(samples: list, first: np.ndarray) -> list[list]:
    return [samples[start:end] for start, end in zip(first.tolist(), [*first[1:].tolist(), len(samples)])]


def scored_ids(decoded: Rows) -> list[list[tuple[list[int], float]]]:
    """Per request and sample: its token ids and mean log-probability."""
    tokens = decoded.tokens.tolist()
    logprob = decoded.logprob.tolist()
    words = decoded.words.tolist()
    return _per_request([(row[:count], value) for row, count, value in zip(tokens, words, logprob)], decoded.first)


def scored_texts(decoded: Rows, token_text: np.ndarray, requests: int) -> list[list[tuple[str, float]]]:
    """Per request and sample: its text (`token_text`: id -> word, an object array) and mean
    log-probability."""
    if not len(decoded.words):
        return [[] for _ in range(requests)]
    text = token_text[decoded.tokens]   # one lookup for every word of every row
    if decoded.words.min() == decoded.words.max():
        texts = [" ".join(row) for row in text.tolist()]
    else:
        texts = [" ".join(row[:count]) for row, count in zip(text.tolist(), decoded.words.tolist())]
    return _per_request(list(zip(texts, decoded.logprob.tolist())), decoded.first)
