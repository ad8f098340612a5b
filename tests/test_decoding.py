"""The decoding invariants: batched incremental greedy decoding returns exactly the seed loop's
words; sampling is deterministic per (seed, prompt, sample) whatever the batch; sampling draws
from the distribution it claims. Every invariant is checked with lstmq's native kernels picking
the words (native "on", skipped where they cannot be built) and with TensorFlow's ops ("off").

The oracle's answers come from tests.oracle.reference_greedy_many (the seed's loop, every prompt
of a step in compiled calls, near ties decided by the seed's own eager step; checked against
reference_greedy itself below), once per (model, prompts, words) for the whole module; models
and decoders are built once per module and shared by the tests (no test changes them)."""
import numpy as np
import pytest

keras = pytest.importorskip("keras")

from lstmq.shared import artifact as artifact_module  # noqa: E402
from lstmq.shared.config import load_settings  # noqa: E402
from lstmq.shared.text import SPECIAL_TOKENS, Vocabulary, pad_right  # noqa: E402
from lstmq.worker.engine import batching, selection, stream  # noqa: E402
from lstmq.worker.engine import network as model_module  # noqa: E402
from lstmq.worker.engine.decoder import Decoder  # noqa: E402
from lstmq.worker.engine.stream import row_uniforms  # noqa: E402
from tests import oracle  # noqa: E402
from tests.oracle import reference_greedy  # noqa: E402

VOCAB_SIZE = 400
WINDOW = 17
LARGE = 1024   # max_rows: every row of a test in one step


@pytest.fixture(scope="module", autouse=True)
def numerics(process_numerics):
    """Every test here runs with the numerics a worker's pool process sets (conftest.process_numerics)."""


@pytest.fixture(scope="module")
def decoders():
    """decoder(model, vocabulary, max_rows, native, layers=None): one Decoder per model, max_rows,
    native setting and layers for the module (each traces its compiled loop once)."""
    cache = {}

    def decoder(model, vocabulary, max_rows, native, layers=None):
        key = (id(model), id(vocabulary), max_rows, native, id(layers))
        if key not in cache:
            built = Decoder(model, vocabulary, max_rows=max_rows, layers=layers, native=native)
            assert built.native == (native == "on")
            cache[key] = (model, vocabulary, layers, built)   # (keeps what the ids name alive)
        return cache[key][-1]
    return decoder


@pytest.fixture(scope="module")
def seed_loop():
    """seed_loop(model, prompts, words, window=None): the seed loop's words for each prompt
    (reference_greedy's answer), computed once per (model, prompts, words, window)."""
    cache = {}

    def answers(model, prompts, words, window=None):
        key = (id(model), tuple(map(tuple, prompts)), words if isinstance(words, int) else tuple(words), window)
        if key not in cache:
            cache[key] = (model, oracle.reference_greedy_many(model, prompts, words, window=window))
        return cache[key][1]
    return answers


@pytest.fixture(scope="module")
def random_model():
    keras.utils.set_random_seed(7)
    _, inference = model_module.build_models(VOCAB_SIZE, 24, 32)
    # larger weights than the initializers give: sharper, more varied predictions
    inference.set_weights([weight * 4 for weight in inference.get_weights()])
    vocabulary = Vocabulary([*SPECIAL_TOKENS, *(f"w{i}" for i in range(VOCAB_SIZE - 2))])
    return inference, vocabulary


@pytest.fixture(scope="module")
def trained_model(corpus_text):
    from lstmq.worker.engine.training import train

    text = "\n".join(corpus_text.split("\n")[60:1060])
    params = load_settings(environ={}).model_params().replace(embedding_dim=24, lstm_units=32, epochs=1, batch_size=32,
                                                              early_stopping_patience=0)
    result = train(text, params, "test", samples_each_epoch=False)   # (the epoch's samples: not tested here)
    model_bytes, tokens, meta = artifact_module.read_artifact(result.artifact)
    return model_module.load_keras_bytes(model_bytes), Vocabulary(tokens), meta


def Request(ids, key=0, **params):   # noqa: N802 (reads like the class it builds)
    """A decoder request with the default settings' parameters, seed 0, and these changes."""
    defaults = load_settings(environ={}).generation_params().replace(seed=0)
    return batching.Request(ids=ids, params=defaults.replace(**params), key=key)


