"""lstmq's native CPU kernels (shared/kernels): built with the real compiler against the installed
TensorFlow, checked against TensorFlow's own ops, inside the decoder against the decoder without
them, and the fallback when they cannot be built."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from lstmq.worker.engine.kernels import KernelUnavailable, native_ops   # noqa: E402


@pytest.fixture(scope="module")
def ops():
    """The built kernels; where they cannot be built (no compiler, say) the tests that need them
    skip with the reason (the fallback tests below check that case)."""
    try:
        return native_ops("on")
    except KernelUnavailable as error:
        pytest.skip(f"native kernels unavailable: {error}")


@pytest.fixture(scope="module")
def cpu_decoder(ops):
    """The kernels, for a test of a Decoder with native "on": a decoder uses them on the CPU only."""
    if tf.config.list_logical_devices("GPU"):
        pytest.skip("the native kernels pick words on the CPU only; this machine's decoder runs on its GPU")
    return ops


def test_best_word_matches_tensorflow(ops):
    rng = np.random.default_rng(0)
    rows, width = 300, 8208
    logits = rng.normal(0, 3, (rows, width)).astype(np.float32)
    logits[:, -7:] = -1e30                      # padded columns, as the decoder's
    logits[1, [5, 900, 4000]] = 50.0            # an exact tie: the first index wins
    logits[2, [10, 11]] = [40.0, np.nextafter(np.float32(40.0), np.float32(0))]   # within rounding: near
    logits[3, :] = -1e30
    logits[3, width - 8] = 1.0                  # the maximum in the last real column
    best, top, near, sumexp = (t.numpy() for t in ops.lstmq_best_word(logits, scored=True))
    assert best.tolist() == tf.argmax(logits, axis=-1, output_type=tf.int32).numpy().tolist()
    assert best[1] == 5 and best[3] == width - 8
    np.testing.assert_array_equal(top, logits.max(axis=-1))
    assert near[1] and near[2] and not near[3]
    sorted_rows = np.sort(logits, axis=-1)
    runner_up_close = sorted_rows[:, -2] >= sorted_rows[:, -1] - 1e-6 * (1 + np.abs(sorted_rows[:, -1]))
    assert near.tolist() == runner_up_close.tolist()
    expected = tf.reduce_logsumexp(logits, axis=-1).numpy()
    np.testing.assert_allclose(top + np.log(sumexp), expected, atol=2e-5)
    # ids only: the same choice and flags, no sum
    ids_best, _, ids_near, ids_sum = (t.numpy() for t in ops.lstmq_best_word(logits, scored=False))
    assert ids_best.tolist() == best.tolist() and ids_near.tolist() == near.tolist() and not ids_sum.any()


def test_best_word_bounded_sum(ops):
    """With `bounded`, the sum of exp(logit) itself, summed in the streaming pass."""
    rng = np.random.default_rng(1)
    logits = rng.uniform(-30, 30, (64, 1000)).astype(np.float32)
    _, _, _, sumexp = ops.lstmq_best_word(logits, scored=True, bounded=True)
    np.testing.assert_allclose(np.log(sumexp.numpy()), tf.reduce_logsumexp(logits, axis=-1).numpy(), atol=2e-5)


def test_best_word_rejects_bad_shapes(ops):
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError)):
        ops.lstmq_best_word(np.zeros((4,), np.float32))
    with pytest.raises(tf.errors.InvalidArgumentError):
        ops.lstmq_best_word(np.zeros((4, 0), np.float32))


def keras_lstm_step(x, kernel, h, recurrent, bias, c):
    """Keras's LSTMCell formula in float64: z = (x W + h U) + b (x W given as is when kernel is None)."""
    z = (x if kernel is None else x @ kernel.astype(np.float64)) + h @ recurrent.astype(np.float64) + bias
    sigmoid = lambda v: 1 / (1 + np.exp(-v))   # noqa: E731
    i, f, g, o = np.split(z, 4, axis=1)
    c_new = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
    return sigmoid(o) * np.tanh(c_new), c_new


