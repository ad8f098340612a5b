"""The producer side: the `lstmq` CLI. Never imports TensorFlow."""