def random_prompts(count, seed, low=1, high=40):
    rng = np.random.default_rng(seed)
    return [rng.integers(1, VOCAB_SIZE, size=int(rng.integers(low, high + 1))).tolist() for _ in range(count)]


def greedy_prompts(seed):
    """40 prompts of 1 to 40 tokens (shorter and longer than the window), one of each length
    1, WINDOW and WINDOW + 1 among them."""
    prompts = random_prompts(40, seed=seed)
    rng = np.random.default_rng(seed + 100)
    for position, length in zip((0, 13, 27), (1, WINDOW, WINDOW + 1)):
        prompts[position] = rng.integers(1, VOCAB_SIZE, size=length).tolist()
    return prompts


def test_the_fast_oracle_is_the_seed_loop(random_model):
    """reference_greedy_many gives reference_greedy's words (the seed's loop, one eager call per
    word per prompt), with the window and without, for mixed numbers of words, on a single-layer
    and a stacked network, and on exact ties; its compiled batched probabilities are the seed
    step's within rounding far below its near-tie margin."""
    inference, _ = random_model
    prompts = [random_prompts(1, seed=200 + length, low=length, high=length)[0] for length in (1, 5, WINDOW, WINDOW + 1, 45)]
    words = [4, 3, 1, 4, 2]
    assert oracle.reference_greedy_many(inference, prompts, words, window=WINDOW) == \
        [reference_greedy(inference, p, w, window=WINDOW) for p, w in zip(prompts, words)]
    assert oracle.reference_greedy_many(inference, prompts[:2], 2) == [reference_greedy(inference, p, 2) for p in prompts[:2]]
    stacked, _ = stacked_model(2)
    assert oracle.reference_greedy_many(stacked, prompts[1:4], 2, window=WINDOW) == \
        [reference_greedy(stacked, p, 2, window=WINDOW) for p in prompts[1:4]]
    tied = tied_copy(inference, [reference_greedy(inference, p, 1)[0] for p in prompts[1:3]])
    assert oracle.reference_greedy_many(tied, prompts[1:3], 2) == [reference_greedy(tied, p, 2) for p in prompts[1:3]]
    contexts = prompts + [p + [9, 10] for p in prompts]
    fast = oracle.probabilities(inference, contexts, window=WINDOW)
    eager = np.stack([np.asarray(inference(pad_right([c], max(len(c), WINDOW)), training=False))[0]
                      for c in contexts])
    np.testing.assert_allclose(fast, eager, rtol=1e-5, atol=1e-7)
    assert oracle.NEAR_TIE >= 100 * 1e-5


@pytest.mark.parametrize("max_rows, chunk", [(1, 40), (3, 7), (16, 16), (64, 40)])
def test_greedy_equals_seed_loop(random_model, decoders, seed_loop, native, max_rows, chunk):
    inference, vocabulary = random_model
    prompts = greedy_prompts(seed=max_rows)
    decoder = decoders(inference, vocabulary, max_rows, native)
    generated = []
    for start in range(0, len(prompts), chunk):   # chunking as the job splits a seed file
        generated += [samples[0] for samples in decoder.generate([Request(ids=p, words=6) for p in prompts[start:start + chunk]])]
    assert generated == seed_loop(inference, prompts, 6, window=WINDOW)


def test_greedy_equals_seed_loop_on_a_trained_model(trained_model, decoders, seed_loop, native):
    inference, vocabulary, meta = trained_model
    assert meta["corpus_sha256"] == "test" and meta["network"]["vocab_size"] == len(vocabulary)
    prompts = ["I will close the door if", "holmes", "it was a dark and stormy night and the wind was howling "
               "through the trees when a stranger knocked at the door of baker street", "my dear watson you see"]
    ids = [vocabulary.encode(prompt)[0] for prompt in prompts]
    decoder = decoders(inference, vocabulary, 8, native)
    generated = [samples[0] for samples in decoder.generate([Request(ids=i, words=7) for i in ids])]
    assert generated == seed_loop(inference, ids, 7, window=WINDOW)
    assert all(token >= len(SPECIAL_TOKENS) for tokens in generated for token in tokens)