@pytest.mark.parametrize("project", [False, True])
def test_lstm_step_matches_keras_formula(ops, project):
    """LstmqLstmStep against Keras's formula: a row count that is no whole number of tiles, units
    that are no whole number of panels; with `project` the input is x and the kernel packed."""
    from lstmq.worker.engine.kernels import pack_matrix

    rng = np.random.default_rng(2)
    rows, units, inputs = 77, 37, 29
    width = int(ops.lstmq_panel_width())
    h = np.tanh(rng.normal(0, 1, (rows, units))).astype(np.float32)
    c = rng.normal(0, 2, (rows, units)).astype(np.float32)
    recurrent = rng.normal(0, 0.5, (units, 4 * units)).astype(np.float32)
    bias = rng.normal(0, 1, 4 * units).astype(np.float32)
    tokens = rng.integers(0, 11, rows).astype(np.int32)   # 0 is padding
    if project:
        x = np.tanh(rng.normal(0, 1, (rows, inputs))).astype(np.float32)
        kernel = rng.normal(0, 0.5, (inputs, 4 * units)).astype(np.float32)
        packed_kernel = pack_matrix(kernel, width)
        table, rows_x = x, x
    else:
        table = rng.normal(0, 3, (11, 4 * units)).astype(np.float32)   # x W of each of 11 words
        kernel, packed_kernel = None, np.zeros((0, 0, width), np.float32)
        rows_x = table[tokens]
    step = lambda x, tokens, h, c, masked=False: [t.numpy() for t in ops.lstmq_lstm_step(   # noqa: E731
        x, tokens, h, c, packed_kernel, pack_matrix(recurrent, width), bias, project=project, masked=masked)]
    h_new, c_new = step(table, tokens, h, c)
    h_expected, c_expected = keras_lstm_step(rows_x, kernel, h, recurrent, bias, c)
    np.testing.assert_allclose(c_new, c_expected, atol=1e-5)
    np.testing.assert_allclose(h_new, h_expected, atol=1e-5)
    # a row's state does not depend on its batch, to the bit
    for subset in ([5], [0, 76], list(range(13))):
        h_part, c_part = step(x[subset] if project else table, tokens[subset], h[subset], c[subset])
        assert np.array_equal(h_part, h_new[subset]) and np.array_equal(c_part, c_new[subset])
    # masked: rows whose token is padding keep their state, the others step as before
    h_masked, c_masked = step(table, tokens, h, c, masked=True)
    padded = tokens == 0
    assert padded.any() and (~padded).any()
    assert np.array_equal(h_masked[padded], h[padded]) and np.array_equal(c_masked[padded], c[padded])
    assert np.array_equal(h_masked[~padded], h_new[~padded]) and np.array_equal(c_masked[~padded], c_new[~padded])
    with pytest.raises(tf.errors.InvalidArgumentError):
        ops.lstmq_lstm_step(table, tokens, h[:, :10], c, packed_kernel, pack_matrix(recurrent, width), bias,
                            project=project)
    if not project:   # a token past the table is refused, not read
        with pytest.raises(tf.errors.InvalidArgumentError, match="outside the table"):
            step(table, np.full(rows, 11, np.int32), h, c)


