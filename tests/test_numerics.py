"""Numerics are a process setting: TensorFloat-32 is switched off once per worker process at start
(worker.runtime.init_process calls set_process_numerics), never by constructing a decoder."""
import pytest

keras = pytest.importorskip("keras")


def test_a_decoder_leaves_the_process_numerics_alone_and_the_process_sets_them():
    import tensorflow as tf

    from lstmq.shared.text import SPECIAL_TOKENS, Vocabulary
    from lstmq.worker.engine.decoder import Decoder, set_process_numerics
    from lstmq.worker.engine.network import build_models

    vocabulary = Vocabulary([*SPECIAL_TOKENS, *(f"w{index}" for index in range(40))])
    _, inference = build_models(len(vocabulary), 8, 8)
    tf.config.experimental.enable_tensor_float_32_execution(True)
    try:
        Decoder(inference, vocabulary, max_rows=4, native="off")
        assert tf.config.experimental.tensor_float_32_execution_enabled()   # untouched by a decoder
        set_process_numerics()
        assert not tf.config.experimental.tensor_float_32_execution_enabled()
    finally:
        set_process_numerics()