def test_padding_side_does_not_change_the_model(random_model):
    import tensorflow as tf

    inference, _ = random_model
    prompt = random_prompts(1, seed=3, low=5, high=5)[0]
    plain = np.array(inference(np.array([prompt], np.int32)))
    right = np.array(inference(np.array([prompt + [0] * 12], np.int32)))
    np.testing.assert_allclose(plain, right, rtol=1e-5, atol=1e-7)
    if not tf.config.list_physical_devices("GPU"):   # cuDNN accepts right padding only
        left = np.array(inference(np.array([[0] * 12 + prompt], np.int32)))
        np.testing.assert_allclose(plain, left, rtol=1e-5, atol=1e-7)


def test_long_prompts_have_no_length_limit(random_model, decoders, seed_loop, native):
    inference, vocabulary = random_model
    prompt = random_prompts(1, seed=11, low=300, high=300)[0]
    decoder = decoders(inference, vocabulary, LARGE, native)
    assert decoder.generate([Request(ids=prompt, words=4)])[0][0] == seed_loop(inference, [prompt], 4)[0]


def sampled(decoder, prompts, **params):
    return decoder.generate([Request(ids=p, key=index, **params) for index, p in enumerate(prompts)])


def test_sampling_is_deterministic_across_batches_and_order(random_model, decoders, native):
    inference, vocabulary = random_model
    prompts = random_prompts(12, seed=5)
    params = dict(words=5, temperature=0.9, top_k=40, top_p=0.95, n=3, seed=1234)
    small = decoders(inference, vocabulary, 3, native)
    large = decoders(inference, vocabulary, LARGE, native)
    together = sampled(large, prompts, **params)
    assert sampled(small, prompts, **params) == together
    reversed_requests = [Request(ids=p, key=i, **params) for i, p in reversed(list(enumerate(prompts)))]
    assert large.generate(reversed_requests)[::-1] == together
    alone = large.generate([Request(ids=prompts[4], key=4, **params)])[0]
    assert alone == together[4]
    assert len({tuple(sample) for result in together for sample in result}) > 20   # samples differ
    assert sampled(large, prompts, **{**params, "seed": 99}) != together


def test_greedy_rows_mixed_with_sampling_rows(random_model, decoders, seed_loop, native):
    inference, vocabulary = random_model
    prompts = random_prompts(6, seed=8)
    decoder = decoders(inference, vocabulary, LARGE, native)
    requests = [Request(ids=p, key=i, words=5, temperature=(0.0 if i % 2 else 1.0), seed=3) for i, p in enumerate(prompts)]
    results = decoder.generate(requests)
    expected = seed_loop(inference, prompts[1::2], 5)
    assert [results[index][0] for index in range(1, 6, 2)] == expected


def next_word_probabilities(inference, prompt):
    probabilities = oracle.probabilities(inference, [prompt])[0].astype(np.float64)
    probabilities[: len(SPECIAL_TOKENS)] = 0
    return probabilities / probabilities.sum()


def test_sampling_follows_the_distribution(random_model, decoders, native):
    inference, vocabulary = random_model
    prompt = random_prompts(1, seed=21, low=6, high=6)[0]
    probabilities = next_word_probabilities(inference, prompt)
    decoder = decoders(inference, vocabulary, LARGE, native)
    draws = 4000
    tokens = [s[0] for s in decoder.generate([Request(ids=prompt, words=1, temperature=1.0, n=draws, seed=17)])[0]]
    counts = np.bincount(tokens, minlength=VOCAB_SIZE)
    top = np.argsort(probabilities)[::-1][:5]
    for token in top:   # within 5 standard deviations of the expected count
        expected = probabilities[token] * draws
        assert abs(counts[token] - expected) <= 5 * np.sqrt(expected * (1 - probabilities[token])) + 1


def test_top_k_and_top_p_restrict_the_choices(random_model, decoders, native):
    inference, vocabulary = random_model
    prompt = random_prompts(1, seed=22, low=6, high=6)[0]
    probabilities = next_word_probabilities(inference, prompt)
    order = list(np.argsort(probabilities)[::-1])
    decoder = decoders(inference, vocabulary, LARGE, native)
    draw = lambda **params: {s[0] for s in decoder.generate([Request(ids=prompt, words=1, n=300, seed=5, **params)])[0]}
    assert draw(temperature=1.0, top_k=3) <= set(order[:3])
    assert draw(temperature=1.0, top_k=1) == {order[0]}
    nucleus = int(np.searchsorted(np.cumsum(probabilities[order]), 0.5)) + 1
    assert draw(temperature=1.0, top_p=0.5) <= set(order[:nucleus])
    assert draw(temperature=1.0, top_p=1e-6) == {order[0]}
    assert draw(temperature=0.0) == {order[0]}          # greedy ignores n's randomness
    assert len(draw(temperature=5.0)) > len(draw(temperature=0.2))