def test_dense_best_matches_the_logits(ops):
    """LstmqDenseBest against the logits computed in float64: the first maximum among the real
    words, the near-tie flag, the sum of exp over real words and special tokens; the logits it
    writes in a sampling step; the same numbers for a row whatever its batch."""
    from lstmq.worker.engine.kernels import pack_panels

    rng = np.random.default_rng(3)
    rows, units, vocabulary, special = 53, 40, 1003, 4
    width = int(ops.lstmq_panel_width())
    kernel = rng.normal(0, 0.4, (units, vocabulary)).astype(np.float32)
    bias = rng.normal(0, 0.5, vocabulary).astype(np.float32)
    bias[1] = 30.0                               # a special token: counted in the sum, never chosen
    kernel[:, 100] = kernel[:, 700] = kernel[:, 50]
    bias[100] = bias[700] = bias[50] + 25.0      # an exact tie between real words 96 and 696: the first wins
    h = np.tanh(rng.normal(0, 1, (rows, units))).astype(np.float32)
    h[7] = 0.0                                   # the row's logits are the bias: 96 and 696 tie
    panels = pack_panels(kernel, bias, special, width)
    real = vocabulary - special
    best, top, near, sumexp, logits = (t.numpy() for t in ops.lstmq_dense_best(h, panels, real=real, keep_logits=True))
    exact = h.astype(np.float64) @ kernel + bias
    words = exact[:, special:]
    assert best.tolist() == np.argmax(words, axis=-1).tolist() or (best != np.argmax(words, axis=-1)).sum() <= near.sum()
    assert best[7] == 96 and near[7]
    np.testing.assert_allclose(top, words.max(-1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.log(sumexp), np.log(np.exp(exact).sum(-1)), atol=2e-5)
    assert logits.shape == (rows, len(panels) * width)
    np.testing.assert_allclose(logits[:, :real], words, rtol=1e-5, atol=1e-5)
    assert np.array_equal(top, logits[:, :real].max(-1)) and np.array_equal(best, logits[:, :real].argmax(-1))
    # ids only: the same words, no sum, no logits
    ids_best, ids_top, _, ids_sum, no_logits = (t.numpy() for t in ops.lstmq_dense_best(h, panels, real=real, scored=False))
    assert np.array_equal(ids_best, best) and np.array_equal(ids_top, top) and not ids_sum.any() and no_logits.size == 0
    for subset in ([7], [0, 52], list(range(17))):
        part = [t.numpy() for t in ops.lstmq_dense_best(h[subset], panels, real=real)]
        assert all(np.array_equal(a, b[subset]) for a, b in zip(part, (best, top, near, sumexp)))
    with pytest.raises(tf.errors.InvalidArgumentError):
        ops.lstmq_dense_best(h[:, :10], panels, real=real)


def test_dense_sample_draws_as_lstmq_sample(ops):
    """LstmqDenseSample: its greedy outputs are LstmqDenseBest's; a sampling row's word is
    LstmqSample's draw on the same logits with the row's uniform from the engine's stream (worker.engine.stream)
    (row_uniforms: the numbers of the TensorFlow path), its `chosen` that word's logit; a greedy
    row keeps `best` and `top`; a row's draw never depends on its batch."""
    from lstmq.worker.engine.stream import row_uniforms, stream_bases
    from lstmq.worker.engine.kernels import pack_panels

    rng = np.random.default_rng(5)
    rows, units, vocabulary, special = 61, 40, 1503, 4
    width = int(ops.lstmq_panel_width())
    kernel = rng.normal(0, 0.3, (units, vocabulary)).astype(np.float32)
    bias = rng.normal(0, 0.5, vocabulary).astype(np.float32)
    h = np.tanh(rng.normal(0, 1, (rows, units))).astype(np.float32)
    panels = pack_panels(kernel, bias, special, width)
    real = vocabulary - special
    temperature = rng.choice([0.0, 0.5, 1.0, 1.7], rows).astype(np.float32)
    top_k = rng.choice([0, 0, 1, 3, 10, 40, 100], rows).astype(np.int32)
    top_p = rng.choice([1.0, 1.0, 0.9, 0.5, 0.05], rows).astype(np.float32)
    base = stream_bases(np.full(rows, 11), np.arange(rows), np.zeros(rows, np.int64))
    position = rng.integers(0, 30, rows).astype(np.int32)
    outputs = [t.numpy() for t in ops.lstmq_dense_sample(h, panels, temperature, top_k, top_p, base, position,
                                                           real=real, keep_logits=True)]
    best, top, near, sumexp, logits, choice, chosen = outputs
    for mine, theirs in zip(outputs[:5], ops.lstmq_dense_best(h, panels, real=real, keep_logits=True)):
        assert np.array_equal(mine, theirs.numpy())
    uniform = np.array([row_uniforms(11, row, 0, position[row] + 1)[-1] for row in range(rows)], np.float32)
    expected = ops.lstmq_sample(logits, top, temperature, top_k, top_p, uniform, best, columns=real, bounded=True).numpy()
    assert np.array_equal(choice, expected)
    assert np.array_equal(chosen, logits[np.arange(rows), choice])
    greedy = temperature == 0
    assert greedy.any() and (~greedy).any() and (choice[~greedy] != best[~greedy]).any()
    assert np.array_equal(choice[greedy], best[greedy]) and np.array_equal(chosen[greedy], top[greedy])
    for subset in ([3], [0, 60], list(range(13, 40))):
        part = [t.numpy() for t in ops.lstmq_dense_sample(h[subset], panels, temperature[subset], top_k[subset],
                                                            top_p[subset], base[subset], position[subset], real=real)]
        assert np.array_equal(part[5], choice[subset]) and np.array_equal(part[6], chosen[subset])
    with pytest.raises(tf.errors.InvalidArgumentError, match="vector of rows"):
        ops.lstmq_dense_sample(h, panels, temperature[:-1], top_k, top_p, base, position, real=real)


def test_decoder_with_and_without_kernels(tiny_model, cpu_decoder):
    """The same greedy words and log-probabilities within float32 rounding, for prompts of
    mixed lengths and words."""
    from lstmq.shared.config import load_settings
    from lstmq.worker.engine.decoder import Decoder, Request

    inference_model, vocabulary, prompts = tiny_model
    native = Decoder(inference_model, vocabulary, max_rows=8, native="on")
    plain = Decoder(inference_model, vocabulary, max_rows=8, native="off")
    assert native.native and native.lstm_step is not None and native.selection.dense_best is not None
    assert not plain.native and plain.lstm_step is None and plain.selection.dense_best is None
    params = load_settings(environ={}).generation_params().replace(temperature=0.0, seed=0)
    requests = [Request(ids=ids, params=params.replace(words=1 + index % 9), key=index) for index, ids in enumerate(prompts)]
    with_kernels, without = native.generate_scored(requests), plain.generate_scored(requests)
    assert [[ids for ids, _ in samples] for samples in with_kernels] == [[ids for ids, _ in samples] for samples in without]
    np.testing.assert_allclose([score for samples in with_kernels for _, score in samples],
                               [score for samples in without for _, score in samples], atol=1e-5)
    assert native.generate(requests) == [[ids for ids, _ in samples] for samples in with_kernels]


@pytest.fixture(scope="module")
def tiny_model():
    import keras

    from lstmq.worker.engine.network import build_models
    from lstmq.shared.text import Vocabulary

    text = ("the quick brown fox jumps over the lazy dog and the cat sat on the mat while it rained "
            "in the town where holmes and watson walked along baker street at night ") * 3
    vocabulary = Vocabulary.from_text(text)
    keras.utils.set_random_seed(7)
    _, inference_model = build_models(len(vocabulary), 16, 24)
    words = text.split()
    prompts = [vocabulary.encode(" ".join(words[i:i + 1 + i % 6]))[0] for i in range(20)]
    return inference_model, vocabulary, prompts


FALLBACK = textwrap.dedent("""
    import logging, sys
    logging.basicConfig(level=logging.WARNING, stream=sys.stdout)
    from lstmq.worker.engine.kernels import KernelUnavailable, decoding_path, native_ops
    print("auto:", native_ops("auto"))
    try:
        native_ops("on")
    except KernelUnavailable as error:
        print("on raised:", error)
    print("off:", native_ops("off"))
    print("path:", decoding_path("auto", on_gpu=False))
""")   # also run by tests/faults/test_kernel_cache.py


BROKEN_COMPILER = ("#!/bin/sh\nif [ \"$1\" = --version ]; then echo broken 1.0; exit 0; fi\n"
                   "echo 'next_word.cc:1: error: something is wrong' >&2\nexit 1\n")
FAILED_BUILD = ("from lstmq.worker.engine.kernels import KernelUnavailable, native_ops\n"
                "try:\n    native_ops('on')\nexcept KernelUnavailable as error:\n    print('raised:', error)\n")


@pytest.fixture(scope="module")
def fallback_runs(tmp_path_factory):
    """The three fallback cases, each a fresh Python (a process caches its kernels' failure), all
    started at once (each spends seconds importing TensorFlow): run(name) is (its folder, its
    CompletedProcess). "no_compiler": CXX names a missing program, PATH has none, the cache is
    empty; "broken_compiler": CXX is a compiler that fails; "unwritable_cache": the cache path is
    below a plain file."""
    folders = {name: tmp_path_factory.mktemp(name) for name in ("no_compiler", "broken_compiler", "unwritable_cache")}
    compiler = folders["broken_compiler"] / "broken-c++"
    compiler.write_text(BROKEN_COMPILER)
    compiler.chmod(0o755)
    (folders["unwritable_cache"] / "file").write_text("not a folder")
    cases = {
        "no_compiler": (FALLBACK, {"CXX": str(folders["no_compiler"] / "no-such-compiler"),
                                   "PATH": str(folders["no_compiler"]),
                                   "LSTMQ_KERNEL_CACHE": str(folders["no_compiler"] / "cache")}),
        "broken_compiler": (FAILED_BUILD, {"CXX": str(compiler),
                                           "LSTMQ_KERNEL_CACHE": str(folders["broken_compiler"] / "cache")}),
        "unwritable_cache": (FALLBACK, {"LSTMQ_KERNEL_CACHE": str(folders["unwritable_cache"] / "file" / "cache")}),
    }
    processes = {name: subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, env={**os.environ, **env, "TF_CPP_MIN_LOG_LEVEL": "3"})
                 for name, (script, env) in cases.items()}
    results = {}

    def run(name):
        if name not in results:
            process = processes[name]
            stdout, stderr = process.communicate(timeout=300)
            results[name] = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
        return folders[name], results[name]
    yield run
    for process in processes.values():
        if process.poll() is None:
            process.kill()
            process.wait()


