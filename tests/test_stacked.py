"""Stacked LSTM layers, dropout and gradient clipping (issue 8): both views of an N-layer network,
decoding_layers bottom first, greedy decoding equal to the seed's loop on a stacked network, and
jobs/artifacts written before these settings existed still load as the seed's network."""
import numpy as np
import pytest

from lstmq.shared.config import load_settings
from lstmq.shared.params import ModelParams

VOCAB_SIZE = 300
WINDOW = 17


def test_jobs_written_before_stacking_load_as_the_seed_network():
    current = load_settings(environ={}).model_params().to_dict()
    old = {key: value for key, value in current.items() if key not in ("lstm_layers", "dropout", "clipnorm")}
    params = ModelParams.from_mapping(old)
    assert (params.lstm_layers, params.dropout, params.clipnorm) == (1, 0.0, 0.0)
    assert ModelParams.from_mapping(current) == load_settings(environ={}).model_params()
    with pytest.raises(KeyError):   # keys that always existed stay required
        ModelParams.from_mapping({key: value for key, value in old.items() if key != "epochs"})


keras = pytest.importorskip("keras")

from lstmq.worker.engine import network as model_module  # noqa: E402

from lstmq.shared import artifact as artifact_module
from lstmq.shared.text import SPECIAL_TOKENS, Vocabulary  # noqa: E402


def stacked(layers, dropout=0.0, seed=3):
    keras.utils.set_random_seed(seed)
    training, inference = model_module.build_models(VOCAB_SIZE, 16, 24, lstm_layers=layers, dropout=dropout)
    # larger weights than the initializers give: sharper, more varied predictions
    training.set_weights([weight * 4 for weight in training.get_weights()])
    model_module.copy_to_inference(training, inference)
    return training, inference


def test_single_layer_keeps_the_names_of_existing_artifacts():
    training, inference = model_module.build_models(VOCAB_SIZE, 8, 8)
    assert [layer.name for layer in inference.layers] == ["token_ids", "embedding", "lstm", "next_word_logits",
                                                          "next_word"]
    assert [layer.name for layer in training.layers] == ["token_ids", "embedding", "lstm_sequence",
                                                         "next_word_logits"]
    layers = model_module.decoding_layers(inference)
    assert [layer.name for layer in layers.lstms] == ["lstm"]


@pytest.mark.parametrize("layers", [2, 3])
def test_both_views_stack_every_layer(layers):
    training, inference = stacked(layers, dropout=0.3)
    decoding = model_module.decoding_layers(inference)
    assert [layer.name for layer in decoding.lstms] == [f"lstm_layer_{i}" for i in range(1, layers)] + ["lstm"]
    assert [layer.return_sequences for layer in decoding.lstms] == [True] * (layers - 1) + [False]
    assert all(layer.dropout == 0 for layer in decoding.lstms)          # inference has no dropout
    training_lstms = [layer for layer in training.layers if isinstance(layer, keras.layers.LSTM)]
    assert len(training_lstms) == layers and all(layer.return_sequences for layer in training_lstms)
    assert all(layer.dropout == 0.3 and layer.recurrent_dropout == 0 for layer in training_lstms)   # cuDNN-eligible
    # the inference view reads the copied weights: its probabilities after the last real token are
    # the training view's softmax at that position, whatever the padding
    ids = np.array([[5, 17, 42, 9, 0, 0], [7, 3, 0, 0, 0, 0]], np.int32)
    logits = np.asarray(training(ids, training=False))
    expected = np.stack([keras.ops.convert_to_numpy(keras.ops.softmax(logits[0, 3])),
                         keras.ops.convert_to_numpy(keras.ops.softmax(logits[1, 1]))])
    np.testing.assert_allclose(np.asarray(inference(ids)), expected, rtol=1e-4, atol=1e-6)


def test_stacked_artifact_round_trip_and_meta(corpus_text):
    from lstmq.worker.engine.training import train

    text = "\n".join(corpus_text.split("\n")[60:460])
    params = load_settings(environ={}).model_params().replace(
        embedding_dim=16, lstm_units=24, epochs=1, batch_size=32, early_stopping_patience=0,
        lstm_layers=2, dropout=0.2, clipnorm=1.0)
    result = train(text, params, "stacked", samples_each_epoch=False)
    model_bytes, tokens, meta = artifact_module.read_artifact(result.artifact)
    inference = model_module.load_keras_bytes(model_bytes)
    assert meta["network"]["layers"] == ["Embedding(mask_zero)", "LSTM", "LSTM", "Dense", "Softmax"]
    assert (meta["training"]["lstm_layers"], meta["training"]["dropout"], meta["training"]["clipnorm"]) == (2, 0.2, 1.0)
    assert ModelParams.from_mapping(meta["training"]) == params
    assert [layer.name for layer in model_module.decoding_layers(inference).lstms] == ["lstm_layer_1", "lstm"]
    assert np.isfinite(result.metrics["val_perplexity"])


def test_optimizer_clips_the_global_norm():
    from lstmq.worker.engine.training import make_optimizer

    assert make_optimizer("adam", 0.001, 5.0).global_clipnorm == 5.0
    assert make_optimizer("adam", 0.001).global_clipnorm is None
    assert make_optimizer("sgd", 0.1, 0.0).global_clipnorm is None




@pytest.fixture(scope="module")
def stacked_cases():
    """cases(layers): a stacked network (stacked(layers)), its vocabulary, 16 prompts of 1 to 29
    tokens and the seed loop's 6 words for each: built and computed once per module."""
    from tests.oracle import reference_greedy_many

    cache = {}

    def case(layers):
        if layers not in cache:
            _, inference = stacked(layers)
            vocabulary = Vocabulary([*SPECIAL_TOKENS, *(f"w{i}" for i in range(VOCAB_SIZE - 2))])
            rng = np.random.default_rng(layers)
            prompts = [rng.integers(1, VOCAB_SIZE, size=int(rng.integers(1, 30))).tolist() for _ in range(16)]
            prompts[3] = prompts[3][:1]   # a prompt of one token
            cache[layers] = inference, vocabulary, prompts, reference_greedy_many(inference, prompts, 6, window=WINDOW)
        return cache[layers]
    return case


@pytest.mark.parametrize("layers, batching", [(2, [(1, 16), (5, 7)]), (3, [(64, 16)])])
def test_greedy_equals_seed_loop_on_a_stacked_network(process_numerics, stacked_cases, native, layers, batching):
    """The batched decoder carries (h, c) of every layer: its greedy words are the seed loop's
    (the full model on the whole context) for any rows per call and chunking, with the native
    kernels and without."""
    from lstmq.worker.engine.batching import Request
    from lstmq.worker.engine.decoder import Decoder

    inference, vocabulary, prompts, expected = stacked_cases(layers)
    defaults = load_settings(environ={}).generation_params().replace(seed=0, words=6)
    for max_rows, chunk in batching:
        decoder = Decoder(inference, vocabulary, max_rows=max_rows, native=native)
        assert decoder.native == (native == "on")
        generated = []
        for start in range(0, len(prompts), chunk):
            requests = [Request(ids=p, params=defaults, key=0) for p in prompts[start:start + chunk]]
            generated += [samples[0] for samples in decoder.generate(requests)]
        assert generated == expected