def test_row_uniforms_are_a_stateless_stream():
    first = row_uniforms(1, 2, 3, 10)
    assert np.array_equal(first, row_uniforms(1, 2, 3, 10))
    assert np.array_equal(first[:4], row_uniforms(1, 2, 3, 4))
    assert not np.array_equal(first, row_uniforms(1, 2, 4, 10))
    assert ((0 <= first) & (first < 1)).all()


def test_exported_model_opens_with_plain_keras(random_model, tmp_path):
    inference, vocabulary = random_model
    artifact = artifact_module.pack_artifact(model_module.save_keras_bytes(inference), vocabulary.tokens, {"x": 1})
    files = artifact_module.export_artifact(artifact, tmp_path / "export")
    assert [path.name for path in files] == ["model.keras", "vocab.json", "meta.json"]
    reopened = keras.saving.load_model(tmp_path / "export" / "model.keras")
    batch = np.array([[5, 6, 7, 0, 0]], np.int32)
    np.testing.assert_allclose(np.array(reopened(batch)), np.array(inference(batch)), rtol=1e-6)
    assert reopened.output_shape == (None, VOCAB_SIZE)


def test_rows_with_different_top_k_do_not_affect_each_other(random_model, decoders, native):
    inference, vocabulary = random_model
    prompts = random_prompts(6, seed=31)
    decoder = decoders(inference, vocabulary, LARGE, native)
    settings = [dict(top_k=0), dict(top_k=5), dict(top_k=40, top_p=0.8), dict(top_p=0.7), dict(top_k=1), dict(top_k=3)]
    requests = [Request(ids=p, key=i, words=4, temperature=1.1, seed=8, n=2, **s)
                for i, (p, s) in enumerate(zip(prompts, settings))]
    together = decoder.generate(requests)
    assert [decoder.generate([request])[0] for request in requests] == together
    # rows that all have a top_k are ranked only that far; the draws are the same
    limited = [request for request in requests if request.params.top_k > 0]
    assert decoder.generate(limited) == [together[i] for i, r in enumerate(requests) if r.params.top_k > 0]


def test_each_continuation_carries_its_mean_log_probability_under_the_model(random_model, decoders, native):
    """The mean of log softmax(model(context)) at each chosen word, from the seed's full-context
    forward pass: the same for greedy and sampled rows, whatever the temperature."""
    inference, vocabulary = random_model
    decoder = decoders(inference, vocabulary, LARGE, native)
    prompts = random_prompts(4, seed=41)
    requests = [Request(ids=p, key=i, words=5, temperature=(0.0 if i % 2 else 1.3), seed=2) for i, p in enumerate(prompts)]
    for request, samples in zip(requests, decoder.generate_scored(requests)):
        (ids, mean_logprob), = samples
        expected = oracle.mean_log_probability(inference, request.ids, ids)
        assert mean_logprob <= 0 and mean_logprob == pytest.approx(expected, abs=1e-4)


def stacked_model(layers, vocab_size=VOCAB_SIZE, seed=13):
    """A stacked inference model built with plain keras, and its layers in decoding order; one
    per (layers, vocab_size, seed) for the session (never changed)."""
    key = (layers, vocab_size, seed)
    if key not in _stacked:
        keras.utils.set_random_seed(seed)
        token_ids = keras.Input(shape=(None,), dtype="int32")
        embedding = keras.layers.Embedding(vocab_size, 24, mask_zero=True)
        lstms = [keras.layers.LSTM(32, return_sequences=index < layers - 1) for index in range(layers)]
        dense, softmax = keras.layers.Dense(vocab_size), keras.layers.Softmax()
        hidden = embedding(token_ids)
        for lstm in lstms:
            hidden = lstm(hidden)
        inference = keras.Model(token_ids, softmax(dense(hidden)))
        inference.set_weights([weight * 4 for weight in inference.get_weights()])
        _stacked[key] = inference, model_module.DecodingLayers(embedding, tuple(lstms), dense, softmax)
    return _stacked[key]