def test_fallback_when_the_compiler_is_missing(fallback_runs):
    """No compiler (CXX names a missing program, PATH has none) and an empty cache: `auto` warns
    and decodes with TensorFlow's ops, `on` raises and says why."""
    _, result = fallback_runs("no_compiler")
    assert result.returncode == 0, result.stderr
    assert "auto: None" in result.stdout
    assert "native decoding kernels unavailable, decoding with TensorFlow's ops instead: no C++ compiler found" in result.stdout
    assert "on raised: no C++ compiler found" in result.stdout
    assert "off: None" in result.stdout


def test_a_failed_build_names_the_compiler_error(fallback_runs):
    """A compiler that fails: KernelUnavailable carries its message; nothing half-built is cached."""
    folder, result = fallback_runs("broken_compiler")
    assert "raised: building next_word.cc failed (exit 1): next_word.cc:1: error: something is wrong" in result.stdout, result
    assert [path.name for path in (folder / "cache").iterdir() if not path.name.endswith(".lock")] == []


def test_a_cache_that_cannot_be_written_falls_back(fallback_runs):
    """A cache path that cannot be a folder (below a plain file): `auto` falls back, `on` says why."""
    folder, result = fallback_runs("unwritable_cache")
    assert result.returncode == 0, result.stderr
    assert "auto: None" in result.stdout
    assert f"on raised: cannot create the kernel cache {folder / 'file' / 'cache'}" in result.stdout


