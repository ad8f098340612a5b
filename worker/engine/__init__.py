"""The LSTM engine, usable without Celery or Redis (nanoGPT's model / train / sample split):

- network.py   the Keras network: its training and inference views, layer names, model.keras bytes
- training.py  fitting it on a corpus: streaming batches, validation, checkpoints, early stopping
- decoder.py   batched incremental decoding: prefill, the compiled loop, continuous batching
- selection.py the next word of every row: greedy and sampling, in four variants of one meaning
- stream.py    the stateless random stream that makes sampling deterministic per prompt
- batching.py  host batching: requests in, the decoder's calls, ids or text out
- kernels/     lstmq's native CPU ops (C++), built on first use

Everything here imports TensorFlow (inside functions: importing the package is cheap); only the
pool process that runs tasks, the tests and the benchmarks load it."""