_stacked: dict = {}


@pytest.mark.parametrize("layers", [2, 3])
def test_stacked_greedy_equals_seed_loop(random_model, decoders, seed_loop, native, layers):
    _, vocabulary = random_model
    inference, decoding = stacked_model(layers)
    prompts = random_prompts(24, seed=50 + layers)
    decoder = decoders(inference, vocabulary, 7, native, layers=decoding)
    words = [1 + index % 9 for index in range(len(prompts))]    # mixed lengths too
    generated = [samples[0] for samples in decoder.generate([Request(ids=p, words=w) for p, w in zip(prompts, words)])]
    assert generated == seed_loop(inference, prompts, words, window=WINDOW)


def test_the_compiled_loop_draws_the_row_uniforms_stream():
    """The uniforms computed inside the loop are row_uniforms's: (seed, key, sample, word)."""
    import tensorflow as tf

    from lstmq.shared.params import SAMPLING_STREAM

    assert SAMPLING_STREAM == 2
    seeds, keys, samples = [0, 1, 2**63 - 1, 5], [0, 2**63 - 1, 7, 5], [0, 3, 99, 0]
    bases = stream.stream_bases(np.array(seeds), np.array(keys), np.array(samples))
    for step in (0, 1, 17):
        computed = stream.tf_uniforms(tf.constant(bases), tf.fill([len(seeds)], step)).numpy()
        expected = [row_uniforms(s, k, n, step + 1)[step] for s, k, n in zip(seeds, keys, samples)]
        assert np.array_equal(computed, np.asarray(expected, np.float32))


def test_mixed_lengths_and_batches_give_the_same_samples(random_model, decoders, seed_loop, native):
    """Continuous batching: rows of different lengths enter and leave the loop; a row's result
    never depends on which rows share its steps."""
    inference, vocabulary = random_model
    prompts = random_prompts(30, seed=61)
    requests = [Request(ids=p, key=i, words=1 + (7 * i) % 13, temperature=(0.0 if i % 3 == 0 else 0.8),
                        top_k=(0, 5, 40)[i % 3], top_p=(1.0, 0.9)[i % 2], n=1 + i % 2, seed=4)
                for i, p in enumerate(prompts)]
    results = [decoders(inference, vocabulary, rows, native).generate_scored(requests) for rows in (1, 3, LARGE)]
    assert [[ids for ids, _ in r] for r in results[0]] == [[ids for ids, _ in r] for r in results[1]] \
        == [[ids for ids, _ in r] for r in results[2]]
    for a, b in zip(results[0], results[2]):
        assert [lp for _, lp in a] == pytest.approx([lp for _, lp in b], abs=1e-6)
    assert all(len(ids) == r.words for r, samples in zip(requests, results[2]) for ids, _ in samples)
    greedy = range(0, 30, 3)   # the greedy rows among them
    expected = seed_loop(inference, [prompts[i] for i in greedy], [requests[i].words for i in greedy])
    assert [results[2][index][0][0] for index in greedy] == expected


def test_a_nucleus_larger_than_the_candidates_is_ranked_whole(random_model, decoders, native):
    inference, vocabulary = random_model
    prompt = random_prompts(1, seed=71, low=6, high=6)[0]
    temperature, top_p = 4.0, 0.9
    scaled = np.log(next_word_probabilities(inference, prompt)[len(SPECIAL_TOKENS):]) / temperature
    probabilities = np.exp(scaled - scaled.max()) / np.exp(scaled - scaled.max()).sum()
    order = np.argsort(-probabilities, kind="stable")
    nucleus = int(np.searchsorted(np.cumsum(probabilities[order]), top_p)) + 1
    assert nucleus > selection.NUCLEUS_CANDIDATES   # the fallback is exercised
    decoder = decoders(inference, vocabulary, LARGE, native)
    request = Request(ids=prompt, key=3, words=1, n=400, seed=9, temperature=temperature, top_p=top_p)
    alone = decoder.generate([request])[0]
    drawn = {sample[0] - len(SPECIAL_TOKENS) for sample in alone}
    assert drawn <= set(order[:nucleus + 1].tolist()) and len(drawn) > 50
    other = Request(ids=prompt, key=4, words=1, n=3, seed=9, temperature=1.0, top_k=300, top_p=0.5)
    assert decoder.generate([other, request])[1] == alone