def test_kernel_unavailable_is_a_runtime_error():
    assert issubclass(KernelUnavailable, RuntimeError)


def test_sample_draws_as_the_tensorflow_version(tiny_model, ops):
    """LstmqSample against the decoder's TensorFlow draw on the same logits and uniforms: the same
    word except where a draw falls within float rounding of a boundary between two words."""
    from lstmq.worker.engine.decoder import Decoder
    from lstmq.worker.engine.stream import tf_uniforms

    inference_model, vocabulary, _ = tiny_model
    plain = Decoder(inference_model, vocabulary, max_rows=8, native="off").selection
    rng = np.random.default_rng(3)
    rows, width = 600, plain.blocks * 16
    logits = np.full((rows, width), -1e30, np.float32)
    logits[:, :plain.real_words] = rng.normal(0, 2, (rows, plain.real_words))
    top = logits.max(axis=-1)
    greedy = logits.argmax(axis=-1).astype(np.int32)
    temperature = rng.choice([0.0, 0.5, 1.0, 1.7], rows).astype(np.float32)
    top_k = rng.choice([0, 0, 1, 3, 10, 40], rows).astype(np.int32)
    top_p = rng.choice([1.0, 1.0, 0.9, 0.5, 0.05], rows).astype(np.float32)
    base = rng.integers(1, 2**63, rows, dtype=np.uint64)
    position = np.zeros(rows, np.int32)
    expected = plain._sample(tf.constant(logits), tf.constant(greedy), tf.constant(top[:, None]), tf.constant(temperature),
                             tf.constant(top_k), tf.constant(top_p), tf.constant(base), tf.constant(position)).numpy()
    uniform = tf_uniforms(tf.constant(base), tf.constant(position))
    chosen = ops.lstmq_sample(logits, top, temperature, top_k, top_p, uniform, greedy, columns=plain.real_words).numpy()
    assert (chosen[temperature == 0] == greedy[temperature == 0]).all()
    assert (chosen < plain.real_words).all()
    assert (chosen != expected).sum() <= 3, np.flatnonzero(chosen != expected)
    # top_k 1 and a tiny nucleus take the best word
    single = (temperature > 0) & ((top_k == 1) | (top_p == 0.05))
    assert (chosen[single] == greedy[single]).all()
    # top_k 3: one of the three best
    three = (temperature > 0) & (top_k == 3)
    best3 = np.argsort(-logits, axis=-1, kind="stable")[:, :3]
    assert all(chosen[i] in best3[i] for i in np.flatnonzero(three))


