"""What only a GPU shows: run on a machine with one or more NVIDIA GPUs and tensorflow[and-cuda].

1. TensorFlow sees the GPU; memory growth is on after the worker's set-up (lstmq.worker.runtime).
2. The training step takes the cuDNN LSTM kernel (CudnnRNNV3 in the traced graph) with lstmq's
   right-padded, masked batches; the decoder's prefill too.
3. One training epoch of the seed network on the corpus, GPU time.
4. Decoding throughput at large batches (greedy and top-k sampling), and greedy equivalence with
   the seed's loop on the GPU.
Prints a JSON line with every figure. Corpus: $LSTMQ_TEST_CORPUS (default ../shared/data/sherlock.txt).

    python -m benchmarks.gpu_check [--batch-sizes 256,1024,4096,16384] [--words 7] [--epochs 1]
                                   [--equivalence-prompts 64] [--profile-dir DIR]
"""
from __future__ import annotations

import json
import os
import time

import numpy as np

from benchmarks import common


def op_types(concrete_function) -> set[str]:
    graph_def = concrete_function.graph.as_graph_def()
    types = {node.op for node in graph_def.node}
    for function in graph_def.library.function:
        types |= {node.op for node in function.node_def}
    return types


def main() -> None:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--batch-sizes", default="256,1024,4096,16384")
    common.add_words(parser)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--equivalence-prompts", type=int, default=64)
    parser.add_argument("--profile-dir", help="write a TensorFlow profiler trace of greedy decoding at the largest "
                        "batch size here (open it with TensorBoard's profile plugin: what was slow)")
    args = common.parse(parser, lists=("batch_sizes",), positive=("batch_sizes", "words", "epochs",
                                                                   "equivalence_prompts"))

    from lstmq.worker import runtime
    runtime.init_process()                      # the worker's device set-up: memory growth
    import keras
    import tensorflow as tf

    from lstmq.worker.engine import network as model_module

    from lstmq.shared import artifact as artifact_module
    from lstmq.shared.config import load_settings
    from lstmq.worker.engine.decoder import Decoder, Request
    from tests.oracle import reference_greedy
    from lstmq.shared.text import Vocabulary, training_sequences
    from lstmq.worker.engine.training import SequenceBatches, train

    report: dict = {"tensorflow": tf.__version__, "keras": keras.__version__}
    gpus = tf.config.list_physical_devices("GPU")
    report["gpus"] = [gpu.name for gpu in gpus]
    report["memory_growth"] = [tf.config.experimental.get_memory_growth(gpu) for gpu in gpus]
    report["cuda_visible_devices"] = os.environ.get("CUDA_VISIBLE_DEVICES")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        report["device_name"] = details.get("device_name")
    print(json.dumps({"devices": report}), flush=True)

    text = common.corpus_text()
    params = load_settings(environ={}).model_params()
    vocabulary = Vocabulary.from_text(text)
    training_model, inference_model = model_module.build_models(len(vocabulary), params.embedding_dim, params.lstm_units)
    loss_function = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    batches = SequenceBatches(training_sequences(text, vocabulary, params.context_window))
    inputs, targets = batches.batch(np.arange(64))

    @tf.function
    def gradient_step(inputs, targets):
        with tf.GradientTape() as tape:
            loss = loss_function(targets, training_model(inputs, training=True))
        return tape.gradient(loss, training_model.trainable_variables)

    training_ops = op_types(gradient_step.get_concrete_function(tf.constant(inputs), tf.constant(targets)))
    report["training_cudnn_ops"] = sorted(op for op in training_ops if "Cudnn" in op)
    decoder = Decoder(inference_model, vocabulary, max_rows=max(args.batch_sizes))
    decode_ops = op_types(decoder._prefill.get_concrete_function())   # the prefill reads prompts with Keras's LSTM
    report["decoder_cudnn_ops"] = sorted(op for op in decode_ops if "Cudnn" in op)
    print(json.dumps({"cudnn": {k: report[k] for k in ("training_cudnn_ops", "decoder_cudnn_ops")}}), flush=True)

    started = time.monotonic()
    result = train(text, params.replace(epochs=args.epochs), "gpu-check")
    report["train"] = {"epochs": args.epochs, "seconds": round(time.monotonic() - started, 2),
                       "epoch_seconds": [entry["seconds"] for entry in result.history],
                       "val_perplexity": result.metrics["val_perplexity"]}
    print(json.dumps({"train": report["train"]}), flush=True)

    model_bytes, tokens, _ = artifact_module.read_artifact(result.artifact)
    trained = model_module.load_keras_bytes(model_bytes)
    vocabulary = Vocabulary(tokens)
    rng = np.random.default_rng(0)
    lines = [line for line in text.split("\n") if 3 <= len(vocabulary.encode(line)[0]) <= 12]
    prompt_ids = [vocabulary.encode(lines[i])[0] for i in rng.integers(0, len(lines), size=max(args.batch_sizes))]
    report["decode"] = []
    for batch_size in args.batch_sizes:
        decoder = Decoder(trained, vocabulary, max_rows=batch_size)
        for mode, extra in (("greedy", {}), ("sampling top_k=50", {"temperature": 1.0, "top_k": 50, "seed": 1})):
            generation = load_settings(environ={}).generation_params().replace(words=args.words, seed=0).replace(**extra)
            requests = [Request(ids=ids, params=generation, key=i) for i, ids in enumerate(prompt_ids[:batch_size])]
            decoder.generate(requests[: min(batch_size, 64)])    # trace
            decoder.generate(requests)                            # warm
            started = time.monotonic()
            decoder.generate(requests)
            seconds = time.monotonic() - started
            entry = {"mode": mode, "batch_size": batch_size, "seconds": round(seconds, 4),
                     "words_per_second": round(batch_size * args.words / seconds, 1)}
            report["decode"].append(entry)
            print(json.dumps({"decode": entry}), flush=True)

    if args.profile_dir:   # the step-by-step device and host time of one greedy decode at the largest batch
        largest = max(args.batch_sizes)
        decoder = Decoder(trained, vocabulary, max_rows=largest)
        generation = load_settings(environ={}).generation_params().replace(words=args.words, seed=0)
        requests = [Request(ids=ids, params=generation, key=i) for i, ids in enumerate(prompt_ids[:largest])]
        decoder.generate(requests)
        tf.profiler.experimental.start(args.profile_dir)
        decoder.generate(requests)
        tf.profiler.experimental.stop()
        report["profile"] = {"dir": args.profile_dir, "batch_size": largest,
                             "open_with": f"tensorboard --logdir {args.profile_dir} (Profile tab)"}
        print(json.dumps({"profile": report["profile"]}), flush=True)

    decoder = Decoder(trained, vocabulary, max_rows=1024)
    sample = prompt_ids[: args.equivalence_prompts]
    greedy = load_settings(environ={}).generation_params().replace(words=args.words, temperature=0.0, seed=0)
    generated = [s[0] for s in decoder.generate([Request(ids=ids, params=greedy, key=i) for i, ids in enumerate(sample)])]
    matches = sum(g == reference_greedy(trained, ids, args.words, window=common.SEED_CONTEXT) for g, ids in zip(generated, sample))
    report["greedy_equivalence"] = {"prompts": len(sample), "equal": int(matches)}
    print(json.dumps({"greedy_equivalence": report["greedy_equivalence"]}), flush=True)
    print(json.dumps({"gpu_check": report}))


if __name__ == "__main__":
    main()