@pytest.fixture(scope="module")
def large_logits_model(random_model):
    """The random model with its logits' kernel scaled by 30."""
    inference, _ = random_model
    large = keras.models.clone_model(inference)
    large.set_weights(inference.get_weights())
    dense = large.get_layer(model_module.LOGITS)
    kernel, bias = dense.get_weights()
    dense.set_weights([kernel * 30, bias])
    return large


def test_log_probabilities_of_a_model_with_large_logits(random_model, large_logits_model, decoders, seed_loop, native):
    """Logits beyond the bound where exp() needs no max subtraction: the subtracting path."""
    inference, vocabulary = random_model
    large = large_logits_model
    decoder = decoders(large, vocabulary, 8, native)
    assert not decoder.plain_logsumexp and decoders(inference, vocabulary, LARGE, native).plain_logsumexp
    prompt = random_prompts(1, seed=81)[0]
    (ids, mean_logprob), = decoder.generate_scored([Request(ids=prompt, words=4)])[0]
    assert ids == seed_loop(large, [prompt], 4)[0]
    assert mean_logprob == pytest.approx(oracle.mean_log_probability(large, prompt, ids), abs=1e-3)


def test_continuations_are_the_words_of_the_generated_ids(random_model, decoders, native):
    inference, vocabulary = random_model
    decoder = decoders(inference, vocabulary, 3, native)
    requests = [Request(ids=p, key=i, words=1 + i % 4, temperature=0.7, n=2, seed=1)
                for i, p in enumerate(random_prompts(7, seed=91))]
    scored = decoder.generate_scored(requests)
    assert decoder.continuations_scored(requests) == [[(" ".join(vocabulary.decode(ids)), lp) for ids, lp in samples]
                                                      for samples in scored]
    assert decoder.generate_scored([]) == [] and decoder.continuations([]) == []


@pytest.mark.parametrize("count", [1, 2, 7, 50, 128])
def test_blockwise_candidates_are_the_top_k(count):
    """The block-maxima selection gives exactly tf.math.top_k's values and ids, ties included."""
    import types

    import tensorflow as tf

    blocks = 513
    rng = np.random.default_rng(count)
    logits = np.round(rng.normal(size=(37, blocks * selection.BLOCK)), 1).astype(np.float32)  # many ties
    logits[3] = 0.5   # a row of equal values
    fake = types.SimpleNamespace(blocks=blocks)
    values, ids = selection.WordSelection._candidates(fake, tf.constant(logits), tf.constant(count))
    expected_values, expected_ids = tf.math.top_k(logits, k=count)
    assert np.array_equal(values.numpy(), expected_values.numpy())
    assert np.array_equal(ids.numpy(), expected_ids.numpy())


def tied_copy(inference, winners):
    """A copy of `inference` where a lower id scores exactly as each of `winners` (duplicated
    output columns)."""
    tied = keras.models.clone_model(inference)
    tied.set_weights(inference.get_weights())
    dense = tied.get_layer(model_module.LOGITS)
    kernel, bias = dense.get_weights()
    for winner in set(winners):
        twin = winner - 17 if winner - 17 >= len(SPECIAL_TOKENS) else winner + 1
        kernel[:, twin], bias[twin] = kernel[:, winner], bias[winner]
    dense.set_weights([kernel, bias])
    return tied


@pytest.fixture(scope="module")
def tied_case(random_model):
    """12 prompts, and a copy of the random model where a lower id scores exactly as each
    prompt's first greedy word."""
    inference, _ = random_model
    prompts = random_prompts(12, seed=95)
    firsts = [words[0] for words in oracle.reference_greedy_many(inference, prompts, 1)]
    return prompts, firsts, tied_copy(inference, firsts)


def test_tied_words_resolve_as_the_seed_loop_does(random_model, tied_case, decoders, seed_loop, native):
    """Two words with the same scores (duplicated output columns): the seed's argmax of the
    softmax takes the lower id; so does the decoder (tied rows take the model's own path)."""
    _, vocabulary = random_model
    prompts, firsts, tied = tied_case
    decoder = decoders(tied, vocabulary, 5, native)
    generated = [samples[0] for samples in decoder.generate([Request(ids=p, words=3) for p in prompts])]
    assert generated == seed_loop(tied, prompts, 3)
    assert any(ids[0] != first for ids, first in zip(generated, firsts))