def test_sample_frequencies_follow_the_distribution(ops):
    """Many draws of one row at temperature 1: each word's frequency matches its probability."""
    logits = np.log(np.array([0.5, 0.25, 0.125, 0.0625, 0.0625], np.float32))
    rows = 20000
    batch = np.tile(logits, (rows, 1))
    uniform = np.random.default_rng(4).uniform(size=rows).astype(np.float32)
    ones = np.ones(rows, np.float32)
    for top_k, top_p, expected in ((0, 1.0, [0.5, 0.25, 0.125, 0.0625, 0.0625]),
                                   (2, 1.0, [2 / 3, 1 / 3, 0, 0, 0]),
                                   (0, 0.7, [2 / 3, 1 / 3, 0, 0, 0])):
        chosen = ops.lstmq_sample(batch, np.full(rows, logits.max()), ones, np.full(rows, top_k, np.int32),
                                  np.full(rows, top_p, np.float32), uniform, np.zeros(rows, np.int32), columns=5).numpy()
        frequencies = np.bincount(chosen, minlength=5) / rows
        np.testing.assert_allclose(frequencies, expected, atol=0.015)


def test_sample_with_a_large_vocabulary(ops):
    """The paths a small vocabulary never takes, against the TensorFlow draw: the lanes' bound
    (top_k <= 64), block maxima (larger top_k), more than 512 candidates (sorted), and a nucleus
    wider than its 64 candidates (flat logits: the whole vocabulary ranked)."""
    import keras

    from lstmq.worker.engine.decoder import Decoder
    from lstmq.worker.engine.stream import tf_uniforms
    from lstmq.worker.engine.network import build_models
    from lstmq.shared.text import SPECIAL_TOKENS, Vocabulary

    vocabulary = Vocabulary([*SPECIAL_TOKENS, *(f"w{i}" for i in range(3001))])   # 3,001 real words: not whole blocks
    keras.utils.set_random_seed(5)
    _, inference_model = build_models(len(vocabulary), 8, 8)
    plain = Decoder(inference_model, vocabulary, max_rows=8, native="off").selection
    rng = np.random.default_rng(6)
    rows, width = 240, plain.blocks * 16
    logits = np.full((rows, width), -1e30, np.float32)
    scale = np.where(np.arange(rows) % 3 == 0, 0.05, 3.0)[:, None]   # every third row nearly flat
    logits[:, :plain.real_words] = rng.normal(0, 1, (rows, plain.real_words)) * scale
    top = logits.max(axis=-1)
    greedy = logits.argmax(axis=-1).astype(np.int32)
    temperature = rng.choice([0.7, 1.0], rows).astype(np.float32)
    top_k = np.resize(np.array([0, 3, 40, 64, 100, 700], np.int32), rows)
    top_p = np.resize(np.array([1.0, 0.9, 0.99, 1.0, 0.5], np.float32), rows)
    base = rng.integers(1, 2**63, rows, dtype=np.uint64)
    position = np.full(rows, 2, np.int32)
    expected = plain._sample(tf.constant(logits), tf.constant(greedy), tf.constant(top[:, None]), tf.constant(temperature),
                             tf.constant(top_k), tf.constant(top_p), tf.constant(base), tf.constant(position)).numpy()
    uniform = tf_uniforms(tf.constant(base), tf.constant(position))
    chosen = ops.lstmq_sample(logits, top, temperature, top_k, top_p, uniform, greedy, columns=plain.real_words).numpy()
    assert (chosen < plain.real_words).all()
    assert (chosen != expected).sum() <= 3, [(i, top_k[i], top_p[i], chosen[i], expected[i]) for i in np.flatnonzero(chosen != expected)]


