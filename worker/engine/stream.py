"""The sampling stream: a counter-based hash (SplitMix64, Steele, Lea, Flood 2014) of (seed, prompt
key, sample index, word position) gives each row's uniform for each word, so that neither batch
composition, chunking, order nor the worker changes a result (shared.params.SAMPLING_STREAM).
The same numbers in numpy (stream_bases, row_uniforms: per-row state and a test's oracle) and in
TensorFlow (tf_uniforms, inside the compiled decoding loop); the native kernels hash in C++ alike."""
from __future__ import annotations

import numpy as np

GOLDEN = 0x9E3779B97F4A7C15
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB


def _mix(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * np.uint64(MIX1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(MIX2)
    return z ^ (z >> np.uint64(31))


def stream_bases(seed, key, sample) -> np.ndarray:
    """The per-row state of the sampling stream (uint64), vectorized over rows."""
    golden = np.uint64(GOLDEN)
    with np.errstate(over="ignore"):
        state = _mix(np.asarray(seed, np.uint64) + golden)
        state = _mix((state ^ np.asarray(key, np.uint64)) + golden)
        return _mix((state ^ np.asarray(sample, np.uint64)) + golden)


def _uniform_from_bits(bits: np.ndarray) -> np.ndarray:
    return (bits >> np.uint64(40)).astype(np.float32) * np.float32(2.0 ** -24)


def row_uniforms(seed: int, key: int, sample: int, steps: int) -> np.ndarray:
    """The uniforms in [0, 1) (float32) that word 0 .. steps-1 of one (seed, prompt key, sample)
    draw with: a stateless stream, the same numbers the compiled loop computes."""
    base = stream_bases(np.array([seed]), np.array([key]), np.array([sample]))[0]
    with np.errstate(over="ignore"):
        counters = base + (np.arange(1, steps + 1, dtype=np.uint64) * np.uint64(GOLDEN))
        return _uniform_from_bits(_mix(counters))


def tf_uniforms(base, position):
    """row_uniforms inside a TensorFlow graph: each row's uniform for word `position` (from 0),
    given its stream state `base` (uint64, from stream_bases)."""
    import tensorflow as tf

    u64 = lambda value: tf.constant(value, tf.uint64)   # noqa: E731
    z = base + (tf.cast(position, tf.uint64) + u64(1)) * u64(GOLDEN)
    z = (z ^ tf.bitwise.right_shift(z, u64(30))) * u64(MIX1)
    z = (z ^ tf.bitwise.right_shift(z, u64(27))) * u64(MIX2)
    z = z ^ tf.bitwise.right_shift(z, u64(31))
    return tf.cast(tf.bitwise.right_shift(z, u64(40)), tf.float32) * (2.0 ** -24)