def test_sample_survives_nan_logits(ops):
    """NaN logits (a broken model) give some word in range, never a crash or another row's word."""
    logits = np.random.default_rng(8).normal(size=(4, 1000)).astype(np.float32)
    logits[:, ::7] = np.nan
    logits[3, :] = np.nan
    rows = len(logits)
    chosen = ops.lstmq_sample(logits, np.nanmax(np.where(np.isnan(logits), -np.inf, logits), axis=-1),
                              np.ones(rows, np.float32), np.full(rows, 900, np.int32), np.ones(rows, np.float32),
                              np.full(rows, 0.5, np.float32), np.zeros(rows, np.int32), columns=1000).numpy()
    assert ((chosen >= 0) & (chosen < 1000)).all()


def test_log_probability_with_unbounded_logits(tiny_model, cpu_decoder):
    """A model whose logits are not bounded (a special token's bias of 90) takes the kernels'
    other log-sum-exp: finite, and as TensorFlow's path gives."""
    import keras

    from lstmq.shared.config import load_settings
    from lstmq.worker.engine.decoder import Decoder, Request
    from lstmq.worker.engine.network import decoding_layers

    inference_model, vocabulary, prompts = tiny_model
    model = keras.models.clone_model(inference_model)
    model.set_weights(inference_model.get_weights())
    dense = decoding_layers(model).logits
    kernel, bias = dense.get_weights()
    bias = bias.copy()
    bias[1] = 90.0   # <unk>: never chosen, but in the normalizer
    dense.set_weights([kernel, bias])
    native = Decoder(model, vocabulary, max_rows=8, native="on")
    plain = Decoder(model, vocabulary, max_rows=8, native="off")
    assert not native.plain_logsumexp
    params = load_settings(environ={}).generation_params().replace(temperature=0.0, seed=0, words=4)
    requests = [Request(ids=ids, params=params, key=index) for index, ids in enumerate(prompts)]
    with_kernels = [score for samples in native.generate_scored(requests) for _, score in samples]
    without = [score for samples in plain.generate_scored(requests) for _, score in samples]
    assert np.isfinite(with_kernels).all()
    np.testing.assert_allclose(with_kernels, without, atol=1e-4)
